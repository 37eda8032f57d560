"""Shared fixtures: a real Elasticsearch stand-in (noida-db) and the proxy under test."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from elasticsearch import Elasticsearch, helpers
from hypothesis import HealthCheck, settings

from es_rerank_proxy.tools.local_elasticsearch import run_noida

from .fakes.fake_reranker import FakeReranker, start_fake_reranker
from .fakes.proxy_server import RunningProxy, make_config, proxy_in_thread
from .fakes.redis_server import RedisServer, run_redis
from .fakes.threaded import in_thread

# Hypothesis checks properties, not speed: its 200 ms per-example deadline and its "too slow" health check
# fail a correct test when a loaded machine pauses this process.
settings.register_profile("any_machine_speed", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("any_machine_speed")


@pytest.fixture(scope="session")
def es_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with run_noida(tmp_path_factory.mktemp("noida")) as url:
        yield url


@pytest.fixture(scope="session")
def es_direct(es_url: str) -> Iterator[Elasticsearch]:
    client = Elasticsearch(es_url, request_timeout=30)
    yield client
    client.close()


@pytest.fixture
def start_proxy(es_url: str) -> Callable[..., AbstractContextManager[RunningProxy]]:
    """`with start_proxy(rerank={...}) as proxy:` a proxy in front of the test Elasticsearch."""

    def start(
        *, es: str | None = None, reranker_url: str = "http://127.0.0.1:9", **sections: Any
    ) -> AbstractContextManager[RunningProxy]:
        return proxy_in_thread(make_config(es or es_url, reranker_url, **sections))

    return start


@pytest.fixture(scope="session")
def passthrough_proxy(es_url: str) -> Iterator[RunningProxy]:
    """A proxy whose reranking is off: for tests of plain pass-through behaviour."""
    with proxy_in_thread(make_config(es_url, canary={"default": "off"})) as proxy:
        yield proxy


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own (no persistence, a free loopback port); skipped without one."""
    with run_redis(tmp_path) as server:
        yield server


@pytest.fixture
def data_dir() -> Path:
    return Path(__file__).parent / "data"


# --- a library index, the fake vLLM and a reranking proxy in front of both ---------------------------

INDEX = "library-e2e"
TOPICS = ["neural", "search", "library", "ranking", "catalogue", "retrieval", "semantic", "journal"]
FILLER = ["history", "of", "the", "modern", "study", "physics", "methods", "review", "data", "archive"]
QUERY = {"match": {"abstract": "neural search"}}
ONLY = dict.fromkeys(("rerank", "bm25", "recency", "citations"), 0.0)


def _random_date(rng: random.Random) -> str:
    return f"{1990 + rng.randrange(35)}-{1 + rng.randrange(12):02d}-{1 + rng.randrange(28):02d}"


def _corpus(count: int) -> list[dict[str, Any]]:
    rng = random.Random(7)
    docs = []
    for i in range(count):
        topical = rng.sample(TOPICS, 2) if i % 4 else []
        words = topical + rng.sample(FILLER, 5)
        rng.shuffle(words)
        doc: dict[str, Any] = {
            "_index": INDEX,
            "_id": f"doc-{i}",
            "title": " ".join(words[:4]).capitalize() + f" {i}",
            "abstract": " ".join(words) + ("" if i % 7 else " 神经 检索"),
            "published": _random_date(rng),
            "citations": rng.randrange(0, 5000),
        }
        if i % 11 == 0:
            del doc["published"]
        docs.append(doc)
    return docs


@pytest.fixture(scope="session")
def library(es_direct: Elasticsearch) -> str:
    if es_direct.indices.exists(index=INDEX):
        es_direct.indices.delete(index=INDEX)
    es_direct.indices.create(
        index=INDEX,
        mappings={
            "properties": {
                "title": {"type": "text"},
                "abstract": {"type": "text"},
                "published": {"type": "date"},
                "citations": {"type": "integer"},
            }
        },
    )
    helpers.bulk(es_direct, _corpus(400), refresh=True)
    return INDEX


@pytest.fixture(scope="session")
def session_fake() -> Iterator[FakeReranker]:
    with in_thread(lambda: start_fake_reranker(), name="fake-vllm") as fake:
        yield fake


@pytest.fixture
def fake(session_fake: FakeReranker) -> FakeReranker:
    session_fake.reset()
    return session_fake


@pytest.fixture
def reranking_proxy(
    start_proxy: Callable[..., AbstractContextManager[RunningProxy]], fake: FakeReranker, library: str
) -> Callable[..., AbstractContextManager[RunningProxy]]:
    """`with reranking_proxy(weights={...}, rerank={...}) as proxy`: in front of noida-db and the fake."""

    def start(
        weights: dict[str, float] | None = None, **sections: Any
    ) -> AbstractContextManager[RunningProxy]:
        blend = sections.pop("blend", {})
        if weights is not None:
            blend = {**blend, "weights": {**ONLY, **weights}}
        # A budget no load reaches: "applied" must not depend on this machine's speed. Tests of the
        # budget itself set their own, against a fake that hangs or answers late.
        reranker = {"url": [fake.url], "timeout_ms": 30_000, **sections.pop("reranker", {})}
        return start_proxy(reranker_url=fake.url, blend=blend, reranker=reranker, **sections)

    return start


# --- UBI searches and events written straight into noida-db, for the reports that read them ----------


@pytest.fixture
def ubi_indices(es_direct: Elasticsearch, request: pytest.FixtureRequest) -> Callable[..., tuple[str, str]]:
    """`write(queries, events)`: bulk-load UBI documents into this test's own pair of indices, returning
    their names (queries index, events index)."""
    suffix = request.node.name.lower().replace("[", "-").replace("]", "")[:60]
    names = (f"ubi_queries-{suffix}", f"ubi_events-{suffix}")

    def write(queries: list[dict[str, Any]], events: list[dict[str, Any]]) -> tuple[str, str]:
        for name in names:
            if es_direct.indices.exists(index=name):
                es_direct.indices.delete(index=name)
        actions = [{"_index": names[0], "_source": doc} for doc in queries]
        actions += [{"_index": names[1], "_source": doc} for doc in events]
        helpers.bulk(es_direct, actions, refresh=True)
        return names

    return write
