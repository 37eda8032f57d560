"""Deadline, circuit breaker, TTL cache, single-flight and concurrency limit, driven by a hand-moved clock."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine

import pytest
from hypothesis import given
from hypothesis import strategies as st

from es_rerank_proxy.config import BreakerConfig
from es_rerank_proxy.model.resilience import (
    CircuitBreaker,
    ConcurrencyLimit,
    Deadline,
    SingleFlight,
    TTLCache,
)


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --- Deadline -----------------------------------------------------------------------------------------


def test_deadline_counts_down_and_never_goes_negative() -> None:
    clock = FakeClock()
    deadline = Deadline(0.5, clock)
    assert deadline.remaining() == pytest.approx(0.5)
    assert not deadline.expired
    clock.advance(0.2)
    assert deadline.remaining() == pytest.approx(0.3)
    clock.advance(0.3)
    assert deadline.expired
    clock.advance(5)
    assert deadline.remaining() == 0.0


def test_deadline_with_no_budget_is_expired_at_once() -> None:
    assert Deadline(-1.0, FakeClock()).expired


# --- CircuitBreaker -----------------------------------------------------------------------------------


def make_breaker(
    clock: FakeClock, failures: int = 3, window_s: float = 10.0, open_s: float = 5.0
) -> tuple[CircuitBreaker, list[tuple[str, str, str]]]:
    changes: list[tuple[str, str, str]] = []
    cfg = BreakerConfig(failures=failures, window_s=window_s, open_s=open_s)
    breaker = CircuitBreaker(cfg, name="u1", clock=clock, on_change=lambda *c: changes.append(c))
    return breaker, changes


def test_breaker_opens_after_failures_within_window() -> None:
    clock = FakeClock()
    breaker, changes = make_breaker(clock)
    for _ in range(2):
        breaker.record_failure()
        assert breaker.state == "closed"
        assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open"
    assert not breaker.allow()
    assert changes == [("u1", "closed", "open")]


@pytest.mark.parametrize(
    ("outcomes", "consecutive", "state"),
    [
        ("FSFSFSFSF", False, "open"),  # five failures in the window, whatever came between
        ("FSFSFSFSF", True, "closed"),  # never three in a row
        ("SSFFF", True, "open"),
        ("FFSFF", True, "closed"),
        ("FFF", False, "open"),
    ],
)
def test_a_consecutive_breaker_opens_only_on_failures_in_a_row(
    outcomes: str, consecutive: bool, state: str
) -> None:
    cfg = BreakerConfig(failures=3, window_s=10.0, open_s=5.0)
    breaker = CircuitBreaker(cfg, name="redis", clock=FakeClock(), consecutive=consecutive)
    for outcome in outcomes:
        breaker.record_failure() if outcome == "F" else breaker.record_success()
    assert breaker.state == state


@pytest.mark.parametrize(
    ("gaps", "state"),
    [
        ((0.0, 4.0, 4.0), "open"),  # three failures within 8 s of a 10 s window
        ((0.0, 6.0, 6.0), "closed"),  # the first one has slid out of the window by the third
        ((0.0, 10.0, 0.0), "closed"),  # exactly window_s old no longer counts
        ((0.0, 9.9, 0.0), "open"),
    ],
)
def test_breaker_window_slides(gaps: tuple[float, ...], state: str) -> None:
    clock = FakeClock()
    breaker, _ = make_breaker(clock)
    for gap in gaps:
        clock.advance(gap)
        breaker.record_failure()
    assert breaker.state == state


def test_breaker_success_while_closed_does_not_reset_window() -> None:
    clock = FakeClock()
    breaker, _ = make_breaker(clock, failures=2)
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state == "open"


def test_breaker_half_open_allows_exactly_one_probe() -> None:
    clock = FakeClock()
    breaker, changes = make_breaker(clock, failures=1, open_s=5.0)
    breaker.record_failure()
    clock.advance(4.99)
    assert not breaker.allow()
    clock.advance(0.01)
    assert breaker.state == "half_open"
    assert breaker.allow()
    assert not breaker.allow()
    assert not breaker.allow()
    assert changes == [("u1", "closed", "open"), ("u1", "open", "half_open")]


def test_breaker_probe_success_closes_and_clears_history() -> None:
    clock = FakeClock()
    breaker, changes = make_breaker(clock, failures=2)
    breaker.record_failure()
    breaker.record_failure()
    clock.advance(5.0)
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed"
    assert breaker.allow() and breaker.allow()
    breaker.record_failure()  # one failure after closing: the old ones were forgotten
    assert breaker.state == "closed"
    assert [new for _, _, new in changes] == ["open", "half_open", "closed"]


def test_breaker_probe_failure_reopens_for_a_full_period() -> None:
    clock = FakeClock()
    breaker, changes = make_breaker(clock, failures=1, open_s=5.0)
    breaker.record_failure()
    clock.advance(5.0)
    assert breaker.allow()
    clock.advance(1.0)
    breaker.record_failure()
    assert breaker.state == "open"
    clock.advance(4.9)
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.allow()
    assert [new for _, _, new in changes] == ["open", "half_open", "open", "half_open"]


def test_breaker_late_failure_while_open_does_not_extend_open_period() -> None:
    clock = FakeClock()
    breaker, _ = make_breaker(clock, failures=1, open_s=5.0)
    breaker.record_failure()
    clock.advance(3.0)
    breaker.record_failure()
    breaker.record_success()
    states = [breaker.state]
    clock.advance(2.0)
    states.append(breaker.state)
    assert states == ["open", "half_open"]


# --- TTLCache -----------------------------------------------------------------------------------------


def test_cache_entries_expire_after_ttl() -> None:
    clock = FakeClock()
    cache: TTLCache[str, int] = TTLCache(10, 60.0, clock=clock)
    cache.put("a", 1)
    clock.advance(59.9)
    assert cache.get("a") == 1
    clock.advance(0.1)
    assert cache.get("a") is None
    assert len(cache) == 0


def test_cache_put_again_renews_ttl_and_value() -> None:
    clock = FakeClock()
    cache: TTLCache[str, int] = TTLCache(10, 10.0, clock=clock)
    cache.put("a", 1)
    clock.advance(8)
    cache.put("a", 2)
    clock.advance(8)
    assert cache.get("a") == 2


def test_cache_evicts_least_recently_used() -> None:
    cache: TTLCache[str, int] = TTLCache(2, 60.0, clock=FakeClock())
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now more recent than "b"
    cache.put("c", 3)
    assert cache.get("b") is None
    assert cache.get("a") == 1
    assert cache.get("c") == 3
    assert len(cache) == 2


@pytest.mark.parametrize(("max_entries", "ttl_s"), [(0, 60.0), (10, 0.0)])
def test_cache_disabled_stores_nothing(max_entries: int, ttl_s: float) -> None:
    cache: TTLCache[str, int] = TTLCache(max_entries, ttl_s, clock=FakeClock())
    cache.put("a", 1)
    assert cache.get("a") is None


def test_cache_rejects_negative_size() -> None:
    with pytest.raises(ValueError):
        TTLCache(-1, 1.0)


@given(
    max_entries=st.integers(min_value=0, max_value=5),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["put", "get", "put_many", "get_many"]),
            st.lists(st.integers(0, 8), min_size=1, max_size=7),
        ),
        max_size=40,
    ),
)
def test_cache_matches_an_lru_model_and_stays_bounded(
    max_entries: int, ops: list[tuple[str, list[int]]]
) -> None:
    # The batch calls must keep exactly what their one-key calls in turn would keep.
    cache: TTLCache[int, int] = TTLCache(max_entries, 60.0, clock=FakeClock())
    model: list[int] = []  # keys, least recent first
    for op, keys in ops:
        if op.startswith("put"):
            if op == "put_many":
                cache.put_many([(key, key * 10) for key in keys])
            else:
                cache.put(keys[0], keys[0] * 10)
            for key in keys if op == "put_many" else keys[:1]:
                if max_entries:
                    model = [k for k in model if k != key] + [key]
                    model = model[-max_entries:]
        else:
            asked = keys if op == "get_many" else keys[:1]
            expected = [key * 10 if key in model else None for key in asked]
            found = cache.get_many(asked) if op == "get_many" else [cache.get(asked[0])]
            assert found == expected
            for key in asked:
                if key in model:
                    model = [k for k in model if k != key] + [key]
        assert len(cache) == len(model) <= max_entries


def test_cache_get_many_drops_expired_entries() -> None:
    clock = FakeClock()
    cache: TTLCache[str, int] = TTLCache(10, 60.0, clock=clock)
    cache.put_many([("a", 1), ("b", 2)])
    clock.advance(30)
    cache.put("c", 3)
    clock.advance(30)
    assert cache.get_many(["a", "c", "b", "a"]) == [None, 3, None, None]
    assert len(cache) == 1


# --- SingleFlight -------------------------------------------------------------------------------------


async def test_single_flight_shares_one_call() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    calls = 0
    release = asyncio.Event()

    async def work() -> int:
        nonlocal calls
        calls += 1
        await release.wait()
        return 42

    waiters = [asyncio.create_task(flights.run("k", work)) for _ in range(5)]
    await asyncio.sleep(0)
    assert len(flights) == 1
    release.set()
    assert await asyncio.gather(*waiters) == [42] * 5
    assert calls == 1
    assert len(flights) == 0


async def test_single_flight_different_keys_run_separately() -> None:
    flights: SingleFlight[str, str] = SingleFlight()

    async def work(value: str) -> str:
        await asyncio.sleep(0)
        return value

    results = await asyncio.gather(flights.run("a", lambda: work("a")), flights.run("b", lambda: work("b")))
    assert list(results) == ["a", "b"]


async def test_single_flight_exception_reaches_every_waiter() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    release = asyncio.Event()

    async def work() -> int:
        await release.wait()
        raise LookupError("boom")

    waiters = [asyncio.create_task(flights.run("k", work)) for _ in range(3)]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, LookupError) for r in results)
    assert len(flights) == 0


async def test_single_flight_cancelled_waiter_does_not_cancel_the_others() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    release = asyncio.Event()

    async def work() -> int:
        await release.wait()
        return 7

    leaving = asyncio.create_task(flights.run("k", work))
    staying = asyncio.create_task(flights.run("k", work))
    await asyncio.sleep(0)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    release.set()
    assert await staying == 7


async def test_single_flight_failure_after_all_waiters_left_is_not_reported_as_unretrieved() -> None:
    # "Task exception was never retrieved" goes to the loop's exception handler when the task is collected.
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        await _fail_after_every_waiter_left()
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    assert reported == []


async def _fail_after_every_waiter_left() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    release = asyncio.Event()
    finished = asyncio.Event()

    async def work() -> int:
        try:
            await release.wait()
            raise LookupError("nobody is listening")
        finally:
            finished.set()

    waiter = asyncio.create_task(flights.run("k", work))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    release.set()
    await finished.wait()
    await asyncio.sleep(0)
    assert len(flights) == 0


async def test_single_flight_aclose_cancels_running_work() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    started = asyncio.Event()
    cancelled = False

    async def work() -> int:
        nonlocal cancelled
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled = True
            raise
        return 1

    waiter = asyncio.create_task(flights.run("k", work))
    await started.wait()
    await flights.aclose()
    assert cancelled
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert len(flights) == 0


class Abandoned(Exception):
    """What callers who joined a `run_here` flight get when its first caller is cancelled."""


async def test_run_here_runs_the_work_in_the_first_callers_task_and_shares_it() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    release = asyncio.Event()
    ran_in: list[asyncio.Task[object] | None] = []

    async def work() -> int:
        ran_in.append(asyncio.current_task())
        await release.wait()
        return 42

    def call() -> Coroutine[object, object, int]:
        return flights.run_here("k", work, wait_s=60, abandoned=Abandoned)

    first = asyncio.create_task(call())
    await asyncio.sleep(0)
    joined = [asyncio.create_task(call()) for _ in range(3)]
    await asyncio.sleep(0)
    assert len(flights) == 1
    release.set()
    assert await asyncio.gather(first, *joined) == [42] * 4
    assert ran_in == [first], "one run, in the first caller's own task"
    assert len(flights) == 0


async def test_run_here_failure_reaches_every_caller() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    release = asyncio.Event()

    async def work() -> int:
        await release.wait()
        raise LookupError("boom")

    callers = [
        asyncio.create_task(flights.run_here("k", work, wait_s=60, abandoned=Abandoned)) for _ in range(3)
    ]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert [type(result) for result in results] == [LookupError] * 3
    assert len(flights) == 0


async def test_run_here_first_caller_cancelled_leaves_the_others_abandoned_not_cancelled() -> None:
    flights: SingleFlight[str, int] = SingleFlight()

    async def work() -> int:
        await asyncio.sleep(3600)
        return 1

    first = asyncio.create_task(flights.run_here("k", work, wait_s=60, abandoned=Abandoned))
    await asyncio.sleep(0)
    joined = asyncio.create_task(flights.run_here("k", work, wait_s=60, abandoned=Abandoned))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    with pytest.raises(Abandoned):
        await joined
    assert len(flights) == 0


async def test_run_here_a_caller_who_joined_waits_at_most_its_own_time_and_stops_nothing() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    release = asyncio.Event()

    async def work() -> int:
        await release.wait()
        return 5

    first = asyncio.create_task(flights.run_here("k", work, wait_s=60, abandoned=Abandoned))
    await asyncio.sleep(0)
    with pytest.raises(TimeoutError):
        await flights.run_here("k", work, wait_s=0.01, abandoned=Abandoned)
    leaving = asyncio.create_task(flights.run_here("k", work, wait_s=60, abandoned=Abandoned))
    await asyncio.sleep(0)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    release.set()
    assert await first == 5


async def test_aclose_leaves_work_running_in_a_callers_task_to_that_caller() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    release = asyncio.Event()

    async def work() -> int:
        await release.wait()
        return 3

    first = asyncio.create_task(flights.run_here("k", work, wait_s=60, abandoned=Abandoned))
    await asyncio.sleep(0)
    await flights.aclose()
    release.set()
    assert await first == 3


# --- ConcurrencyLimit ---------------------------------------------------------------------------------


def test_concurrency_limit_refuses_past_limit_without_waiting() -> None:
    limit = ConcurrencyLimit(2)
    assert limit.try_acquire()
    assert limit.try_acquire()
    assert not limit.try_acquire()
    assert limit.in_flight == 2
    limit.release()
    assert limit.in_flight == 1
    assert limit.try_acquire()


def test_concurrency_limit_rejects_unbalanced_release_and_bad_limit() -> None:
    with pytest.raises(RuntimeError):
        ConcurrencyLimit(1).release()
    with pytest.raises(ValueError):
        ConcurrencyLimit(0)
