"""The Redis level of the model caches: pure key and value rules, then a real redis-server and its faults."""

from __future__ import annotations

import asyncio
import math
import struct
import time
from collections.abc import AsyncIterator, Callable, Sequence

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeout

from es_rerank_proxy.config import BreakerConfig, CacheConfig, RerankerConfig
from es_rerank_proxy.model.scoring import ScoreDoc, Scorer
from es_rerank_proxy.model.shared_cache import (
    SharedCache,
    connect,
    decode_score,
    decode_vector,
    encode_score,
    encode_vector,
    error_kind,
    shared_key,
    vector_key,
)
from es_rerank_proxy.model.vectors import unit

from ..fakes.redis_server import RedisServer, hanging_redis

DIGEST = bytes(16)
BASE = ("model", "query", "idx/1", DIGEST)
BUDGET_S = 30.0  # a budget no load reaches: only Redis's own timeout can bound these searches


# --- pure: keys and values ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "parts",
    [
        ("model2", "query", "idx/1", DIGEST),
        ("model", "query ", "idx/1", DIGEST),
        ("model", "query", "idx/2", DIGEST),
        ("model", "query", "idx/1", bytes([1]) + bytes(15)),
        ("modelq", "uery", "idx/1", DIGEST),  # the same characters, framed differently
        ("model", "", "queryidx/1", DIGEST),
    ],
)
def test_every_part_of_the_cache_key_changes_the_shared_key(parts: tuple[str, str, str, bytes]) -> None:
    assert shared_key("errp:", *parts) != shared_key("errp:", *BASE)


@pytest.mark.parametrize("prefix", ["errp:", "", "staging:errp:", "图书馆:"])
@pytest.mark.parametrize("query", ["", "x", "长" * 5000])
def test_shared_key_is_the_prefix_and_32_hex_digits(prefix: str, query: str) -> None:
    key = shared_key(prefix, "model", query, "idx/1", DIGEST)
    assert key.startswith(prefix.encode())
    tail = key[len(prefix.encode()) :]
    assert len(tail) == 32 and all(c in b"0123456789abcdef" for c in tail)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_a_score_reads_back_exactly(value: float) -> None:
    encoded = encode_score(value)
    assert len(encoded) == 8 and decode_score(encoded) == value


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"0.5",
        b"\x00" * 7,
        b"\x00" * 9,
        struct.pack("<d", math.nan),
        struct.pack("<d", math.inf),
        "a string",
        12,
        [b"\x00" * 8],
        None,
    ],
)
def test_anything_but_a_score_decodes_to_none(raw: object) -> None:
    assert decode_score(raw) is None


@pytest.mark.parametrize(
    "parts",
    [
        ("e5-large", "passage: ", DIGEST),
        ("e5-small", "", DIGEST),
        ("e5-small", "passage: ", bytes([1]) + bytes(15)),
        ("e5-smallpassage: ", "", DIGEST),  # the same characters, framed differently
    ],
)
def test_every_part_of_the_vector_key_changes_it(parts: tuple[str, str, bytes]) -> None:
    assert vector_key("errp:", *parts) != vector_key("errp:", "e5-small", "passage: ", DIGEST)


def test_vector_keys_are_apart_from_score_keys_and_of_one_length() -> None:
    key = vector_key("errp:", "e5-small", "passage: ", DIGEST)
    assert key.startswith(b"errp:v:") and len(key) == len(b"errp:v:") + 32
    assert len(shared_key("errp:", "e5-small", "passage: ", "", DIGEST)) == len(b"errp:") + 32


@given(st.lists(st.integers(-1000, 1000), min_size=1, max_size=512).filter(any))
def test_a_unit_vector_reads_back_exactly_in_four_bytes_a_dimension(values: list[int]) -> None:
    vector = unit([v / 100 for v in values])
    encoded = encode_vector(vector)
    assert len(encoded) == 4 * len(values) and decode_vector(encoded) == vector


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\x00\x80",  # not whole float32s
        encode_vector(unit([0.6, 0.8]))[:-1],
        struct.pack("<2f", 3.0, 4.0),  # not of length 1: no proxy wrote it
        struct.pack("<2f", 0.0, 0.0),
        struct.pack("<2f", math.nan, 1.0),
        encode_score(1.0),  # a score where a vector belongs
        "a string",
        None,
    ],
)
def test_anything_but_a_unit_vector_decodes_to_none(raw: object) -> None:
    assert decode_vector(raw) is None


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (asyncio.TimeoutError(), "timeout"),
        (RedisTimeout("read"), "timeout"),
        (RedisConnectionError("refused"), "connection"),
        (ConnectionResetError(), "connection"),
        (ResponseError("OOM command not allowed when used memory > 'maxmemory'."), "oom"),
        (ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), "wrong_type"),
        (ResponseError("Command # 1 (SET k v) of pipeline caused error: OOM command not allowed"), "oom"),
        (OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), "oom"),
        (ResponseError("ERR unknown command"), "response"),
        (ValueError("a bug"), "proxy_error"),
    ],
)
def test_every_failure_gets_a_bounded_kind(exc: BaseException, kind: str) -> None:
    assert error_kind(exc) == kind


# --- a real Redis ---------------------------------------------------------------------------------------


class CountingModel:
    """The model client: counts calls and the documents it was sent."""

    def __init__(self) -> None:
        self.calls = 0
        self.documents = 0

    async def score(self, url: str, query: str, documents: Sequence[str], timeout_s: float) -> list[float]:
        self.calls += 1
        self.documents += len(documents)
        return [(sum(map(ord, text)) % 997) / 997 for text in documents]


def _cache_config(url: str, **overrides: object) -> CacheConfig:
    values: dict[str, object] = {"backend": "redis", "redis_url": url, "redis_timeout_ms": 50}
    values.update(overrides)
    return CacheConfig(**values)  # type: ignore[arg-type]


MakeShared = Callable[..., SharedCache]
BREAKER = BreakerConfig(failures=3, window_s=60, open_s=60)


@pytest.fixture
async def shared_for() -> AsyncIterator[MakeShared]:
    made: list[SharedCache] = []

    def make(url: str, errors: list[tuple[str, int]] | None = None, **overrides: object) -> SharedCache:
        cfg = _cache_config(url, **overrides)
        listener = (lambda kind, n: errors.append((kind, n))) if errors is not None else None
        shared = SharedCache(connect(cfg), cfg, BREAKER, on_error=listener)
        made.append(shared)
        return shared

    yield make
    for shared in made:
        await shared.aclose()


def _scorer(model: CountingModel, shared: SharedCache) -> Scorer:
    cfg = RerankerConfig(url=("http://model:8000",), timeout_ms=30_000)
    return Scorer(model, cfg, model_key="m", shared=shared)


DOCS = [ScoreDoc(doc_id=f"idx/{i}", text=f"document number {i}") for i in range(5)]


async def _settled(shared: SharedCache) -> None:
    deadline = time.monotonic() + 10
    while shared.state()["pending_writes"]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.005)


async def test_a_second_replica_finds_the_scores_of_the_first(
    redis_server: RedisServer, shared_for: MakeShared
) -> None:
    first_model, second_model = CountingModel(), CountingModel()
    first_shared = shared_for(redis_server.url)
    first = _scorer(first_model, first_shared)
    errors: list[tuple[str, int]] = []
    second_shared = shared_for(redis_server.url, errors)
    second = _scorer(second_model, second_shared)
    scored = await first.score("q", DOCS, BUDGET_S)
    await _settled(first_shared)
    again = await second.score("q", DOCS, BUDGET_S)
    assert errors == [], second_shared.last_error
    assert (first_model.calls, second_model.calls) == (1, 0)
    assert again.scores == scored.scores
    assert (again.cache_hits, again.shared_hits, again.cache_misses) == (5, 5, 0)
    # Now in the second replica's own cache: no second trip to Redis is needed.
    redis_server.kill()
    local = await second.score("q", DOCS, BUDGET_S)
    assert (local.cache_hits, local.shared_hits, second_model.calls) == (5, 0, 0)


async def test_only_what_both_levels_lack_goes_to_the_model(
    redis_server: RedisServer, shared_for: MakeShared
) -> None:
    first, second = CountingModel(), CountingModel()
    writer_shared = shared_for(redis_server.url)
    writer = _scorer(first, writer_shared)
    await writer.score("q", DOCS[:3], BUDGET_S)
    await _settled(writer_shared)
    reader = _scorer(second, shared_for(redis_server.url))
    outcome = await reader.score("q", DOCS, BUDGET_S)
    assert (second.calls, second.documents) == (1, 2)
    assert (outcome.shared_hits, outcome.cache_misses) == (3, 2)


async def test_scores_expire_in_redis_with_the_cache_ttl(
    redis_server: RedisServer, shared_for: MakeShared
) -> None:
    shared = shared_for(redis_server.url, key_prefix="ttl:")
    cfg = RerankerConfig(url=("http://model:8000",), timeout_ms=30_000, cache=CacheConfig(ttl_s=120))
    await Scorer(CountingModel(), cfg, model_key="m", shared=shared).score("q", DOCS[:1], BUDGET_S)
    await _settled(shared)
    client = redis_server.client()
    (key,) = client.keys("ttl:*")
    assert 100 < client.pttl(key) / 1000 <= 120 and len(client.get(key)) == 8


@pytest.mark.parametrize(
    ("plant", "kind"),
    [
        (lambda c, key: c.rpush(key, b"0.5"), None),  # MGET reads a list as "no value": a plain miss
        (lambda c, key: c.set(key, b"not a score"), "garbage"),
        (lambda c, key: c.set(key, struct.pack("<d", math.nan)), "garbage"),
    ],
    ids=["list", "garbage_bytes", "nan"],
)
async def test_wrong_values_in_redis_are_misses_and_overwritten(
    redis_server: RedisServer,
    shared_for: MakeShared,
    plant: Callable[[redis.Redis, bytes], object],
    kind: str | None,
) -> None:
    errors: list[tuple[str, int]] = []
    shared = shared_for(redis_server.url, errors)
    client = redis_server.client()
    key = shared_key(
        "errp:",
        "m",
        "q",
        DOCS[0].doc_id,
        __import__("hashlib").blake2b(DOCS[0].text.encode(), digest_size=16).digest(),
    )
    plant(client, key)
    model = CountingModel()
    outcome = await _scorer(model, shared).score("q", DOCS[:1], BUDGET_S)
    assert outcome.scores is not None and model.calls == 1 and outcome.shared_hits == 0
    assert errors == ([(kind, 1)] if kind else [])
    await _settled(shared)
    assert decode_score(client.get(key)) == outcome.scores[0], "the write-back replaced the bad value"


async def test_a_hanging_redis_costs_at_most_its_timeout_then_the_breaker_stops_asking(
    shared_for: MakeShared,
) -> None:
    async with hanging_redis() as hanging:
        errors: list[tuple[str, int]] = []
        shared = shared_for(hanging.url, errors, redis_timeout_ms=200)
        model = CountingModel()
        scorer = _scorer(model, shared)
        for n in range(BREAKER.failures):
            started = time.monotonic()
            outcome = await scorer.score(f"q{n}", DOCS, BUDGET_S)
            # Bounded by redis_timeout_ms (200 ms) plus scheduling; the model itself answers at once.
            assert time.monotonic() - started < 0.2 + 2.0
            assert outcome.scores is not None and outcome.shared_hits == 0
        assert model.calls == BREAKER.failures
        assert ("timeout", 1) in errors and shared.breaker_state == "open"
        asked = hanging.connections
        outcome = await scorer.score("q-after", DOCS, BUDGET_S)
        assert outcome.scores is not None and hanging.connections == asked
        assert shared.state()["last_error"] is not None


async def test_writes_past_the_cap_are_dropped_and_counted(shared_for: MakeShared) -> None:
    async with hanging_redis() as hanging:
        errors: list[tuple[str, int]] = []
        shared = shared_for(hanging.url, errors, redis_timeout_ms=1000, max_pending_writes=2)
        for n in range(4):
            shared.put_many([(f"k{n}".encode(), 0.5)], ttl_s=60)
        assert shared.state()["pending_writes"] == 2
        assert errors == [("write_dropped", 1), ("write_dropped", 1)]


async def test_opening_the_connection_early_lets_the_first_read_use_it(
    redis_server: RedisServer, shared_for: MakeShared
) -> None:
    errors: list[tuple[str, int]] = []
    shared = shared_for(redis_server.url, errors)
    await shared.open_connection()
    assert errors == [] and redis_server.client().info("clients")["connected_clients"] == 2  # it + us
    refused = shared_for("redis://127.0.0.1:9/0", errors)
    await refused.open_connection()
    assert errors == [("connection", 1)]


async def test_a_refused_connection_is_counted_and_the_model_answers(shared_for: MakeShared) -> None:
    from es_rerank_proxy.tools.local_elasticsearch import free_port

    errors: list[tuple[str, int]] = []
    shared = shared_for(f"redis://127.0.0.1:{free_port()}/0", errors)
    model = CountingModel()
    outcome = await _scorer(model, shared).score("q", DOCS, BUDGET_S)
    assert outcome.scores is not None and len(outcome.scores) == 5 and model.calls == 1
    assert errors[0] == ("connection", 1)


async def test_redis_out_of_memory_is_counted_as_oom(
    redis_server: RedisServer, shared_for: MakeShared
) -> None:
    client = redis_server.client()
    client.config_set("maxmemory", 1)  # every write is refused with OOM; reads still answer
    errors: list[tuple[str, int]] = []
    shared = shared_for(redis_server.url, errors)
    model = CountingModel()
    outcome = await _scorer(model, shared).score("q", DOCS, BUDGET_S)
    await _settled(shared)
    assert outcome.scores is not None and model.calls == 1
    assert errors == [("oom", 1)]
