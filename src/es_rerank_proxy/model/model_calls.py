"""One model call for the scorer: the next healthy URL by its breaker, retries with backoff, within a budget.

`ModelCalls.call` raises the project's `RerankerError`s; the scorer (`scoring`) turns them into a degraded
outcome, and keeps the cache, the shared flights and the concurrency limit around it.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from ..config import RerankerConfig, redact_url
from ..errors import (
    CircuitOpen,
    RerankerBadResponse,
    RerankerError,
    RerankerTimeout,
    RerankerUnavailable,
)
from .reranker import RerankerClient
from .resilience import BreakerListener, CircuitBreaker, Clock, Deadline

# Statuses worth another try: the gateway or the server says "not now", not "never".
_RETRY_STATUSES = frozenset({502, 503, 504})
# Do not start another attempt with less budget than this left: it could not finish anyway.
_MIN_ATTEMPT_S = 0.02
_BACKOFF_BASE_S = 0.01
_BACKOFF_MAX_S = 0.1
# A backoff sleep never takes more than this share of the budget still left.
_BACKOFF_SHARE = 0.25


class ScoreClient(Protocol):
    """What the scorer needs from the model server client (`reranker.RerankerClient` fits)."""

    async def score(self, url: str, query: str, documents: Sequence[str], timeout_s: float) -> list[float]:
        """One HTTP call: one score per document, in order."""
        ...


@dataclass(slots=True)
class Flight:
    """Bookkeeping of one shared model call (only the caller that started it sees `calls` > 0)."""

    calls: int = 0
    last_error: RerankerError | None = None

    def __init__(self, calls: int = 0, last_error: RerankerError | None = None) -> None:
        # Written out: mypyc compiles this one, not the one @dataclass generates (tests/test_inits.py).
        self.calls = calls
        self.last_error = last_error


def is_retryable(exc: BaseException) -> bool:
    if not isinstance(exc, RerankerUnavailable):
        return False
    status = getattr(exc, "status", None)
    return status is None or status in _RETRY_STATUSES


class ModelCalls:
    """Calls the model servers in turn, each behind its circuit breaker, retrying what is worth it."""

    def __init__(
        self,
        client: ScoreClient,
        cfg: RerankerConfig,
        *,
        clock: Clock,
        grace_s: float,
        on_breaker_change: BreakerListener | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._client = client
        self._cfg = cfg
        self._rng = rng if rng is not None else random.Random()
        # How long a call may run past its caller's budget so that its answer still fills the cache.
        self._grace_s = grace_s
        # A RerankerClient ends every call within the timeout it is given (`call_model_server` bounds the
        # exchange), so `_attempt` needs no cap of its own around it (on the wire, 0.1 ms of a search's own
        # time), and the scorer can run its flight in the search's own task: it could not outlive the
        # budget to fill the cache anyway. Any other client gets the cap, and its flight a task of its own.
        self.bounds_calls = isinstance(client, RerankerClient)
        self._breakers = [
            CircuitBreaker(cfg.breaker, name=url, clock=clock, on_change=on_breaker_change) for url in cfg.url
        ]
        self._next_url = 0

    def breaker_states(self) -> dict[str, str]:
        """The breaker state of each model server URL."""
        return {redact_url(breaker.name): breaker.state for breaker in self._breakers}

    async def call(self, query: str, texts: list[str], deadline: Deadline, flight: Flight) -> list[float]:
        """One score per text, from the first attempt or a retry; `flight` counts the attempts."""
        try:
            # Most calls succeed at once: the retry loop is built only when a retry may follow.
            return await self._attempt(query, texts, deadline, flight)
        except RerankerUnavailable as exc:
            if not is_retryable(exc):
                raise
            return await self._retry(query, texts, deadline, flight, exc)

    async def _retry(
        self, query: str, texts: list[str], deadline: Deadline, flight: Flight, failure: RerankerError
    ) -> list[float]:
        """The attempts after a retryable first failure, by tenacity's rules (retry, backoff, stop).

        The first failure is replayed as tenacity's attempt 1, so it counts, and waits, as if tenacity
        had made it."""
        retrying = AsyncRetrying(
            sleep=asyncio.sleep,
            retry=retry_if_exception(is_retryable),
            stop=lambda state: self._should_stop(state, deadline),
            wait=lambda state: self._backoff(state, deadline),
            reraise=True,
        )
        replay: RerankerError | None = failure
        values: list[float] = []
        async for attempt in retrying:
            with attempt:
                if replay is not None:
                    failed, replay = replay, None
                    raise failed
                values = await self._attempt(query, texts, deadline, flight)
        return values

    def _should_stop(self, state: RetryCallState, deadline: Deadline) -> bool:
        if state.attempt_number > self._cfg.retries:
            return True
        return deadline.remaining() - state.upcoming_sleep < _MIN_ATTEMPT_S

    def _backoff(self, state: RetryCallState, deadline: Deadline) -> float:
        """Exponential backoff with jitter, never more than a share of the budget left."""
        step = min(_BACKOFF_MAX_S, _BACKOFF_BASE_S * 2.0 ** (state.attempt_number - 1))
        jittered = step * (0.5 + 0.5 * self._rng.random())
        return min(jittered, deadline.remaining() * _BACKOFF_SHARE)

    def _pick(self) -> CircuitBreaker | None:
        """The next URL in turn whose breaker lets a call through (spreads load, and retries move on)."""
        count = len(self._breakers)
        for offset in range(count):
            index = (self._next_url + offset) % count
            breaker = self._breakers[index]
            if breaker.allow():
                self._next_url = index + 1
                return breaker
        return None

    async def _capped_score(self, url: str, query: str, texts: list[str], timeout_s: float) -> list[float]:
        """The client's call with the budget as its timeout, under a hard cap that adds the cache-fill
        grace, so that even a client that hangs forever is cut off."""
        try:
            async with asyncio.timeout(timeout_s + self._grace_s):
                return await self._client.score(url, query, texts, timeout_s)
        except asyncio.TimeoutError:
            raise RerankerTimeout(f"{redact_url(url)}: no answer within {timeout_s:.3f}s") from None

    async def _attempt(self, query: str, texts: list[str], deadline: Deadline, flight: Flight) -> list[float]:
        timeout_s = deadline.remaining()
        if timeout_s <= 0:
            # Not retryable, so a retry loop can never spin here whatever the stop rule says.
            raise RerankerTimeout("reranker budget spent before the call")
        breaker = self._pick()
        if breaker is None:
            # On a retry, the failure that made us retry is the truer reason than the breakers.
            raise flight.last_error or CircuitOpen("every reranker circuit is open")
        url = breaker.name
        flight.calls += 1
        try:
            if self.bounds_calls:
                values = await self._client.score(url, query, texts, timeout_s)
            else:
                values = await self._capped_score(url, query, texts, timeout_s)
            if len(values) != len(texts) or not all(
                isinstance(v, int | float) and math.isfinite(v) for v in values
            ):
                raise RerankerBadResponse(f"{redact_url(url)}: expected {len(texts)} finite scores")
        except RerankerError as exc:
            breaker.record_failure()
            flight.last_error = exc
            raise
        except BaseException:
            # Cancellation (shutdown) or a fault of the proxy or the request: it says nothing about the
            # model, so it frees a half-open probe without counting against the breaker.
            breaker.release()
            raise
        if deadline.expired:
            # Answered, but after the caller's budget: too slow to count as healthy (the cache keeps it).
            breaker.record_failure()
        else:
            breaker.record_success()
        return [float(v) for v in values]
