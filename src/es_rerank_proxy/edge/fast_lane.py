"""The fast lane: plain non-search requests forwarded without building aiohttp requests and responses.

Most of what a frontend sends besides searches is small and simple: `GET /index/_doc/1`, `HEAD /index`,
a `POST` of a few KB. For those, aiohttp's server machinery (a Request, routing, a task, a Response and
its serialisation) was half the proxy's CPU per forwarded request. The public listener's protocol
(`listener.GuardedRequestHandler`) mirrors every byte it receives through `RequestMirror`, an llhttp parser;
when a whole, plain, non-search request arrives while aiohttp has nothing under way, `FastLane.forward`
sends it over the Elasticsearch pool and writes the answer straight to the socket.

Anything else takes aiohttp's path, unchanged: searches, a body that is large or still arriving,
`Expect`, `Upgrade`, `Connection` options, HTTP/1.0, absolute-form targets, bytes that are not ASCII in
the head, heads over the listener's limits, and every request on a connection whose byte stream the
mirror could not follow.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus

import httptools
from multidict import CIMultiDict

from ..errors import UpstreamError
from .upstream import (
    HOP_BY_HOP,
    Elasticsearch,
    forwardable_request_headers,
    headers_without,
    upstream_error_response_body,
    upstream_error_status,
)

log = logging.getLogger(__name__)

# Bodies up to this size ride the lane when they arrived whole; larger ones stream through aiohttp.
MAX_LANE_BODY = 64 * 1024
# Answers up to this size go out in one write; larger ones stream, chunk by chunk.
_BUFFERED_MAX = 256 * 1024
# Request headers that make a request more than plain: aiohttp's path deals with each properly.
_NOT_PLAIN = frozenset({"expect", "upgrade", "connection", "transfer-encoding", "te", "keep-alive"})
_NO_BODY_STATUSES = frozenset({204, 304})
# Elasticsearch's framing is this hop's: the lane sets its own per answer.
_RESPONSE_DROP = HOP_BY_HOP | {"content-length"}


@dataclass(frozen=True, slots=True)
class Plain:
    """A whole, plain request, as the mirror parsed it."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes | None


@dataclass(frozen=True, slots=True)
class HeadLimits:
    """The listener's parser limits: a head beyond them is aiohttp's to refuse (431), not the lane's."""

    max_line_size: int
    max_field_size: int
    max_headers: int


class RequestMirror:
    """Follows the client's byte stream request by request, so the lane knows where each one ends.

    `is_search(method, path)` picks out the requests the pipeline must see; they are never `Plain`.
    """

    def __init__(self, limits: HeadLimits, is_search: Callable[[str, str], bool]) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._limits = limits
        self._is_search = is_search
        self.broken = False  # the stream could not be followed: the lane stays shut for this connection
        self.mid_message = False
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._body_size = 0
        self._completed: list[Plain | None] = []

    def feed(self, data: bytes) -> list[Plain | None]:
        """The requests `data` completes, each as `Plain` when the lane may take it, else None."""
        self._completed = []
        if self.broken:
            return []
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self.broken = True
            return []
        return self._completed

    # --- httptools callbacks -------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.mid_message = True
        self._url = b""
        self._headers = []
        self._body = []
        self._body_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size <= MAX_LANE_BODY:
            self._body.append(body)

    def on_message_complete(self) -> None:
        self.mid_message = False
        self._completed.append(self._plain())

    def _plain(self) -> Plain | None:
        parser = self._parser
        url = self._url
        limits = self._limits
        if (
            parser.get_http_version() != "1.1"
            or not parser.should_keep_alive()
            or self._body_size > MAX_LANE_BODY
            or len(url) > limits.max_line_size
            or len(self._headers) > limits.max_headers
            or not url.startswith(b"/")
            or b"#" in url
            or not url.isascii()
        ):
            return None
        method = parser.get_method().decode("ascii")
        target = url.decode("ascii")
        if self._is_search(method, target.partition("?")[0]):
            return None  # checked before the headers: a search's are not worth decoding here
        headers: list[tuple[str, str]] = []
        for name, value in self._headers:
            if len(name) + len(value) > limits.max_field_size or not (name.isascii() and value.isascii()):
                return None
            text = name.decode("ascii")
            if text.lower() in _NOT_PLAIN:
                return None
            headers.append((text, value.decode("ascii")))
        body = b"".join(self._body) if self._body_size else None
        return Plain(method, target, headers, body)


class FastLane:
    """Forwards plain non-search requests for the public listener's connections."""

    def __init__(
        self,
        es: Callable[[], Elasticsearch],
        is_search: Callable[[str, str], bool],
        counted: Callable[[str], None],
        limits: HeadLimits,
        client_write_timeout_s: float | None,
    ) -> None:
        self._es = es
        self._is_search = is_search
        self._counted = counted
        self.limits = limits
        self._client_write_timeout_s = client_write_timeout_s
        self.forwarded = 0  # requests the lane answered: tests and the bench check that it engages

    def mirror(self) -> RequestMirror:
        """A mirror for one connection, handing this lane plain requests that are not searches."""
        return RequestMirror(self.limits, self._is_search)

    async def forward(self, request: Plain, writer: ClientWriter) -> None:
        """Send the request to Elasticsearch and its answer to the client; errors in Elasticsearch's shape."""
        self.forwarded += 1
        self._counted(request.method)
        headers = forwardable_request_headers(CIMultiDict(request.headers))
        try:
            async with self._es().request(request.method, request.target, headers, request.body) as upstream:
                head = _response_head(upstream.status, upstream.reason, upstream.headers)
                if request.method == "HEAD" or upstream.status in _NO_BODY_STATUSES or upstream.status < 200:
                    writer.write(head.closed(upstream.content_length))
                    return
                length = upstream.content_length
                if length is not None and length <= _BUFFERED_MAX:
                    body = await upstream.read()
                    writer.write(head.closed(len(body)) + body)
                    return
                writer.write(head.closed(length) if length is not None else head.chunked())
                async for chunk in upstream.iter_chunks():
                    if chunk:
                        writer.write(chunk if length is not None else b"%x\r\n%b\r\n" % (len(chunk), chunk))
                    if not await writer.drained(self._client_write_timeout_s):
                        writer.abort()  # the status line is out: cutting the connection is the only signal
                        return
                if length is None:
                    writer.write(b"0\r\n\r\n")
        except UpstreamError as exc:
            if writer.started:
                writer.abort()
                return
            log.warning("elasticsearch request failed: %s", exc.reason)
            writer.write(error_answer(upstream_error_status(exc), upstream_error_response_body(exc)))


class ClientWriter:
    """What the lane needs of the client connection: write, wait for its buffer to drain, cut it off."""

    def __init__(
        self,
        transport: asyncio.Transport,
        paused: Callable[[], bool],
        drain: Callable[[], Awaitable[None]],
    ) -> None:
        self._transport = transport
        self._paused = paused
        self._drain = drain
        self.started = False

    def write(self, data: bytes) -> None:
        self.started = True
        self._transport.write(data)

    async def drained(self, timeout_s: float | None) -> bool:
        """False when the client read nothing for `timeout_s` while its buffer was full."""
        if not self._paused():
            return True
        try:
            async with asyncio.timeout(timeout_s):
                await self._drain()
        except TimeoutError:
            log.warning("client read nothing for %g s: connection dropped", timeout_s)
            return False
        except ConnectionError:
            return False
        return True

    def abort(self) -> None:
        self._transport.abort()


def error_answer(status: int, body: bytes) -> bytes:
    """An answer the lane gives itself, in Elasticsearch's error shape."""
    headers = CIMultiDict(
        {"Content-Type": "application/json; charset=UTF-8", "X-Elastic-Product": "Elasticsearch"}
    )
    return _response_head(status, "", headers).closed(len(body)) + body


@dataclass(frozen=True, slots=True)
class _Head:
    lines: list[str]

    def closed(self, length: int | None) -> bytes:
        return self._encode([] if length is None else [f"Content-Length: {length}"])

    def chunked(self) -> bytes:
        return self._encode(["Transfer-Encoding: chunked"])

    def _encode(self, framing: list[str]) -> bytes:
        # Header values came in as UTF-8 with undecodable bytes kept as surrogates: they go out unchanged.
        return "\r\n".join([*self.lines, *framing, "", ""]).encode("utf-8", "surrogateescape")


def _response_head(status: int, reason: str, headers: Mapping[str, str]) -> _Head:
    """Status line and Elasticsearch's headers minus hop-by-hop ones and its framing (set per answer)."""
    kept = headers_without(headers, _RESPONSE_DROP)
    lines = [f"HTTP/1.1 {status} {reason or _reason(status)}"]
    lines += [f"{name}: {value}" for name, value in kept.items()]
    return _Head(lines)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"
