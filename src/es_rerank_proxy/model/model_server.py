"""One HTTP exchange with a model server (reranker or embeddings), and the errors it maps to.

`call_model_server` sends a request over the runtime's lean pools (`http1.Client`) or an aiohttp session
(tools, tests); transport failures, timeouts and non-2xx answers become the project's `Reranker*`
exceptions, carrying the status where there was one. What a request and its answer look like is the
clients' business (`reranker`, `embeddings`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import aiohttp
import orjson

from .. import http1
from ..config import RerankerConfig, redact_url
from ..errors import RerankerBadResponse, RerankerTimeout, RerankerUnavailable, UpstreamError

_ERROR_BODY_CHARS = 200


class ModelServerUnavailable(RerankerUnavailable):
    """`RerankerUnavailable` from a model server; `status` is the 5xx status, None for transport errors."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ModelServerBadResponse(RerankerBadResponse):
    """`RerankerBadResponse` from a model server; `status` is the 4xx status, or the 2xx of a bad body."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def model_headers(cfg: RerankerConfig) -> dict[str, str]:
    """JSON both ways, and the API key as a Bearer token when one is configured."""
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if cfg.api_key:
        headers["Authorization"] = f"Bearer {cfg.api_key}"
    return headers


# What the clients send through: the runtime's lean pools, or an aiohttp session (tools, tests).
ModelSession = aiohttp.ClientSession | http1.Client


async def call_model_server(
    session: ModelSession,
    method: str,
    url: str,
    path: str,
    data: bytes | None,
    headers: Mapping[str, str],
    timeout_s: float,
) -> tuple[int, bytes]:
    """One request to a model server: its status and body, or the project's error for a transport failure."""
    # aiohttp treats a total timeout of 0 as "no timeout": an exhausted budget must not wait forever.
    if not timeout_s > 0:
        raise RerankerTimeout(f"{method} {path}: no time left (timeout {timeout_s} s)")
    target = url.rstrip("/") + path
    try:
        if isinstance(session, http1.Client):
            return await session.fetch(method, target, headers, data, timeout_s)
        async with session.request(
            method,
            target,
            data=data,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            allow_redirects=False,
        ) as resp:
            return resp.status, await resp.read()
    # ServerTimeoutError is both a ClientError and a TimeoutError: timeouts first.
    # The URL is shown redacted, and only built for a message: this runs for every model call.
    except asyncio.TimeoutError as exc:
        raise RerankerTimeout(f"{method} {redact_url(target)}: no answer within {timeout_s:g} s") from exc
    except UpstreamError as exc:
        raise ModelServerUnavailable(f"{method} {redact_url(target)}: {exc.reason}") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise ModelServerUnavailable(f"{method} {redact_url(target)}: {_describe_transport(exc)}") from exc


def raise_for_status(status: int, body: bytes) -> None:
    """A model server's non-2xx answer as the project's error: 5xx unavailable, anything else bad."""
    if 200 <= status < 300:
        return
    if status >= 500:
        raise ModelServerUnavailable(f"HTTP {status}: {parse_error(body)}", status=status)
    raise ModelServerBadResponse(f"HTTP {status}: {parse_error(body)}", status=status)


def _describe_transport(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def parse_error(body: bytes) -> str:
    """The message of a vLLM error body (either shape, or TEI's), else the start of the body."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(data.get("message"), str):
            return str(data["message"])
        if isinstance(error, str):  # TEI and vLLM's 401: {"error": "..."}
            return error
    return snippet(body, _ERROR_BODY_CHARS) if body else "(empty body)"


def snippet(body: bytes, limit: int) -> str:
    """The start of `body` as text, at most `limit` characters, for messages."""
    text = body[: limit * 4].decode("utf-8", errors="replace")
    return text if len(text) <= limit else text[:limit] + "..."
