"""The fast lane: which requests it takes, and that what it answers is what aiohttp's path would."""

from __future__ import annotations

import asyncio
import hashlib

import aiohttp
import pytest

from es_rerank_proxy.app import RUNTIME
from es_rerank_proxy.edge.request_mirror import MAX_LANE_BODY, HeadLimits, Plain, RequestMirror

from ..fakes.fake_reranker import closed_url
from ..fakes.proxy_server import RunningProxy, make_config, running_proxy
from ..fakes.raw_http import raw_http_server
from ..fakes.recording_upstream import recording_upstream

LIMITS = HeadLimits(max_line_size=200, max_field_size=200, max_headers=4)


def _classify(method: str, path: str) -> str | None:
    """A stand-in for the pipeline's endpoint classifier: what it says of a search rides along."""
    return f"search of {path.removesuffix('/_search')}" if path.endswith("/_search") else None


GET = b"GET /i/_doc/1 HTTP/1.1\r\nHost: proxy\r\n\r\n"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (GET, [Plain("GET", "/i/_doc/1", [("Host", "proxy")], None)]),
        (
            b'PUT /i/_doc/1?refresh=true HTTP/1.1\r\nContent-Length: 7\r\n\r\n{"a":1}',
            [Plain("PUT", "/i/_doc/1?refresh=true", [("Content-Length", "7")], b'{"a":1}')],
        ),
        (GET + GET, [Plain("GET", "/i/_doc/1", [("Host", "proxy")], None)] * 2),  # pipelined
        # Not plain: each is aiohttp's to handle.
        (b"GET / HTTP/1.0\r\n\r\n", [None]),
        (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", [None]),
        (b"GET / HTTP/1.1\r\nConnection: keep-alive, X-Secret\r\n\r\n", [None]),
        # What HTTP/1.1 means anyway, sent by elasticsearch-py and requests: plain.
        (
            b"GET /i/_doc/1 HTTP/1.1\r\nConnection: Keep-Alive\r\n\r\n",
            [Plain("GET", "/i/_doc/1", [("Connection", "Keep-Alive")], None)],
        ),
        (b"GET / HTTP/1.1\r\nKeep-Alive: timeout=5\r\n\r\n", [None]),
        (b"POST /i/_doc HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n", [None]),
        (b"POST /_bulk HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n", [None]),
        (b"GET http://other/i/_doc/1 HTTP/1.1\r\n\r\n", [None]),  # absolute-form
        (b"GET /i/_doc/1#x HTTP/1.1\r\n\r\n", [None]),
        (b"GET / HTTP/1.1\r\nX-Name: caf\xc3\xa9\r\n\r\n", [None]),  # not ASCII
        (b"GET /" + b"a" * 200 + b" HTTP/1.1\r\n\r\n", [None]),  # request line over the limit
        (b"GET / HTTP/1.1\r\nX-Long: " + b"v" * 200 + b"\r\n\r\n", [None]),  # header over the limit
        (b"GET / HTTP/1.1\r\n" + b"X-A: 1\r\n" * 5 + b"\r\n", [None]),  # too many headers
        (b"GET / HTTP/1.1\r\nHost: pro", []),  # not whole yet
        (b"GET /i/_search?q=x HTTP/1.1\r\n\r\n", [None]),  # the pipeline's
    ],
)
def test_mirror_hands_the_lane_only_whole_plain_requests(data: bytes, expected: list[Plain | None]) -> None:
    assert RequestMirror(LIMITS, _classify).feed(data) == expected


def test_mirror_follows_a_request_that_arrives_in_pieces() -> None:
    mirror = RequestMirror(LIMITS, _classify)
    assert mirror.feed(GET[:10]) == [] and mirror.mid_message
    assert mirror.feed(GET[10:]) == [Plain("GET", "/i/_doc/1", [("Host", "proxy")], None)]
    assert not mirror.mid_message


def test_mirror_leaves_large_bodies_to_aiohttp_and_stays_in_step() -> None:
    big = b"x" * (MAX_LANE_BODY + 1)
    mirror = RequestMirror(LIMITS, _classify)
    request = b"POST /_bulk HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(big)
    assert mirror.feed(request + big + GET) == [None, Plain("GET", "/i/_doc/1", [("Host", "proxy")], None)]


def test_mirror_gives_up_on_a_stream_it_cannot_parse() -> None:
    mirror = RequestMirror(LIMITS, _classify)
    assert mirror.feed(b"NOT HTTP\r\n\r\n") == []
    assert mirror.broken
    assert mirror.feed(GET) == []


# --- through the proxy --------------------------------------------------------------------------------


def _lane_count(proxy: RunningProxy) -> float:
    assert proxy.app is not None
    return proxy.app[RUNTIME].metrics.fast_lane._value.get()


async def _read_answer(reader: asyncio.StreamReader) -> bytes:
    """One whole answer framed by its Content-Length: head and body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    return head + await reader.readexactly(length)


async def _raw_exchange(url: str, data: bytes, answers: int) -> list[bytes]:
    """Send `data` in one write on one connection and read `answers` whole HTTP answers back."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        return [await _read_answer(reader) for _ in range(answers)]
    finally:
        writer.close()


async def test_doc_get_takes_the_lane_with_the_clients_headers_and_elasticsearchs_answer() -> None:
    async with recording_upstream() as upstream, running_proxy(make_config(upstream.url)) as proxy:
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                proxy.url + "/i/_doc/1?pretty",
                headers={"Authorization": "ApiKey abc", "X-Opaque-Id": "t1", "X-Rerank-Token": "staff"},
            ) as response,
        ):
            body = await response.read()
            assert response.status == 200
        assert _lane_count(proxy) == 1
        seen = upstream.requests[-1]
        assert (seen.method, seen.raw_path) == ("GET", "/i/_doc/1?pretty")
        assert seen.headers["Authorization"] == "ApiKey abc" and seen.headers["X-Opaque-Id"] == "t1"
        assert "X-Rerank-Token" not in seen.headers  # the proxy's own header never reaches Elasticsearch
        assert seen.headers["Host"] == upstream.url.removeprefix("http://")
        assert body and response.headers["Content-Length"] == str(len(body))


async def test_searches_take_the_lane_only_when_it_serves_them() -> None:
    async with recording_upstream() as upstream:
        config = make_config(upstream.url, canary={"default": "off"})
        async with running_proxy(config) as proxy, aiohttp.ClientSession() as session:
            async with session.get(proxy.url + "/i/_search?q=x") as response:
                await response.read()
            assert response.headers.get("X-Rerank") is not None  # the pipeline answered
            assert _lane_count(proxy) == 0  # not counted as forwarded untouched
            assert proxy.app is not None
            assert proxy.app[RUNTIME].metrics.fast_lane_searches._value.get() == 1


def test_mirror_hands_a_search_on_only_to_a_lane_that_serves_searches() -> None:
    search = b"GET /i/_search?q=x HTTP/1.1\r\n\r\n"
    assert RequestMirror(LIMITS, _classify).feed(search) == [None]
    taken = RequestMirror(LIMITS, _classify, takes_searches=True).feed(search)
    assert taken == [Plain("GET", "/i/_search?q=x", [], None, search="search of /i")]


@pytest.mark.parametrize(
    ("head", "waits"),
    [
        (b"POST /i/_search HTTP/1.1\r\nContent-Length: 7\r\n\r\n", True),
        (b"POST /i/_search HTTP/1.1\r\nContent-Length: 7\r\nExpect: 100-continue\r\n\r\n", False),
        (b"POST /i/_search HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", False),
        (b"POST /i/_search HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (MAX_LANE_BODY + 1), False),
        (b"POST /i/_search HTTP/1.1\r\nContent-Len", False),  # the head is not whole yet
    ],
)
def test_mirror_says_when_a_body_still_to_come_may_ride_the_lane(head: bytes, waits: bool) -> None:
    mirror = RequestMirror(LIMITS, _classify, takes_searches=True)
    assert mirror.feed(head) == []
    assert mirror.awaiting_small_body is waits


async def test_pipelined_requests_are_answered_in_order() -> None:
    async with recording_upstream() as upstream, running_proxy(make_config(upstream.url)) as proxy:
        requests = (
            b"".join(b"GET /i/_doc/%d HTTP/1.1\r\nHost: p\r\n\r\n" % n for n in range(3))
            + b"GET /i/_search?q=x HTTP/1.1\r\nHost: p\r\n\r\n"
        )
        answers = await _raw_exchange(proxy.url, requests, 4)
        assert all(answer.startswith(b"HTTP/1.1 200") for answer in answers)
        assert [r.raw_path for r in upstream.requests][:3] == ["/i/_doc/0", "/i/_doc/1", "/i/_doc/2"]


async def test_one_connection_moves_between_the_lane_and_aiohttp() -> None:
    async with recording_upstream() as upstream, running_proxy(make_config(upstream.url)) as proxy:
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            for path in ("/i/_doc/1", "/i/_search?q=x", "/i/_doc/2", "/i/_search?q=y", "/i/_doc/3"):
                async with session.get(proxy.url + path) as response:
                    await response.read()
                    assert response.status == 200, path
        assert _lane_count(proxy) == 3
        assert [r.raw_path for r in upstream.requests if "_doc" in r.raw_path] == [
            "/i/_doc/1",
            "/i/_doc/2",
            "/i/_doc/3",
        ]


async def test_elasticsearch_down_gives_an_elasticsearch_shaped_502_from_the_lane() -> None:
    async with running_proxy(make_config(closed_url())) as proxy, aiohttp.ClientSession() as session:
        async with session.get(proxy.url + "/i/_doc/1") as response:
            error = await response.json()
        assert response.status == 502
        assert response.headers["X-Elastic-Product"] == "Elasticsearch"
        assert error["error"]["type"] == "proxy_upstream_exception" and error["status"] == 502
        assert _lane_count(proxy) == 1


@pytest.mark.parametrize("chunked", [True, False])
async def test_large_answer_streams_through_the_lane_intact(chunked: bool) -> None:
    body = bytes(range(256)) * (12 * 1024)  # 3 MiB, past what the lane sends in one write
    if chunked:
        pieces = [body[i : i + 100_000] for i in range(0, len(body), 100_000)]
        framed = b"".join(b"%x\r\n%b\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"
        answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + framed
    else:
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
    async with (
        raw_http_server(lambda request: (answer, False)) as node,
        running_proxy(make_config(node.url)) as proxy,
        aiohttp.ClientSession() as session,
    ):
        for path in ("/i/_doc/1", "/i/_doc/2"):  # the second: the connections are still good
            async with session.get(proxy.url + path) as response:
                assert response.status == 200
                assert hashlib.sha256(await response.read()).digest() == hashlib.sha256(body).digest()
        assert _lane_count(proxy) == 2


async def test_head_keeps_the_announced_length_without_a_body() -> None:
    async with recording_upstream() as upstream, running_proxy(make_config(upstream.url)) as proxy:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
            async with session.get(proxy.url + "/i/_doc/1") as full:
                length = len(await full.read())
            async with session.head(proxy.url + "/i/_doc/1") as head:
                assert head.status == 200
                assert head.headers["Content-Length"] == str(length)
            async with session.get(proxy.url + "/i/_doc/1") as after:
                assert len(await after.read()) == length
        assert _lane_count(proxy) == 3


async def test_the_lanes_requests_keep_a_connection_alive_and_idleness_still_closes_it() -> None:
    async with recording_upstream() as upstream:
        config = make_config(upstream.url, server={"keepalive_timeout_s": 0.3})
        async with running_proxy(config) as proxy:
            host, port = proxy.url.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            try:
                # A request every 0.1 s for three times the keep-alive timeout: the connection stays up.
                for _ in range(10):
                    writer.write(GET)
                    await _read_answer(reader)
                    await asyncio.sleep(0.1)
                assert _lane_count(proxy) == 10
                # Then idle: the proxy closes it, and the read ends, within a few seconds.
                async with asyncio.timeout(5):
                    assert await reader.read(65536) == b""
            finally:
                writer.close()


async def test_the_lane_can_be_turned_off() -> None:
    async with recording_upstream() as upstream:
        config = make_config(upstream.url, server={"fast_lane": False})
        async with running_proxy(config) as proxy, aiohttp.ClientSession() as session:
            async with session.get(proxy.url + "/i/_doc/1") as response:
                await response.read()
            assert response.status == 200
            assert _lane_count(proxy) == 0


async def test_client_gone_mid_answer_leaves_nothing_in_flight() -> None:
    async with recording_upstream() as upstream, running_proxy(make_config(upstream.url)) as proxy:
        upstream.delay_s = 0.5
        host, port = proxy.url.removeprefix("http://").split(":")
        _reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(GET)
        await asyncio.sleep(0.1)
        writer.close()
        assert proxy.app is not None
        es = proxy.app[RUNTIME].es
        async with asyncio.timeout(5):
            while es.in_flight:  # noqa: ASYNC110  (a gauge, not an event)
                await asyncio.sleep(0.02)
        assert _lane_count(proxy) == 1


@pytest.mark.parametrize(
    "ambiguous",
    [
        b"POST /i/_doc HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /i/_doc HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 0\r\n\r\n",
        b"POST /i/_doc HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    ],
)
async def test_ambiguous_framing_never_smuggles_a_request_past_the_proxy(ambiguous: bytes) -> None:
    async with recording_upstream() as upstream, running_proxy(make_config(upstream.url)) as proxy:
        host, port = proxy.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(ambiguous + b"GET /smuggled/_doc/1 HTTP/1.1\r\nHost: p\r\n\r\n")
            async with asyncio.timeout(10):
                answer = await reader.read()  # the proxy answers and closes: a refused stream is not reused
            assert answer.split(b" ", 2)[1] == b"400", answer[:80]
        finally:
            writer.close()
        assert all("smuggled" not in seen.raw_path for seen in upstream.requests)
        assert _lane_count(proxy) == 0


async def test_a_client_pipelining_a_large_body_behind_the_lane_is_held_back_not_buffered() -> None:
    size = 64 * 1024 * 1024
    async with recording_upstream() as upstream, running_proxy(make_config(upstream.url)) as proxy:
        upstream.delay_s = 1.0  # the lane's answer takes a second: the bulk behind it must wait
        host, port = proxy.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        accepted = 0

        writer.write(GET)
        async with asyncio.timeout(10):
            while not upstream.requests:  # noqa: ASYNC110  (the lane has sent it on)
                await asyncio.sleep(0.01)
        assert _lane_count(proxy) == 1

        async def send_bulk() -> None:
            nonlocal accepted
            writer.write(b"POST /big/_bulk HTTP/1.1\r\nHost: p\r\nContent-Length: %d\r\n\r\n" % size)
            block = b"x" * (1024 * 1024)
            for _ in range(size // len(block)):
                writer.write(block)
                await writer.drain()
                accepted += len(block)

        sender = asyncio.create_task(send_bulk())
        try:
            await asyncio.sleep(0.4)
            # TCP buffers hold a few MB; without the bound the proxy would have read all 64 MB by now.
            assert accepted < size // 2
            async with asyncio.timeout(60):
                await sender
                for _ in range(2):
                    answer = await _read_answer(reader)
                    assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
        finally:
            sender.cancel()
            writer.close()
        assert [seen.body_bytes for seen in upstream.requests if seen.raw_path == "/big/_bulk"] == [size]


async def test_an_answer_broken_off_before_the_lane_sent_a_byte_is_an_elasticsearch_shaped_502() -> None:
    broken = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"partial'
    async with (
        raw_http_server(lambda request: (broken, True)) as node,
        running_proxy(make_config(node.url)) as proxy,
    ):
        async with aiohttp.ClientSession() as session, session.get(proxy.url + "/i/_doc/1") as response:
            error = await response.json()
        assert response.status == 502 and error["status"] == 502
        assert response.headers["X-Elastic-Product"] == "Elasticsearch"
        assert _lane_count(proxy) == 1
