"""The Elasticsearch edge: one pooled client session, TLS, URL rotation, and transport errors mapped.

Every request carries the client's own headers (credentials included), so Elasticsearch's security
applies unchanged; the proxy never authenticates as itself.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
from collections.abc import Mapping

import aiohttp
import orjson
from multidict import CIMultiDictProxy
from yarl import URL

from .. import http1
from ..config import ElasticsearchConfig, redact_url
from ..errors import UpstreamError

# aiohttp would otherwise add these on its own; the client's request must reach Elasticsearch as sent.
_NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
# Methods whose empty body is still announced (`Content-Length: 0`), as HTTP clients do.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


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
    """Sends requests to the configured Elasticsearch nodes in turn; the target is never client-chosen.

    Client requests (pass-through and recall) go over lean keep-alive pools (`http1`); `session`, an
    aiohttp session, serves the proxy's own background work (warming, vector transfer, health probes).
    """

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
        tls, fingerprint = _pool_tls(cfg)
        self._pools = [
            http1.Pool(
                http1.Endpoint.from_url(base, tls, fingerprint),
                limit=cfg.max_connections,
                connect_timeout_s=cfg.connect_timeout_s,
            )
            for base in self._bases
        ]
        self._turn = itertools.cycle(range(len(self._bases)))
        self._in_flight = 0

    @property
    def session(self) -> aiohttp.ClientSession:
        return self._session

    @property
    def in_flight(self) -> int:
        """Requests of this process sent to Elasticsearch and not yet finished (passed-through ones too)."""
        return self._in_flight

    async def aclose(self) -> None:
        """Close the pooled connections and the session."""
        for pool in self._pools:
            pool.close()
        await self._session.close()

    def target(self, base: URL, raw_path_qs: str) -> URL:
        """`raw_path_qs` appended to a configured base, still percent-encoded as the client sent it."""
        if not raw_path_qs.startswith("/"):
            raw_path_qs = "/" + raw_path_qs
        return URL(str(base) + raw_path_qs, encoded=True)

    def _order(self) -> list[http1.Pool]:
        first = next(self._turn)
        return self._pools[first:] + self._pools[:first]

    def request(
        self,
        method: str,
        raw_path_qs: str,
        headers: Mapping[str, str],
        body: bytes | aiohttp.StreamReader | None,
        *,
        retry_other_nodes: bool | None = None,
    ) -> UpstreamRequest:
        """Open a request (`async with`); yields the response with its body unread. Transport failures →
        UpstreamError.

        A body held in memory may be re-sent to the next node when one refuses the connection; a
        streamed body cannot, so it gets one node.
        """
        streamed = isinstance(body, aiohttp.StreamReader)
        if retry_other_nodes is None:
            retry_other_nodes = not streamed
        pools = self._order() if retry_other_nodes else self._order()[:1]
        if not raw_path_qs.startswith("/"):
            raw_path_qs = "/" + raw_path_qs
        return UpstreamRequest(self, pools, method, raw_path_qs, headers, body)

    async def _open(
        self,
        pools: list[http1.Pool],
        method: str,
        raw_path_qs: str,
        headers: Mapping[str, str],
        body: bytes | aiohttp.StreamReader | None,
    ) -> tuple[http1.Pool, http1.Connection, http1.Response, asyncio.Task[None] | None]:
        """The first node that takes the request: its pool, the connection, the answer's head and the
        task still sending a streamed body."""
        last_error: UpstreamError | None = None
        for pool in pools:
            try:
                connection, response, body_task = await self._send(pool, method, raw_path_qs, headers, body)
            except _Refused as refused:
                last_error = refused.error
                continue
            return pool, connection, response, body_task
        assert last_error is not None
        raise last_error

    async def _send(
        self,
        pool: http1.Pool,
        method: str,
        raw_path_qs: str,
        headers: Mapping[str, str],
        body: bytes | aiohttp.StreamReader | None,
    ) -> tuple[http1.Connection, http1.Response, asyncio.Task[None] | None]:
        """Write the request on a pooled connection and wait for the answer's headers."""
        fresh = False
        while True:
            connection = await self._connection(pool, fresh=fresh)
            response = http1.Response(connection, self._cfg.timeout_s)
            head = connection.start(response, head_only=method == "HEAD")
            body_task = _write_request(connection, pool.endpoint, method, raw_path_qs, headers, body)
            try:
                await http1.wait_at_most(head, self._cfg.timeout_s)
                return connection, response, body_task
            except TimeoutError as exc:
                _finish(pool, connection, body_task)
                raise UpstreamError(
                    f"Elasticsearch at {_shown_endpoint(pool)} did not answer within "
                    f"{self._cfg.timeout_s:g} s",
                    timed_out=True,
                ) from exc
            except UpstreamError as exc:
                _finish(pool, connection, body_task)
                if (
                    connection.reused
                    and not fresh
                    and body_task is None
                    and method in http1.IDEMPOTENT_METHODS
                ):
                    # The node closed a kept-alive connection as the request went out: once more, anew.
                    fresh = True
                    continue
                raise UpstreamError(f"Elasticsearch at {_shown_endpoint(pool)} failed: {exc}") from exc
            except BaseException:
                _finish(pool, connection, body_task)
                raise

    async def _connection(self, pool: http1.Pool, *, fresh: bool) -> http1.Connection:
        cfg = self._cfg
        try:
            return await pool.acquire(cfg.pool_timeout_s, fresh=fresh)
        except TimeoutError as exc:
            raise UpstreamError(
                f"no connection to Elasticsearch at {_shown_endpoint(pool)} within "
                f"{cfg.pool_timeout_s + cfg.connect_timeout_s:g} s "
                f"(all {cfg.max_connections} pooled connections busy, or the node is slow to accept)",
                timed_out=True,
            ) from exc
        except UpstreamError:
            raise
        except (OSError, ssl.SSLError) as exc:
            raise _Refused(
                UpstreamError(f"cannot connect to Elasticsearch at {_shown_endpoint(pool)}: {exc}")
            ) from exc

    async def fetch(
        self, method: str, raw_path_qs: str, headers: Mapping[str, str], body: bytes | None
    ) -> tuple[int, CIMultiDictProxy[str], bytes]:
        """A whole request and answer in memory (searches, whose bodies are bounded)."""
        async with self.request(method, raw_path_qs, headers, body) as response:
            payload = await response.read()
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


def _shown_endpoint(pool: http1.Pool) -> str:
    endpoint = pool.endpoint
    scheme = "https" if endpoint.tls is not None else "http"
    return f"{scheme}://{endpoint.host_header}"


class UpstreamRequest:
    """One request to Elasticsearch, open for the length of an `async with`: the response it yields has its
    body unread, and the connection goes back to its pool on the way out. A class rather than an
    `asynccontextmanager`, so mypyc compiles it."""

    def __init__(
        self,
        es: Elasticsearch,
        pools: list[http1.Pool],
        method: str,
        raw_path_qs: str,
        headers: Mapping[str, str],
        body: bytes | aiohttp.StreamReader | None,
    ) -> None:
        self._es = es
        self._pools = pools
        self._method = method
        self._raw_path_qs = raw_path_qs
        self._headers = headers
        self._body = body
        self._opened: tuple[http1.Pool, http1.Connection, asyncio.Task[None] | None] | None = None

    async def __aenter__(self) -> http1.Response:
        es = self._es
        es._in_flight += 1
        try:
            pool, connection, response, body_task = await es._open(
                self._pools, self._method, self._raw_path_qs, self._headers, self._body
            )
        except BaseException:
            es._in_flight -= 1
            raise
        self._opened = (pool, connection, body_task)
        return response

    async def __aexit__(self, *exc_info: object) -> None:
        opened, self._opened = self._opened, None
        if opened is not None:
            self._es._in_flight -= 1
            _finish(*opened)


class _Refused(Exception):
    """The node could not be reached at all: the request never left, so another node may take it."""

    def __init__(self, error: UpstreamError) -> None:
        super().__init__(error.reason)
        self.error = error


def _write_request(
    connection: http1.Connection,
    endpoint: http1.Endpoint,
    method: str,
    raw_path_qs: str,
    headers: Mapping[str, str],
    body: bytes | aiohttp.StreamReader | None,
) -> asyncio.Task[None] | None:
    """Send the head (and a body in memory) at once; a streamed body goes on in a task of its own."""
    assert connection.transport is not None
    if isinstance(body, aiohttp.StreamReader):
        declared = headers.get("Content-Length")
        length = int(declared) if declared is not None and declared.isdigit() else None
        head = http1.request_head(method, raw_path_qs, endpoint, headers, length, chunked=length is None)
        connection.transport.write(head)
        return connection.send_body(body.iter_any(), chunked=length is None)
    if body is None:
        length = 0 if "Content-Length" in headers else None
    elif body or "Content-Length" in headers or method in _BODY_METHODS:
        length = len(body)
    else:
        length = None
    connection.transport.write(
        http1.request_head(method, raw_path_qs, endpoint, headers, length) + (body or b"")
    )
    return None


def _finish(pool: http1.Pool, connection: http1.Connection, body_task: asyncio.Task[None] | None) -> None:
    """Return the connection to its pool, which keeps it only if request and answer both went out whole."""
    if body_task is not None:
        if not body_task.done():
            body_task.cancel()
        elif not body_task.cancelled():
            body_task.exception()  # retrieved: a failed upload is the answer's business, not a log line
    pool.release(connection)


def _pool_tls(cfg: ElasticsearchConfig) -> tuple[ssl.SSLContext, bytes | None]:
    """The TLS context of https nodes, and the pinned certificate digest when one is configured."""
    setting = build_ssl(cfg)
    if isinstance(setting, ssl.SSLContext):
        return setting, None
    context = ssl.create_default_context()
    if setting is True:
        return context, None
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if isinstance(setting, aiohttp.Fingerprint):
        return context, setting.fingerprint
    return context, None
