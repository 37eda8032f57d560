"""Building blocks for calling a fallible upstream within a budget: deadline, breaker, cache, single-flight.

Every time-dependent piece takes a `clock` (monotonic seconds) so tests can drive time by hand.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine, Hashable, Iterable
from typing import Generic, Literal, TypeVar

from ..config import BreakerConfig

Clock = Callable[[], float]
BreakerState = Literal["closed", "open", "half_open"]
BreakerListener = Callable[[str, str, str], None]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Deadline:
    """A time budget that started when the object was made."""

    def __init__(self, budget_s: float, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._end = clock() + max(0.0, budget_s)

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self._end - self._clock())

    @property
    def expired(self) -> bool:
        """True once the budget is spent."""
        return self._clock() >= self._end


class CircuitBreaker:
    """closed -> open after `failures` failures in `window_s`; open for `open_s`; then one probe at a time.

    With `consecutive`, a success in between starts the count again: for a dependency asked many times a
    second whose odd late answer says more about this machine's load than about its health.
    """

    def __init__(
        self,
        cfg: BreakerConfig,
        *,
        name: str,
        clock: Clock = time.monotonic,
        on_change: BreakerListener | None = None,
        consecutive: bool = False,
    ) -> None:
        self._cfg = cfg
        self._consecutive = consecutive
        self.name = name
        self._clock = clock
        self._on_change = on_change
        self._state: BreakerState = "closed"
        self._failures: deque[float] = deque()
        self._opened_at = 0.0
        self._probe_in_flight = False

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker whose time is up reads as half_open."""
        if self._state == "open" and self._clock() - self._opened_at >= self._cfg.open_s:
            self._probe_in_flight = False
            self._move("half_open")
        return self._state

    def allow(self) -> bool:
        """May a call go out now? In half_open the first caller gets the probe; the rest are refused."""
        state = self.state
        if state == "closed":
            return True
        if state == "open" or self._probe_in_flight:
            return False
        self._probe_in_flight = True
        return True

    def record_success(self) -> None:
        """A call succeeded: a successful probe closes the breaker and forgets old failures (as does any
        success, with `consecutive`)."""
        state = self.state
        if state == "half_open":
            self._failures.clear()
            self._probe_in_flight = False
            self._move("closed")
        elif state == "closed" and self._consecutive:
            self._failures.clear()

    def release(self) -> None:
        """A call ended without telling anything of the model's health: free a probe, count nothing."""
        self._probe_in_flight = False

    def record_failure(self) -> None:
        """A call failed: count it in the window (closed) or reopen (half_open)."""
        state = self.state
        now = self._clock()
        if state == "half_open":
            self._open(now)
        elif state == "closed":
            self._failures.append(now)
            horizon = now - self._cfg.window_s
            while self._failures and self._failures[0] <= horizon:
                self._failures.popleft()
            if len(self._failures) >= self._cfg.failures:
                self._open(now)
        # open: a late failure of a call started earlier changes nothing (the open timer is not extended).

    def _open(self, now: float) -> None:
        self._opened_at = now
        self._probe_in_flight = False
        self._failures.clear()
        self._move("open")

    def _move(self, new: BreakerState) -> None:
        old, self._state = self._state, new
        if old != new and self._on_change is not None:
            self._on_change(self.name, old, new)


class TTLCache(Generic[K, V]):
    """An LRU cache of at most `max_entries` (0 disables it); entries expire `ttl_s` after being stored."""

    def __init__(self, max_entries: int, ttl_s: float, *, clock: Clock = time.monotonic) -> None:
        if max_entries < 0:
            raise ValueError(f"max_entries must be >= 0, got {max_entries}")
        self._max = max_entries
        self._ttl = ttl_s
        self._clock = clock
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> V | None:
        """The live value for `key` (and mark it recently used), or None."""
        return self.get_many((key,))[0]

    def put(self, key: K, value: V) -> None:
        """Store `value`, evicting the least recently used entries beyond the bound."""
        self.put_many(((key, value),))

    def get_many(self, keys: Iterable[K]) -> list[V | None]:
        """The live value of each key (each marked recently used) or None, reading the clock once: a
        search looks up its twenty documents."""
        now = self._clock()
        data = self._data
        found: list[V | None] = []
        for key in keys:
            item = data.get(key)
            if item is not None and now >= item[0]:
                del data[key]
                item = None
            if item is None:
                found.append(None)
            else:
                data.move_to_end(key)
                found.append(item[1])
        return found

    def put_many(self, items: Iterable[tuple[K, V]]) -> None:
        """Store each pair, reading the clock once, then evict the least recently used beyond the bound."""
        if self._max == 0:
            return
        expires = self._clock() + self._ttl
        data = self._data
        for key, value in items:
            data[key] = (expires, value)
            data.move_to_end(key)
        while len(data) > self._max:
            data.popitem(last=False)

    def clear(self) -> None:
        """Forget everything."""
        self._data.clear()

    def __len__(self) -> int:
        # Expired entries are dropped lazily, so this is an upper bound on the live entries.
        return len(self._data)


class SingleFlight(Generic[K, V]):
    """Concurrent calls with one key share one run of the work.

    `run` starts the work in a task of its own, so a caller may leave without stopping it. `run_here` runs
    it in the first caller's task (no task to start, no hand-over back), for work that ends within that
    caller's own limits anyway.
    """

    def __init__(self) -> None:
        # A task (`run`) or the future the first caller of `run_here` resolves.
        self._flights: dict[K, asyncio.Future[V]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    async def run(self, key: K, factory: Callable[[], Coroutine[object, object, V]]) -> V:
        """Await the shared result for `key`, starting `factory()` if no call for `key` is under way."""
        flight = self._flights.get(key)
        # A flight that has ended but whose done callback has not run yet is no flight to join: its failure
        # would be handed to a caller that arrived after it.
        if flight is None or flight.done():
            flight = asyncio.create_task(factory())
            self._flights[key] = flight
            flight.add_done_callback(functools.partial(self._finished, key))
        # shield: a cancelled caller must not cancel the work the other callers still wait for.
        return await asyncio.shield(flight)

    async def run_here(
        self,
        key: K,
        factory: Callable[[], Coroutine[object, object, V]],
        *,
        wait_s: float,
        abandoned: Callable[[], BaseException],
    ) -> V:
        """`run`, with the work in the first caller's own task: it stops if that caller is cancelled, and
        the callers that joined it get `abandoned()` instead. One who joins waits at most `wait_s`
        (TimeoutError), in case the first caller's limits are wider than its own."""
        flight = self._flights.get(key)
        if flight is not None and not flight.done():
            async with asyncio.timeout(wait_s):
                return await asyncio.shield(flight)
        joined: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._flights[key] = joined
        try:
            value = await factory()
        except asyncio.CancelledError:
            joined.set_exception(abandoned())
            joined.exception()  # retrieved: nobody may have joined
            raise
        except BaseException as exc:
            joined.set_exception(exc)
            joined.exception()
            raise
        finally:
            if self._flights.get(key) is joined:
                del self._flights[key]
        joined.set_result(value)
        return value

    def _finished(self, key: K, task: asyncio.Future[V]) -> None:
        if self._flights.get(key) is task:
            del self._flights[key]
        if not task.cancelled():
            # Mark the exception retrieved: if every caller left, nobody else will look at it.
            task.exception()

    async def aclose(self) -> None:
        """Cancel the work under way in tasks of its own and wait until it has stopped (work run in a
        caller's task belongs to that caller)."""
        tasks = [flight for flight in self._flights.values() if isinstance(flight, asyncio.Task)]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


class ConcurrencyLimit:
    """A non-blocking count of work in flight: past the limit, callers degrade at once instead of queueing."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def try_acquire(self) -> bool:
        """Take a slot if one is free; never waits."""
        if self._in_flight >= self.limit:
            return False
        self._in_flight += 1
        return True

    def release(self) -> None:
        """Give back a slot taken with `try_acquire`."""
        if self._in_flight <= 0:
            raise RuntimeError("release() without a matching try_acquire()")
        self._in_flight -= 1
