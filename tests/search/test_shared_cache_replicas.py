"""Replicas sharing one Redis score cache: shared hits across processes, and no Redis fault fails a search."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
import requests

from ..conftest import INDEX, ONLY
from ..fakes.fake_reranker import FakeReranker
from ..fakes.proxy_server import RunningProxy, make_config, proxy_process
from ..fakes.redis_server import RedisServer, hanging_redis
from ..fakes.threaded import in_thread

WEIGHTS = {**ONLY, "rerank": 0.7, "bm25": 0.3}
MODEL_LATENCY_S = 0.05  # fixed, so a model call has a cost the budget easily covers
BUDGET_MS = 3000  # seconds, not milliseconds: no load on this machine reaches it
MARGIN_S = 2.0  # scheduling on a loaded machine
OVER_BUDGET_S = 0.05  # issue #18: whatever Redis does, a search answers within its budget + 50 ms
StartProxy = Callable[..., AbstractContextManager[RunningProxy]]
QUERIES = [{"match": {"abstract": word}} for word in ("neural", "library", "ranking", "semantic", "journal")]


def _cache(url: str, **extra: Any) -> dict[str, Any]:
    return {"backend": "redis", "redis_url": url, **extra}


def _search(proxy: RunningProxy, query: dict[str, Any], page: int = 0) -> requests.Response:
    body = {"query": query, "from": page * 10, "size": 10}
    response = requests.post(f"{proxy.url}/{INDEX}/_search", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response


def _ids(response: requests.Response) -> list[str]:
    return [hit["_id"] for hit in response.json()["hits"]["hits"]]


def _wait_for_keys(server: RedisServer, count: int) -> None:
    """Write-backs are fire and forget: wait until they have landed, not a fixed time."""
    client = server.client()
    deadline = time.monotonic() + 30
    while client.dbsize() < count:
        assert time.monotonic() < deadline, f"{client.dbsize()} keys in Redis, expected {count}"
        time.sleep(0.01)


def _search_calls(fake: FakeReranker) -> int:
    """Model calls made for searches (top_n documents), not the start-up self-test's (two documents)."""
    return sum(1 for documents in fake.documents_seen() if len(documents) > 2)


def _replica(es_url: str, fake: FakeReranker, redis_url: str, **cache: Any) -> Any:
    return make_config(
        es_url,
        fake.url,
        blend={"weights": WEIGHTS},
        reranker={"url": [fake.url], "timeout_ms": BUDGET_MS, "cache": _cache(redis_url, **cache)},
    )


def test_a_second_replica_process_answers_a_repeated_search_without_the_model(
    es_url: str, library: str, fake: FakeReranker, redis_server: RedisServer, tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    # A timeout no load reaches: this test is about sharing, and a busy machine can take more than the
    # default 5 ms to open a fresh process's first connection (the faults below test the bound).
    config = _replica(es_url, fake, redis_server.url, redis_timeout_ms=BUDGET_MS)
    with proxy_process(config, tmp_path / "a") as first, proxy_process(config, tmp_path / "b") as second:
        page_one = _search(first, QUERIES[0])
        assert page_one.headers["X-Rerank"] == "applied"
        assert _search_calls(fake) == 1
        _wait_for_keys(redis_server, config.rerank.top_n)

        again = _search(second, QUERIES[0])
        assert again.headers["X-Rerank"] == "applied"
        assert _ids(again) == _ids(page_one)
        assert _search_calls(fake) == 1, "the second replica found every score in Redis"

        # Page 2 of a search made on the first replica: the same reranked window, no model call.
        page_two = _search(second, QUERIES[0], page=1)
        assert page_two.headers["X-Rerank"] == "applied"
        assert _search_calls(fake) == 1
        assert not set(_ids(page_two)) & set(_ids(page_one))

        metrics = requests.get(f"{second.admin_url}/metrics", timeout=10).text
        assert f'es_rerank_proxy_cache_hits_total{{level="shared"}} {config.rerank.top_n:.1f}' in metrics
        ready = requests.get(f"{second.admin_url}/_rerank/ready", timeout=10).json()
        assert ready["shared_cache"]["backend"] == "redis"
        assert ready["shared_cache"]["breaker"] == "closed"


@pytest.fixture
def reference_orders(start_proxy: StartProxy, fake: FakeReranker, library: str) -> dict[str, list[str]]:
    """Every query's reranked first page with the memory backend: the order a Redis fault must not change."""
    reranker = {"url": [fake.url], "timeout_ms": BUDGET_MS}
    with start_proxy(reranker_url=fake.url, blend={"weights": WEIGHTS}, reranker=reranker) as proxy:
        orders = {}
        for query in QUERIES:
            response = _search(proxy, query)
            assert response.headers["X-Rerank"] == "applied"
            orders[str(query)] = _ids(response)
    fake.reset()
    fake.faults.latency_s = MODEL_LATENCY_S
    return orders


def _assert_every_search_is_right_and_on_time(proxy: RunningProxy, orders: dict[str, list[str]]) -> None:
    for query in QUERIES:
        started = time.monotonic()
        response = _search(proxy, query)
        elapsed = time.monotonic() - started
        assert response.headers["X-Rerank"] == "applied", response.headers.get("X-Rerank-Reason")
        assert _ids(response) == orders[str(query)]
        assert elapsed < BUDGET_MS / 1000 + OVER_BUDGET_S


@pytest.fixture
def proxy_on_redis(start_proxy: StartProxy, fake: FakeReranker, library: str) -> StartProxy:
    """`with proxy_on_redis(url, **reranker) as proxy`: a reranking proxy whose shared cache is at `url`."""

    def start(redis_url: str, **reranker: Any) -> AbstractContextManager[RunningProxy]:
        cache = _cache(redis_url, **reranker.pop("cache", {}))
        settings = {"url": [fake.url], "timeout_ms": BUDGET_MS, "cache": cache, **reranker}
        return start_proxy(reranker_url=fake.url, blend={"weights": WEIGHTS}, reranker=settings)

    return start


def _shared_state(proxy: RunningProxy) -> dict[str, Any]:
    ready = requests.get(f"{proxy.admin_url}/_rerank/ready", timeout=10)
    assert ready.status_code == 200
    return dict(ready.json()["shared_cache"])


def test_redis_killed_mid_run_costs_no_search(
    proxy_on_redis: StartProxy, reference_orders: dict[str, list[str]], redis_server: RedisServer
) -> None:
    with proxy_on_redis(redis_server.url) as proxy:
        _search(proxy, QUERIES[0])
        redis_server.kill()
        _assert_every_search_is_right_and_on_time(proxy, reference_orders)
        state = _shared_state(proxy)
        assert state["errors"].get("connection", 0) >= 1 and state["last_error"].startswith("connection")
        metrics = requests.get(f"{proxy.admin_url}/metrics", timeout=10).text
        assert 'es_rerank_proxy_shared_cache_errors_total{kind="connection"}' in metrics


def test_a_hanging_redis_costs_at_most_its_timeout_per_search(
    proxy_on_redis: StartProxy, reference_orders: dict[str, list[str]]
) -> None:
    redis_timeout_ms = 100
    with in_thread(hanging_redis, name="hanging-redis") as hanging:
        # A breaker that never opens: every search must pay the hanging Redis, and only its timeout.
        breaker = {"failures": 1000, "window_s": 1, "open_s": 1}
        cache = {"redis_timeout_ms": redis_timeout_ms}
        with proxy_on_redis(hanging.url, cache=cache, breaker=breaker) as proxy:
            for query in QUERIES:
                response = _search(proxy, query)
                assert _ids(response) == reference_orders[str(query)]
                timings = dict(
                    (part.split(";dur=")[0].strip(), float(part.split(";dur=")[1]))
                    for part in response.headers["Server-Timing"].split(",")
                )
                # The rerank step: Redis's bound plus the model's fixed latency, plus scheduling.
                assert timings["rerank"] < redis_timeout_ms + MODEL_LATENCY_S * 1000 + MARGIN_S * 1000
            # Every lookup timed out. The write-backs and the opening PING time out too, later and outside
            # any search (their bounds are longer), so on a slow machine some of them are counted already.
            assert _shared_state(proxy)["errors"]["timeout"] >= len(QUERIES)


def test_wrong_types_and_garbage_in_redis_are_misses(
    proxy_on_redis: StartProxy,
    fake: FakeReranker,
    reference_orders: dict[str, list[str]],
    redis_server: RedisServer,
) -> None:
    with proxy_on_redis(redis_server.url) as writer:
        for query in QUERIES:
            _search(writer, query)
    client = redis_server.client()
    keys = sorted(client.keys("errp:*"))
    assert keys
    for i, key in enumerate(keys):
        client.delete(key)
        if i % 2:
            client.rpush(key, b"0.5")
        else:
            client.set(key, b"\xff not a score")
    calls = fake.rerank_calls
    with proxy_on_redis(redis_server.url) as reader:
        _assert_every_search_is_right_and_on_time(reader, reference_orders)
        assert fake.rerank_calls == calls + len(QUERIES), "no bad value was taken for a score"
        assert _shared_state(reader)["errors"]["garbage"] >= 1


def test_the_memory_backend_counts_local_hits_and_shows_it_in_ready(
    start_proxy: StartProxy, fake: FakeReranker, library: str
) -> None:
    reranker = {"url": [fake.url], "timeout_ms": BUDGET_MS}
    with start_proxy(reranker_url=fake.url, blend={"weights": WEIGHTS}, reranker=reranker) as proxy:
        _search(proxy, QUERIES[0])
        assert _search(proxy, QUERIES[0]).headers["X-Rerank"] == "applied"
        assert _shared_state(proxy) == {"backend": "memory"}
        metrics = requests.get(f"{proxy.admin_url}/metrics", timeout=10).text
        top_n = proxy.config.rerank.top_n
        assert f'es_rerank_proxy_cache_hits_total{{level="local"}} {top_n:.1f}' in metrics
        assert 'level="shared"' not in metrics and "shared_cache_errors_total{" not in metrics
