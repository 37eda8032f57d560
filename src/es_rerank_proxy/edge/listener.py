"""The listeners' HTTP protocol, bounded: parser limits, a header-read deadline, Elasticsearch-shaped errors.

aiohttp answers a request it cannot parse with plain text and lets a connection take as long as it likes
to send its first headers; clients of an Elasticsearch endpoint expect its error JSON, and a few hundred
connections trickling headers must not hold sockets open for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong

from ..config import ServerConfig
from .fast_lane import ClientWriter, FastLane
from .request_mirror import Plain
from .tls import ListenerTls
from .upstream import error_body

log = logging.getLogger(__name__)

_END_OF_HEADERS = b"\r\n\r\n"
# Bytes a client may pipeline behind a request the fast lane is answering before the proxy stops reading.
_HELD_MAX = 256 * 1024
# aiohttp's RequestHandler state the fast lane reads to know the connection is idle, and sets to keep
# its keep-alive timer right. Without any of them (another aiohttp) the lane stays shut: slower, not wrong.
_AIOHTTP_STATE = (
    "_messages",
    "_waiter",
    "_request_in_progress",
    "_payload_parser",
    "_upgraded",
    "_close",
    "_force_close",
    "_next_keepalive_close_time",
    "_keepalive_handle",
    "_keepalive_timeout",
    "_paused",
    "_drain_helper",
    "_process_keepalive",
)


def parse_error_answer(exc: BaseException | None, status: int) -> tuple[int, str, str]:
    """(status, Elasticsearch error type, reason) for a request aiohttp's parser refused."""
    if isinstance(exc, LineTooLong) or (
        isinstance(exc, BadHttpMessage) and "too many headers" in str(exc.message).lower()
    ):
        return 431, "too_long_http_header_exception", "request line or headers exceed the proxy's limits"
    if status >= 500:
        return status, "proxy_exception", "the proxy could not handle the request"
    reason = exc.message if isinstance(exc, BadHttpMessage) else "malformed HTTP request"
    return 400, "illegal_argument_exception", str(reason)[:200]


class GuardedRequestHandler(web.RequestHandler):
    """aiohttp's protocol with a deadline for the first request's headers and JSON parse errors.

    With a `fast_lane`, whole plain non-search requests that arrive while aiohttp has nothing under way
    on the connection are answered by the lane; every other byte goes to aiohttp as before.
    """

    def __init__(
        self,
        manager: web.Server,
        *,
        header_read_timeout_s: float,
        fast_lane: FastLane[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        self._header_read_timeout_s = header_read_timeout_s
        self._header_deadline: asyncio.TimerHandle | None = None
        self._head_tail = b""
        supported = all(hasattr(self, name) for name in _AIOHTTP_STATE)
        self._lane = fast_lane if supported else None
        self._mirror = self._lane.mirror() if self._lane is not None else None
        self._lane_task: asyncio.Task[None] | None = None
        self._remote: str | None = None
        self._lane_search = False  # the lane's task is a search: it finishes even if the client leaves
        self._held: list[bytes] = []  # bytes that arrived while the lane answered, in order
        self._held_bytes = 0
        self._held_back = False  # reading paused: the client must wait, not fill the proxy's memory
        self._reading = False  # aiohttp's reading task has begun; before, nothing of the stream is its
        # A request begun while aiohttp was idle whose body is still arriving: held from aiohttp until it
        # is whole (the lane may take it) or shown not plain (aiohttp gets every byte of it, in order).
        self._waiting: list[bytes] = []
        self._waiting_deadline: asyncio.TimerHandle | None = None
        self._waiting_ended: asyncio.Event | None = None  # set when it ends, for a shutdown that waits

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self._remote = str(peer[0]) if isinstance(peer, (list, tuple)) and peer else None  # the lane's
        loop = asyncio.get_running_loop()
        self._header_deadline = loop.call_later(self._header_read_timeout_s, self._headers_too_slow)

    async def start(self) -> None:
        self._reading = True
        await super().start()

    def data_received(self, data: bytes) -> None:
        if self._header_deadline is not None:
            # Only the last 3 bytes of earlier chunks matter: the blank line may straddle two of them.
            seen = self._head_tail + data
            if _END_OF_HEADERS in seen:
                self._stop_deadline()
            else:
                self._head_tail = seen[-3:]
        if self._lane_task is not None:
            self._held.append(data)  # pipelined behind the lane's answer: its turn comes after
            self._held_bytes += len(data)
            if self._held_bytes > _HELD_MAX and not self._held_back and self.transport is not None:
                self._held_back = True
                self.transport.pause_reading()
            return
        if self._mirror is None or self._lane is None:
            super().data_received(data)
            return
        mirror = self._mirror
        idle = bool(self._waiting) or (not mirror.mid_message and self._aiohttp_idle())
        completed = mirror.feed(data)
        if mirror.broken:
            self._mirror = None
        elif idle and len(completed) == 1 and not mirror.mid_message:
            request = completed[0]
            if request is not None:
                self._stop_waiting()
                self._start_lane(request)
                return
        elif idle and not completed and mirror.mid_message and mirror.awaiting_small_body:
            # Clients write a head and its body apart (http.client does): wait for the rest.
            if not self._waiting:
                self._waiting_deadline = self._loop.call_later(
                    self._header_read_timeout_s, self._waiting_too_slow
                )
            self._waiting.append(data)
            return
        if self._waiting:
            data = b"".join([*self._stop_waiting(), data])
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_deadline()
        self._stop_waiting()
        if self._lane_task is not None and not self._lane_search:
            # A forward has nobody left to answer. A search runs on, as aiohttp's handlers do: its
            # record, UBI query and model scores are still worth keeping.
            self._lane_task.cancel()
        super().connection_lost(exc)

    async def shutdown(self, timeout: float | None = 15.0) -> None:
        # A request still arriving, and then an answer under way, get the same grace as aiohttp's.
        deadline = None if timeout is None else self._loop.time() + timeout
        if self._waiting:
            self._waiting_ended = asyncio.Event()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._waiting_ended.wait(), timeout)
        self._lane = None  # nothing new starts
        self._give_waiting_to_aiohttp()
        if self._lane_task is not None:
            left = None if deadline is None else max(0.0, deadline - self._loop.time())
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._lane_task), left)
        await super().shutdown(timeout)

    # --- the fast lane -------------------------------------------------------------------------------

    def _aiohttp_idle(self) -> bool:
        """aiohttp waits for a request and holds none, in part or whole: the next bytes start a new one.

        A client that writes its first request right after connecting is read before aiohttp's reading
        task has taken its first step; that task has then taken no request yet either.
        """
        waiter = self._waiter
        waiting = (waiter is not None and not waiter.done()) or not self._reading
        return (
            waiting
            and not self._messages
            and not self._request_in_progress
            and self._payload_parser is None
            and not self._upgraded
            and not self._close
            and not self._force_close
        )

    def _start_lane(self, request: Plain) -> None:
        assert self._lane is not None and self.transport is not None
        writer = ClientWriter(self.transport, lambda: self._paused, self._drain_helper)
        self._lane_search = request.search is not None
        running = self._lane.run(request, writer, self._remote, self._lane_done)
        self._lane_task = self._loop.create_task(running)

    def _lane_done(self) -> None:
        """The lane answered: aiohttp's keep-alive counts it, and bytes held behind it get their turn."""
        self._lane_task = None
        self._lane_search = False
        self._extend_keepalive()
        held, self._held, self._held_bytes = self._held, [], 0
        if self._held_back and self.transport is not None and not self.transport.is_closing():
            self._held_back = False
            self.transport.resume_reading()
        if self.transport is not None and not self.transport.is_closing():
            for data in held:
                self.data_received(data)

    def _extend_keepalive(self) -> None:
        """aiohttp closes a connection idle for `keepalive_timeout` since its own last request; count the
        lane's requests too, and arm the timer on a connection aiohttp has not served yet."""
        if not self._keepalive_timeout or self._force_close:
            return
        close_time = self._loop.time() + self._keepalive_timeout
        self._next_keepalive_close_time = close_time
        if self._keepalive_handle is None:
            self._keepalive_handle = self._loop.call_at(close_time, self._process_keepalive)

    def _process_keepalive(self) -> None:
        if self._lane_task is not None:
            # aiohttp sees an idle connection, but the lane is answering on it: look again later.
            self._keepalive_handle = None
            self._extend_keepalive()
            return
        super()._process_keepalive()

    def _stop_waiting(self) -> list[bytes]:
        """Stop waiting for the rest of a request; returns the bytes held so far."""
        if self._waiting_deadline is not None:
            self._waiting_deadline.cancel()
            self._waiting_deadline = None
        waiting, self._waiting = self._waiting, []
        if self._waiting_ended is not None:
            self._waiting_ended.set()
        return waiting

    def _waiting_too_slow(self) -> None:
        # A body slower than the header deadline: aiohttp's path reads it, with aiohttp's own bounds.
        self._waiting_deadline = None  # fired: nothing to cancel
        self._give_waiting_to_aiohttp()

    def _give_waiting_to_aiohttp(self) -> None:
        """Hand aiohttp what the lane held, as if the lane had never looked at it."""
        waiting = self._stop_waiting()
        if waiting and self.transport is not None and not self.transport.is_closing():
            super().data_received(b"".join(waiting))

    def _stop_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        # Later requests on a kept-alive connection are bounded by the keep-alive timeout instead.
        self._header_deadline = None
        self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("an answer is already under way; only closing the connection is left")
        code, error_type, reason = parse_error_answer(exc, status)
        if code >= 500:
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
        else:
            # A client decides how many malformed requests it sends: no traceback per request in the log.
            self.logger.debug("refused a malformed request from %s: %s", request.remote, reason)
        response = web.Response(
            status=code, body=error_body(code, error_type, reason), content_type="application/json"
        )
        response.headers["X-Elastic-Product"] = "Elasticsearch"
        response.force_close()  # the parser's state after a bad message is not to be trusted
        return response


class _GuardedServer(web.Server):
    def __init__(
        self,
        origin: web.Server,
        header_read_timeout_s: float,
        fast_lane: FastLane[Any] | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            origin.request_handler,
            request_factory=origin.request_factory,
            handler_cancellation=origin.handler_cancellation,
            **kwargs,
        )
        self._header_read_timeout_s = header_read_timeout_s
        self._fast_lane = fast_lane

    def __call__(self) -> GuardedRequestHandler:
        return GuardedRequestHandler(
            self,
            header_read_timeout_s=self._header_read_timeout_s,
            fast_lane=self._fast_lane,
            loop=self._loop,
            **self._kwargs,
        )


class GuardedAppRunner(web.AppRunner):
    """An AppRunner whose connections are `GuardedRequestHandler`s with the configured limits."""

    def __init__(
        self,
        app: web.Application,
        limits: ServerConfig,
        *,
        fast_lane: FastLane[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            app,
            max_line_size=limits.max_line_size,
            max_field_size=limits.max_field_size,
            max_headers=limits.max_headers,
            keepalive_timeout=limits.keepalive_timeout_s,
            **kwargs,
        )
        self._header_read_timeout_s = limits.header_read_timeout_s
        self._fast_lane = fast_lane

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp builds its Server inside the app; rebuild it with the same arguments but our protocol.
        return _GuardedServer(
            server, self._header_read_timeout_s, self._fast_lane, loop=server._loop, **server._kwargs
        )


def tcp_site(runner: web.BaseRunner, host: str, port: int, tls: ListenerTls | None) -> web.TCPSite:
    """A listening site for `runner`, speaking https when the listener has TLS."""
    return web.TCPSite(
        runner, host, port, reuse_address=True, ssl_context=tls.listening if tls is not None else None
    )
