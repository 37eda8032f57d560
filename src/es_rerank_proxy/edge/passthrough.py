"""Forward a request to Elasticsearch and stream the answer back, byte for byte.

Bodies flow through in chunks in both directions, so a 1 GB `_bulk` costs constant memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import aiohttp
from aiohttp import web

from ..errors import UpstreamError
from .upstream import (
    Elasticsearch,
    forwardable_request_headers,
    forwardable_response_headers,
    upstream_error_response_body,
    upstream_error_status,
)

log = logging.getLogger(__name__)

# Large enough that a bulk response streams in few writes, small enough to keep memory flat.
_CHUNK = 256 * 1024
# Answers up to this size are read whole and sent in one write; larger ones stream.
_BUFFERED_MAX = 256 * 1024


def raw_target(request: web.BaseRequest) -> str:
    """Path and query exactly as the client encoded them; an absolute-form target loses its authority."""
    if request.rel_url.raw_path != request.raw_path.split("?", 1)[0]:
        # absolute-form (`GET http://other-host/x`): aiohttp gives the origin-relative part in rel_url
        return request.rel_url.raw_path_qs
    return request.raw_path


def error_response(error: UpstreamError, extra_headers: Mapping[str, str] | None = None) -> web.Response:
    """502/504 in Elasticsearch's error shape; the proxy goes on serving others."""
    response = web.Response(
        status=upstream_error_status(error),
        body=upstream_error_response_body(error),
        content_type="application/json",
        charset="UTF-8",
    )
    response.headers["X-Elastic-Product"] = "Elasticsearch"
    if extra_headers:
        response.headers.update(extra_headers)
    return response


async def forward(
    request: web.Request,
    es: Elasticsearch,
    *,
    body: bytes | None = None,
    extra_headers: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    """Send the request on unchanged (`body`: already read; else streamed) and stream the answer back."""
    headers = forwardable_request_headers(request.headers)
    payload: bytes | aiohttp.StreamReader | None
    if body is not None:
        payload = body
        if "Content-Length" in headers:
            # The body may be the client's minus `ext.ubi` (search.ubi): the length must be its own.
            headers["Content-Length"] = str(len(body))
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
                data = b"" if request.method == "HEAD" else await _read_all(upstream)
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
            if not await _copy_body(upstream, response):
                # The status line is already sent: the only honest signal left is to cut the connection.
                if request.transport is not None:
                    request.transport.abort()
                return response
            await response.write_eof()
            return response
    except UpstreamError as exc:
        log.warning("elasticsearch request failed: %s", exc.reason)
        return error_response(exc, extra_headers)


async def _read_all(upstream: aiohttp.ClientResponse) -> bytes:
    try:
        return await upstream.read()
    except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise UpstreamError("Elasticsearch stopped answering mid-body", timed_out=True) from exc
    except aiohttp.ClientError as exc:
        raise UpstreamError(f"Elasticsearch broke off its answer: {exc}") from exc


async def _copy_body(upstream: aiohttp.ClientResponse, response: web.StreamResponse) -> bool:
    """Copy the body chunk by chunk; False when Elasticsearch broke off mid-body."""
    try:
        async for chunk in upstream.content.iter_chunked(_CHUNK):
            await response.write(chunk)
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        log.warning("elasticsearch broke off a response mid-body: %r", exc)
        return False
    return True
