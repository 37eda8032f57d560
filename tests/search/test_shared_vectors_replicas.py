"""api: embeddings across replica processes: a corpus warmed on one proxy is warm on another through Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from ..conftest import INDEX, ONLY, QUERY
from ..fakes.fake_embeddings import FakeEmbeddings, start_fake
from ..fakes.proxy_server import make_config, proxy_process
from ..fakes.redis_server import RedisServer
from ..fakes.threaded import in_thread

BUDGET_MS = 3000  # no load reaches it: these tests are about what is embedded, not about time


@pytest.fixture
def embeddings() -> Iterator[FakeEmbeddings]:
    with in_thread(start_fake, name="fake-embeddings") as fake:
        yield fake


def _passages_embedded(fake: FakeEmbeddings) -> int:
    return sum(len(body["input"]) for body in list(fake.requests) if body.get("input_type") == "passage")


def test_a_corpus_warmed_on_one_replica_is_not_embedded_again_by_another(
    es_url: str, library: str, embeddings: FakeEmbeddings, redis_server: RedisServer, tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    config = make_config(
        es_url,
        embeddings.url,
        blend={"weights": {**ONLY, "rerank": 0.7, "bm25": 0.3}, "normalise_rerank": True},
        reranker={
            "url": [embeddings.url],
            "api": "embeddings",
            "model": "e5-test",
            "timeout_ms": BUDGET_MS,
            "cache": {"backend": "redis", "redis_url": redis_server.url, "redis_timeout_ms": BUDGET_MS},
        },
    )
    with proxy_process(config, tmp_path / "a") as first, proxy_process(config, tmp_path / "b") as second:
        warmed = requests.post(f"{first.admin_url}/_rerank/warm", params={"index": library}, timeout=120)
        last = orjson.loads(warmed.content.splitlines()[-1])
        # Every document once (other tests in the session may have added some to the shared index).
        documents = requests.get(f"{es_url}/{library}/_count", timeout=30).json()["count"]
        assert warmed.status_code == 200 and last["embedded"] == documents, last
        embedded = _passages_embedded(embeddings)

        body = {"query": QUERY, "size": 10}
        before = _vector_counts(second.admin_url)
        answer = requests.post(f"{second.url}/{INDEX}/_search", json=body, timeout=60)
        assert answer.status_code == 200 and answer.headers["X-Rerank"] == "applied"
        assert _passages_embedded(embeddings) == embedded, "the second replica embedded no passage"
        after = _vector_counts(second.admin_url)
        hits = {key: after.get(key, 0) - before.get(key, 0) for key in after}
        assert hits == {"shared": config.rerank.top_n, "local": 0, "missing": 0}


def _vector_counts(admin_url: str) -> dict[str, float]:
    """Passage-vector lookups so far, by level, from the replica's metrics."""
    text = requests.get(f"{admin_url}/metrics", timeout=10).text
    counts = {"local": 0.0, "shared": 0.0, "missing": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "es_rerank_proxy_vector_cache_hits_total":
                counts[sample.labels["level"]] = sample.value
            elif sample.name == "es_rerank_proxy_vector_cache_misses_total":
                counts["missing"] = sample.value
    return counts
