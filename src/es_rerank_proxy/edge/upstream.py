"""The Elasticsearch edge: one pooled client session, TLS, URL rotation, and transport errors mapped.

Every request carries the client's own headers (credentials included), so Elasticsearch's security
applies unchanged; the proxy never authenticates as itself.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager

import aiohttp
import orjson
from multidict import CIMultiDict, CIMultiDictProxy, istr
from yarl import URL

from ..config import ElasticsearchConfig, redact_url
from ..errors import UpstreamError

# RFC 9110 §7.6.1 hop-by-hop fields, plus ones proxies conventionally drop; never forwarded either way.
HOP_BY_HOP = frozenset(
    istr(name)
    for name in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
    )
)
# The proxy's own request headers: staff overrides and hints that Elasticsearch must never see.
PROXY_REQUEST_HEADERS = frozenset(
    istr(name) for name in ("X-Rerank-Mode", "X-Rerank-Token", "X-Rerank-Query", "X-Rerank-Explain")
)
# The proxy's own server already answered `Expect: 100-continue`; Elasticsearch would wait for a body
# that has been read already (a 30 s hang, then 502, seen against a real server).
_ANSWERED_BY_PROXY = frozenset({istr("Expect")})
# aiohttp would otherwise add these on its own; the client's request must reach Elasticsearch as sent.
_NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


def _connection_tokens(headers: Mapping[str, str]) -> set[istr]:
    """Header names listed in `Connection` are hop-by-hop for this message too."""
    return {istr(token.strip()) for token in headers.get("Connection", "").split(",") if token.strip()}


def forwardable_request_headers(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> CIMultiDict[str]:
    """The client's headers minus hop-by-hop ones, `Host` and the proxy's own control headers."""
    drop = (
        HOP_BY_HOP | PROXY_REQUEST_HEADERS | _ANSWERED_BY_PROXY | _connection_tokens(headers) | {istr("Host")}
    )
    return CIMultiDict((k, v) for k, v in headers.items() if istr(k) not in drop)


def undecodable_header(raw_headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """The name of a forwarded header whose value is not UTF-8: no HTTP client here sends it byte for byte.

    The proxy's own control headers are never forwarded; their unreadable text is ignored instead.
    """
    for name, value in raw_headers:
        if not value.isascii() and istr(name.decode("latin-1")) not in PROXY_REQUEST_HEADERS:
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                return name.decode("latin-1")
    return None


def forwardable_response_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """Elasticsearch's response headers minus hop-by-hop ones."""
    drop = HOP_BY_HOP | _connection_tokens(headers)
    return CIMultiDict((k, v) for k, v in headers.items() if istr(k) not in drop)


def error_body(status: int, error_type: str, reason: str) -> bytes:
    """An error in Elasticsearch's own shape, so clients parse it like any other."""
    cause = {"type": error_type, "reason": reason}
    return orjson.dumps({"error": {"root_cause": [cause], **cause}, "status": status})


def build_ssl(cfg: ElasticsearchConfig) -> ssl.SSLContext | aiohttp.Fingerprint | bool:
    """TLS settings for https URLs: a CA bundle, a pinned certificate fingerprint, or the system store."""
    if cfg.ssl_assert_fingerprint:
        return aiohttp.Fingerprint(bytes.fromhex(cfg.ssl_assert_fingerprint.replace(":", "")))
    if not cfg.verify_certs:
        return False
    context = ssl.create_default_context(cafile=cfg.ca_certs or None)
    return context


def create_session(cfg: ElasticsearchConfig) -> aiohttp.ClientSession:
    """A keep-alive pool that forwards bytes as they are: no decompression, no added headers."""
    connector = aiohttp.TCPConnector(
        limit=cfg.max_connections,
        limit_per_host=cfg.max_connections,
        ssl=build_ssl(cfg),
        keepalive_timeout=60,
        enable_cleanup_closed=True,
    )
    # sock_read: Elasticsearch gave no byte for timeout_s. A total limit would cut off a long, healthy _bulk.
    # connect: waiting for a free pooled connection plus opening one; when every pooled connection is held
    # (say, by clients that never read their answers) a request must fail rather than wait for ever.
    timeout = aiohttp.ClientTimeout(
        total=None,
        connect=cfg.pool_timeout_s + cfg.connect_timeout_s,
        sock_connect=cfg.connect_timeout_s,
        sock_read=cfg.timeout_s,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,
        skip_auto_headers=_NO_AUTO_HEADERS,
        cookie_jar=aiohttp.DummyCookieJar(),
        raise_for_status=False,
    )


class Elasticsearch:
    """Sends requests to the configured Elasticsearch nodes in turn; the target is never client-chosen."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        cfg: ElasticsearchConfig,
        *,
        client_write_timeout_s: float | None = None,
    ) -> None:
        self._session = session
        self._cfg = cfg
        # How long a streamed answer may wait for its client to read while it holds a pooled connection.
        self.client_write_timeout_s = client_write_timeout_s
        self._bases = [URL(url.rstrip("/")) for url in cfg.url]
        self._turn = itertools.cycle(range(len(self._bases)))
        self._in_flight = 0

    @property
    def session(self) -> aiohttp.ClientSession:
        return self._session

    @property
    def in_flight(self) -> int:
        """Requests of this process sent to Elasticsearch and not yet finished (passed-through ones too)."""
        return self._in_flight

    def target(self, base: URL, raw_path_qs: str) -> URL:
        """`raw_path_qs` appended to a configured base, still percent-encoded as the client sent it."""
        if not raw_path_qs.startswith("/"):
            raw_path_qs = "/" + raw_path_qs
        return URL(str(base) + raw_path_qs, encoded=True)

    def _order(self) -> list[URL]:
        first = next(self._turn)
        return self._bases[first:] + self._bases[:first]

    @asynccontextmanager
    async def request(
        self,
        method: str,
        raw_path_qs: str,
        headers: Mapping[str, str],
        body: bytes | aiohttp.StreamReader | None,
        *,
        retry_other_nodes: bool | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Open a request; yields the response with its body unread. Transport failures → UpstreamError.

        A body held in memory may be re-sent to the next node when one refuses the connection; a
        streamed body cannot, so it gets one node.
        """
        if retry_other_nodes is None:
            retry_other_nodes = not isinstance(body, aiohttp.StreamReader)
        nodes = self._order() if retry_other_nodes else self._order()[:1]
        self._in_flight += 1
        try:
            last_error: UpstreamError | None = None
            for base in nodes:
                try:
                    response = await self._session.request(
                        method,
                        self.target(base, raw_path_qs),
                        headers=headers,
                        data=body,
                        allow_redirects=False,
                        compress=False,
                    )
                except aiohttp.ClientConnectorError as exc:
                    last_error = UpstreamError(
                        f"cannot connect to Elasticsearch at {_shown(base)}: {exc.os_error}"
                    )
                    continue
                except aiohttp.ConnectionTimeoutError as exc:
                    raise UpstreamError(
                        f"no connection to Elasticsearch at {base} within "
                        f"{self._cfg.pool_timeout_s + self._cfg.connect_timeout_s:g} s "
                        f"(all {self._cfg.max_connections} pooled connections busy, or the node is slow to "
                        "accept)",
                        timed_out=True,
                    ) from exc
                except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
                    raise UpstreamError(
                        f"Elasticsearch at {_shown(base)} did not answer within {self._cfg.timeout_s:g} s",
                        timed_out=True,
                    ) from exc
                except aiohttp.ClientError as exc:
                    raise UpstreamError(f"Elasticsearch at {_shown(base)} failed: {exc}") from exc
                try:
                    yield response
                finally:
                    response.release()
                return
            assert last_error is not None
            raise last_error
        finally:
            self._in_flight -= 1

    async def fetch(
        self, method: str, raw_path_qs: str, headers: Mapping[str, str], body: bytes | None
    ) -> tuple[int, CIMultiDictProxy[str], bytes]:
        """A whole request and answer in memory (searches, whose bodies are bounded)."""
        async with self.request(method, raw_path_qs, headers, body) as response:
            try:
                payload = await response.read()
            except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
                raise UpstreamError(
                    f"Elasticsearch did not answer within {self._cfg.timeout_s:g} s", timed_out=True
                ) from exc
            except aiohttp.ClientError as exc:
                raise UpstreamError(f"Elasticsearch dropped the connection: {exc}") from exc
            return response.status, response.headers, payload

    async def reachable(self, timeout_s: float = 2.0) -> dict[str, bool]:
        """Whether each node answers HTTP at all (any status: 401 still means it is up)."""

        async def probe(base: URL) -> bool:
            try:
                async with self._session.get(
                    self.target(base, "/"), timeout=aiohttp.ClientTimeout(total=timeout_s)
                ) as response:
                    await response.read()
                    return True
            except (aiohttp.ClientError, asyncio.TimeoutError):
                return False

        results = await asyncio.gather(*(probe(base) for base in self._bases))
        return {str(base): ok for base, ok in zip(self._bases, results, strict=True)}


def upstream_error_status(error: UpstreamError) -> int:
    """504 when Elasticsearch timed out, 502 when it could not be reached or broke the connection."""
    return 504 if error.timed_out else 502


def upstream_error_response_body(error: UpstreamError) -> bytes:
    """The public error: what happened, never where (internal addresses stay in the proxy's log)."""
    status = upstream_error_status(error)
    if error.timed_out:
        return error_body(status, "proxy_timeout_exception", "Elasticsearch did not answer in time")
    return error_body(status, "proxy_upstream_exception", "Elasticsearch is unreachable")


def _shown(base: URL) -> str:
    return redact_url(str(base))
