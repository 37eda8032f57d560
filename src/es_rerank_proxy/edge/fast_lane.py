"""The fast lane: plain requests served without building aiohttp requests and responses.

Most of what a frontend sends is small and simple: `GET /index/_doc/1`, `HEAD /index`, a `POST` of a few
KB, a search. For those, aiohttp's server machinery (a Request, routing, a task, a Response and its
serialisation) was half the proxy's CPU per forwarded request. The public listener's protocol
(`listener.GuardedRequestHandler`) mirrors every byte it receives through `RequestMirror`, an llhttp parser;
when a whole, plain request arrives while aiohttp has nothing under way, `FastLane.serve` takes it: a
non-search is sent over the Elasticsearch pool and its answer written straight to the socket; a search
goes to the search pipeline as a `LaneExchange`, the same pipeline aiohttp's path hands an
`AiohttpExchange`.

Anything else takes aiohttp's path, unchanged: a body that is large or still arriving, `Expect`,
`Upgrade`, `Connection` options other than `keep-alive`, HTTP/1.0, absolute-form targets, bytes that are
not ASCII in the head, heads over the listener's limits, and every request on a connection whose byte
stream the mirror could not follow.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Generic, TypeVar, cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from ..errors import UpstreamError
from .exchange import (
    Answer,
    BodyTooLarge,
    ClientRequest,
    Exchange,
    elasticsearch_error,
    upstream_error_answer,
)
from .headers import HOP_BY_HOP, forwardable_request_headers, headers_without
from .upstream import Elasticsearch, error_body

log = logging.getLogger(__name__)

# Bodies up to this size ride the lane when they arrived whole; larger ones stream through aiohttp.
MAX_LANE_BODY = 64 * 1024
# Answers up to this size go out in one write; larger ones stream, chunk by chunk.
_BUFFERED_MAX = 256 * 1024
# Request headers that make a request more than plain: aiohttp's path deals with each properly.
_NOT_PLAIN = frozenset({b"expect", b"upgrade", b"connection", b"transfer-encoding", b"te", b"keep-alive"})
_NO_BODY_STATUSES = frozenset({204, 304})
# Elasticsearch's framing is this hop's: the lane sets its own per answer.
_RESPONSE_DROP = HOP_BY_HOP | {"content-length"}
# What the lane's `classify` says of a search (the pipeline's own description of its endpoint), handed
# to the pipeline with it, so a search is classified once.
SearchT = TypeVar("SearchT")


@dataclass(frozen=True, slots=True)
class Plain:
    """A whole, plain request, as the mirror parsed it."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes | None
    # A search, as the lane's `classify` described it (a `SearchT`): the pipeline's, not a forward. Not
    # generic itself: mypyc cannot build a generic dataclass.
    search: object | None = None

    def __init__(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | None,
        search: object | None = None,
    ) -> None:
        # Written out: mypyc compiles this one, not the one @dataclass generates (tests/test_inits.py).
        object.__setattr__(self, "method", method)
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "headers", headers)
        object.__setattr__(self, "body", body)
        object.__setattr__(self, "search", search)


@dataclass(frozen=True, slots=True)
class HeadLimits:
    """The listener's parser limits: a head beyond them is aiohttp's to refuse (431), not the lane's."""

    max_line_size: int
    max_field_size: int
    max_headers: int


class RequestMirror(Generic[SearchT]):
    """Follows the client's byte stream request by request, so the lane knows where each one ends.

    `classify(method, path)` picks out the requests the pipeline must see (None for any other); without
    `takes_searches` they are never `Plain`.
    """

    def __init__(
        self,
        limits: HeadLimits,
        classify: Callable[[str, str], SearchT | None],
        takes_searches: bool = False,
    ) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._limits = limits
        self._classify = classify
        self._takes_searches = takes_searches
        self.broken = False  # the stream could not be followed: the lane stays shut for this connection
        self.mid_message = False
        self._head_complete = False
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

    @property
    def awaiting_small_body(self) -> bool:
        """Mid-request, its head whole, a body declared by Content-Length that the lane could take."""
        if not self._head_complete:
            return False
        if any(_not_plain(name, value) for name, value in self._headers):
            return False  # `Expect: 100-continue` above all: its client waits for aiohttp's 100
        declared = [value for name, value in self._headers if name.lower() == b"content-length"]
        return len(declared) == 1 and declared[0].isdigit() and int(declared[0]) <= MAX_LANE_BODY

    def on_message_begin(self) -> None:
        self.mid_message = True
        self._head_complete = False
        self._url = b""
        self._headers = []
        self._body = []
        self._body_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._head_complete = True

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
        search = self._classify(method, target.partition("?")[0])
        if search is not None and not self._takes_searches:
            return None  # checked before the headers: a search's are not worth decoding here
        headers: list[tuple[str, str]] = []
        for name, value in self._headers:
            if len(name) + len(value) > limits.max_field_size or not (name.isascii() and value.isascii()):
                return None
            if _not_plain(name, value):
                return None
            headers.append((name.decode("ascii"), value.decode("ascii")))
        body = b"".join(self._body) if self._body_size else None
        return Plain(method, target, headers, body, search)


SearchHandler = Callable[[Exchange, SearchT], Awaitable[None]]


def _not_plain(name: bytes, value: bytes) -> bool:
    """A header that makes a request aiohttp's to handle. `Connection: keep-alive` alone is plain: it
    says what HTTP/1.1 means anyway, and elasticsearch-py and requests send it with every request."""
    lowered = name.lower()
    if lowered != b"connection":
        return lowered in _NOT_PLAIN
    return any(token.strip().lower() != b"keep-alive" for token in value.split(b","))


class FastLane(Generic[SearchT]):
    """Serves plain requests for the public listener's connections: searches through `search`, the rest
    forwarded untouched."""

    def __init__(
        self,
        es: Callable[[], Elasticsearch],
        classify: Callable[[str, str], SearchT | None],
        counted: Callable[[str, bool], None],  # (method, a search?)
        limits: HeadLimits,
        client_write_timeout_s: float | None,
        search: SearchHandler[SearchT] | None = None,
    ) -> None:
        self._es = es
        self._classify = classify
        self._counted = counted
        self.limits = limits
        self._client_write_timeout_s = client_write_timeout_s
        self._search = search

    def mirror(self) -> RequestMirror[SearchT]:
        """A mirror for one connection, handing this lane the plain requests it takes."""
        return RequestMirror(self.limits, self._classify, takes_searches=self._search is not None)

    async def run(
        self, request: Plain, writer: ClientWriter, remote: str | None, finished: Callable[[], None]
    ) -> None:
        """`serve`, as the connection's task: never a 500 for a forwarded request, and `finished` called
        at the end whatever happened. Here, not in the listener's protocol class, so mypyc compiles it."""
        try:
            await self.serve(request, writer, remote)
        except Exception:
            # Elasticsearch-shaped, or a cut connection mid-answer.
            log.exception("fast lane failed forwarding %s %s", request.method, request.target)
            if writer.started:
                writer.abort()
            else:
                body = error_body(502, "proxy_exception", "the proxy could not forward the request")
                writer.write(answer_bytes(elasticsearch_error(502, body)))
        finally:
            finished()

    async def serve(self, request: Plain, writer: ClientWriter, remote: str | None) -> None:
        """Answer one plain request: a search through the pipeline, anything else forwarded untouched."""
        if request.search is not None and self._search is not None:
            self._counted(request.method, True)
            search = cast(SearchT, request.search)  # what this lane's `classify` said of it
            await self._search(LaneExchange(self, request, writer, remote), search)
            return
        self._counted(request.method, False)
        headers = forwardable_request_headers(CIMultiDict(request.headers))
        await self.send_on(self._es(), request.method, request.target, headers, request.body, writer)

    async def send_on(
        self,
        es: Elasticsearch,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: bytes | None,
        writer: ClientWriter,
        extra_headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """Send a request to Elasticsearch and its answer, plus `extra_headers`, to the client; errors in
        Elasticsearch's shape. Returns what was sent, its body only when it went out in one write."""
        answer: Answer | None = None
        try:
            async with es.request(method, target, headers, body) as upstream:
                kept = headers_without(upstream.headers, _RESPONSE_DROP)
                if extra_headers:
                    kept.update(extra_headers)
                answer = Answer(upstream.status, kept, None, upstream.reason)
                head = _response_head(upstream.status, upstream.reason, kept)
                if method == "HEAD" or upstream.status in _NO_BODY_STATUSES or upstream.status < 200:
                    writer.write(head.closed(upstream.content_length))
                    return answer
                length = upstream.content_length
                if length is not None and length <= _BUFFERED_MAX:
                    answer.body = await upstream.read()
                    writer.write(head.closed(len(answer.body)) + answer.body)
                    return answer
                writer.write(head.closed(length) if length is not None else head.chunked())
                async for chunk in upstream.iter_chunks():
                    if chunk:
                        writer.write(chunk if length is not None else b"%x\r\n%b\r\n" % (len(chunk), chunk))
                    if not await writer.drained(self._client_write_timeout_s):
                        writer.abort()  # the status line is out: cutting the connection is the only signal
                        return answer
                if length is None:
                    writer.write(b"0\r\n\r\n")
                return answer
        except UpstreamError as exc:
            if writer.started and answer is not None:
                writer.abort()  # the status line is out: cutting the connection is the only signal
                return answer
            log.warning("elasticsearch request failed: %s", exc.reason)
            error = upstream_error_answer(exc, extra_headers)
            writer.write(answer_bytes(error))
            return error


class LaneExchange:
    """A search on the fast lane: its request as the mirror parsed it, its answer written to the socket."""

    def __init__(self, lane: FastLane[Any], plain: Plain, writer: ClientWriter, remote: str | None) -> None:
        self._lane = lane
        self._plain = plain
        self._writer = writer
        self.request = ClientRequest(
            plain.method, plain.target, CIMultiDictProxy(CIMultiDict(plain.headers)), remote
        )

    async def read_body(self, limit: int) -> bytes:
        body = self._plain.body or b""
        if len(body) > limit:
            raise BodyTooLarge
        return body

    async def forward(self, es: Elasticsearch, body: bytes, extra_headers: Mapping[str, str]) -> Answer:
        # `body` may be the client's minus `ext.ubi` (search.ubi): http1 frames it by its own length.
        headers = forwardable_request_headers(self.request.headers)
        plain = self._plain
        return await self._lane.send_on(
            es, plain.method, plain.target, headers, body, self._writer, extra_headers
        )

    def send(self, answer: Answer) -> None:
        self._writer.write(answer_bytes(answer))


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
        if not self._transport.is_closing():  # a search runs on after its client left; nobody reads
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


def answer_bytes(answer: Answer) -> bytes:
    """`answer` on the wire: status line, headers with its own length, body."""
    body = answer.body or b""
    kept = headers_without(answer.headers, _RESPONSE_DROP)
    return _response_head(answer.status, answer.reason, kept).closed(len(body)) + body


@dataclass(frozen=True, slots=True)
class _Head:
    lines: list[str]

    def __init__(self, lines: list[str]) -> None:
        # Written out: mypyc compiles this one, not the one @dataclass generates (tests/test_inits.py).
        object.__setattr__(self, "lines", lines)

    def closed(self, length: int | None) -> bytes:
        return self._encode([] if length is None else [f"Content-Length: {length}"])

    def chunked(self) -> bytes:
        return self._encode(["Transfer-Encoding: chunked"])

    def _encode(self, framing: list[str]) -> bytes:
        # Header values came in as UTF-8 with undecodable bytes kept as surrogates: they go out unchanged.
        return "\r\n".join([*self.lines, *framing, "", ""]).encode("utf-8", "surrogateescape")


def _response_head(status: int, reason: str, headers: Mapping[str, str]) -> _Head:
    """Status line and `headers`, already without hop-by-hop ones and framing (set per answer)."""
    lines = [f"HTTP/1.1 {status} {reason or _reason(status)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return _Head(lines)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"
