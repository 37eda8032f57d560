"""Which headers cross the proxy: hop-by-hop ones never do, nor the proxy's own control headers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from multidict import CIMultiDict, CIMultiDictProxy

# RFC 9110 §7.6.1 hop-by-hop fields, plus ones proxies conventionally drop; never forwarded either way.
# Lower-case, as every check here compares `name.lower()`: cheaper per header than building an `istr`.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# The proxy's own request headers: staff overrides and hints that Elasticsearch must never see.
PROXY_REQUEST_HEADERS = frozenset({"x-rerank-mode", "x-rerank-token", "x-rerank-query", "x-rerank-explain"})
# The proxy's own server already answered `Expect: 100-continue`; Elasticsearch would wait for a body
# that has been read already (a 30 s hang, then 502, seen against a real server).
_ANSWERED_BY_PROXY = frozenset({"expect"})
_REQUEST_DROP = HOP_BY_HOP | PROXY_REQUEST_HEADERS | _ANSWERED_BY_PROXY | {"host"}


def headers_without(headers: Mapping[str, str], drop: frozenset[str]) -> CIMultiDict[str]:
    """`headers` minus the names in `drop` and those listed in `Connection` (hop-by-hop for this message)."""
    connection = headers.get("Connection")
    if connection:
        drop = drop | {token.strip().lower() for token in connection.split(",")}
    return CIMultiDict([(k, v) for k, v in headers.items() if k.lower() not in drop])


def forwardable_request_headers(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> CIMultiDict[str]:
    """The client's headers minus hop-by-hop ones, `Host` and the proxy's own control headers."""
    return headers_without(headers, _REQUEST_DROP)


def undecodable_header(raw_headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """The name of a forwarded header whose value is not UTF-8: no HTTP client here sends it byte for byte.

    The proxy's own control headers are never forwarded; their unreadable text is ignored instead.
    """
    for name, value in raw_headers:
        if not value.isascii() and name.decode("latin-1").lower() not in PROXY_REQUEST_HEADERS:
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                return name.decode("latin-1")
    return None


def forwardable_response_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """Elasticsearch's response headers minus hop-by-hop ones."""
    return headers_without(headers, HOP_BY_HOP)
