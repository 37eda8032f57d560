"""Hostile input cannot hurt the proxy: each attack of #14, answered as Elasticsearch would answer it."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import logging
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import psutil
import pytest
import requests
from elasticsearch import AsyncElasticsearch

from ..conftest import INDEX, QUERY
from ..fakes.canned_elasticsearch import CannedElasticsearch, canned_elasticsearch
from ..fakes.fake_reranker import FakeReranker
from ..fakes.proxy_server import RunningProxy, make_config, proxy_in_thread, proxy_process
from ..fakes.recording_upstream import RecordingUpstream, recording_upstream
from ..fakes.threaded import in_thread

WEIGHTS = {"rerank": 0.7, "bm25": 0.3}
StartProxy = Callable[..., AbstractContextManager[RunningProxy]]


def bool_chain(levels: int) -> dict[str, object]:
    node: dict[str, object] = {"match": {"title": "deep"}}
    for _ in range(levels):
        node = {"bool": {"must": node}}
    return {"query": node}


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.post(
        url, data=body, headers={"Content-Type": "application/json", **(headers or {})}, timeout=60
    )


@pytest.fixture
def canned() -> Iterator[CannedElasticsearch]:
    with in_thread(canned_elasticsearch, name="canned-es") as state:
        yield state


@pytest.fixture
def recorder() -> Iterator[RecordingUpstream]:
    with in_thread(recording_upstream, name="recording-es") as state:
        yield state


# --- 1. fault isolation -------------------------------------------------------------------------------


def test_query_nested_100_deep_gets_elasticsearchs_own_answer_not_a_500(
    reranking_proxy: StartProxy, es_url: str
) -> None:
    body = orjson.dumps(bool_chain(100))
    direct = post(f"{es_url}/{INDEX}/_search", body)
    with reranking_proxy(weights=WEIGHTS) as proxy:
        via_proxy = post(f"{proxy.url}/{INDEX}/_search", body)
    assert via_proxy.status_code == direct.status_code != 500
    assert via_proxy.content == direct.content
    assert (via_proxy.headers["X-Rerank"], via_proxy.headers["X-Rerank-Reason"]) == (
        "skipped",
        "query_too_deep",
    )


SEARCH_HIT = {"_index": INDEX, "_id": "1", "_score": 1.0, "_source": {"title": "deep learning"}}


def _answer(hits: list[object]) -> bytes:
    return orjson.dumps(
        {"took": 1, "timed_out": False, "hits": {"total": {"value": 2}, "max_score": 1, "hits": hits}}
    )


def _deep_source(levels: int) -> bytes:
    inner = b'{"title":"deep","x":' + b'{"y":' * levels + b"1" + b"}" * levels + b"}"
    hit = b'{"_index":"library","_id":"2","_score":0.5,"_source":' + inner + b"}"
    head = orjson.dumps(SEARCH_HIT)
    return (
        b'{"took":1,"timed_out":false,"hits":{"total":{"value":2},"max_score":1,"hits":['
        + head
        + b","
        + hit
        + b"]}}"
    )


@pytest.mark.parametrize(
    "payload",
    [_answer([SEARCH_HIT, "not an object"]), _answer([SEARCH_HIT, 42]), _deep_source(300)],
    ids=["hit-is-a-string", "hit-is-a-number", "source-300-deep"],
)
def test_an_answer_nobody_planned_for_is_forwarded_untouched(
    start_proxy: StartProxy,
    fake: FakeReranker,
    canned: CannedElasticsearch,
    payload: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    canned.payload = payload
    body = orjson.dumps({"query": {"match": {"title": "deep learning"}}, "size": 2})
    with start_proxy(es=canned.url, reranker_url=fake.url, reranker={"url": [fake.url]}) as proxy:
        with caplog.at_level(logging.ERROR):
            answers = [post(f"{proxy.url}/library/_search", body) for _ in range(3)]
        metrics = requests.get(f"{proxy.admin_url}/metrics", timeout=10).text
    for answer in answers:
        assert answer.status_code == 200
        assert answer.content == payload, "Elasticsearch's answer to the client's own request, byte for byte"
        assert (answer.headers["X-Rerank"], answer.headers["X-Rerank-Reason"]) == ("skipped", "proxy_error")
    assert canned.bodies[1::2] == [body] * 3, "after each failed rerank, the client's own bytes went out"
    tracebacks = [r for r in caplog.records if r.exc_info and "unplanned" in r.getMessage()]
    assert len(tracebacks) == 1, "one traceback per exception type and minute, not one per search"
    assert 'outcome="skipped",reason="proxy_error"' in metrics.replace("index_group", "").replace(
        ", ", ","
    ) or ("proxy_error" in metrics)


# --- 2. bounded work ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gzip_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 1 MB of gzip that inflates to 1 GB of a valid-looking JSON prefix plus zeros."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.gz"
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    with path.open("wb") as out:
        out.write(compressor.compress(b'{"query":{"match":{"title":"'))
        block = b"0" * (1 << 20)
        for _ in range(1024):
            out.write(compressor.compress(block))
        out.write(compressor.compress(b'"}}}') + compressor.flush())
    return path


def test_a_gzip_bomb_is_forwarded_untouched_without_inflating_it(
    recorder: RecordingUpstream, gzip_bomb: Path, tmp_path: Path
) -> None:
    bomb = gzip_bomb.read_bytes()
    assert len(bomb) < 2 << 20
    config = make_config(recorder.url, canary={"default": "rerank"})
    with proxy_process(config, tmp_path) as proxy:
        assert proxy.process is not None
        before = _peak_rss(proxy.process.pid)
        answer = post(f"{proxy.url}/library/_search", bomb, {"Content-Encoding": "gzip"})
        after = _peak_rss(proxy.process.pid)
    assert answer.status_code == 200
    assert (answer.headers["X-Rerank"], answer.headers["X-Rerank-Reason"]) == ("skipped", "body_too_large")
    forwarded = recorder.requests[-1]
    assert forwarded.body_sha256 == hashlib.sha256(bomb).hexdigest(), (
        "the client's compressed bytes, untouched"
    )
    assert forwarded.headers["Content-Encoding"] == "gzip"
    assert after - before < 100 << 20, f"peak resident memory grew by {(after - before) >> 20} MB"


def _peak_rss(pid: int) -> int:
    """The process's peak resident memory (VmHWM): an inflated body freed again still shows in it."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return psutil.Process(pid).memory_info().rss


def _msearch(count: int) -> bytes:
    line = orjson.dumps({"query": QUERY, "size": 1})
    return b"".join(b"{}\n" + line + b"\n" for _ in range(count))


def test_an_msearch_over_the_limit_is_forwarded_untouched(
    reranking_proxy: StartProxy, fake: FakeReranker
) -> None:
    body = _msearch(150)
    with reranking_proxy(weights=WEIGHTS) as proxy:
        answer = post(f"{proxy.url}/{INDEX}/_msearch", body, {"Content-Type": "application/x-ndjson"})
    assert answer.status_code == 200
    assert (answer.headers["X-Rerank"], answer.headers["X-Rerank-Reason"]) == ("skipped", "msearch_too_large")
    assert len(answer.json()["responses"]) == 150
    assert fake.rerank_calls == 0, "no search of it reached the model"


def test_the_async_official_client_survives_a_thousand_search_msearch(recorder: RecordingUpstream) -> None:
    searches: list[dict[str, Any]] = []
    for _ in range(1000):
        searches += [{}, {"query": QUERY, "size": 1}]

    async def run(url: str) -> dict[str, str]:
        async with AsyncElasticsearch(url, request_timeout=60) as client:
            answer = await client.msearch(index=INDEX, searches=searches)
            return {name.lower(): value for name, value in answer.meta.headers.items()}

    with proxy_in_thread(make_config(recorder.url, canary={"default": "rerank"})) as proxy:
        headers = asyncio.run(run(proxy.url))
    assert (headers["x-rerank"], headers["x-rerank-reason"]) == ("skipped", "msearch_too_large")
    assert recorder.requests[-1].raw_path == f"/{INDEX}/_msearch"


def test_per_search_headers_of_a_full_msearch_stay_small(reranking_proxy: StartProxy) -> None:
    body = _msearch(100)
    with reranking_proxy(weights=WEIGHTS) as proxy:
        answer = post(f"{proxy.url}/{INDEX}/_msearch", body, {"Content-Type": "application/x-ndjson"})
    assert answer.status_code == 200
    assert len(answer.headers["X-Rerank"]) <= 512
    assert answer.headers["X-Rerank"] == "applied=100"


# --- 3. headers ---------------------------------------------------------------------------------------


def _raw_request(
    url: str, method: str, path: str, headers: list[tuple[str, bytes]], body: bytes
) -> tuple[int, bytes, dict[str, str]]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        connection.putrequest(method, path)
        for name, value in headers:
            connection.putheader(name, value)
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        connection.close()


def test_query_header_that_is_not_utf8_is_ignored_and_never_trips_the_breaker(
    reranking_proxy: StartProxy, fake: FakeReranker
) -> None:
    body = orjson.dumps({"query": QUERY, "size": 5})
    headers = [("Content-Type", b"application/json"), ("X-Rerank-Query", b"\xff\xfe deep \xc3")]
    with reranking_proxy(weights=WEIGHTS, reranker={"breaker": {"failures": 2}}) as proxy:
        statuses = [_raw_request(proxy.url, "POST", f"/{INDEX}/_search", headers, body) for _ in range(6)]
        breakers = requests.get(f"{proxy.admin_url}/_rerank/ready", timeout=10).json()["reranker"]["breakers"]
        after = post(f"{proxy.url}/{INDEX}/_search", body)
    assert all(status == 200 and h["X-Rerank"] == "applied" for status, _, h in statuses)
    assert set(breakers.values()) == {"closed"}
    assert after.headers["X-Rerank"] == "applied"


def test_a_forwarded_header_that_is_not_utf8_is_refused_clearly(recorder: RecordingUpstream) -> None:
    with proxy_in_thread(make_config(recorder.url, canary={"default": "off"})) as proxy:
        status, payload, _ = _raw_request(
            proxy.url, "GET", "/library/_doc/1", [("X-Signature", b"a\xffb")], b""
        )
    assert status == 400
    assert orjson.loads(payload)["error"]["reason"] == "header [X-Signature] is not valid UTF-8"
    assert recorder.requests == [], "nothing was forwarded with bytes silently dropped"


def test_expect_100_continue_is_not_forwarded(recorder: RecordingUpstream) -> None:
    with proxy_in_thread(make_config(recorder.url, canary={"default": "off"})) as proxy:
        status, _, _ = _raw_request(
            proxy.url,
            "PUT",
            "/library/_doc/1",
            [("Content-Type", b"application/json"), ("Expect", b"100-continue")],
            b"{}",
        )
    assert status == 200
    assert "Expect" not in recorder.requests[-1].headers


def test_expect_100_continue_answers_promptly_against_elasticsearch(
    passthrough_proxy: RunningProxy, library: str
) -> None:
    status, _, _ = _raw_request(
        passthrough_proxy.url,
        "PUT",
        f"/{library}/_doc/expect-1?refresh=true",
        [("Content-Type", b"application/json"), ("Expect", b"100-continue")],
        b'{"title": "expect"}',
    )
    assert status in (200, 201)


# --- 4. secrets ---------------------------------------------------------------------------------------

SECRET = "s3cret-Pa55"


def test_passwords_in_urls_never_reach_admin_pages_metrics_or_logs(
    es_url: str, fake: FakeReranker, library: str, caplog: pytest.LogCaptureFixture
) -> None:
    reranker_url = fake.url.replace("http://", f"http://user:{SECRET}@")
    config = make_config(
        es_url, reranker_url, reranker={"url": [reranker_url, f"http://u:{SECRET}@127.0.0.1:9"]}
    )
    with caplog.at_level(logging.DEBUG), proxy_in_thread(config, self_test=True) as proxy:
        post(f"{proxy.url}/{INDEX}/_search", orjson.dumps({"query": QUERY}))
        pages = [
            requests.get(f"{proxy.admin_url}{path}", timeout=10).text
            for path in ("/_rerank/config", "/_rerank/ready", "/metrics")
        ]
    for page in pages:
        assert SECRET not in page
    assert "***@" in pages[0]
    assert not [r for r in caplog.records if SECRET in r.getMessage()]


def test_public_502_names_no_internal_address() -> None:
    # (Elasticsearch URLs carry no password: the config refuses them, see test_config.)
    with proxy_in_thread(make_config("http://127.0.0.1:9", canary={"default": "off"})) as proxy:
        answer = requests.get(f"{proxy.url}/library/_doc/1", timeout=30)
    assert answer.status_code == 502
    assert "127.0.0.1:9" not in answer.text
    assert answer.json()["error"]["reason"] == "Elasticsearch is unreachable"
