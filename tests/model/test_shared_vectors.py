"""Passage vectors (api: embeddings) through both cache levels: what one replica embedded, warmed or
imported, another finds in Redis instead of embedding it again; and a Redis fault costs it nothing more."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
import redis

from es_rerank_proxy.config import BreakerConfig, CacheConfig, RerankerConfig
from es_rerank_proxy.model.embeddings import EmbeddingsClient
from es_rerank_proxy.model.shared_cache import (
    SharedCache,
    connect,
    decode_vector,
    encode_vector,
    vector_key,
)
from es_rerank_proxy.model.vectors import unit

from ..fakes.fake_embeddings import FakeEmbeddings, start_fake
from ..fakes.redis_server import RedisServer, hanging_redis

BUDGET_S = 30.0  # a budget no load reaches: only Redis's own timeout can bound these calls
PASSAGES = [f"passage number {i} about vaccines and the immune system" for i in range(6)]
BREAKER = BreakerConfig(failures=3, window_s=60, open_s=60)


@pytest.fixture
async def embeddings() -> AsyncIterator[FakeEmbeddings]:
    async with start_fake() as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


Replica = Callable[..., EmbeddingsClient]


@pytest.fixture
async def replica(embeddings: FakeEmbeddings, session: aiohttp.ClientSession) -> AsyncIterator[Replica]:
    """`replica(redis_url)`: an embeddings client with a shared cache of its own, as a proxy process has."""
    made: list[tuple[EmbeddingsClient, SharedCache]] = []

    def make(
        redis_url: str, errors: list[tuple[str, int]] | None = None, **cache: object
    ) -> EmbeddingsClient:
        # A lookup timeout no load reaches (the 5 ms default includes connecting on a busy machine):
        # the tests that want a timeout pass their own.
        cache.setdefault("redis_timeout_ms", 2000)
        cache_cfg = CacheConfig(backend="redis", redis_url=redis_url, **cache)  # type: ignore[arg-type]
        cfg = RerankerConfig(url=(embeddings.url,), api="embeddings", model="e5-test", cache=cache_cfg)
        listener = (lambda kind, n: errors.append((kind, n))) if errors is not None else None
        shared = SharedCache(connect(cache_cfg), cache_cfg, BREAKER, on_error=listener)
        client = EmbeddingsClient(session, cfg, shared=shared)
        made.append((client, shared))
        return client

    yield make
    for client, shared in made:
        await client.aclose()
        await shared.aclose()


def _passage_requests(fake: FakeEmbeddings) -> int:
    return sum(len(body["input"]) for body in fake.requests if body.get("input_type") == "passage")


async def _until(condition: Callable[[], bool], limit_s: float = 10.0) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "not settled in time"
        await asyncio.sleep(0.005)


def _vector_keys(server: RedisServer) -> list[bytes]:
    return sorted(server.client().keys("errp:v:*"))


async def test_passages_embedded_by_one_replica_are_not_embedded_by_another(
    redis_server: RedisServer, replica: Replica, embeddings: FakeEmbeddings
) -> None:
    first, second = replica(redis_server.url), replica(redis_server.url)
    scores = await first.score(embeddings.url, "vaccines", PASSAGES, BUDGET_S)
    assert _passage_requests(embeddings) == len(PASSAGES)
    await _until(lambda: len(_vector_keys(redis_server)) == len(PASSAGES))  # written back, unawaited
    again = await second.score(embeddings.url, "vaccines", PASSAGES, BUDGET_S)
    assert again == scores
    assert _passage_requests(embeddings) == len(PASSAGES), "the second replica embedded no passage"
    assert (second.stats.passage_shared_hits, second.stats.passage_cache_misses) == (len(PASSAGES), 0)
    third = await second.score(embeddings.url, "immune system", PASSAGES, BUDGET_S)
    assert len(third) == len(PASSAGES)
    assert second.stats.passage_shared_hits == len(PASSAGES), "now in its own cache: no second lookup"


async def test_a_corpus_warmed_by_one_replica_is_warm_for_another(
    redis_server: RedisServer, replica: Replica, embeddings: FakeEmbeddings
) -> None:
    first, second = replica(redis_server.url), replica(redis_server.url)
    assert await first.warm(embeddings.url, PASSAGES, batch=4) == len(PASSAGES)
    # Warming waits for its writes: no polling needed before the other replica looks.
    assert len(_vector_keys(redis_server)) == len(PASSAGES)
    assert await second.warm(embeddings.url, PASSAGES) == 0, "nothing left to embed"
    await second.score(embeddings.url, "vaccines", PASSAGES, BUDGET_S)
    assert _passage_requests(embeddings) == len(PASSAGES)
    ttl = redis_server.client().pttl(_vector_keys(redis_server)[0]) / 1000
    assert 29 * 86400 < ttl <= 30 * 86400, "vectors live for cache.vector_ttl_s, not a score's ttl_s"


async def test_imported_vectors_are_shared_once_the_import_says_so(
    redis_server: RedisServer, replica: Replica, embeddings: FakeEmbeddings
) -> None:
    first, second = replica(redis_server.url), replica(redis_server.url)
    for text in PASSAGES:
        first.import_vector(first.text_hash(text), embeddings.vector("passage: " + text))
    assert _vector_keys(redis_server) == [], "queued until the import batch ends"
    assert await first.share_imported() == len(PASSAGES)
    await second.score(embeddings.url, "vaccines", PASSAGES, BUDGET_S)
    assert _passage_requests(embeddings) == 0
    assert second.stats.passage_shared_hits == len(PASSAGES)


@pytest.mark.parametrize(
    ("plant", "garbage"),
    [
        (lambda c, key: c.rpush(key, b"x"), 0),  # another type: MGET reads it as no value
        (lambda c, key: c.set(key, b"\x00\x00\x80?" * 3), 1),  # floats, but not of length 1
        (lambda c, key: c.set(key, b"not a vector"), 1),
    ],
    ids=["list", "not-unit", "bytes"],
)
async def test_wrong_values_are_misses_embedded_again_and_overwritten(
    redis_server: RedisServer,
    replica: Replica,
    embeddings: FakeEmbeddings,
    plant: Callable[[redis.Redis, bytes], object],
    garbage: int,
) -> None:
    errors: list[tuple[str, int]] = []
    client = replica(redis_server.url, errors)
    key = vector_key("errp:", "e5-test", "passage: ", bytes.fromhex(client.text_hash(PASSAGES[0])))
    plant(redis_server.client(), key)
    scores = await client.score(embeddings.url, "vaccines", PASSAGES[:1], BUDGET_S)
    assert len(scores) == 1 and _passage_requests(embeddings) == 1
    assert errors == ([("garbage", 1)] if garbage else [])
    direct = redis_server.client()
    expected = unit(embeddings.vector("passage: " + PASSAGES[0]))
    await _until(lambda: direct.type(key) == b"string" and decode_vector(direct.get(key)) == expected)


async def test_a_shared_vector_of_another_size_is_a_miss_not_a_failed_search(
    redis_server: RedisServer, replica: Replica, embeddings: FakeEmbeddings
) -> None:
    errors: list[tuple[str, int]] = []
    client = replica(redis_server.url, errors)
    await client.score(embeddings.url, "vaccines", PASSAGES[:1], BUDGET_S)  # this replica knows the size
    # A unit vector, but of 4 dimensions where the model gives 8: another model under the same name.
    key = vector_key("errp:", "e5-test", "passage: ", bytes.fromhex(client.text_hash(PASSAGES[1])))
    redis_server.client().set(key, encode_vector(unit([0.5, 0.5, 0.5, 0.5])))
    scores = await client.score(embeddings.url, "vaccines", PASSAGES[:2], BUDGET_S)
    assert len(scores) == 2 and _passage_requests(embeddings) == 2, "embedded again, not used"
    assert ("garbage", 1) in errors
    expected = unit(embeddings.vector("passage: " + PASSAGES[1]))
    direct = redis_server.client()
    await _until(lambda: decode_vector(direct.get(key)) == expected)


async def test_a_hanging_redis_costs_a_lookup_its_timeout_and_the_passages_are_embedded(
    replica: Replica, embeddings: FakeEmbeddings
) -> None:
    async with hanging_redis() as hanging:
        errors: list[tuple[str, int]] = []
        client = replica(hanging.url, errors, redis_timeout_ms=200)
        started = time.monotonic()
        scores = await client.score(embeddings.url, "vaccines", PASSAGES, BUDGET_S)
        # The lookup gives up after 200 ms; the fake embeds at once: generous slack for a loaded machine.
        assert time.monotonic() - started < 0.2 + 2.0
        assert len(scores) == len(PASSAGES) and _passage_requests(embeddings) == len(PASSAGES)
        assert ("timeout", 1) in errors
