"""The rerank step: cache, single-flight, concurrency limit, a breaker per URL, retries; all within a budget.

`Scorer.score` never raises for a model failure: it returns `ScoreOutcome(scores=None, reason=...)` and the
caller keeps Elasticsearch's order. Only cancellation of the caller propagates.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from ..config import RerankerConfig, redact_url
from ..errors import (
    CircuitOpen,
    Overloaded,
    RerankerBadResponse,
    RerankerError,
    RerankerTimeout,
    RerankerUnavailable,
)
from .reranker import RerankerClient
from .resilience import (
    BreakerListener,
    CircuitBreaker,
    Clock,
    ConcurrencyLimit,
    Deadline,
    SingleFlight,
    TTLCache,
)
from .shared_cache import SharedCache, shared_key

logger = logging.getLogger(__name__)

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


@dataclass(frozen=True, slots=True)
class ScoreDoc:
    """A candidate: its id and the exact text that will be sent to the model."""

    doc_id: str
    text: str


@dataclass(frozen=True, slots=True)
class ScoreOutcome:
    """`scores` maps positions in the `docs` argument to scores; None (with `reason`) when degraded."""

    scores: dict[int, float] | None
    reason: str | None
    cache_hits: int
    cache_misses: int
    model_calls: int
    elapsed_s: float
    shared_hits: int = 0  # of `cache_hits`, those found in the shared level (Redis)

    @property
    def degraded(self) -> bool:
        return self.scores is None


@dataclass(slots=True)
class ScorerStats:
    """Running totals for metrics."""

    cache_hits: int = 0
    cache_misses: int = 0
    shared_hits: int = 0
    model_calls: int = 0
    degraded: dict[str, int] = field(default_factory=dict)


# model_key, query, doc_id, text digest: also the key of a document within one call and its flight.
# model_key, query, doc_id, and `hash()` of the document's text: the local cache lives in one process, so
# Python's per-process string hash names the text (a sixth of blake2b's cost, and every search computes
# twenty); the shared cache's keys, read by every replica, take the blake2b digest (`_shared_key`).
_CacheKey = tuple[str, str, str, int]
_FlightKey = tuple[str, str, frozenset[_CacheKey]]  # model_key, query, documents to score


@dataclass(slots=True)
class _Flight:
    """Bookkeeping of one shared model call (only the caller that started it sees `calls` > 0)."""

    calls: int = 0
    last_error: RerankerError | None = None


def _shared_key(prefix: str, key: _CacheKey, text: str) -> bytes:
    """The shared cache's key for a local key and its document's text."""
    model_key, query, doc_id, _ = key
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
    return shared_key(prefix, model_key, query, doc_id, digest)


def _is_retryable(exc: BaseException) -> bool:
    if not isinstance(exc, RerankerUnavailable):
        return False
    status = getattr(exc, "status", None)
    return status is None or status in _RETRY_STATUSES


class Scorer:
    """Scores documents for a query with the model server, degrading instead of failing or running late."""

    def __init__(
        self,
        client: ScoreClient,
        cfg: RerankerConfig,
        *,
        model_key: str,
        clock: Clock = time.monotonic,
        on_breaker_change: BreakerListener | None = None,
        rng: random.Random | None = None,
        fill_grace_s: float | None = None,
        shared: SharedCache | None = None,
    ) -> None:
        if not cfg.url:
            raise ValueError("RerankerConfig.url: expected at least one URL")
        self._client = client
        self._cfg = cfg
        self._model_key = model_key
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        # How long a model call may run past its caller's budget so that its answer still fills the cache.
        self._grace_s = cfg.timeout_ms / 1000 if fill_grace_s is None else max(0.0, fill_grace_s)
        self._urls = cfg.url
        # A RerankerClient ends every call within the timeout it is given (`call_model_server` bounds the
        # exchange), so `_attempt` needs no cap of its own around it: one timer per call fewer, which
        # on the wire was 0.1 ms of a search's own time. Any other client gets the cap.
        self._client_bounds_calls = isinstance(client, RerankerClient)
        self._breakers = [
            CircuitBreaker(cfg.breaker, name=url, clock=clock, on_change=on_breaker_change) for url in cfg.url
        ]
        self._next_url = 0
        self._cache: TTLCache[_CacheKey, float] = TTLCache(
            cfg.cache.max_entries, cfg.cache.ttl_s, clock=clock
        )
        self._flights: SingleFlight[_FlightKey, dict[_CacheKey, float]] = SingleFlight()
        self._limit = ConcurrencyLimit(cfg.max_concurrency)
        self._shared = shared
        self._closed = False
        self.stats = ScorerStats()

    @property
    def in_flight(self) -> int:
        """Model calls (shared flights) under way now."""
        return self._limit.in_flight

    def breaker_states(self) -> dict[str, str]:
        """The breaker state of each model server URL."""
        return {redact_url(breaker.name): breaker.state for breaker in self._breakers}

    async def aclose(self) -> None:
        """Stop background model calls (those still filling the cache) and refuse new ones."""
        self._closed = True
        await self._flights.aclose()

    async def score(self, query: str, docs: Sequence[ScoreDoc], budget_s: float) -> ScoreOutcome:
        """Scores for `docs` by position, or a degraded outcome; returns within `budget_s` plus scheduling."""
        started = self._clock()
        deadline = Deadline(budget_s, self._clock)
        model_key = self._model_key
        keys: list[_CacheKey] = [(model_key, query, doc.doc_id, hash(doc.text)) for doc in docs]
        scores: dict[int, float] = {}
        missing: dict[_CacheKey, str] = {}  # unique documents to send, in first-seen order
        pending: list[int] = []
        for pos, (doc, key, cached) in enumerate(zip(docs, keys, self._cache.get_many(keys), strict=True)):
            if cached is None:
                missing.setdefault(key, doc.text)
                pending.append(pos)
            else:
                scores[pos] = cached
        shared_hits = 0
        if missing and self._shared is not None:
            shared_hits = await self._from_shared(query, keys, missing, pending, scores, deadline)
        hits, misses = len(docs) - len(pending), len(pending)
        self.stats.cache_hits += hits
        self.stats.cache_misses += misses
        self.stats.shared_hits += shared_hits

        def outcome(reason: str | None, calls: int = 0) -> ScoreOutcome:
            if reason is not None:
                self.stats.degraded[reason] = self.stats.degraded.get(reason, 0) + 1
            return ScoreOutcome(
                scores=None if reason is not None else scores,
                reason=reason,
                cache_hits=hits,
                cache_misses=misses,
                model_calls=calls,
                elapsed_s=self._clock() - started,
                shared_hits=shared_hits,
            )

        if not missing:
            return outcome(None)
        if self._closed:
            return outcome("unavailable")
        if deadline.expired:
            return outcome("timeout")

        flight = _Flight()
        flight_key: _FlightKey = (model_key, query, frozenset(missing))
        try:
            # asyncio.timeout, not wait_for: wait_for wraps the coroutine in one more task per search.
            async with asyncio.timeout(deadline.remaining()):
                fresh = await self._flights.run(
                    flight_key, lambda: self._fetch(query, missing, deadline, flight)
                )
        except asyncio.TimeoutError:
            return outcome("timeout", flight.calls)
        except RerankerError as exc:
            return outcome(exc.reason, flight.calls)
        except Exception:
            # A bug of the proxy (or a request it could not encode) is not a reason to fail the search,
            # and says nothing about the model's health.
            logger.exception("reranker call failed unexpectedly")
            return outcome("proxy_error", flight.calls)
        for pos in pending:
            scores[pos] = fresh[keys[pos]]
        return outcome(None, flight.calls)

    async def _from_shared(
        self,
        query: str,
        keys: list[_CacheKey],
        missing: dict[_CacheKey, str],
        pending: list[int],
        scores: dict[int, float],
        deadline: Deadline,
    ) -> int:
        """Ask the shared level once for every document missing locally; move what it has out of
        `missing`/`pending` into `scores` and the local cache. Returns the positions it filled."""
        assert self._shared is not None
        wanted = list(missing)
        prefix = self._shared.prefix
        found = await self._shared.get_many(
            [_shared_key(prefix, key, missing[key]) for key in wanted],
            deadline.remaining(),
        )
        known: dict[_CacheKey, float] = {}
        for key, value in zip(wanted, found, strict=True):
            if value is not None:
                known[key] = value
                del missing[key]
        if not known:
            return 0
        self._cache.put_many(known.items())
        still = [pos for pos in pending if keys[pos] not in known]
        for pos in pending:
            if keys[pos] in known:
                scores[pos] = known[keys[pos]]
        filled = len(pending) - len(still)
        pending[:] = still
        return filled

    async def _fetch(
        self, query: str, missing: dict[_CacheKey, str], deadline: Deadline, flight: _Flight
    ) -> dict[_CacheKey, float]:
        """The shared work: one model call with retries; stores the answer even if the caller has left."""
        if not self._limit.try_acquire():
            raise Overloaded(f"{self._limit.limit} reranker calls already in flight")
        try:
            texts = list(missing.values())
            try:
                # Most calls succeed at once: the retry loop is built only when a retry may follow.
                values = await self._attempt(query, texts, deadline, flight)
            except RerankerUnavailable as exc:
                if not _is_retryable(exc):
                    raise
                values = await self._retry(query, texts, deadline, flight, exc)
        finally:
            self._limit.release()
        fresh = dict(zip(missing, values, strict=True))
        self._cache.put_many(fresh.items())
        if self._shared is not None:
            prefix = self._shared.prefix
            self._shared.put_many(
                [(_shared_key(prefix, key, missing[key]), value) for key, value in fresh.items()],
                self._cfg.cache.ttl_s,
            )
        return fresh

    async def _retry(
        self, query: str, texts: list[str], deadline: Deadline, flight: _Flight, failure: RerankerError
    ) -> list[float]:
        """The attempts after a retryable first failure, by tenacity's rules (retry, backoff, stop).

        The first failure is replayed as tenacity's attempt 1, so it counts, and waits, as if tenacity
        had made it."""
        retrying = AsyncRetrying(
            sleep=asyncio.sleep,
            retry=retry_if_exception(_is_retryable),
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

    async def _attempt(
        self, query: str, texts: list[str], deadline: Deadline, flight: _Flight
    ) -> list[float]:
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
        self.stats.model_calls += 1
        try:
            if self._client_bounds_calls:
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
