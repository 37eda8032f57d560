"""One keep-alive HTTP/1.1 connection and its answers, parsed by llhttp as they arrive (the request head
it sends: `request`)."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from ..errors import UpstreamError

_HIGH_WATER = 1024 * 1024
_LOW_WATER = 256 * 1024
# RFC 9110 §9.2.2: a request that failed on a reused connection before any answer may be sent again.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class Response:
    """One answer: status and headers first, then the body as it arrives (`read` or `iter_chunks`)."""

    def __init__(self, connection: Connection, read_timeout_s: float | None) -> None:
        self._connection = connection
        self._read_timeout_s = read_timeout_s
        self.status = 0
        self.reason = ""
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
        self.content_length: int | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._done = False
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._whole = False  # `read` waits for the end: chunks neither wake it nor pause the socket
        self._arrivals = 0  # chunks so far: `read`'s inactivity timer looks at it

    # --- fed by the connection -----------------------------------------------------------------------

    def _feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        self._arrivals += 1
        if self._whole:
            return
        if self._buffered > _HIGH_WATER:
            self._connection.pause_reading()
        self._wake()

    def _finish(self, error: UpstreamError | None = None) -> None:
        if not self._done:
            self._done = True
            self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # --- read by the caller --------------------------------------------------------------------------

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await wait_at_most(self._waiter, self._read_timeout_s)
        except TimeoutError as exc:
            raise UpstreamError("Elasticsearch stopped answering mid-body", timed_out=True) from exc
        finally:
            self._waiter = None

    async def _wait_for_end(self) -> None:
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer: asyncio.TimerHandle | None = None
        seen = self._arrivals

        def check(timeout_s: float) -> None:
            # One timer per read, re-armed only when it fires: a chunk since the last look is progress.
            # The node is thus declared quiet between one and two read timeouts after its last byte.
            nonlocal timer, seen
            if waiter.done():
                return
            if self._arrivals == seen:
                waiter.set_exception(TimeoutError())
                return
            seen = self._arrivals
            timer = loop.call_later(timeout_s, check, timeout_s)

        if self._read_timeout_s is not None:
            timer = loop.call_later(self._read_timeout_s, check, self._read_timeout_s)
        try:
            await waiter
        except TimeoutError as exc:
            raise UpstreamError("Elasticsearch stopped answering mid-body", timed_out=True) from exc
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive; UpstreamError if Elasticsearch breaks off or goes quiet."""
        return _Chunks(self)

    def _next_chunk(self) -> bytes | None:
        """A chunk already here, or None (flow control: reading resumes below the low mark)."""
        if not self._chunks:
            return None
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._buffered < _LOW_WATER:
            self._connection.resume_reading()
        return chunk

    async def read(self) -> bytes:
        """The whole body: one wake-up at its end, however many pieces it comes in (a node may write a
        small answer in six), and UpstreamError if the node goes quiet for the read timeout."""
        if not self._done:
            self._whole = True
            self._connection.resume_reading()  # read() takes everything: never stall on the high mark
            try:
                await self._wait_for_end()
            finally:
                self._whole = False
        if self._error is not None:
            raise self._error
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        return data


class _Chunks:
    """`Response.iter_chunks`: an iterator class, not an async generator, so mypyc compiles it."""

    def __init__(self, response: Response) -> None:
        self._response = response

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        response = self._response
        while True:
            chunk = response._next_chunk()
            if chunk is not None:
                return chunk
            if response._done:
                if response._error is not None:
                    raise response._error
                raise StopAsyncIteration
            await response._wait()


class Connection(asyncio.Protocol):
    """One keep-alive connection; answers are parsed by llhttp and fed to the current `Response`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self._parser = httptools.HttpResponseParser(self)
        self._response: Response | None = None
        self._head: asyncio.Future[None] | None = None
        self._header_names: list[bytes] = []
        self._header_values: list[bytes] = []
        self._skip_body = False
        self._reading_paused = False
        self._can_write = asyncio.Event()
        self._can_write.set()
        self.keep_alive = False
        self._sending_body = False  # a streamed request body not yet sent whole: the framing is unfinished

    # --- asyncio.Protocol ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is one without subclassing it

    def data_received(self, data: bytes) -> None:
        if self._response is None:
            self.close()  # bytes nobody asked for: the connection's framing can no longer be trusted
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"Elasticsearch sent a malformed answer: {exc}"))
            self.close()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost finishes the answer

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._can_write.set()
        response = self._response
        if response is not None and self._head is not None and self._head.done():
            if self._body_ends_at_close(response):
                response._finish()  # an answer without a length ends where the connection does
            else:
                response._finish(UpstreamError("Elasticsearch broke off its answer"))
        else:
            self._fail(UpstreamError("Elasticsearch closed the connection before answering"))

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    # --- httptools callbacks -------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._header_names.clear()
        self._header_values.clear()

    def on_status(self, status: bytes) -> None:
        if self._response is not None:
            self._response.reason = status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_names.append(name)
        self._header_values.append(value)

    def on_headers_complete(self) -> None:
        response = self._response
        if response is None or self._head is None:
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            return  # an interim answer (103 Early Hints): the final one follows
        headers: CIMultiDict[str] = CIMultiDict()
        for name, value in zip(self._header_names, self._header_values, strict=True):
            headers.add(name.decode("latin-1"), value.decode("utf-8", "surrogateescape"))
        response.status = status
        response.headers = CIMultiDictProxy(headers)
        length = headers.get("Content-Length")
        response.content_length = int(length) if length is not None and length.isdigit() else None
        self.keep_alive = self._parser.should_keep_alive()
        if not self._head.done():
            self._head.set_result(None)
        if self._skip_body:
            # A HEAD answer announces a length but carries no body; llhttp cannot be told, so start afresh.
            self._parser = httptools.HttpResponseParser(self)
            self._complete(response)

    def on_body(self, body: bytes) -> None:
        if self._response is not None:
            self._response._feed(body)

    def on_message_complete(self) -> None:
        response = self._response
        if response is None or self._head is None or not self._head.done():
            return  # the end of an interim answer
        self._complete(response)

    # --- used by the pool ----------------------------------------------------------------------------

    def start(self, response: Response, head_only: bool) -> asyncio.Future[None]:
        """Expect the answer to a request about to be written; the future resolves with its headers."""
        self._response = response
        self._skip_body = head_only
        self._head = asyncio.get_running_loop().create_future()
        return self._head

    def send_body(self, body: AsyncIterator[bytes], chunked: bool) -> asyncio.Task[None]:
        """Start sending a streamed body in a task of its own. Until it has gone out whole (not cancelled,
        not failed, not cut short by an early answer) the connection is not idle."""
        self._sending_body = True  # now, not when the task first runs: an answer may come before that
        return asyncio.ensure_future(self._write_body(body, chunked))

    async def _write_body(self, body: AsyncIterator[bytes], chunked: bool) -> None:
        """Send a streamed body, waiting whenever the socket's buffer is full."""
        assert self.transport is not None
        async for chunk in body:
            if self.closed:
                return
            if chunk:
                self.transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
            await self._can_write.wait()
        if chunked and not self.closed:
            self.transport.write(b"0\r\n\r\n")
        self._sending_body = False

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()

    def idle(self) -> bool:
        """Free for another request: the last request went out whole, its answer was read to its end, and
        the node keeps the connection."""
        return not self.closed and self._response is None and self.keep_alive and not self._sending_body

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _complete(self, response: Response) -> None:
        self._response = None
        response._finish()
        self.resume_reading()

    def _fail(self, error: UpstreamError) -> None:
        response, head = self._response, self._head
        self._response = None
        if head is not None and not head.done():
            head.set_exception(error)
            head.exception()  # retrieved here: a caller that gave up must not leave it "never retrieved"
        if response is not None:
            response._finish(error)

    def _body_ends_at_close(self, response: Response) -> bool:
        return (
            response.content_length is None
            and "chunked" not in response.headers.get("Transfer-Encoding", "").lower()
            and not self._skip_body
        )


async def wait_at_most(future: asyncio.Future[None], timeout_s: float | None) -> None:
    """Await `future`, raising TimeoutError after `timeout_s`: one timer, lighter than `asyncio.timeout`
    on a path taken twice per forwarded request."""
    if timeout_s is None or future.done():
        await future
        return
    timer = asyncio.get_running_loop().call_later(timeout_s, _expire, future)
    try:
        await future
    finally:
        timer.cancel()


def _expire(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())
