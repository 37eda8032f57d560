"""Forward a request to Elasticsearch and stream the answer back, byte for byte.

Bodies flow through in chunks in both directions, so a 1 GB `_bulk` costs constant memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from .. import http1
from ..errors import UpstreamError
from .exchange import Answer, BodyTooLarge, ClientRequest, upstream_error_answer, web_response
from .headers import forwardable_request_headers, forwardable_response_headers
from .upstream import Elasticsearch

log = logging.getLogger(__name__)

# Answers up to this size are read whole and sent in one write; larger ones stream.
_BUFFERED_MAX = 256 * 1024


def raw_target(request: web.BaseRequest) -> str:
    """Path and query exactly as the client encoded them; an absolute-form target loses its authority."""
    target = request.raw_path
    if target.startswith("/") and "#" not in target:
        return target  # origin-form, as every client sends: no URL object to build
    # absolute-form (`GET http://other-host/x`): aiohttp gives the origin-relative part in rel_url
    return request.rel_url.raw_path_qs


def raw_path(request: web.BaseRequest) -> str:
    """The encoded path without the query string, as `raw_target` would forward it."""
    return raw_target(request).partition("?")[0]


def error_response(error: UpstreamError, extra_headers: Mapping[str, str] | None = None) -> web.Response:
    """502/504 in Elasticsearch's error shape; the proxy goes on serving others."""
    return web_response(upstream_error_answer(error, extra_headers))


async def forward(
    request: web.Request,
    es: Elasticsearch,
    *,
    body: bytes | None = None,
    extra_headers: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    """Send the request on unchanged (`body`: already read; else streamed) and stream the answer back.

    A client that takes longer than `es.client_write_timeout_s` to accept a chunk is cut off, so it
    cannot hold a pooled Elasticsearch connection for as long as it likes.
    """
    headers = forwardable_request_headers(request.headers)
    payload: bytes | aiohttp.StreamReader | None
    if body is not None:
        payload = body  # may be the client's minus `ext.ubi` (search.ubi): http1 frames it by its own length
    elif request.body_exists:
        payload = request.content
    else:
        payload = None
    try:
        async with es.request(request.method, raw_target(request), headers, payload) as upstream:
            response_headers = forwardable_response_headers(upstream.headers)
            if extra_headers:
                response_headers.update(extra_headers)
            length = upstream.content_length
            if request.method == "HEAD" or (length is not None and length <= _BUFFERED_MAX):
                # Small answers go out headers and body in one write; streaming would send them apart.
                data = b"" if request.method == "HEAD" else await upstream.read()
                return web.Response(
                    status=upstream.status,
                    reason=upstream.reason,
                    body=data or None,
                    headers=response_headers,
                )
            response = web.StreamResponse(
                status=upstream.status, reason=upstream.reason, headers=response_headers
            )
            await response.prepare(request)
            if not await _copy_body(upstream, response, es.client_write_timeout_s):
                # The status line is already sent: the only honest signal left is to cut the connection.
                if request.transport is not None:
                    request.transport.abort()
                return response
            await response.write_eof()
            return response
    except UpstreamError as exc:
        log.warning("elasticsearch request failed: %s", exc.reason)
        return error_response(exc, extra_headers)


async def _copy_body(
    upstream: http1.Response, response: web.StreamResponse, write_timeout_s: float | None
) -> bool:
    """Copy the body chunk by chunk; False when Elasticsearch broke off or the client stopped reading."""
    try:
        async for chunk in upstream.iter_chunks():
            try:
                async with asyncio.timeout(write_timeout_s):
                    await response.write(chunk)
            except TimeoutError:
                log.warning("client read nothing for %g s: connection dropped", write_timeout_s)
                return False
    except UpstreamError as exc:
        log.warning("elasticsearch broke off a response mid-body: %s", exc.reason)
        return False
    return True


class AiohttpExchange:
    """An exchange on aiohttp's path: `response` is what the handler returns."""

    def __init__(self, request: web.Request) -> None:
        self._web_request = request
        self.request = ClientRequest(request.method, raw_target(request), request.headers, request.remote)
        self.response: web.StreamResponse | None = None

    async def read_body(self, limit: int) -> bytes:
        try:
            raw = await self._web_request.read() if self._web_request.body_exists else b""
        except web.HTTPRequestEntityTooLarge:
            raise BodyTooLarge from None
        if len(raw) > limit:
            raise BodyTooLarge
        return raw

    async def forward(self, es: Elasticsearch, body: bytes, extra_headers: Mapping[str, str]) -> Answer:
        response = await forward(self._web_request, es, body=body, extra_headers=extra_headers)
        self.response = response
        kept = response.body if isinstance(response, web.Response) else None
        return Answer(
            response.status,
            CIMultiDict(response.headers),
            kept if isinstance(kept, bytes) else None,
            response.reason,
        )

    def send(self, answer: Answer) -> None:
        self.response = web_response(answer)
