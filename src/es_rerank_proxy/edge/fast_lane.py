"""The fast lane: plain requests served without building aiohttp requests and responses.

Most of what a frontend sends is small and simple: `GET /index/_doc/1`, `HEAD /index`, a `POST` of a few
KB, a search. For those, aiohttp's server machinery (a Request, routing, a task, a Response and its
serialisation) was half the proxy's CPU per forwarded request. The public listener's protocol
(`listener.GuardedRequestHandler`) mirrors every byte it receives through `request_mirror.RequestMirror`;
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
from typing import Any, Generic, cast

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
from .request_mirror import HeadLimits, Plain, RequestMirror, SearchT
from .upstream import Elasticsearch, error_body

log = logging.getLogger(__name__)

# Answers up to this size go out in one write; larger ones stream, chunk by chunk.
_BUFFERED_MAX = 256 * 1024
_NO_BODY_STATUSES = frozenset({204, 304})
# Elasticsearch's framing is this hop's: the lane sets its own per answer.
_RESPONSE_DROP = HOP_BY_HOP | {"content-length"}


SearchHandler = Callable[[Exchange, SearchT], Awaitable[None]]


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
