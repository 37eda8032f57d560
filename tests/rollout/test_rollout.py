"""Canary and rollout: modes per address range through trusted proxies, overrides, shadow, hot reload."""

from __future__ import annotations

import asyncio
import re
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import requests
import yaml

from es_rerank_proxy.config import config_to_dict
from es_rerank_proxy.rollout.shadow import ShadowLimits, ShadowLoad, shadow_refusal
from es_rerank_proxy.runtime import SettledFile

from ..conftest import INDEX, QUERY
from ..fakes.fake_reranker import FakeReranker
from ..fakes.proxy_server import RunningProxy, make_config, proxy_in_thread, proxy_process

RULES = [
    {"name": "computer-science", "cidr": ["10.12.0.0/16", "2001:db8::/48"], "mode": "rerank"},
    {"name": "law-shadow", "cidr": ["10.20.0.0/16"], "mode": "shadow", "indices": ["library-*"]},
]


def _search(proxy: RunningProxy, **headers: str) -> requests.Response:
    return requests.post(
        f"{proxy.url}/{INDEX}/_search", json={"query": QUERY, "size": 10}, headers=headers, timeout=30
    )


def _normalise(body: bytes) -> bytes:
    return re.sub(rb'"took":\d+', b'"took":0', body)


@pytest.mark.parametrize(
    ("trusted", "forwarded", "expected"),
    [
        (["127.0.0.1/32"], {"X-Forwarded-For": "10.12.3.4"}, "applied"),
        (["127.0.0.1/32"], {"X-Forwarded-For": "10.13.0.1"}, "skipped"),
        (["127.0.0.1/32"], {"X-Forwarded-For": "2001:db8::5"}, "applied"),
        (["127.0.0.1/32"], {"X-Forwarded-For": "::ffff:10.12.9.9"}, "applied"),
        (["127.0.0.1/32"], {"Forwarded": 'for="[2001:db8::7]:4711"'}, "applied"),
        # a client behind two trusted hops: the right-most address that is not a trusted proxy counts
        (["127.0.0.1/32", "192.0.2.0/24"], {"X-Forwarded-For": "10.12.0.8, 192.0.2.1"}, "applied"),
        # the same chain when 192.0.2.1 is not trusted: that hop is the client
        (["127.0.0.1/32"], {"X-Forwarded-For": "10.12.0.8, 192.0.2.1"}, "skipped"),
        # an untrusted peer cannot opt itself in by forging the header
        ([], {"X-Forwarded-For": "10.12.3.4"}, "skipped"),
    ],
)
def test_mode_per_address_range_through_trusted_proxies(
    reranking_proxy: Callable[..., AbstractContextManager[RunningProxy]],
    trusted: list[str],
    forwarded: dict[str, str],
    expected: str,
) -> None:
    canary = {"default": "off", "trusted_proxies": trusted, "rules": RULES}
    with reranking_proxy(canary=canary) as proxy:
        response = _search(proxy, **forwarded)
    assert response.status_code == 200
    assert response.headers["X-Rerank"] == expected
    if expected == "skipped":
        assert response.headers["X-Rerank-Reason"] == "canary_off"


def test_rule_indices_restrict_the_rule(
    reranking_proxy: Callable[..., AbstractContextManager[RunningProxy]],
) -> None:
    rules = [{"name": "other", "cidr": ["10.12.0.0/16"], "mode": "rerank", "indices": ["catalogue-*"]}]
    with reranking_proxy(canary={"default": "off", "rules": rules}) as proxy:
        assert _search(proxy, **{"X-Forwarded-For": "10.12.3.4"}).headers["X-Rerank"] == "skipped"


@pytest.mark.parametrize(
    ("token_given", "expected"),
    [("staff-secret", "applied"), ("guess", "skipped"), (None, "skipped")],
)
def test_override_header_needs_the_token(
    reranking_proxy: Callable[..., AbstractContextManager[RunningProxy]],
    token_given: str | None,
    expected: str,
) -> None:
    headers = {"X-Rerank-Mode": "rerank"}
    if token_given is not None:
        headers["X-Rerank-Token"] = token_given
    with reranking_proxy(canary={"default": "off", "override_token": "staff-secret"}) as proxy:
        assert _search(proxy, **headers).headers["X-Rerank"] == expected


def test_override_cannot_be_used_when_no_token_is_configured(
    reranking_proxy: Callable[..., AbstractContextManager[RunningProxy]],
) -> None:
    with reranking_proxy(canary={"default": "off"}) as proxy:
        response = _search(proxy, **{"X-Rerank-Mode": "rerank", "X-Rerank-Token": ""})
    assert response.headers["X-Rerank"] == "skipped"


def test_shadow_answers_elasticsearch_bytes_and_records_the_comparison(
    reranking_proxy: Callable[..., AbstractContextManager[RunningProxy]], fake: FakeReranker, es_url: str
) -> None:
    with reranking_proxy({"rerank": 1.0}, canary={"default": "shadow"}) as proxy:
        answers = [_search(proxy) for _ in range(3)]
        metrics = _wait_for_metric(proxy, "es_rerank_proxy_shadow_kendall_tau_count 3.0")
    direct = requests.post(f"{es_url}/{INDEX}/_search", json={"query": QUERY, "size": 10}, timeout=30)
    for answer in answers:
        assert answer.headers["X-Rerank"] == "shadow"
        assert _normalise(answer.content) == _normalise(direct.content), (
            "byte for byte Elasticsearch's answer"
        )
    assert fake.rerank_calls >= 1, "the shadow reranked in the background"
    assert "es_rerank_proxy_shadow_kendall_tau_count 3.0" in metrics
    assert 'es_rerank_proxy_shadow_runs_total{outcome="applied",reason=""} 3.0' in metrics
    assert "es_rerank_proxy_shadow_top10_overlap_count 3.0" in metrics


def test_shadowed_msearch_compares_each_eligible_search_and_answers_elasticsearch_bytes(
    reranking_proxy: Callable[..., AbstractContextManager[RunningProxy]], fake: FakeReranker, es_url: str
) -> None:
    lines = [
        {"index": INDEX},
        {"query": QUERY, "size": 5},
        {"index": INDEX},
        {"query": QUERY, "sort": [{"citations": "desc"}]},  # not eligible: no comparison
        {"index": INDEX},
        {
            "query": {"match": {"title": "library"}},
            "size": 3,
            "aggs": {"n": {"value_count": {"field": "_id"}}},
        },
    ]
    body = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    headers = {"Content-Type": "application/x-ndjson"}
    with reranking_proxy({"rerank": 1.0}, canary={"default": "shadow"}) as proxy:
        answer = requests.post(f"{proxy.url}/_msearch", data=body, headers=headers, timeout=30)
        metrics = _wait_for_metric(proxy, "es_rerank_proxy_shadow_kendall_tau_count 2.0")
    direct = requests.post(f"{es_url}/_msearch", data=body, headers=headers, timeout=30)
    assert answer.headers["X-Rerank"] == "shadow"
    assert _normalise(answer.content) == _normalise(direct.content)
    assert "es_rerank_proxy_shadow_kendall_tau_count 2.0" in metrics, "one comparison per eligible search"
    assert fake.rerank_calls == 2


def test_shadow_work_is_dropped_and_counted_when_full(
    reranking_proxy: Callable[..., AbstractContextManager[RunningProxy]], fake: FakeReranker
) -> None:
    # The one shadow admitted holds its slot for the model's 5 s: the three searches after it find the
    # capacity full, and none of the four answers waits for the model.
    fake.faults.latency_s = 5.0
    with reranking_proxy(
        canary={"default": "shadow", "shadow_max_inflight": 1}, reranker={"timeout_ms": 10_000}
    ) as p:
        answers, waits = [], []
        for i in range(4):
            started = time.monotonic()
            answers.append(_search(p, **{"X-Rerank-Query": f"q{i}"}))
            waits.append(time.monotonic() - started)
        metrics = requests.get(f"{p.admin_url}/metrics", timeout=10).text
    assert all(a.headers["X-Rerank"] == "shadow" for a in answers)
    assert max(waits) < fake.faults.latency_s, "shadow work never delays an answer"
    dropped = re.search(
        r'^es_rerank_proxy_shadow_dropped_total\{reason="shadow_capacity"\} (\S+)$', metrics, re.M
    )
    assert dropped is not None and float(dropped.group(1)) >= 2


LIMITS = ShadowLimits(max_shadows=16, max_model_calls=8, max_elasticsearch_requests=4)


@pytest.mark.parametrize(
    ("load", "limits", "refusal"),
    [
        pytest.param(ShadowLoad(0, 0, 0), LIMITS, None, id="idle"),
        pytest.param(ShadowLoad(15, 7, 3), LIMITS, None, id="just below every limit"),
        pytest.param(ShadowLoad(16, 0, 0), LIMITS, "shadow_capacity", id="shadow work full"),
        pytest.param(ShadowLoad(0, 8, 0), LIMITS, "model_saturated", id="model saturated"),
        pytest.param(ShadowLoad(0, 0, 4), LIMITS, "elasticsearch_busy", id="live searches queue at ES"),
        pytest.param(
            ShadowLoad(0, 0, 99),
            ShadowLimits(max_shadows=16, max_model_calls=8, max_elasticsearch_requests=0),
            None,
            id="0 turns the Elasticsearch check off",
        ),
        pytest.param(ShadowLoad(16, 8, 4), LIMITS, "shadow_capacity", id="the first reason is given"),
        pytest.param(
            ShadowLoad(0, 0, 0),
            ShadowLimits(max_shadows=0, max_model_calls=8, max_elasticsearch_requests=4),
            "shadow_capacity",
            id="capacity 0 turns shadow work off",
        ),
    ],
)
def test_shadow_admission(load: ShadowLoad, limits: ShadowLimits, refusal: str | None) -> None:
    assert shadow_refusal(load, limits) == refusal


def test_shadow_is_dropped_while_elasticsearch_is_busy_with_live_requests(
    reranking_proxy: Callable[..., AbstractContextManager[RunningProxy]], fake: FakeReranker, es_url: str
) -> None:
    """A slow upload holds a request open at Elasticsearch: with a limit of 1, shadows wait their turn."""

    async def slow_upload(proxy: RunningProxy, uploading: threading.Event, done: threading.Event) -> int:
        async def body() -> AsyncIterator[bytes]:
            yield b'{"index": {"_index": "shadow-busy-bulk"}}\n'
            uploading.set()
            await asyncio.to_thread(done.wait, 30)
            yield b'{"title": "held open"}\n'

        async with aiohttp.ClientSession() as session:
            headers = {"Content-Type": "application/x-ndjson"}
            async with session.post(f"{proxy.url}/_bulk", data=body(), headers=headers) as response:
                await response.read()
                return response.status

    with reranking_proxy(
        {"rerank": 1.0}, canary={"default": "shadow", "shadow_max_elasticsearch_inflight": 1}
    ) as proxy:
        uploading, done = threading.Event(), threading.Event()
        statuses: list[int] = []
        upload = threading.Thread(
            target=lambda: statuses.append(asyncio.run(slow_upload(proxy, uploading, done)))
        )
        upload.start()
        try:
            assert uploading.wait(10)
            held = "es_rerank_proxy_elasticsearch_requests_in_flight 1.0"
            assert held in _wait_for_metric(proxy, held), "the upload is open at Elasticsearch"
            busy = [_search(proxy) for _ in range(3)]
        finally:
            done.set()
            upload.join(30)
        idle = _search(proxy)
        metrics = _wait_for_metric(
            proxy, 'es_rerank_proxy_shadow_runs_total{outcome="applied",reason=""} 1.0'
        )
    assert statuses == [200]
    assert [a.headers["X-Rerank"] for a in [*busy, idle]] == ["shadow"] * 4, "answers never wait"
    assert 'es_rerank_proxy_shadow_dropped_total{reason="elasticsearch_busy"} 3.0' in metrics
    assert 'es_rerank_proxy_shadow_runs_total{outcome="applied",reason=""} 1.0' in metrics, (
        "once Elasticsearch is free again, shadows run"
    )


def _wait_for_metric(proxy: RunningProxy, line: str, timeout_s: float = 30.0) -> str:
    deadline = time.monotonic() + timeout_s
    metrics = ""
    while time.monotonic() < deadline:
        metrics = requests.get(f"{proxy.admin_url}/metrics", timeout=10).text
        if line in metrics:
            break
        time.sleep(0.05)
    return metrics


A, B, HALF = (1, 10, 1), (2, 20, 1), (2, 0, 1)  # (mtime, size, inode) of a file being edited


@pytest.mark.parametrize(
    ("polls", "reloads"),
    [
        pytest.param([A, A, A], [False, False, False], id="unchanged"),
        pytest.param([B, B], [False, True], id="a change applies once it has held for a poll"),
        pytest.param([B, B, B], [False, True, False], id="and only once"),
        pytest.param([HALF, B, B], [False, False, True], id="a half-written file is never applied"),
        pytest.param([B, A, A], [False, False, False], id="an edit undone before it settled"),
        pytest.param([None, None, A, A], [False, True, False, True], id="deleted (reported), then restored"),
    ],
)
def test_config_file_changes_apply_once_settled(
    polls: list[tuple[int, int, int] | None], reloads: list[bool]
) -> None:
    watched = SettledFile(A)
    assert [watched.settled_change(signature) for signature in polls] == reloads


def _write_config(path: Path, proxy_config: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(proxy_config))


def test_reload_while_clients_search_applies_valid_and_ignores_invalid(
    es_url: str, library: str, fake: FakeReranker, tmp_path: Path
) -> None:
    config = make_config(es_url, fake.url, canary={"default": "off"}, reranker={"url": [fake.url]})
    data = config_to_dict(config, mask_secrets=False)
    path = tmp_path / "config.yaml"
    _write_config(path, data)
    with proxy_in_thread(config, config_path=str(path), watch_s=0.05) as proxy:
        stop = threading.Event()
        seen: list[tuple[float, int, str]] = []
        worker = threading.Thread(target=lambda: asyncio.run(_search_continuously(proxy.url, stop, seen)))
        worker.start()
        try:
            # Conditions, not fixed sleeps: on a loaded machine a search can take longer than a sleep.
            assert _wait_until(lambda: bool(seen)), "searches run before the reload"
            _write_config(path, {**data, "canary": {**data["canary"], "default": "rerank"}})
            switched = _wait_until(lambda: bool(seen) and seen[-1][2] == "applied")
            path.write_text("canary:\n  default: sideways\n")
            # Not any error: write_text truncates first, and a watcher that looks in between rejects the
            # empty file before it sees the invalid one.
            assert _wait_until(
                lambda: str(_shown_config(proxy)["last_reload_error"]).startswith(INVALID_DEFAULT)
            ), "invalid file seen"
            rejected_at = time.monotonic()
            assert _wait_until(lambda: sum(1 for when, _, _ in seen if when > rejected_at) >= 8)
            shown = _shown_config(proxy)
        finally:
            stop.set()
            worker.join(30)
    assert switched, "the new rules apply after the reload"
    assert {status for _, status, _ in seen} == {200}, "no failed request during reloads"
    after_invalid = [outcome for when, _, outcome in seen if when > rejected_at]
    assert after_invalid and set(after_invalid) == {"applied"}, "an invalid file changes nothing"
    assert shown["config"]["canary"]["default"] == "rerank"
    assert shown["last_reload_error"].startswith(INVALID_DEFAULT)
    assert sum(1 for _, _, outcome in seen if outcome == "skipped") > 0


def _shown_config(proxy: RunningProxy) -> dict[str, Any]:
    answer: dict[str, Any] = requests.get(f"{proxy.admin_url}/_rerank/config", timeout=10).json()
    return answer


async def _search_continuously(url: str, stop: threading.Event, seen: list[tuple[float, int, str]]) -> None:
    async def client(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            async with session.post(f"{url}/{INDEX}/_search", json={"query": QUERY}) as response:
                await response.read()
                seen.append((time.monotonic(), response.status, response.headers.get("X-Rerank", "")))

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(client(session) for _ in range(8)))


INVALID_DEFAULT = "canary.default: expected one of off | rerank | shadow"


def _wait_until(condition: Callable[[], bool], timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_sighup_reloads_a_running_process(es_url: str, tmp_path: Path) -> None:
    config = make_config(es_url, canary={"default": "off"})
    with proxy_process(config, tmp_path) as proxy:
        assert proxy.process is not None
        path = tmp_path / "config.yaml"
        data = yaml.safe_load(path.read_text())
        data["canary"]["percent"] = 42
        path.write_text(yaml.safe_dump(data))
        proxy.process.send_signal(signal.SIGHUP)
        assert _wait_until(
            lambda: (
                requests.get(f"{proxy.admin_url}/_rerank/config", timeout=10).json()["config"]["canary"][
                    "percent"
                ]
                == 42
            )
        )
        assert proxy.process.poll() is None, "SIGHUP reloads; it does not stop the proxy"
        shown = requests.get(f"{proxy.admin_url}/_rerank/config", timeout=10).json()
    assert shown["path"] == str(path)
