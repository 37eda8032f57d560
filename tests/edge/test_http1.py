"""http1: the HTTP/1.1 client to Elasticsearch, against nodes that frame answers in every legal way."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp.base_protocol import BaseProtocol
from yarl import URL

from es_rerank_proxy.config import ElasticsearchConfig
from es_rerank_proxy.edge.upstream import Elasticsearch, create_session
from es_rerank_proxy.errors import UpstreamError
from es_rerank_proxy.http1 import Client, Endpoint, request_head

from ..fakes.fake_reranker import closed_url
from ..fakes.raw_http import raw_http_server

OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'


@pytest.mark.parametrize(
    ("url", "host_header", "port", "base_path", "authorization"),
    [
        ("http://es:9200", "es:9200", 9200, "", None),
        ("https://es", "es", 443, "", None),
        ("http://es", "es", 80, "", None),
        ("http://[::1]:9200", "[::1]:9200", 9200, "", None),
        ("https://elastic:pw@es:9243/prefix/", "es:9243", 9243, "/prefix", "Basic ZWxhc3RpYzpwdw=="),
    ],
)
def test_endpoint_from_url(
    url: str, host_header: str, port: int, base_path: str, authorization: str | None
) -> None:
    endpoint = Endpoint.from_url(URL(url.rstrip("/")), None)
    assert (endpoint.host_header, endpoint.port, endpoint.base_path, endpoint.authorization) == (
        host_header,
        port,
        base_path,
        authorization,
    )


def _endpoint(url: str = "http://es:9200") -> Endpoint:
    return Endpoint.from_url(URL(url), None)


@pytest.mark.parametrize(
    ("method", "target", "url", "headers", "length", "chunked", "expected"),
    [
        (
            "GET",
            "/i/_doc/1",
            "http://es:9200",
            {},
            None,
            False,
            b"GET /i/_doc/1 HTTP/1.1\r\nHost: es:9200\r\n\r\n",
        ),
        # The client's framing and Host never pass: this hop's own are set from the body actually sent.
        (
            "POST",
            "/_bulk",
            "http://es:9200",
            {"Host": "evil", "Content-Length": "99", "Transfer-Encoding": "chunked", "X-A": "1"},
            3,
            False,
            b"POST /_bulk HTTP/1.1\r\nHost: es:9200\r\nX-A: 1\r\nContent-Length: 3\r\n\r\n",
        ),
        (
            "PUT",
            "/i",
            "http://es:9200/base",
            {"Content-Type": "application/json"},
            None,
            True,
            b"PUT /base/i HTTP/1.1\r\nHost: es:9200\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
        ),
        # Credentials in the URL serve only clients that bring none of their own.
        (
            "GET",
            "/",
            "http://u:p@es:9200",
            {},
            None,
            False,
            b"GET / HTTP/1.1\r\nHost: es:9200\r\nAuthorization: Basic dTpw\r\n\r\n",
        ),
        (
            "GET",
            "/",
            "http://u:p@es:9200",
            {"Authorization": "ApiKey abc"},
            None,
            False,
            b"GET / HTTP/1.1\r\nHost: es:9200\r\nAuthorization: ApiKey abc\r\n\r\n",
        ),
    ],
)
def test_request_head(
    method: str,
    target: str,
    url: str,
    headers: dict[str, str],
    length: int | None,
    chunked: bool,
    expected: bytes,
) -> None:
    assert request_head(method, target, _endpoint(url), headers, length, chunked=chunked) == expected


def _client(url: str, **settings: float) -> Elasticsearch:
    cfg = ElasticsearchConfig(url=(url,), **settings)  # type: ignore[arg-type]
    return Elasticsearch(create_session(cfg), cfg)


async def _exchange(es: Elasticsearch, method: str = "GET", path: str = "/i/_doc/1") -> tuple[int, bytes]:
    async with es.request(method, path, {}, None) as response:
        body = b"" if method == "HEAD" else await response.read()
        return response.status, body


async def test_head_answer_announces_a_length_without_a_body_and_the_connection_goes_on() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n"
    async with raw_http_server(lambda request: (head if request.startswith(b"HEAD") else OK, False)) as node:
        es = _client(node.url)
        try:
            assert await _exchange(es, "HEAD") == (200, b"")
            assert await _exchange(es) == (200, b'{"ok":true}')
            assert node.connections == 1
        finally:
            await es.aclose()


async def test_chunked_answer_is_joined_and_the_connection_reused() -> None:
    chunked = b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{"a"\r\n5\r\n:1}\r\n\r\n0\r\n\r\n'
    async with raw_http_server(lambda request: (chunked, False)) as node:
        es = _client(node.url)
        try:
            for _ in range(3):
                assert await _exchange(es) == (200, b'{"a":1}\r\n')
            assert node.connections == 1
        finally:
            await es.aclose()


async def test_answer_without_a_length_ends_where_the_connection_does() -> None:
    async with raw_http_server(lambda request: (b"HTTP/1.1 200 OK\r\n\r\nuntil close", True)) as node:
        es = _client(node.url)
        try:
            assert await _exchange(es) == (200, b"until close")
            assert await _exchange(es) == (200, b"until close")
        finally:
            await es.aclose()


async def test_interim_answer_is_skipped_for_the_final_one() -> None:
    async with raw_http_server(
        lambda request: (b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + OK, False)
    ) as node:
        es = _client(node.url)
        try:
            assert await _exchange(es) == (200, b'{"ok":true}')
        finally:
            await es.aclose()


async def test_kept_alive_connection_closed_by_the_node_is_retried_for_an_idempotent_request() -> None:
    # The node closes after every answer without saying so: the next GET meets a dead pooled connection.
    async with raw_http_server(lambda request: (OK, True)) as node:
        es = _client(node.url)
        try:
            assert await _exchange(es) == (200, b'{"ok":true}')
            await asyncio.sleep(0.05)
            assert await _exchange(es) == (200, b'{"ok":true}')
            assert node.connections == 2
        finally:
            await es.aclose()


@pytest.mark.parametrize(
    ("answer", "timed_out"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part", False),  # broken off mid-body
        (b"NOT HTTP AT ALL\r\n\r\n", False),  # malformed
        (b"", False),  # closed without a byte
    ],
)
async def test_broken_answers_are_upstream_errors(answer: bytes, timed_out: bool) -> None:
    async with raw_http_server(lambda request: (answer, True)) as node:
        es = _client(node.url)
        try:
            with pytest.raises(UpstreamError) as caught:
                await _exchange(es)
            assert caught.value.timed_out is timed_out
            # The pool is not poisoned: the next request gets a fresh connection.
            node.answer = lambda request: (OK, False)
            assert await _exchange(es) == (200, b'{"ok":true}')
        finally:
            await es.aclose()


async def test_every_pooled_connection_busy_times_out_instead_of_waiting_for_ever() -> None:
    async with raw_http_server(lambda request: (b"", False)) as node:  # never answers
        es = _client(node.url, max_connections=1, pool_timeout_s=0.1, connect_timeout_s=0.1, timeout_s=5)
        try:
            first = asyncio.ensure_future(_exchange(es))
            await asyncio.sleep(0.05)
            with pytest.raises(UpstreamError) as caught:
                await _exchange(es)
            assert caught.value.timed_out
            assert "pooled connections busy" in caught.value.reason
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            assert es.in_flight == 0
        finally:
            await es.aclose()


# --- http1.Client: the model servers' calls -----------------------------------------------------------


async def test_client_fetches_whole_answers_over_one_kept_connection() -> None:
    async with raw_http_server(lambda request: (OK, False)) as server:
        client = Client(limit=4)
        try:
            for _ in range(3):
                assert await client.fetch("POST", server.url + "/v1/rerank", {}, b"{}", 5) == (200, OK[-11:])
            assert server.connections == 1
            assert server.requests[0].startswith(b"POST /v1/rerank HTTP/1.1\r\nHost: 127.0.0.1:")
            assert b"Content-Length: 2\r\n\r\n{}" in server.requests[0]
        finally:
            client.close()


async def test_client_sends_a_post_again_when_the_kept_connection_was_closed_under_it() -> None:
    # uvicorn closes idle connections after 5 s; a rerank call is a pure function, safe to send again.
    async with raw_http_server(lambda request: (OK, True)) as server:
        client = Client(limit=4)
        try:
            assert (await client.fetch("POST", server.url + "/v1/rerank", {}, b"{}", 5))[0] == 200
            await asyncio.sleep(0.05)
            assert (await client.fetch("POST", server.url + "/v1/rerank", {}, b"{}", 5))[0] == 200
            assert server.connections == 2
        finally:
            client.close()


async def test_client_gives_up_at_its_total_time() -> None:
    async with raw_http_server(lambda request: (b"", False)) as server:  # never answers
        client = Client(limit=4)
        try:
            started = asyncio.get_running_loop().time()
            with pytest.raises(TimeoutError):
                await client.fetch("GET", server.url + "/health", {}, None, 0.2)
            assert asyncio.get_running_loop().time() - started < 2
        finally:
            client.close()


async def test_client_unreachable_server_is_an_os_error() -> None:
    client = Client(limit=4)
    try:
        with pytest.raises(OSError):
            await client.fetch("GET", closed_url() + "/health", {}, None, 2)
    finally:
        client.close()


async def test_an_answer_before_the_streamed_body_went_out_whole_retires_the_connection() -> None:
    """A node may answer (413, 401) before reading an upload; the rest of the body is still owed on that
    connection, so it must never carry another request."""
    early = b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 2\r\n\r\n{}"
    connections = 0

    async def node(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        head = await reader.readuntil(b"\r\n\r\n")
        writer.write(early if head.startswith(b"POST") else OK)  # before a byte of the body is read
        await writer.drain()
        while await reader.read(65536):  # what follows on this connection is never answered
            pass
        writer.close()

    server = await asyncio.start_server(node, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    upload = aiohttp.StreamReader(BaseProtocol(asyncio.get_running_loop()), 2**16)
    upload.feed_data(b"x" * 1024)  # one chunk of the announced 1 MiB; the rest never comes
    es = _client(url, timeout_s=2)
    try:
        headers = {"Content-Length": str(2**20)}
        async with es.request("POST", "/_bulk", headers, upload) as response:
            assert (response.status, await response.read()) == (413, b"{}")
        assert await _exchange(es) == (200, b'{"ok":true}')
        assert connections == 2
    finally:
        await es.aclose()
        server.close()


@pytest.mark.parametrize(("pause_s", "quiet_after"), [(0.1, None), (0.1, 2)])
async def test_a_whole_body_read_times_out_only_when_the_node_goes_quiet(
    pause_s: float, quiet_after: int | None
) -> None:
    """The read timeout bounds silence, not the whole body: a node trickling pieces (each sooner than the
    timeout, together longer) is read to the end; one that stops mid-body is an UpstreamError."""
    pieces = [b"0123456789"] * 6
    done = asyncio.Event()

    async def node(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % sum(map(len, pieces)))
            for sent, piece in enumerate(pieces):
                if sent == quiet_after:
                    break
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(pause_s)
            await done.wait()
        finally:
            writer.close()

    server = await asyncio.start_server(node, "127.0.0.1", 0)
    es = _client(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", timeout_s=0.25)
    try:
        if quiet_after is None:
            assert await _exchange(es) == (200, b"".join(pieces))  # 0.6 s in all, > the timeout
        else:
            with pytest.raises(UpstreamError) as caught:
                await _exchange(es)
            assert caught.value.timed_out
    finally:
        done.set()
        await es.aclose()
        server.close()
        await server.wait_closed()
