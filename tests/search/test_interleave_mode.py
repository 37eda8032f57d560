"""Canary mode `interleave` end to end: pages cut from one team-draft list of both orders."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import requests
from elasticsearch import Elasticsearch

from ..conftest import INDEX, QUERY
from ..fakes.fake_reranker import FakeReranker
from ..fakes.proxy_server import RunningProxy

INTERLEAVE = {"default": "interleave"}


def _page(proxy: RunningProxy, start: int, size: int, **extra: Any) -> requests.Response:
    body = {"query": QUERY, "from": start, "size": size, **extra}
    response = requests.post(f"{proxy.url}/{INDEX}/_search", json=body, timeout=30)
    assert response.status_code == 200
    return response


def _ids(response: requests.Response) -> list[str]:
    return [hit["_id"] for hit in response.json()["hits"]["hits"]]


def test_interleaved_pages_continue_one_list_without_gaps_or_repeats(
    reranking_proxy: Callable[..., AbstractContextManager[RunningProxy]], es_direct: Elasticsearch
) -> None:
    with reranking_proxy({"rerank": 1.0}, canary=INTERLEAVE) as proxy:
        whole = _page(proxy, 0, 30)
        pages = [_page(proxy, start, 10) for start in (0, 10, 20)]
        with reranking_proxy({"rerank": 1.0}, canary={"default": "rerank"}) as reranking:
            reranked = _ids(_page(reranking, 0, 30))
    assert whole.headers["X-Rerank"] == "applied"
    assert [hit for page in pages for hit in _ids(page)] == _ids(whole)
    es_order = [hit["_id"] for hit in es_direct.search(index=INDEX, query=QUERY, size=100)["hits"]["hits"]]
    shown = _ids(whole)
    assert len(set(shown)) == 30
    assert shown[0] in (es_order[0], reranked[0])
    assert shown != es_order[:30] and shown != reranked, "both orders contribute"
    # Each hit is taken from the top of one of the two orders: never deeper than both.
    for position, hit in enumerate(shown):
        assert min(es_order.index(hit), reranked.index(hit)) <= position


def test_interleaving_shows_elasticsearch_scores(
    reranking_proxy: Callable[..., AbstractContextManager[RunningProxy]], es_direct: Elasticsearch
) -> None:
    with reranking_proxy({"rerank": 1.0}, canary=INTERLEAVE) as proxy:
        response = _page(proxy, 0, 20).json()
    es_hits = es_direct.search(index=INDEX, query=QUERY, size=100)["hits"]
    es_scores = {hit["_id"]: hit["_score"] for hit in es_hits["hits"]}
    assert all(hit["_score"] == es_scores[hit["_id"]] for hit in response["hits"]["hits"])
    assert response["hits"]["max_score"] == es_hits["max_score"]


def test_degraded_interleave_shows_elasticsearch_order(
    reranking_proxy: Callable[..., AbstractContextManager[RunningProxy]],
    fake: FakeReranker,
    es_direct: Elasticsearch,
) -> None:
    fake.faults.status = 500
    with reranking_proxy({"rerank": 0.5, "recency": 0.5}, canary=INTERLEAVE) as proxy:
        response = _page(proxy, 0, 20)
    assert response.headers["X-Rerank"] == "degraded"
    es_order = [hit["_id"] for hit in es_direct.search(index=INDEX, query=QUERY, size=20)["hits"]["hits"]]
    assert _ids(response) == es_order
