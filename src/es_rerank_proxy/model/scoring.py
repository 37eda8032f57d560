"""The rerank step: cache, single-flight, concurrency limit, and the model call (`model_calls`: a breaker per
URL, retries); all within a budget.

`Scorer.score` never raises for a model failure: it returns `ScoreOutcome(scores=None, reason=...)` and the
caller keeps Elasticsearch's order. Only cancellation of the caller propagates.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..config import RerankerConfig
from ..errors import Overloaded, RerankerError, RerankerTimeout
from .model_calls import Flight, ModelCalls, ScoreClient
from .resilience import BreakerListener, Clock, ConcurrencyLimit, Deadline, SingleFlight, TTLCache
from .shared_cache import SharedCache, shared_key

__all__ = ["ScoreClient", "ScoreDoc", "ScoreOutcome", "Scorer", "ScorerStats"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ScoreDoc:
    """A candidate: its id and the exact text that will be sent to the model."""

    doc_id: str
    text: str

    def __init__(self, doc_id: str, text: str) -> None:
        # Written out: mypyc compiles this one, not the one @dataclass generates (tests/test_inits.py).
        object.__setattr__(self, "doc_id", doc_id)
        object.__setattr__(self, "text", text)


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

    def __init__(
        self,
        scores: dict[int, float] | None,
        reason: str | None,
        cache_hits: int,
        cache_misses: int,
        model_calls: int,
        elapsed_s: float,
        shared_hits: int = 0,
    ) -> None:
        # Written out: mypyc compiles this one, not the one @dataclass generates (tests/test_inits.py).
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "reason", reason)
        object.__setattr__(self, "cache_hits", cache_hits)
        object.__setattr__(self, "cache_misses", cache_misses)
        object.__setattr__(self, "model_calls", model_calls)
        object.__setattr__(self, "elapsed_s", elapsed_s)
        object.__setattr__(self, "shared_hits", shared_hits)

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


def _shared_key(prefix: str, key: _CacheKey, text: str) -> bytes:
    """The shared cache's key for a local key and its document's text."""
    model_key, query, doc_id, _ = key
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
    return shared_key(prefix, model_key, query, doc_id, digest)


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
        self._cfg = cfg
        self._model_key = model_key
        self._clock = clock
        grace_s = cfg.timeout_ms / 1000 if fill_grace_s is None else max(0.0, fill_grace_s)
        self._calls = ModelCalls(
            client, cfg, clock=clock, grace_s=grace_s, on_breaker_change=on_breaker_change, rng=rng
        )
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
        return self._calls.breaker_states()

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

        flight = Flight()
        flight_key: _FlightKey = (model_key, query, frozenset(missing))
        try:
            if self._calls.bounds_calls:
                # Its calls end within the budget by themselves: no task to start, no timer around it.
                fresh = await self._flights.run_here(
                    flight_key,
                    lambda: self._fetch(query, missing, deadline, flight),
                    wait_s=deadline.remaining(),
                    abandoned=lambda: RerankerTimeout("the search that made the shared model call left"),
                )
            else:
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
        self, query: str, missing: dict[_CacheKey, str], deadline: Deadline, flight: Flight
    ) -> dict[_CacheKey, float]:
        """The shared work: one model call with retries; stores the answer even if the caller has left."""
        if not self._limit.try_acquire():
            raise Overloaded(f"{self._limit.limit} reranker calls already in flight")
        try:
            values = await self._calls.call(query, list(missing.values()), deadline, flight)
        finally:
            self._limit.release()
            self.stats.model_calls += flight.calls
        fresh = dict(zip(missing, values, strict=True))
        self._cache.put_many(fresh.items())
        if self._shared is not None:
            prefix = self._shared.prefix
            self._shared.put_many(
                [(_shared_key(prefix, key, missing[key]), value) for key, value in fresh.items()],
                self._cfg.cache.ttl_s,
            )
        return fresh
