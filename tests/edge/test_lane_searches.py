"""Searches on the fast lane: the pipeline answers them exactly as it does on aiohttp's path.

A request with a `Keep-Alive` header is not plain, so aiohttp's path takes it; the same request without
one takes the lane. Each case is sent both ways to one proxy and the answers must be the same.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import aiohttp
import orjson
import pytest
import requests
from elasticsearch import Elasticsearch

from es_rerank_proxy.app import RUNTIME
from es_rerank_proxy.observe.search_log import SEARCH_LOGGER

from ..conftest import INDEX, QUERY
from ..fakes.fake_reranker import FakeReranker
from ..fakes.proxy_server import RunningProxy, make_config, running_proxy
from ..fakes.recording_upstream import recording_upstream

# Headers the two paths may set differently and that no client relies on being equal: timings, and the
# Date/Server headers aiohttp adds to the answers it builds.
_UNEQUAL = {"server-timing", "date", "server", "content-length"}

SEARCH = orjson.dumps({"query": QUERY, "size": 10})
MATCH_ALL = b'{"query": {"match_all": {}}}'
POST_HEAD = b"POST /i/_search HTTP/1.1\r\nHost: p\r\nContent-Length: %d\r\n\r\n"  # a body to follow
MSEARCH = b"".join(b'{"index": "%s"}\n%s\n' % (INDEX.encode(), search) for search in (SEARCH, SEARCH))

CASES: list[tuple[str, str, str, bytes | None, dict[str, str], str]] = [
    # (case, method, target, body, headers, the X-Rerank the client gets)
    ("reranked", "POST", f"/{INDEX}/_search", SEARCH, {"Content-Type": "application/json"}, "applied"),
    ("query string", "GET", f"/{INDEX}/_search?q=abstract:neural&size=5", None, {}, "applied"),
    ("bypassed: sort", "GET", f"/{INDEX}/_search?q=abstract:neural&sort=_doc", None, {}, "skipped"),
    ("gzip answer", "POST", f"/{INDEX}/_search", SEARCH, {"Accept-Encoding": "gzip"}, "applied"),
    (
        "gzip body",
        "POST",
        f"/{INDEX}/_search",
        gzip.compress(SEARCH, mtime=0),
        {"Content-Encoding": "gzip", "Content-Type": "application/json"},
        "applied",
    ),
    ("_msearch", "POST", "/_msearch", MSEARCH, {"Content-Type": "application/x-ndjson"}, "applied,applied"),
    (
        "missing index",
        "POST",
        "/no-such-index/_search",
        SEARCH,
        {"Content-Type": "application/json"},
        "skipped",
    ),
    (
        "malformed body",
        "POST",
        f"/{INDEX}/_search",
        b'{"query": ',
        {"Content-Type": "application/json"},
        "skipped",
    ),
]


def _send(proxy: RunningProxy, method: str, target: str, body: bytes | None, headers: dict[str, str]) -> Any:
    with requests.Session() as session:
        session.headers.pop("Accept-Encoding")  # each case says whether it takes gzip
        return session.request(method, proxy.url + target, data=body, headers=headers, stream=True)


def _comparable(response: Any) -> tuple[int, dict[str, str], bytes]:
    headers = {k.lower(): v for k, v in response.headers.items() if k.lower() not in _UNEQUAL}
    return response.status_code, headers, response.raw.read(decode_content=False)


def _lane_searches(proxy: RunningProxy) -> float:
    assert proxy.app is not None
    return float(proxy.app[RUNTIME].metrics.fast_lane_searches._value.get())


@pytest.mark.parametrize(
    ("case", "method", "target", "body", "headers", "outcome"), CASES, ids=[c[0] for c in CASES]
)
def test_a_search_is_answered_the_same_on_the_lane_and_on_aiohttps_path(
    reranking_proxy: Callable[..., AbstractContextManager[RunningProxy]],
    fake: FakeReranker,
    case: str,
    method: str,
    target: str,
    body: bytes | None,
    headers: dict[str, str],
    outcome: str,
) -> None:
    with reranking_proxy({"rerank": 1.0}) as proxy:
        through_aiohttp = _send(proxy, method, target, body, {**headers, "Keep-Alive": "timeout=60"})
        assert _lane_searches(proxy) == 0
        on_lane = _send(proxy, method, target, body, headers)
        assert _lane_searches(proxy) == 1
        lane = _comparable(on_lane)
        assert lane == _comparable(through_aiohttp)
    status, answer_headers, _ = lane
    assert answer_headers.get("x-rerank", "") == outcome
    if case in ("missing index", "malformed body"):
        assert status >= 400  # Elasticsearch's own error, as it gave it
    else:
        assert status == 200
    if case == "bypassed: sort":
        assert answer_headers["x-rerank-reason"] == "sort"
    if case == "gzip answer":
        assert answer_headers["content-encoding"] == "gzip"


def test_a_search_body_over_the_limit_gets_the_same_413_on_the_lane(
    reranking_proxy: Callable[..., AbstractContextManager[RunningProxy]],
) -> None:
    body = orjson.dumps({"query": {"match": {"abstract": "x" * 2000}}})
    with reranking_proxy({"rerank": 1.0}, server={"max_search_body_bytes": 1024}) as proxy:
        through_aiohttp = _comparable(
            _send(proxy, "POST", f"/{INDEX}/_search", body, {"Keep-Alive": "timeout=60"})
        )
        on_lane = _comparable(_send(proxy, "POST", f"/{INDEX}/_search", body, {}))
        assert _lane_searches(proxy) == 1
    assert on_lane == through_aiohttp
    status, headers, payload = on_lane
    assert status == 413 and orjson.loads(payload)["error"]["type"] == "content_too_long_exception"
    assert headers["x-elastic-product"] == "Elasticsearch"


async def test_a_lane_search_reaches_elasticsearch_with_the_clients_credentials_and_the_clients_address() -> (
    None
):
    async with recording_upstream() as upstream:
        # The canary sends only this client to the pipeline's "off" arm: the rule must see the peer's address.
        canary = {"default": "rerank", "rules": [{"name": "here", "cidr": ["127.0.0.1/32"], "mode": "off"}]}
        async with running_proxy(make_config(upstream.url, canary=canary)) as proxy:
            reader, writer = await asyncio.open_connection(*proxy.url.removeprefix("http://").split(":"))
            writer.write(b"GET /i/_search?q=x HTTP/1.1\r\nHost: p\r\nAuthorization: ApiKey abc\r\n\r\n")
            first = await reader.readuntil(b"\r\n\r\n")
            writer.close()
            assert proxy.app is not None
            assert proxy.app[RUNTIME].metrics.fast_lane_searches._value.get() == 1
        assert b"X-Rerank: skipped" in first and b"X-Rerank-Reason: canary_off" in first
        search = upstream.requests[0]
        assert (search.method, search.raw_path) == ("GET", "/i/_search?q=x")
        assert search.headers["Authorization"] == "ApiKey abc"


async def _searches_on_the_lane(proxy: RunningProxy) -> float:
    assert proxy.app is not None
    return float(proxy.app[RUNTIME].metrics.fast_lane_searches._value.get())


@pytest.mark.parametrize(("pause_s", "on_lane"), [(0.05, True), (0.8, False)])
async def test_a_search_whose_body_comes_after_its_head_is_answered_whole(
    pause_s: float, on_lane: bool
) -> None:
    """http.client (elasticsearch-py, requests) writes a head and its body apart: the lane waits for the
    body up to the header deadline, then leaves the request to aiohttp's path, which answers it too."""
    body, head = MATCH_ALL, POST_HEAD
    async with recording_upstream() as upstream:
        server = {"header_read_timeout_s": 0.4}
        config = make_config(upstream.url, canary={"default": "off"}, server=server)
        async with running_proxy(config) as proxy:
            reader, writer = await asyncio.open_connection(*proxy.url.removeprefix("http://").split(":"))
            writer.write(head % len(body))
            await asyncio.sleep(pause_s)
            writer.write(body)
            answer = await reader.readuntil(b"\r\n\r\n")
            writer.close()
            assert await _searches_on_the_lane(proxy) == (1 if on_lane else 0)
        assert answer.startswith(b"HTTP/1.1 200") and b"X-Rerank: skipped" in answer
        (seen,) = upstream.requests
        assert seen.body == body


async def test_a_request_pipelined_behind_a_lane_search_is_answered_after_it() -> None:
    async with recording_upstream() as upstream:
        upstream.delay_s = 0.2  # the search is still under way when the next request arrives
        async with running_proxy(make_config(upstream.url, canary={"default": "off"})) as proxy:
            reader, writer = await asyncio.open_connection(*proxy.url.removeprefix("http://").split(":"))
            writer.write(b"GET /i/_search?q=x HTTP/1.1\r\nHost: p\r\n\r\n")
            await asyncio.sleep(0.05)
            writer.write(b"GET /i/_doc/1 HTTP/1.1\r\nHost: p\r\n\r\n")
            first = await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(int(first.lower().split(b"content-length: ")[1].split(b"\r\n")[0]))
            second = await reader.readuntil(b"\r\n\r\n")
            writer.close()
            assert await _searches_on_the_lane(proxy) == 1
        assert b"X-Rerank: skipped" in first and b"X-Rerank" not in second
        assert [r.raw_path for r in upstream.requests] == ["/i/_search?q=x", "/i/_doc/1"]


async def test_a_lane_search_whose_client_left_finishes_quietly(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, SEARCH_LOGGER)
    async with recording_upstream() as upstream:
        upstream.delay_s = 0.2
        async with running_proxy(make_config(upstream.url, canary={"default": "off"})) as proxy:
            _, writer = await asyncio.open_connection(*proxy.url.removeprefix("http://").split(":"))
            writer.write(b"GET /i/_search?q=gone HTTP/1.1\r\nHost: p\r\n\r\n")
            await asyncio.sleep(0.05)
            writer.transport.abort()  # gone while Elasticsearch is still answering
            await asyncio.sleep(0.4)
            assert proxy.app is not None
            metrics = proxy.app[RUNTIME].metrics
            counted = metrics.searches.labels("*", "off", "skipped", "canary_off")._value.get()
            async with aiohttp.ClientSession() as session, session.get(proxy.url + "/i/_search?q=next") as r:
                assert r.status == 200
        assert counted == 1  # the search ran to its end and was counted like any other
        gone = orjson.loads(next(r.getMessage() for r in caplog.records if r.name == SEARCH_LOGGER))
        assert gone["total_ms"] >= 150  # Elasticsearch's whole answer was awaited, not cut off at the leaving
        assert [r.raw_path for r in upstream.requests] == ["/i/_search?q=gone", "/i/_search?q=next"]
        assert not [record for record in caplog.records if record.levelname in ("ERROR", "CRITICAL")]


def test_the_official_clients_searches_and_gets_ride_the_lane(
    reranking_proxy: Callable[..., AbstractContextManager[RunningProxy]],
) -> None:
    """elasticsearch-py sends `Connection: keep-alive` and writes a body apart from its head."""
    with reranking_proxy({"rerank": 1.0}) as proxy:
        client = Elasticsearch(proxy.url)
        response = client.search(index=INDEX, query=QUERY, size=5)
        hit = response["hits"]["hits"][0]
        assert client.get(index=INDEX, id=hit["_id"])["_id"] == hit["_id"]
        assert response.meta.headers["X-Rerank"] == "applied"
        assert _lane_searches(proxy) == 1
        assert proxy.app is not None
        assert proxy.app[RUNTIME].metrics.fast_lane._value.get() == 1


async def test_a_request_still_arriving_at_shutdown_is_answered() -> None:
    body, head = MATCH_ALL, POST_HEAD
    async with recording_upstream() as upstream:
        serving = running_proxy(make_config(upstream.url, canary={"default": "off"}))
        proxy = await serving.__aenter__()
        reader, writer = await asyncio.open_connection(*proxy.url.removeprefix("http://").split(":"))
        writer.write(head % len(body))  # the lane holds the head, waiting for its body
        await asyncio.sleep(0.05)
        stopping = asyncio.create_task(serving.__aexit__(None, None, None))
        await asyncio.sleep(0.1)
        writer.write(body)
        answer = await reader.readuntil(b"\r\n\r\n")
        writer.close()
        await stopping
    assert answer.startswith(b"HTTP/1.1 200")
    assert [r.body for r in upstream.requests] == [body]
