"""Scores from an OpenAI-compatible embeddings server (`reranker.api: embeddings`): query-passage cosine.

Passage vectors are cached by the exact text sent, in process and (with `cache.backend: redis`) in the
cache every replica shares (`passage_vectors`); missing ones are embedded by background work the client
owns, so a search that runs out of budget still leaves the cache filled for the next one. The pure helpers
in `vectors` (`cosine`, `to_unit_interval`, `parse_embeddings`) hold the format and scoring decisions.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson

from ..config import RerankerConfig
from ..errors import Overloaded, RerankerBadResponse, RerankerError, RerankerTimeout
from .model_server import (
    ModelServerBadResponse,
    ModelServerUnavailable,
    ModelSession,
    call_model_server,
    model_headers,
    raise_for_status,
)
from .passage_vectors import PassageKey, PassageVectors
from .resilience import Clock, Deadline, TTLCache
from .shared_cache import SharedCache
from .vectors import EmbeddingsRequest, InputType, Vector, dot, parse_embeddings, to_unit_interval, unit

logger = logging.getLogger(__name__)

_QUERY_CACHE_ENTRIES = 1024
# Warming has no search waiting on it: each batch's shared lookup may take this long.
_WARM_LOOKUP_S = 1.0
_NO_EXPIRY = math.inf


@dataclass(slots=True)
class EmbeddingStats:
    """Running totals, for tests and metrics."""

    requests: int = 0
    failed_requests: int = 0
    passages_embedded: int = 0
    queries_embedded: int = 0
    passage_cache_hits: int = 0  # in process or shared
    passage_cache_misses: int = 0  # in neither level: embedded
    passage_shared_hits: int = 0
    query_cache_hits: int = 0
    dropped: int = 0


# --- helpers ----------------------------------------------------------------------------------------


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def _fresh(exc: RerankerError) -> RerankerError:
    """A new exception like `exc`: one stored failure is re-raised to several waiters."""
    if isinstance(exc, ModelServerUnavailable | ModelServerBadResponse):
        return type(exc)(str(exc), status=exc.status)
    return type(exc)(str(exc))


def _consume(future: asyncio.Future[Vector]) -> None:
    # Mark a failure retrieved: the caller that wanted it may have left already.
    if not future.cancelled():
        future.exception()


_DocKey = PassageKey  # model, passage prefix, digest of the text sent
_QueryKey = tuple[str, str, str]  # model, query prefix, query
LookupListener = Callable[[int, int, int], None]  # passages found in process, found shared, missing


# --- the client -------------------------------------------------------------------------------------


class EmbeddingsClient:
    """A `scoring.ScoreClient` that scores by cosine similarity of e5-style embeddings."""

    def __init__(
        self,
        session: ModelSession,
        cfg: RerankerConfig,
        *,
        clock: Clock = time.monotonic,
        max_vectors: int = 200_000,
        batch_size: int = 4,
        max_concurrency: int = 2,
        max_queued: int = 2_000,
        request_timeout_s: float = 60.0,
        shared: SharedCache | None = None,
        on_lookup: LookupListener | None = None,
    ) -> None:
        if batch_size < 1 or max_concurrency < 1 or max_queued < 0:
            raise ValueError("batch_size and max_concurrency must be >= 1, max_queued >= 0")
        self._session = session
        self._cfg = cfg
        self._clock = clock
        self._batch_size = batch_size
        self._max_concurrency = max_concurrency
        self._max_queued = max_queued
        self._request_timeout_s = request_timeout_s
        self._headers = model_headers(cfg)
        self._vectors = PassageVectors(
            max_vectors, clock=clock, shared=shared, shared_ttl_s=cfg.cache.vector_ttl_s
        )
        self._on_lookup = on_lookup
        self._queries: TTLCache[_QueryKey, Vector] = TTLCache(_QUERY_CACHE_ENTRIES, _NO_EXPIRY, clock=clock)
        self._pending: dict[_DocKey, asyncio.Future[Vector]] = {}  # queued or being embedded
        self._queues: dict[str, deque[tuple[_DocKey, str]]] = {}  # per URL, texts without the prefix
        self._queued = 0
        self._active = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.stats = EmbeddingStats()

    @property
    def background(self) -> int:
        """Passages queued or being embedded now."""
        return len(self._pending)

    def cached_vectors(self) -> int:
        """Passage vectors held (an upper bound: see `TTLCache.__len__`)."""
        return len(self._vectors)

    async def aclose(self) -> None:
        """Cancel the background embedding and wait until it has stopped; later calls are refused."""
        self._closed = True
        for queue in self._queues.values():
            queue.clear()
        self._queued = 0
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()

    async def score(self, url: str, query: str, documents: Sequence[str], timeout_s: float) -> list[float]:
        """(cos + 1) / 2 of query and each document, in order; `RerankerTimeout` if not ready in `timeout_s`.

        Passages missing from the cache are embedded in the background, which keeps going after a timeout.
        """
        if not documents:
            return []
        if self._closed:
            raise ModelServerUnavailable("embeddings client is closed")
        if not timeout_s > 0:
            raise RerankerTimeout(f"no time left (timeout {timeout_s} s)")
        deadline = Deadline(timeout_s, self._clock)
        prefix = self._cfg.passage_prefix
        keys = [(self._cfg.model, prefix, _digest(prefix + doc)) for doc in documents]
        vectors: dict[_DocKey, Vector] = {}
        missing: dict[_DocKey, str] = {}
        for key, doc in zip(keys, documents, strict=True):
            if key in vectors or key in missing:
                continue
            cached = self._vectors.get(key)
            if cached is None:
                missing[key] = doc
            else:
                vectors[key] = cached
        shared_hits = await self._vectors.fill_from_shared(missing, vectors, deadline.remaining())
        self.stats.passage_cache_hits += len(vectors)
        self.stats.passage_cache_misses += len(missing)
        self.stats.passage_shared_hits += shared_hits
        if self._on_lookup is not None:
            self._on_lookup(len(vectors) - shared_hits, shared_hits, len(missing))
        try:
            query_vector = await self._query_vector(url, query, deadline.remaining())
        except RerankerTimeout:
            self._enqueue(url, missing)  # a slow server: still fill the cache for the next search
            raise
        futures, dropped = self._enqueue(url, missing)
        if dropped:
            raise Overloaded(f"embedding queue full ({self._max_queued}): {dropped} passages dropped")
        if futures:
            _, not_done = await asyncio.wait(futures.values(), timeout=deadline.remaining())
            if not_done:
                raise RerankerTimeout(
                    f"{len(not_done)} of {len(missing)} passages not embedded within {timeout_s:.3f}s"
                )
            for key, future in futures.items():
                if future.cancelled():
                    raise ModelServerUnavailable("embedding cancelled (client closing)")
                exc = future.exception()
                if isinstance(exc, RerankerError):
                    raise _fresh(exc) from exc
                if exc is not None:
                    raise ModelServerUnavailable(f"embedding failed: {exc!r}") from exc
                vectors[key] = future.result()
        if any(len(vector) != len(query_vector) for vector in vectors.values()):
            # The server changed models under the same configured name: cached vectors do not compare.
            raise ModelServerBadResponse(f"query and passage vectors differ in size ({len(query_vector)})")
        return [to_unit_interval(dot(query_vector, vectors[key])) for key in keys]

    async def health(self, url: str, timeout_s: float) -> bool:
        """True if `GET /health` answers 200 in time; never raises for model-server failures."""
        try:
            status, _ = await self._call("GET", url, "/health", None, timeout_s)
        except RerankerError:
            return False
        return status == 200

    async def warm(
        self,
        url: str,
        documents: Sequence[str],
        *,
        progress: Callable[[int, int], None] | None = None,
        batch: int = 16,
    ) -> int:
        """Embed every document in neither cache level (no budget, in batches of `batch`); the count embedded.

        `progress(done, total)` is called after each batch; documents already cached or being embedded
        by the background are not counted in `total`.
        """
        prefix = self._cfg.passage_prefix
        todo: dict[_DocKey, str] = {}
        for doc in documents:
            key = (self._cfg.model, prefix, _digest(prefix + doc))
            if key not in todo and key not in self._pending and self._vectors.get(key) is None:
                todo[key] = doc
        items = list(todo.items())
        done = embedded = 0
        for start in range(0, len(items), max(1, batch)):
            chunk = dict(items[start : start + max(1, batch)])
            done += len(chunk)
            # Another replica (or an import there) may have embedded some already.
            await self._vectors.fill_from_shared(chunk, {}, _WARM_LOOKUP_S)
            texts = [prefix + text for text in chunk.values()]
            fresh = list(zip(chunk, await self._embed(url, texts, "passage") if texts else [], strict=True))
            for key, vector in fresh:
                self._vectors.put(key, vector)
            # Waited for: once warming answers, every replica finds these vectors.
            await self._vectors.share_now(fresh)
            self.stats.passages_embedded += len(fresh)
            embedded += len(fresh)
            if progress is not None:
                progress(done, len(items))
        return embedded

    # --- export and import (tools.vectors_io) --------------------------------------------------------

    def text_hash(self, text: str) -> str:
        """The hex key a passage's vector is cached under: blake2b-128 of the prefix and `text`."""
        return _digest(self._cfg.passage_prefix + text).hex()

    def cached_vector(self, text_hash: str) -> Vector | None:
        """The cached vector of the passage whose `text_hash` this is, or None."""
        return self._vectors.get((self._cfg.model, self._cfg.passage_prefix, bytes.fromhex(text_hash)))

    def import_vector(self, text_hash: str, values: Sequence[float]) -> None:
        """Cache a vector made elsewhere (by this model, for this text hash); it is normalised here."""
        key = (self._cfg.model, self._cfg.passage_prefix, bytes.fromhex(text_hash))
        self._vectors.imported(key, unit(values))

    async def share_imported(self) -> int:
        """Write the vectors imported since the last call to the shared cache, and wait; how many were."""
        return await self._vectors.share_imported()

    # --- queries ------------------------------------------------------------------------------------

    async def _query_vector(self, url: str, query: str, timeout_s: float) -> Vector:
        key = (self._cfg.model, self._cfg.query_prefix, query)
        cached = self._queries.get(key)
        if cached is not None:
            self.stats.query_cache_hits += 1
            return cached
        (vector,) = await self._embed(url, [self._cfg.query_prefix + query], "query", timeout_s)
        self.stats.queries_embedded += 1
        self._queries.put(key, vector)
        return vector

    # --- background passages ------------------------------------------------------------------------

    def _enqueue(
        self, url: str, missing: dict[_DocKey, str]
    ) -> tuple[dict[_DocKey, asyncio.Future[Vector]], int]:
        """Futures for `missing` (joining work under way), and how many did not fit in the queue."""
        futures: dict[_DocKey, asyncio.Future[Vector]] = {}
        dropped = 0
        loop = asyncio.get_running_loop()
        # The limit counts what waits: batches about to start on free slots do not.
        capacity = self._max_queued + (self._max_concurrency - self._active) * self._batch_size
        for key, text in missing.items():
            future = self._pending.get(key)
            if future is None:
                if self._closed or self._queued >= capacity:
                    dropped += 1
                    continue
                future = loop.create_future()
                future.add_done_callback(_consume)
                self._pending[key] = future
                self._queues.setdefault(url, deque()).append((key, text))
                self._queued += 1
            futures[key] = future
        self.stats.dropped += dropped
        self._pump()
        return futures, dropped

    def _pump(self) -> None:
        """Start batches while there is queued work and a free slot, taking URLs in turn."""
        while not self._closed and self._queued and self._active < self._max_concurrency:
            url = next(u for u, q in self._queues.items() if q)
            queue = self._queues.pop(url)
            batch = [queue.popleft() for _ in range(min(self._batch_size, len(queue)))]
            if queue:
                self._queues[url] = queue  # to the back: the next batch serves another URL first
            self._queued -= len(batch)
            self._active += 1
            task = asyncio.get_running_loop().create_task(self._embed_batch(url, batch))
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._batch_done, batch))

    async def _embed_batch(self, url: str, batch: list[tuple[_DocKey, str]]) -> None:
        prefix = self._cfg.passage_prefix
        try:
            found = await self._embed(url, [prefix + text for _, text in batch], "passage")
        except RerankerError as exc:
            for key, _ in batch:
                future = self._pending.pop(key, None)
                if future is not None and not future.done():
                    future.set_exception(exc)
            return
        self.stats.passages_embedded += len(batch)
        fresh = [(key, vector) for (key, _), vector in zip(batch, found, strict=True)]
        for key, vector in fresh:
            self._vectors.put(key, vector)
            future = self._pending.pop(key, None)
            if future is not None and not future.done():
                future.set_result(vector)
        self._vectors.share(fresh)

    def _batch_done(self, batch: list[tuple[_DocKey, str]], task: asyncio.Task[None]) -> None:
        # Runs however the task ended, even if it was cancelled before it started.
        self._tasks.discard(task)
        self._active -= 1
        for key, _ in batch:
            future = self._pending.pop(key, None)
            if future is not None and not future.done():
                future.cancel()
        if not task.cancelled() and task.exception() is not None:
            logger.error("embedding batch failed unexpectedly", exc_info=task.exception())
        self._pump()

    # --- HTTP ---------------------------------------------------------------------------------------

    async def _embed(
        self, url: str, texts: list[str], input_type: InputType, timeout_s: float | None = None
    ) -> list[Vector]:
        payload: EmbeddingsRequest = {
            "model": self._cfg.model,
            "input": texts,
            "input_type": input_type,
            "encoding_format": "float",
        }
        self.stats.requests += 1
        try:
            status, body = await self._call(
                "POST",
                url,
                "/v1/embeddings",
                orjson.dumps(payload),
                self._request_timeout_s if timeout_s is None else timeout_s,
            )
            raise_for_status(status, body)
            try:
                return [unit(v) for v in parse_embeddings(body, len(texts))]
            except RerankerBadResponse as exc:
                raise ModelServerBadResponse(f"HTTP {status}: {exc}", status=status) from exc
        except RerankerError:
            self.stats.failed_requests += 1
            raise

    async def _call(
        self, method: str, url: str, path: str, data: bytes | None, timeout_s: float
    ) -> tuple[int, bytes]:
        return await call_model_server(self._session, method, url, path, data, self._headers, timeout_s)
