"""The listeners' HTTP protocol, bounded: parser limits, a header-read deadline, Elasticsearch-shaped errors.

aiohttp answers a request it cannot parse with plain text and lets a connection take as long as it likes
to send its first headers; clients of an Elasticsearch endpoint expect its error JSON, and a few hundred
connections trickling headers must not hold sockets open for ever.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong

from ..config import ServerConfig
from .tls import ListenerTls
from .upstream import error_body

_END_OF_HEADERS = b"\r\n\r\n"


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
    """aiohttp's protocol with a deadline for the first request's headers and JSON parse errors."""

    def __init__(self, manager: web.Server, *, header_read_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_read_timeout_s = header_read_timeout_s
        self._header_deadline: asyncio.TimerHandle | None = None
        self._head_tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        loop = asyncio.get_running_loop()
        self._header_deadline = loop.call_later(self._header_read_timeout_s, self._headers_too_slow)

    def data_received(self, data: bytes) -> None:
        if self._header_deadline is not None:
            # Only the last 3 bytes of earlier chunks matter: the blank line may straddle two of them.
            seen = self._head_tail + data
            if _END_OF_HEADERS in seen:
                self._stop_deadline()
            else:
                self._head_tail = seen[-3:]
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_deadline()
        super().connection_lost(exc)

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
    def __init__(self, origin: web.Server, header_read_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(
            origin.request_handler,
            request_factory=origin.request_factory,
            handler_cancellation=origin.handler_cancellation,
            **kwargs,
        )
        self._header_read_timeout_s = header_read_timeout_s

    def __call__(self) -> GuardedRequestHandler:
        return GuardedRequestHandler(
            self, header_read_timeout_s=self._header_read_timeout_s, loop=self._loop, **self._kwargs
        )


class GuardedAppRunner(web.AppRunner):
    """An AppRunner whose connections are `GuardedRequestHandler`s with the configured limits."""

    def __init__(self, app: web.Application, limits: ServerConfig, **kwargs: Any) -> None:
        super().__init__(
            app,
            max_line_size=limits.max_line_size,
            max_field_size=limits.max_field_size,
            max_headers=limits.max_headers,
            keepalive_timeout=limits.keepalive_timeout_s,
            **kwargs,
        )
        self._header_read_timeout_s = limits.header_read_timeout_s

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp builds its Server inside the app; rebuild it with the same arguments but our protocol.
        return _GuardedServer(server, self._header_read_timeout_s, loop=server._loop, **server._kwargs)


def tcp_site(runner: web.BaseRunner, host: str, port: int, tls: ListenerTls | None) -> web.TCPSite:
    """A listening site for `runner`, speaking https when the listener has TLS."""
    return web.TCPSite(
        runner, host, port, reuse_address=True, ssl_context=tls.listening if tls is not None else None
    )
