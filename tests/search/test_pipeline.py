"""The search pipeline end to end: official client → proxy → noida-db + fake vLLM."""

from __future__ import annotations

import gzip
import itertools
import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import orjson
import pytest
import requests
from elasticsearch import Elasticsearch

from es_rerank_proxy.model.reranker import format_qwen3_document, format_qwen3_query
from es_rerank_proxy.search.blend import parse_date

from ..conftest import INDEX, QUERY
from ..fakes.fake_reranker import FakeReranker, hash_score
from ..fakes.proxy_server import RunningProxy


def _ids(response: Any) -> list[str]:
    return [hit["_id"] for hit in response["hits"]["hits"]]


def _scores(response: Any) -> list[float]:
    return [hit["_score"] for hit in response["hits"]["hits"]]


def _window(es: Elasticsearch, size: int = 100) -> list[dict[str, Any]]:
    return list(es.search(index=INDEX, query=QUERY, size=size)["hits"]["hits"])


def test_rerank_weight_alone_orders_top_n_by_model_score(
    reranking_proxy: Callable[..., AbstractContextManager[RunningProxy]],
    fake: FakeReranker,
    es_direct: Elasticsearch,
) -> None:
    with reranking_proxy({"rerank": 1.0}) as proxy:
        client = Elasticsearch(proxy.url)
        response = client.search(index=INDEX, query=QUERY, size=30)
    assert response.meta.headers["X-Rerank"] == "applied"
    window = _window(es_direct)
    assert fake.rerank_calls == 1
    (sent,) = fake.documents_seen()
    assert len(sent) == 20
    by_text = {text: hash_score("", text) for text in sent}
    top20 = _ids(response)[:20]
    assert set(top20) == {hit["_id"] for hit in window[:20]}
    expected = sorted(by_text.values(), reverse=True)
    assert _scores(response)[:20] == pytest.approx(expected)
    assert _ids(response)[20:] == [hit["_id"] for hit in window[20:30]]
    assert response["hits"]["max_score"] == pytest.approx(expected[0])


def test_recency_only_weights_order_by_date(
    reranking_proxy: Callable[..., AbstractContextManager[RunningProxy]], fake: FakeReranker
) -> None:
    with reranking_proxy({"recency": 1.0}) as proxy:
        response = Elasticsearch(proxy.url).search(index=INDEX, query=QUERY, size=50)
    assert fake.rerank_calls == 0, "a zero rerank weight needs no model call"
    dates = [parse_date(hit["_source"].get("published")) for hit in response["hits"]["hits"]]
    known = [d for d in dates if d is not None]
    assert known == sorted(known, reverse=True)
    assert all(d is None for d in dates[len(known) :]), "undated hits (recency 0) come last"


def test_citations_only_weights_order_by_count(
    reranking_proxy: Callable[..., AbstractContextManager[RunningProxy]],
) -> None:
    with reranking_proxy({"citations": 1.0}, blend={"citations": {"saturation": 100_000}}) as proxy:
        response = Elasticsearch(proxy.url).search(index=INDEX, query=QUERY, size=40)
    counts = [hit["_source"]["citations"] for hit in response["hits"]["hits"]]
    assert counts == sorted(counts, reverse=True)


def test_bm25_only_weights_return_elasticsearch_order_exactly(
    reranking_proxy: Callable[..., AbstractContextManager[RunningProxy]], es_direct: Elasticsearch
) -> None:
    with reranking_proxy({"bm25": 1.0}) as proxy:
        via_proxy = Elasticsearch(proxy.url).search(index=INDEX, query=QUERY, size=25, from_=5)
    direct = es_direct.search(index=INDEX, query=QUERY, size=25, from_=5)
    assert _ids(via_proxy) == _ids(direct)
    assert via_proxy["hits"]["total"] == direct["hits"]["total"]


def test_pages_concatenate_to_one_big_page(
    reranking_proxy: Callable[..., AbstractContextManager[RunningProxy]], fake: FakeReranker
) -> None:
    with reranking_proxy() as proxy:
        client = Elasticsearch(proxy.url)
        pages = [client.search(index=INDEX, query=QUERY, size=10, from_=start) for start in (0, 10, 20)]
        big = client.search(index=INDEX, query=QUERY, size=30)
    joined = [hit_id for page in pages for hit_id in _ids(page)]
    assert joined == _ids(big)
    assert len(set(joined)) == 30
    assert fake.rerank_calls == 1, "pages 2 and 3 and the big page are served from the score cache"
    all_scores = [s for page in pages for s in _scores(page)]
    assert all(a >= b for a, b in itertools.pairwise(all_scores))


@pytest.mark.parametrize(
    "source_options",
    [
        {"source": False},
        {"source": ["title"]},
        {"source_includes": ["title", "citations"]},
        {"source_excludes": ["abstract", "published"]},
        {"source": {"includes": ["title"], "excludes": []}},
        {"source": False, "fields": ["title"]},
        {"fields": ["citations"]},
    ],
)
def test_source_is_returned_exactly_as_asked(
    reranking_proxy: Callable[..., AbstractContextManager[RunningProxy]],
    es_direct: Elasticsearch,
    fake: FakeReranker,
    source_options: dict[str, Any],
) -> None:
    with reranking_proxy({"bm25": 1.0, "rerank": 0.5}) as proxy:
        via_proxy = Elasticsearch(proxy.url).search(index=INDEX, query=QUERY, size=10, **source_options)
    assert via_proxy.meta.headers["X-Rerank"] == "applied"
    assert all("Title:" in doc for doc in fake.documents_seen()[0]), "the model still got the text"
    direct = {
        hit["_id"]: hit
        for hit in es_direct.search(index=INDEX, query=QUERY, size=100, **source_options)["hits"]["hits"]
    }
    for hit in via_proxy["hits"]["hits"]:
        twin = direct[hit["_id"]]
        assert hit.get("_source") == twin.get("_source")
        assert hit.get("fields") == twin.get("fields")
        assert set(hit) == set(twin)


def test_qwen3_wrapped_strings_reach_the_model(
    reranking_proxy: Callable[..., AbstractContextManager[RunningProxy]], fake: FakeReranker
) -> None:
    with reranking_proxy(rerank={"instruction": "Find library books", "max_doc_chars": 60}) as proxy:
        Elasticsearch(proxy.url).search(index=INDEX, query=QUERY, size=5)
    payload = fake.requests[-1]
    assert isinstance(payload, dict)
    assert payload["model"] == "Qwen/Qwen3-Reranker-0.6B"
    assert payload["query"] == format_qwen3_query("Find library books", "neural search")
    for document in payload["documents"]:
        assert document.startswith("<Document>: Title: ")
        inner = document.removeprefix("<Document>: ").removesuffix(
            format_qwen3_document("").removeprefix("<Document>: ")
        )
        assert len(inner) <= 60
        assert "\nAbstract: " in inner or len(inner) == 60


def test_prompt_format_none_sends_raw_text(
    reranking_proxy: Callable[..., AbstractContextManager[RunningProxy]], fake: FakeReranker
) -> None:
    with reranking_proxy(reranker={"prompt_format": "none"}) as proxy:
        Elasticsearch(proxy.url).search(index=INDEX, query={"match": {"title": "神经 检索"}}, size=5)
        Elasticsearch(proxy.url).search(index=INDEX, query=QUERY, size=5)
    payload = fake.requests[-1]
    assert isinstance(payload, dict)
    assert payload["query"] == "neural search"
    assert all(doc.startswith("Title: ") and "<Document>" not in doc for doc in payload["documents"])


def test_explain_header_adds_components(
    reranking_proxy: Callable[..., AbstractContextManager[RunningProxy]],
) -> None:
    with reranking_proxy() as proxy:
        response = requests.post(
            f"{proxy.url}/{INDEX}/_search",
            json={"query": QUERY, "size": 5},
            headers={"X-Rerank-Explain": "true"},
            timeout=30,
        )
    hits = response.json()["hits"]["hits"]
    for hit in hits:
        assert set(hit["_rerank"]) == {
            "es_rank",
            "es_score",
            "rerank",
            "bm25",
            "recency",
            "citations",
            "prior",
            "final",
        }
        assert hit["_score"] == pytest.approx(hit["_rerank"]["final"])


def test_gzip_request_and_response(
    reranking_proxy: Callable[..., AbstractContextManager[RunningProxy]],
) -> None:
    with reranking_proxy() as proxy:
        client = Elasticsearch(proxy.url, http_compress=True)
        response = client.search(index=INDEX, query=QUERY, size=5)
        raw = requests.post(
            f"{proxy.url}/{INDEX}/_search",
            data=gzip.compress(orjson.dumps({"query": QUERY, "size": 3})),
            headers={
                "Content-Encoding": "gzip",
                "Content-Type": "application/json",
                "Accept-Encoding": "gzip",
            },
            timeout=30,
        )
    assert response.meta.headers["X-Rerank"] == "applied"
    assert raw.headers["Content-Encoding"] == "gzip"
    assert raw.headers["X-Rerank"] == "applied"
    assert len(raw.json()["hits"]["hits"]) == 3


def test_untouched_sections_are_elasticsearch_s(
    reranking_proxy: Callable[..., AbstractContextManager[RunningProxy]], es_direct: Elasticsearch
) -> None:
    body = {
        "query": QUERY,
        "size": 5,
        "aggs": {"max_citations": {"max": {"field": "citations"}}},
        "highlight": {"fields": {"abstract": {}}},
    }
    with reranking_proxy() as proxy:
        via_proxy = Elasticsearch(proxy.url).search(index=INDEX, **body)
    direct = es_direct.search(index=INDEX, **{**body, "size": 100})
    assert via_proxy["aggregations"] == direct["aggregations"]
    assert via_proxy["hits"]["total"] == direct["hits"]["total"]
    assert via_proxy["_shards"] == direct["_shards"]
    highlights = {hit["_id"]: hit["highlight"] for hit in direct["hits"]["hits"]}
    for hit in via_proxy["hits"]["hits"]:
        assert hit["highlight"] == highlights[hit["_id"]]
    assert list(via_proxy.body) == list(direct.body), "top-level keys in Elasticsearch's order"


def _normalise(body: bytes) -> bytes:
    """Timings and scroll/PIT ids differ between two calls; everything else must be equal byte for byte."""
    body = re.sub(rb'"took":\d+', b'"took":0', body)
    if b'"profile":{' in body:
        # profile breakdowns are nanosecond timings: keep the keys, not the clock readings
        head, profile = body.split(b'"profile":{', 1)
        body = head + b'"profile":{' + re.sub(rb'":\d+', b'":0', profile)
    return re.sub(rb'"(_scroll_id|pit_id|id)":"[^"]*"', rb'"\1":"x"', body)


BYPASS_CASES = [
    ("sort", {}, {"query": QUERY, "sort": [{"citations": "desc"}]}),
    ("search_after", {}, {"query": QUERY, "search_after": [1]}),
    ("scroll", {"scroll": "1m"}, {"query": QUERY}),
    ("pit", {}, {"query": QUERY, "pit": {"id": "abc", "keep_alive": "1m"}}),
    ("collapse", {}, {"query": QUERY, "collapse": {"field": "citations"}}),
    ("rescore", {}, {"query": QUERY, "rescore": {"window_size": 10, "query": {"rescore_query": QUERY}}}),
    ("knn", {}, {"knn": {"field": "v", "query_vector": [1.0], "k": 3, "num_candidates": 10}}),
    ("retriever", {}, {"retriever": {"standard": {"query": QUERY}}}),
    ("size_zero", {}, {"query": QUERY, "size": 0}),
    ("window_exceeded", {}, {"query": QUERY, "from": 95, "size": 10}),
    ("profile", {}, {"query": QUERY, "profile": True}),
    ("filter_path", {"filter_path": "hits.hits._id"}, {"query": QUERY}),
    ("explain", {}, {"query": QUERY, "explain": True}),
    ("no_query_text", {}, {"query": {"match_all": {}}}),
    ("invalid_json", {}, b'{"query": {"match": '),
]


@pytest.mark.parametrize(("reason", "params", "body"), BYPASS_CASES, ids=[case[0] for case in BYPASS_CASES])
def test_bypass_answers_byte_identical_to_elasticsearch(
    reranking_proxy: Callable[..., AbstractContextManager[RunningProxy]],
    es_url: str,
    fake: FakeReranker,
    reason: str,
    params: dict[str, str],
    body: Any,
) -> None:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = {"Content-Type": "application/json"}
    with reranking_proxy() as proxy:
        via_proxy = requests.post(
            f"{proxy.url}/{INDEX}/_search", params=params, data=data, headers=headers, timeout=30
        )
    direct = requests.post(f"{es_url}/{INDEX}/_search", params=params, data=data, headers=headers, timeout=30)
    assert via_proxy.headers["X-Rerank"] == "skipped"
    assert via_proxy.headers["X-Rerank-Reason"] == reason
    assert via_proxy.status_code == direct.status_code
    assert _normalise(via_proxy.content) == _normalise(direct.content)
    assert fake.rerank_calls == 0


def test_index_outside_configured_globs_is_bypassed(
    reranking_proxy: Callable[..., AbstractContextManager[RunningProxy]], fake: FakeReranker
) -> None:
    with reranking_proxy(rerank={"indices": ["catalogue-*"]}) as proxy:
        response = Elasticsearch(proxy.url).search(index=INDEX, query=QUERY, size=5)
    assert response.meta.headers["X-Rerank"] == "skipped"
    assert response.meta.headers["X-Rerank-Reason"] == "index_not_configured"
    assert fake.rerank_calls == 0


def test_elasticsearch_error_on_recall_is_returned_unchanged(
    reranking_proxy: Callable[..., AbstractContextManager[RunningProxy]], es_url: str
) -> None:
    body = orjson.dumps({"query": {"match": {"title": "x"}}})
    with reranking_proxy() as proxy:
        via_proxy = requests.post(
            f"{proxy.url}/no-such-index/_search",
            data=body,
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
    direct = requests.post(
        f"{es_url}/no-such-index/_search", data=body, headers={"Content-Type": "application/json"}, timeout=30
    )
    assert via_proxy.status_code == direct.status_code == 404
    assert via_proxy.content == direct.content


def test_msearch_mixing_eligible_and_ineligible_searches(
    reranking_proxy: Callable[..., AbstractContextManager[RunningProxy]],
    es_direct: Elasticsearch,
    fake: FakeReranker,
) -> None:
    searches: list[dict[str, Any]] = [
        {"index": INDEX},
        {"query": QUERY, "size": 5},
        {"index": INDEX},
        {"query": QUERY, "size": 5, "sort": [{"citations": "desc"}]},
        {},
        {"query": {"match": {"title": "library"}}, "size": 3},
        {"index": "no-such-index"},
        {"query": QUERY},
    ]
    with reranking_proxy({"rerank": 1.0}) as proxy:
        via_proxy = Elasticsearch(proxy.url).msearch(index=INDEX, searches=searches)
    direct = es_direct.msearch(index=INDEX, searches=searches)
    assert via_proxy.meta.headers["X-Rerank"] == "applied,skipped,applied,skipped"
    assert via_proxy.meta.headers["X-Rerank-Reason"].split(",")[1] == "sort"
    got, want = via_proxy["responses"], direct["responses"]
    assert set(_ids(got[0])) <= {hit["_id"] for hit in _window(es_direct, 20)}
    assert _ids(got[1]) == _ids(want[1]), "the bypassed search keeps Elasticsearch's answer"
    assert got[3] == want[3], "an error keeps its place"
    assert fake.rerank_calls == 2
    assert len(got[2]["hits"]["hits"]) == 3
