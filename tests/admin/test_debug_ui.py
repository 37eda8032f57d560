"""The debug page and its compare API on the admin listener: proxy → noida-db + fake vLLM, and a browser."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import aiohttp
import pytest
import requests
from elasticsearch import Elasticsearch

from es_rerank_proxy.tools.local_elasticsearch import free_port

from ..conftest import INDEX
from ..fakes.fake_reranker import FakeReranker
from ..fakes.proxy_server import RunningProxy, make_config, proxy_in_thread
from ..fakes.recording_upstream import recording_upstream
from .browser import ARTIFACTS, chromium

ProxyFactory = Callable[..., AbstractContextManager[RunningProxy]]
QUERY_TEXT = "neural search"
SCREENSHOT = ARTIFACTS / "debug-ui.png"


def _compare(proxy: RunningProxy, **body: Any) -> requests.Response:
    return requests.post(proxy.admin_url + "/_rerank/compare", json=body, timeout=30)


def _ids(hits: list[dict[str, Any]]) -> list[str]:
    return [hit["id"] for hit in hits]


def test_compare_returns_elasticsearch_and_proxy_orders(
    reranking_proxy: ProxyFactory, fake: FakeReranker, es_direct: Elasticsearch
) -> None:
    with reranking_proxy({"rerank": 0.7, "bm25": 0.3}) as proxy:
        response = _compare(proxy, index=INDEX, query=QUERY_TEXT, size=15)
    assert response.status_code == 200
    answer = response.json()
    assert answer["outcome"] == "applied" and answer["reason"] is None
    assert answer["weights"] == {"rerank": 0.7, "bm25": 0.3, "recency": 0.0, "citations": 0.0}
    assert set(answer["timing_ms"]) == {"es", "rerank", "total"}
    assert "es;dur=" in response.headers["Server-Timing"]
    direct = es_direct.search(
        index=INDEX, query={"multi_match": {"query": QUERY_TEXT, "fields": ["title", "abstract"]}}, size=15
    )
    es_hits, proxy_hits = answer["elasticsearch"], answer["proxy"]
    assert _ids(es_hits) == [hit["_id"] for hit in direct["hits"]["hits"]]
    assert [hit["es_rank"] for hit in es_hits] == list(range(15))
    assert [hit["rank"] for hit in proxy_hits] == list(range(15))
    assert len(proxy_hits) == 15
    first = direct["hits"]["hits"][0]
    assert es_hits[0]["title"] == first["_source"]["title"]
    assert set(es_hits[0]["components"]) == {
        "es_score", "rerank", "bm25", "recency", "citations", "prior", "final"
    }  # fmt: skip
    for hit in proxy_hits:
        expected = "new" if hit["es_rank"] >= 15 else hit["es_rank"] - hit["rank"]
        assert hit["moved"] == expected
    for hit in es_hits:
        assert hit["moved"] == ("out" if hit["rank"] >= 15 else hit["es_rank"] - hit["rank"])
    assert fake.rerank_calls == 1


def test_bm25_only_weights_give_identical_orders_and_nothing_moves(
    reranking_proxy: ProxyFactory, fake: FakeReranker
) -> None:
    with reranking_proxy() as proxy:  # the config's own weights include the model: the request's win
        answer = _compare(proxy, index=INDEX, query=QUERY_TEXT, weights={"rerank": 0, "bm25": 1}).json()
    assert answer["outcome"] == "applied"
    assert len(answer["proxy"]) == 20
    assert _ids(answer["proxy"]) == _ids(answer["elasticsearch"])
    assert all(hit["moved"] == 0 for hit in answer["proxy"] + answer["elasticsearch"])
    assert fake.rerank_calls == 0, "a zero rerank weight needs no model call"


def test_rerank_only_weights_order_the_proxy_column_by_model_score(
    reranking_proxy: ProxyFactory, fake: FakeReranker
) -> None:
    with reranking_proxy({"bm25": 1.0}) as proxy:
        answer = _compare(proxy, index=INDEX, query=QUERY_TEXT, weights={"rerank": 1}).json()
    assert answer["outcome"] == "applied"
    finals = [hit["components"]["final"] for hit in answer["proxy"]]
    assert None not in finals
    assert all(a >= b for a, b in itertools.pairwise(finals))
    assert finals == [hit["components"]["rerank"] for hit in answer["proxy"]]
    assert any(hit["moved"] != 0 for hit in answer["proxy"])
    assert fake.rerank_calls == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"weights": {"bm25": -1}}, "weights.bm25"),
        ({"weights": {"rerank": "high"}}, "weights.rerank"),
        ({"weights": {"bm25": True}}, "weights.bm25"),
        ({"weights": {"popularity": 1}}, "weights.popularity"),
        ({"weights": {"rerank": 0, "bm25": 0}}, "weights"),
        ({"weights": [1, 0, 0, 0]}, "weights"),
        ({"size": 0}, "size"),
        ({"size": 101}, "size"),
        ({"index": ""}, "index"),
        ({"index": "_cluster"}, "index"),
        ({"query": 42}, "query"),
    ],
)
def test_invalid_compare_request_is_400_naming_the_field(
    reranking_proxy: ProxyFactory, body: dict[str, Any], field: str
) -> None:
    with reranking_proxy() as proxy:
        response = _compare(proxy, **{"index": INDEX, "query": QUERY_TEXT, **body})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["field"] == field
    assert error["reason"].startswith(field + ":")


def test_compare_body_that_is_not_json_is_400(reranking_proxy: ProxyFactory) -> None:
    with reranking_proxy() as proxy:
        response = requests.post(proxy.admin_url + "/_rerank/compare", data=b"{not json", timeout=10)
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "body"


def test_unknown_index_passes_the_elasticsearch_error_through(
    reranking_proxy: ProxyFactory, es_url: str
) -> None:
    direct = requests.post(es_url + "/no-such-index/_search", json={}, timeout=10)
    with reranking_proxy() as proxy:
        response = _compare(proxy, index="no-such-index", query=QUERY_TEXT)
    assert 400 <= direct.status_code < 500
    assert response.status_code == direct.status_code
    assert response.json()["error"]["type"] == direct.json()["error"]["type"]


def test_index_not_configured_is_skipped_with_both_columns_in_elasticsearch_order(
    reranking_proxy: ProxyFactory, fake: FakeReranker
) -> None:
    with reranking_proxy({"rerank": 1.0}, rerank={"indices": ["other-*"]}) as proxy:
        answer = _compare(proxy, index=INDEX, query=QUERY_TEXT, size=10).json()
    assert (answer["outcome"], answer["reason"]) == ("skipped", "index_not_configured")
    assert len(answer["elasticsearch"]) == 10
    assert _ids(answer["proxy"]) == _ids(answer["elasticsearch"])
    assert all(hit["moved"] == 0 for hit in answer["proxy"])
    assert fake.rerank_calls == 0


def test_blank_query_is_skipped_for_lack_of_query_text(reranking_proxy: ProxyFactory) -> None:
    with reranking_proxy() as proxy:
        answer = _compare(proxy, index=INDEX, query="  ", size=5).json()
    assert (answer["outcome"], answer["reason"]) == ("skipped", "no_query_text")
    assert len(answer["proxy"]) == 5


async def test_compare_forwards_only_the_users_own_authorization() -> None:
    async with recording_upstream() as upstream:
        with proxy_in_thread(make_config(upstream.url)) as proxy:
            headers = {"Authorization": "ApiKey dXNlcg==", "X-Opaque-Id": "admin-only"}
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    proxy.admin_url + "/_rerank/compare",
                    json={"index": "idx", "query": "q"},
                    headers=headers,
                ) as r,
            ):
                assert r.status == 200
                assert (await r.json())["outcome"] == "skipped"
    assert upstream.requests, "the compare reached Elasticsearch"
    for got in upstream.requests:
        assert got.raw_path == "/idx/_search"
        assert got.headers["Authorization"] == "ApiKey dXNlcg=="
        assert "X-Opaque-Id" not in got.headers


def test_elasticsearch_unreachable_is_502_json() -> None:
    with proxy_in_thread(make_config(f"http://127.0.0.1:{free_port()}")) as proxy:
        response = _compare(proxy, index=INDEX, query=QUERY_TEXT)
    assert response.status_code == 502
    assert response.json()["error"]["type"] == "elasticsearch_unavailable"


def test_page_and_its_assets_are_served_on_the_admin_listener(reranking_proxy: ProxyFactory) -> None:
    with reranking_proxy(rerank={"indices": ["library-*", INDEX]}) as proxy:
        page = requests.get(proxy.admin_url + "/_rerank/ui", timeout=10)
        script = requests.get(proxy.admin_url + "/_rerank/ui/ui.js", timeout=10)
        style = requests.get(proxy.admin_url + "/_rerank/ui/ui.css", timeout=10)
        missing = requests.get(proxy.admin_url + "/_rerank/ui/secrets.txt", timeout=10)
        defaults = requests.get(proxy.admin_url + "/_rerank/compare", timeout=10).json()
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert 'src="ui/ui.js"' in page.text and 'href="ui/ui.css"' in page.text
    assert script.status_code == 200 and "javascript" in script.headers["Content-Type"]
    assert style.status_code == 200 and style.headers["Content-Type"].startswith("text/css")
    assert missing.status_code == 404
    assert "http://" not in page.text + style.text and "https://" not in page.text + script.text + style.text
    assert defaults["index"] == INDEX, "the first concrete configured index"
    assert defaults["top_n"] == 20 and defaults["window"] == 100


def test_public_listener_does_not_serve_the_page(reranking_proxy: ProxyFactory) -> None:
    with reranking_proxy() as proxy:
        response = requests.get(proxy.url + "/_rerank/ui", timeout=10)
        compare = requests.post(proxy.url + "/_rerank/compare", json={"index": INDEX}, timeout=10)
    assert 400 <= response.status_code < 500, "forwarded to Elasticsearch, which rejects it"
    assert "<html" not in response.text.lower()
    assert 400 <= compare.status_code < 500
    assert "elasticsearch" not in compare.json()


@pytest.mark.slow
def test_browser_compares_both_orders_and_shows_moves(reranking_proxy: ProxyFactory) -> None:
    weights = {"rerank": 0.7, "bm25": 0.2, "recency": 0.05, "citations": 0.05}
    with reranking_proxy(weights, rerank={"indices": [INDEX]}) as proxy, chromium() as browser:
        # The English page, whatever language this machine's browser prefers.
        context = browser.new_context(locale="en-US", viewport={"width": 1440, "height": 1000})
        try:
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("console", lambda message: message.type == "error" and errors.append(message.text))
            page.goto(proxy.admin_url + "/_rerank/ui")
            page.wait_for_selector("body[data-state=ready]")
            assert page.input_value("#index") == INDEX
            assert page.input_value("#w-rerank") == "0.7"
            page.fill("#size", "12")
            page.fill("#query", QUERY_TEXT)
            page.press("#query", "Enter")
            page.wait_for_selector("body[data-state=done]")
            assert page.locator("#col-es .hit").count() == 12
            assert page.locator("#col-proxy .hit").count() == 12
            assert page.locator("#col-proxy .badge.up, #col-proxy .badge.down").count() >= 1
            assert page.inner_text("#outcome").lower() == "applied"
            assert "ms" in page.inner_text("#timings")

            # Moving a slider re-runs the comparison: bm25 alone keeps Elasticsearch's order.
            for name, value in (("rerank", "0"), ("recency", "0"), ("citations", "0"), ("bm25", "1")):
                page.eval_on_selector(
                    f"#w-{name}",
                    "(el, v) => { el.value = v; el.dispatchEvent(new Event('input', {bubbles: true})); }",
                    value,
                )
            page.wait_for_function(
                "document.querySelectorAll('#col-proxy .badge.same').length === 12", timeout=10_000
            )
            for name, value in (
                ("rerank", "0.6"),
                ("bm25", "0.25"),
                ("recency", "0.1"),
                ("citations", "0.1"),
            ):
                page.fill(f"#w-{name}", value)
            page.wait_for_function(
                "document.querySelectorAll('#col-proxy .badge.up, #col-proxy .badge.down').length > 0",
                timeout=10_000,
            )
            page.wait_for_selector("#columns:not(.busy)")
            page.locator("#query").focus()
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT))

            page.set_viewport_size({"width": 800, "height": 1000})
            es_box, proxy_box = (
                page.locator("#col-es").bounding_box(),
                page.locator("#col-proxy").bounding_box(),
            )
            assert es_box is not None and proxy_box is not None
            assert es_box["x"] == proxy_box["x"], "a narrow screen stacks the two columns"
            page.screenshot(path=str(SCREENSHOT.with_name("debug-ui-narrow.png")))
            assert errors == []
        finally:
            context.close()
