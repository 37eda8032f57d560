"""A client's request and the proxy's answer, whichever of the listener's two paths carried them.

A search arrives through aiohttp (`web.Request`) or through the fast lane (bytes llhttp parsed, see
`fast_lane`). The pipeline reads a `ClientRequest`, answers with an `Answer` and forwards the client's own
request through `Exchange.forward`, so one pipeline serves both paths and none of its decisions depends on
which one it was.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qsl

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from ..errors import UpstreamError
from .upstream import Elasticsearch, upstream_error_response_body, upstream_error_status


@dataclass(frozen=True, slots=True)
class ClientRequest:
    """What the pipeline reads of a client's request."""

    method: str
    target: str  # origin-form path and query, exactly as the client encoded them
    headers: CIMultiDictProxy[str]
    remote: str | None  # the peer's address, as the socket gives it

    def __init__(self, method: str, target: str, headers: CIMultiDictProxy[str], remote: str | None) -> None:
        # Written out: mypyc compiles this one, not the one @dataclass generates (tests/test_inits.py).
        object.__setattr__(self, "method", method)
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "headers", headers)
        object.__setattr__(self, "remote", remote)

    @property
    def raw_path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def raw_query_string(self) -> str:
        return self.target.partition("?")[2]

    def params(self) -> dict[str, str]:
        """The query string's parameters, decoded; the last of a repeated name wins, as in Elasticsearch."""
        return query_params(self.raw_query_string)


def query_params(query: str) -> dict[str, str]:
    """`dict(parse_qsl(query, keep_blank_values=True))`; without `%` or `+` there is nothing to decode,
    and splitting is all it takes (most searches' query strings: a fifth of parse_qsl's time)."""
    if "%" in query or "+" in query:
        return dict(parse_qsl(query, keep_blank_values=True))
    params: dict[str, str] = {}
    for pair in query.split("&"):
        if pair:
            name, _, value = pair.partition("=")
            params[name] = value
    return params


@dataclass(slots=True)
class Answer:
    """An answer for the client: Elasticsearch's, or the proxy's own."""

    status: int
    headers: CIMultiDict[str]
    body: bytes | None  # None: it was streamed to the client and not kept
    reason: str = ""

    def __init__(self, status: int, headers: CIMultiDict[str], body: bytes | None, reason: str = "") -> None:
        # Written out: mypyc compiles this one, not the one @dataclass generates (tests/test_inits.py).
        self.status = status
        self.headers = headers
        self.body = body
        self.reason = reason


class BodyTooLarge(Exception):
    """The request body is larger than the proxy reads for a search."""


class Exchange(Protocol):
    """One client request and the means to answer it."""

    @property
    def request(self) -> ClientRequest: ...

    async def read_body(self, limit: int) -> bytes:
        """The whole body as sent; BodyTooLarge past `limit` bytes."""
        ...

    async def forward(self, es: Elasticsearch, body: bytes, extra_headers: Mapping[str, str]) -> Answer:
        """The client's request with `body` to Elasticsearch; its answer plus `extra_headers` back."""
        ...

    def send(self, answer: Answer) -> None:
        """Answer the client."""
        ...


def web_response(answer: Answer) -> web.Response:
    """`answer` as aiohttp sends it."""
    return web.Response(
        status=answer.status, reason=answer.reason or None, body=answer.body, headers=answer.headers
    )


def elasticsearch_error(status: int, body: bytes, extra_headers: Mapping[str, str] | None = None) -> Answer:
    """An error the proxy gives itself, framed as Elasticsearch frames its own (JSON, product header)."""
    headers = CIMultiDict(
        {"Content-Type": "application/json; charset=UTF-8", "X-Elastic-Product": "Elasticsearch"}
    )
    if extra_headers:
        headers.update(extra_headers)
    return Answer(status, headers, body)


def upstream_error_answer(error: UpstreamError, extra_headers: Mapping[str, str] | None = None) -> Answer:
    """502/504 in Elasticsearch's error shape; the proxy goes on serving others."""
    body = upstream_error_response_body(error)
    return elasticsearch_error(upstream_error_status(error), body, extra_headers)
