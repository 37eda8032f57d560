"""The model caches' second level: Redis, shared by every replica; an optimisation, never a dependency.

It holds model scores and, for `api: embeddings`, passage vectors. One `MGET` per lookup for what the
in-process cache lacks, bounded by `redis_timeout_ms`; new values go back in a pipelined `SET ... PX` that
nobody waits for, with a cap on writes in flight. A breaker stops asking a failing Redis, and every failure
is counted by kind instead of raised: the caller goes on to the model.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import struct
import sys
import time
from array import array
from collections.abc import Callable, Sequence
from typing import TypedDict, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeout

from ..config import BreakerConfig, CacheConfig, redact_url
from .resilience import CircuitBreaker, Clock
from .vectors import Vector

logger = logging.getLogger(__name__)

ErrorListener = Callable[[str, int], None]  # kind, count
T = TypeVar("T")

_SCORE = struct.Struct("<d")  # 8 bytes, exact: a cached score reads back bit for bit
# Vectors are stored L2-normalised; a value farther than this from length 1 was not written by a proxy.
_UNIT_TOLERANCE = 1e-3
_KEY_DIGEST_BYTES = 16
# Writes are off the search's path, so they may take longer than a read; still bounded, so a hanging Redis
# holds at most `max_pending_writes` tasks for this long.
_WRITE_TIMEOUT_FACTOR = 20
_MIN_WRITE_TIMEOUT_S = 0.05
# Bulk vector writes (warming, imports) go in pipelines of this many (~400 KB of e5-small vectors), each
# allowed this long: nobody waits on them but the admin who asked.
_BULK_ITEMS = 256
_BULK_WRITE_TIMEOUT_S = 5.0
# A backstop under the asyncio bound: a connection attempt to a black hole gives up on its own.
_SOCKET_TIMEOUT_S = 1.0


def shared_key(prefix: str, model_key: str, query: str, doc_id: str, digest: bytes) -> bytes:
    """`prefix` + 32 hex digits of the whole local cache key; parts are length-framed so none can blur."""
    h = hashlib.blake2b(digest_size=_KEY_DIGEST_BYTES)
    for part in (model_key.encode("utf-8"), query.encode("utf-8"), doc_id.encode("utf-8"), digest):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return prefix.encode("utf-8") + h.hexdigest().encode("ascii")


def vector_key(prefix: str, model: str, passage_prefix: str, digest: bytes) -> bytes:
    """`prefix` + `v:` + 32 hex digits of the passage-vector cache key (model, passage prefix, text hash);
    the `v:` keeps vectors apart from scores, whose keys are hex digits alone."""
    h = hashlib.blake2b(digest_size=_KEY_DIGEST_BYTES)
    for part in (model.encode("utf-8"), passage_prefix.encode("utf-8"), digest):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return prefix.encode("utf-8") + b"v:" + h.hexdigest().encode("ascii")


def encode_score(value: float) -> bytes:
    """A score as Redis stores it: 8 bytes, little-endian double."""
    return _SCORE.pack(value)


def decode_score(raw: object) -> float | None:
    """The score in a Redis value, or None for anything that is not one (wrong size, type, NaN, inf)."""
    if not isinstance(raw, bytes) or len(raw) != _SCORE.size:
        return None
    (value,) = _SCORE.unpack(raw)
    return value if math.isfinite(value) else None


def encode_vector(vector: Vector) -> bytes:
    """A passage vector as Redis stores it: its float32 values, little-endian (1.5 KB for 384 dimensions)."""
    if sys.byteorder == "big":  # pragma: no cover - the platforms we run on are little-endian
        vector = array("f", vector)
        vector.byteswap()
    return vector.tobytes()


def decode_vector(raw: object) -> Vector | None:
    """The unit vector in a Redis value, or None for anything a proxy did not write (size, NaN, length)."""
    if not isinstance(raw, bytes) or not raw or len(raw) % 4:
        return None
    vector = array("f")
    vector.frombytes(raw)
    if sys.byteorder == "big":  # pragma: no cover
        vector.byteswap()
    norm = math.fsum(v * v for v in vector)
    return vector if math.isfinite(norm) and abs(norm - 1.0) <= _UNIT_TOLERANCE else None


def error_kind(exc: BaseException) -> str:
    """A bounded label for what went wrong talking to Redis."""
    if isinstance(exc, TimeoutError | RedisTimeout):
        return "timeout"
    if isinstance(exc, RedisConnectionError | OSError):
        return "connection"
    if isinstance(exc, OutOfMemoryError):
        return "oom"
    if isinstance(exc, ResponseError):
        # A pipeline wraps the server's error: "Command # 1 (SET ...) of pipeline caused error: OOM ...".
        message = str(exc).rpartition("caused error: ")[2]
        if message.startswith("OOM"):
            return "oom"
        if message.startswith("WRONGTYPE"):
            return "wrong_type"
        return "response"
    if isinstance(exc, RedisError):
        return "redis"
    return "proxy_error"


class SharedCacheState(TypedDict):
    """What `/_rerank/ready` shows of the shared level."""

    backend: str
    url: str
    breaker: str
    last_error: str | None
    errors: dict[str, int]
    pending_writes: int


def connect(cfg: CacheConfig) -> aioredis.Redis:
    """A Redis client for `cfg.redis_url` (a password in the URL wins over `redis_password`); no I/O yet."""
    return aioredis.Redis.from_url(
        cfg.redis_url,
        password=cfg.redis_password or None,
        socket_timeout=_SOCKET_TIMEOUT_S,
        socket_connect_timeout=_SOCKET_TIMEOUT_S,
        max_connections=64,
    )


class SharedCache:
    """Scores (under `shared_key`) and passage vectors (under `vector_key`) in Redis; reads bounded by
    `redis_timeout_ms`, writes fire and forget."""

    def __init__(
        self,
        client: aioredis.Redis,
        cfg: CacheConfig,
        breaker: BreakerConfig,
        *,
        clock: Clock = time.monotonic,
        on_error: ErrorListener | None = None,
    ) -> None:
        self._client = client
        self._url = redact_url(cfg.redis_url)
        self.prefix = cfg.key_prefix
        self._timeout_s = cfg.redis_timeout_ms / 1000
        self._write_timeout_s = max(_MIN_WRITE_TIMEOUT_S, self._timeout_s * _WRITE_TIMEOUT_FACTOR)
        self._max_pending = cfg.max_pending_writes
        # Failures in a row: on a busy machine a few of thousands of lookups miss a 5 ms timeout, and
        # counting those in a window shut the shared level for open_s at a time (bench_replicas.py).
        self._breaker = CircuitBreaker(
            breaker, name="redis", clock=clock, on_change=_log_breaker, consecutive=True
        )
        self._on_error = on_error
        self._writes: set[asyncio.Task[bool]] = set()
        self._closed = False
        self.errors: dict[str, int] = {}
        self.last_error: str | None = None

    @property
    def breaker_state(self) -> str:
        return self._breaker.state

    def state(self) -> SharedCacheState:
        """Backend, breaker, errors by kind and the last one, writes in flight."""
        return SharedCacheState(
            backend="redis",
            url=self._url,
            breaker=self._breaker.state,
            last_error=self.last_error,
            errors=dict(self.errors),
            pending_writes=len(self._writes),
        )

    async def open_connection(self) -> None:
        """Open a first connection now (a PING), so the first search does not pay for it in its timeout."""
        try:
            await asyncio.wait_for(self._client.ping(), timeout=_SOCKET_TIMEOUT_S)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # counted: Redis may come up later, and searches go on without it
            self._failed(error_kind(exc), exc)

    async def get_many(self, keys: Sequence[bytes], budget_s: float) -> list[float | None]:
        """One MGET for `keys`; None where Redis has no score, or for all when Redis fails or is late."""
        return await self._get(keys, budget_s, decode_score, "scores")

    async def get_vectors(self, keys: Sequence[bytes], budget_s: float) -> list[Vector | None]:
        """One MGET for `keys` (from `vector_key`); None where Redis has no vector, or for all if it fails."""
        return await self._get(keys, budget_s, decode_vector, "vectors")

    def put_many(self, items: Sequence[tuple[bytes, float]], ttl_s: float) -> None:
        """Write scores back without waiting; dropped (and counted) past `max_pending_writes`."""
        self._put([(key, encode_score(value)) for key, value in items], ttl_s)

    def put_vectors(self, items: Sequence[tuple[bytes, Vector]], ttl_s: float) -> None:
        """Write passage vectors without waiting; dropped (and counted) past `max_pending_writes`."""
        self._put([(key, encode_vector(vector)) for key, vector in items], ttl_s)

    async def write_vectors(self, items: Sequence[tuple[bytes, Vector]], ttl_s: float) -> int:
        """Write passage vectors and wait (warming and imports, which have no search waiting on them):
        pipelines of `_BULK_ITEMS`, so a whole corpus passes without tripping the cap on pending writes.
        How many were written; failures are counted like any other."""
        written = 0
        for start in range(0, len(items), _BULK_ITEMS):
            if self._closed or not self._breaker.allow():
                break
            chunk = items[start : start + _BULK_ITEMS]
            encoded = [(key, encode_vector(vector)) for key, vector in chunk]
            try:
                ok = await self._write(encoded, max(1, int(ttl_s * 1000)), _BULK_WRITE_TIMEOUT_S)
            except asyncio.CancelledError:
                self._breaker.release()
                raise
            if not ok:
                break
            self._breaker.record_success()
            written += len(chunk)
        return written

    def count_garbage(self, count: int, detail: str) -> None:
        """Count values the caller found unusable (a data problem, not Redis's health: the breaker is
        untouched)."""
        self._count("garbage", count, detail)

    async def _get(
        self, keys: Sequence[bytes], budget_s: float, decode: Callable[[object], T | None], what: str
    ) -> list[T | None]:
        found: list[T | None] = [None] * len(keys)
        wait_s = min(self._timeout_s, budget_s)
        if not keys or self._closed or wait_s <= 0 or not self._breaker.allow():
            return found
        try:
            raw = await asyncio.wait_for(self._client.mget(list(keys)), timeout=wait_s)
        except asyncio.CancelledError:
            self._breaker.release()
            raise
        except Exception as exc:  # every failure of an optional cache is counted, not raised
            self._failed(error_kind(exc), exc)
            return found
        if not isinstance(raw, list) or len(raw) != len(keys):
            self._failed("garbage", None)
            return found
        self._breaker.record_success()
        garbage = 0
        for i, item in enumerate(raw):
            if item is None:
                continue
            found[i] = decode(item)
            garbage += found[i] is None
        if garbage:
            # Bad values are a data problem (someone else's key, an old format), not Redis's health.
            self._count("garbage", garbage, f"{garbage} value(s) that are not {what}")
        return found

    def _put(self, items: list[tuple[bytes, bytes]], ttl_s: float) -> None:
        if not items or ttl_s <= 0 or self._closed or self._breaker.state == "open":
            return
        if len(self._writes) >= self._max_pending:
            self._count("write_dropped", 1, "too many writes in flight")
            return
        task = asyncio.ensure_future(self._write(items, max(1, int(ttl_s * 1000))))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(
        self, items: list[tuple[bytes, bytes]], ttl_ms: int, timeout_s: float | None = None
    ) -> bool:
        pipe = self._client.pipeline(transaction=False)
        for key, value in items:
            pipe.set(key, value, px=ttl_ms)
        try:
            await asyncio.wait_for(pipe.execute(), timeout=timeout_s or self._write_timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # counted; a lost write costs a model call later, no more
            self._failed(error_kind(exc), exc)
            return False
        return True

    async def aclose(self) -> None:
        """Stop the writes in flight and close the client's connections."""
        self._closed = True
        tasks = list(self._writes)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._client.aclose()

    def _failed(self, kind: str, exc: BaseException | None) -> None:
        self._breaker.record_failure()
        detail = f"{type(exc).__name__}: {exc}" if exc is not None else "an answer of the wrong shape"
        self._count(kind, 1, detail)

    def _count(self, kind: str, count: int, detail: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + count
        self.last_error = f"{kind}: {detail}"[:300]
        if self._on_error is not None:
            self._on_error(kind, count)


def _log_breaker(name: str, old: str, new: str) -> None:
    level = logging.WARNING if new == "open" else logging.INFO
    logger.log(level, "shared cache circuit breaker (%s): %s -> %s", name, old, new)
