"""Never worse than Elasticsearch: every fault of the model server still answers 200, in order, on time."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
import requests
from elasticsearch import Elasticsearch

from ..conftest import INDEX, QUERY, TOPICS
from ..fakes.fake_reranker import FakeReranker, closed_url, start_fake_reranker
from ..fakes.proxy_server import RunningProxy, make_config, proxy_in_thread, proxy_process
from ..fakes.recording_upstream import recording_upstream
from ..fakes.threaded import in_thread

# A model that answers (even with an error) is given a budget no load reaches, so the reason is the
# fault's own and never "timeout" on a busy machine; a model that cannot answer in time (it hangs, or
# answers after many seconds) gets a short budget, and the answer must come within it.
BUDGET_MS = 300
ANSWERS_BUDGET_MS = 30_000
MODEL_LATENCY_S = 10.0
# Scheduling on a loaded machine, far less than the model's latency.
SLACK_MS = 1000
# With recency and citations at 0 the prior order is Elasticsearch's, so a degraded answer equals it.
WEIGHTS = {"rerank": 0.7, "bm25": 0.3}


def _timings(response: requests.Response) -> dict[str, float]:
    parts = (item.strip().split(";dur=") for item in response.headers["Server-Timing"].split(","))
    return {name: float(value) for name, value in parts}


def _search(proxy: RunningProxy, size: int = 10, query: dict[str, Any] | None = None) -> requests.Response:
    body = {"query": query or QUERY, "size": size}
    return requests.post(f"{proxy.url}/{INDEX}/_search", json=body, timeout=30)


def _ids(response: requests.Response) -> list[str]:
    return [hit["_id"] for hit in response.json()["hits"]["hits"]]


def _set(**faults: Any) -> Callable[[FakeReranker], None]:
    def apply(fake: FakeReranker) -> None:
        for name, value in faults.items():
            setattr(fake.faults, name, value)

    return apply


FAULTS = [
    ("connection_refused", None, "unavailable"),
    ("accept_then_hang", _set(hang=True), "timeout"),
    ("slow_past_budget", _set(latency_s=MODEL_LATENCY_S), "timeout"),
    ("http_500", _set(status=500), "unavailable"),
    ("http_400_new_shape", _set(status=400, error_shape="new"), "bad_response"),
    ("http_400_old_shape", _set(status=400, error_shape="old"), "bad_response"),
    ("invalid_json", _set(garbage="invalid_json"), "bad_response"),
    ("wrong_number_of_results", _set(garbage="wrong_count"), "bad_response"),
    ("index_out_of_range", _set(garbage="index_out_of_range"), "bad_response"),
    ("nan_score", _set(garbage="nan"), "bad_response"),
    ("infinite_score", _set(garbage="inf"), "bad_response"),
    ("dropped_mid_body", _set(drop_mid_body=True), "unavailable"),
]


@pytest.mark.parametrize(("name", "inject", "reason"), FAULTS, ids=[fault[0] for fault in FAULTS])
def test_model_fault_answers_elasticsearch_order_within_budget(
    reranking_proxy: Callable[..., AbstractContextManager[RunningProxy]],
    fake: FakeReranker,
    es_direct: Elasticsearch,
    name: str,
    inject: Callable[[FakeReranker], None] | None,
    reason: str,
) -> None:
    budget_ms = BUDGET_MS if reason == "timeout" else ANSWERS_BUDGET_MS
    reranker: dict[str, Any] = {"timeout_ms": budget_ms}
    if inject is None:
        reranker["url"] = [closed_url()]
    else:
        inject(fake)
    with reranking_proxy(WEIGHTS, reranker=reranker) as proxy:
        started = time.monotonic()
        response = _search(proxy, size=10)
        wall_ms = (time.monotonic() - started) * 1000
    assert response.status_code == 200
    assert response.headers["X-Rerank"] == "degraded"
    assert response.headers["X-Rerank-Reason"] == reason
    direct = es_direct.search(index=INDEX, query=QUERY, size=10)
    assert _ids(response) == [hit["_id"] for hit in direct["hits"]["hits"]]
    timing = _timings(response)
    assert timing["rerank"] <= budget_ms + SLACK_MS, timing
    assert timing["total"] - timing["es"] <= budget_ms + SLACK_MS, timing
    assert wall_ms < timing["es"] + budget_ms + SLACK_MS, "the client is not kept waiting past the budget"


def test_slow_model_within_budget_is_applied(
    reranking_proxy: Callable[..., AbstractContextManager[RunningProxy]], fake: FakeReranker
) -> None:
    fake.faults.latency_s = 0.2
    with reranking_proxy(WEIGHTS, reranker={"timeout_ms": ANSWERS_BUDGET_MS}) as proxy:
        response = _search(proxy)
    assert response.headers["X-Rerank"] == "applied"
    assert 200 <= _timings(response)["rerank"] <= ANSWERS_BUDGET_MS, "the proxy waited for the model"


def test_breaker_opens_stops_calling_then_probes_and_closes(
    reranking_proxy: Callable[..., AbstractContextManager[RunningProxy]], fake: FakeReranker
) -> None:
    fake.faults.status = 500
    breaker = {"failures": 3, "window_s": 30, "open_s": 1}
    with reranking_proxy(
        WEIGHTS, reranker={"retries": 0, "breaker": breaker, "cache": {"max_entries": 0}}
    ) as proxy:
        reasons = [_search(proxy).headers["X-Rerank-Reason"] for _ in range(3)]
        assert reasons == ["unavailable"] * 3
        calls = fake.rerank_calls
        for _ in range(3):
            response = _search(proxy)
            assert response.status_code == 200
            assert response.headers["X-Rerank-Reason"] == "circuit_open"
        assert fake.rerank_calls == calls, "no model call while the circuit is open"
        time.sleep(1.1)
        fake.faults.status = None
        probe = _search(proxy)
        assert probe.headers["X-Rerank"] == "applied"
        assert fake.rerank_calls == calls + 1, "exactly one probe"
        assert _search(proxy).headers["X-Rerank"] == "applied", "closed again"


def test_two_reranker_urls_one_down_still_applies(
    reranking_proxy: Callable[..., AbstractContextManager[RunningProxy]], fake: FakeReranker
) -> None:
    reranker = {"url": [closed_url(), fake.url], "retries": 1, "cache": {"max_entries": 0}}
    with reranking_proxy(WEIGHTS, reranker=reranker) as proxy:
        outcomes = [
            _search(proxy, query={"match": {"abstract": word}}).headers["X-Rerank"] for word in TOPICS
        ]
    assert outcomes == ["applied"] * 8
    assert fake.rerank_calls == 8


def test_score_cache_skips_model_until_document_text_changes(
    reranking_proxy: Callable[..., AbstractContextManager[RunningProxy]],
    fake: FakeReranker,
    es_direct: Elasticsearch,
) -> None:
    # titles end in the document number: a window of three hits, all of them sent to the model
    query = {"match": {"title": "5 17 42"}}
    with reranking_proxy(WEIGHTS) as proxy:
        first = _search(proxy, query=query)
        second = _search(proxy, query=query)
        assert fake.rerank_calls == 1, "a repeated query makes no model call"
        assert _ids(first) == _ids(second)
        top = _ids(first)[0]
        # the abstract is not searched by this query, so the window stays; only the text sent changes
        original = es_direct.get(index=INDEX, id=top)["_source"]["abstract"]
        try:
            es_direct.update(index=INDEX, id=top, doc={"abstract": original + " revised"}, refresh=True)
            _search(proxy, query=query)
            assert fake.rerank_calls == 2, "a changed document text is scored again"
            (changed,) = fake.documents_seen()[-1]
            assert "revised" in changed, "only the changed document is sent"
        finally:
            es_direct.update(index=INDEX, id=top, doc={"abstract": original}, refresh=True)


@pytest.mark.slow
@pytest.mark.timeout(600)  # about 15 s alone; 2,000 searches take far longer on a loaded machine
def test_soak_with_random_model_faults_leaks_nothing(library: str, es_url: str) -> None:
    """2,000 searches, 32 concurrent clients, 30% of model calls failing: all 200, nothing leaked."""
    process = psutil.Process(os.getpid())
    fds_before = process.num_fds()
    with in_thread(lambda: start_fake_reranker(seed=3), name="soak-fake") as fake:
        fake.faults.fail_ratio = 0.3
        fake.faults.latency_s = 0.005
        config = make_config(
            es_url,
            fake.url,
            blend={"weights": WEIGHTS},
            # Degraded by the injected failures only, never by a slow machine's timeouts.
            reranker={"url": [fake.url], "cache": {"max_entries": 50}, "timeout_ms": ANSWERS_BUDGET_MS},
        )
        with proxy_in_thread(config) as proxy:
            statuses, outcomes = asyncio.run(_soak(proxy.url, searches=2000, clients=32))
            assert proxy.loop is not None
            leftover = asyncio.run_coroutine_threadsafe(_settled_tasks(), proxy.loop).result(30)
    assert statuses == {200: 2000}
    assert outcomes.get("applied", 0) > 0 and outcomes.get("degraded", 0) > 0, outcomes
    assert leftover == 0, "no task of the proxy is left running once the load has stopped"
    deadline = time.monotonic() + 10
    while process.num_fds() > fds_before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert process.num_fds() <= fds_before, "every socket and file the run opened is closed again"


async def _soak(url: str, searches: int, clients: int) -> tuple[dict[int, int], dict[str, int]]:
    rng = random.Random(11)
    words = [*TOPICS, "data"]
    queue: asyncio.Queue[str] = asyncio.Queue()
    for _ in range(searches):
        queue.put_nowait(" ".join(rng.sample(words, 2)))
    statuses: dict[int, int] = {}
    outcomes: dict[str, int] = {}

    async def client(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            text = queue.get_nowait()
            body = {"query": {"match": {"abstract": text}}, "size": 10}
            async with session.post(f"{url}/{INDEX}/_search", json=body) as response:
                await response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1
                outcome = response.headers.get("X-Rerank", "none")
                outcomes[outcome] = outcomes.get(outcome, 0) + 1

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    return statuses, outcomes


async def _settled_tasks() -> int:
    """Tasks of the proxy's loop other than this one and the server's own, after a moment to settle."""
    await asyncio.sleep(0.5)
    current = asyncio.current_task()
    running = [task for task in asyncio.all_tasks() if task is not current and not task.done()]
    # The test harness keeps one task: the `in_thread` main coroutine waiting for its stop event.
    return len([task for task in running if "in_thread" not in repr(task.get_coro())])


def test_sigterm_drains_in_flight_requests_and_exits_cleanly(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, bytes]:
        async with recording_upstream() as upstream:
            upstream.delay_s = 1.0
            config = make_config(upstream.url, canary={"default": "off"}, server={"shutdown_timeout_s": 5})
            with proxy_process(config, tmp_path) as proxy:
                assert proxy.process is not None
                async with aiohttp.ClientSession() as session:
                    request = asyncio.ensure_future(session.get(proxy.url + "/slow/_doc/1"))
                    # In flight once Elasticsearch has it (a fixed sleep lost this race on a busy machine).
                    deadline = time.monotonic() + 30
                    while not upstream.requests and time.monotonic() < deadline:  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
                    assert upstream.requests, "the request reached Elasticsearch through the proxy"
                    proxy.process.send_signal(signal.SIGTERM)
                    response = await request
                    body = await response.read()
                    status = response.status
                    response.release()
                code = await asyncio.to_thread(proxy.process.wait, 15)
                assert code == 0
            return status, body

    status, body = asyncio.run(scenario())
    assert status == 200, body
    log = (tmp_path / "proxy.log").read_text()
    for warning in ("Unclosed", "Task was destroyed", "Traceback", "never awaited"):
        assert warning not in log, log
