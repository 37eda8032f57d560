"""Pools of kept-alive connections: per Elasticsearch node (`Pool`), per model-server origin (`Client`)."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import Mapping

from yarl import URL

from ..errors import UpstreamError
from .connection import Connection, Response
from .request import Endpoint, request_head


class Pool:
    """Keep-alive connections to one node, at most `limit` open; the most recently used is reused first."""

    def __init__(self, endpoint: Endpoint, *, limit: int, connect_timeout_s: float) -> None:
        self.endpoint = endpoint
        self._limit = asyncio.Semaphore(limit)
        self._connect_timeout_s = connect_timeout_s
        self._idle: list[Connection] = []
        self._closed = False

    async def acquire(self, pool_timeout_s: float, *, fresh: bool = False) -> Connection:
        """A connection of the pool (reused when one is idle, unless `fresh`); waits at most `pool_timeout_s`
        for a free slot."""
        if self._limit.locked():
            async with asyncio.timeout(pool_timeout_s):
                await self._limit.acquire()
        else:
            await self._limit.acquire()  # free: returns at once, no timer needed
        try:
            while self._idle and not fresh:
                connection = self._idle.pop()
                if connection.idle():
                    connection.reused = True
                    return connection
            return await self._connect()
        except BaseException:
            self._limit.release()
            raise

    def release(self, connection: Connection) -> None:
        """Give a connection back: kept when its last exchange ended cleanly (`Connection.idle`), else closed
        (an answer read in part, or a request body sent in part, leaves the framing unfinished)."""
        self._limit.release()
        if connection.idle() and not self._closed:
            self._idle.append(connection)
        else:
            connection.close()

    async def _connect(self) -> Connection:
        endpoint = self.endpoint
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._connect_timeout_s):
            _, connection = await loop.create_connection(
                Connection,
                endpoint.host,
                endpoint.port,
                ssl=endpoint.tls,
                server_hostname=endpoint.host if endpoint.tls is not None else None,
            )
        if endpoint.fingerprint is not None:
            _check_fingerprint(connection, endpoint.fingerprint)
        return connection

    def close(self) -> None:
        self._closed = True
        for connection in self._idle:
            connection.close()
        self._idle.clear()


def _check_fingerprint(connection: Connection, expected: bytes) -> None:
    assert connection.transport is not None
    ssl_object = connection.transport.get_extra_info("ssl_object")
    certificate = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if certificate is None or hashlib.sha256(certificate).digest() != expected:
        connection.close()
        raise UpstreamError("the node's certificate does not match elasticsearch.ssl_assert_fingerprint")


class Client:
    """Pools per origin for calls that want the whole answer within a total time (the model servers).

    A model call is a pure function of its body, so a request that met a kept-alive connection the server
    had just closed (uvicorn closes idle ones after 5 s) is sent once more on a new one, whatever its method.
    """

    def __init__(self, *, limit: int, connect_timeout_s: float = 5.0) -> None:
        self._limit = limit
        self._connect_timeout_s = connect_timeout_s
        self._pools: dict[str, Pool] = {}
        self._tls: ssl.SSLContext | None = None

    async def fetch(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None, timeout_s: float
    ) -> tuple[int, bytes]:
        """Status and body of one exchange; TimeoutError past `timeout_s`, UpstreamError or OSError when the
        server cannot be reached or breaks off."""
        target = URL(url)
        pool = self._pool(target)
        path = target.raw_path_qs
        async with asyncio.timeout(timeout_s):
            for fresh in (False, True):
                connection = await pool.acquire(timeout_s, fresh=fresh)
                response = Response(connection, None)
                head = connection.start(response, head_only=method == "HEAD")
                assert connection.transport is not None
                length = len(body) if body is not None else None
                connection.transport.write(
                    request_head(method, path, pool.endpoint, headers, length) + (body or b"")
                )
                try:
                    await head
                    data = b"" if method == "HEAD" else await response.read()
                    return response.status, data
                except UpstreamError:
                    if fresh or not connection.reused:
                        raise
                finally:
                    pool.release(connection)
        raise AssertionError("unreachable: the second attempt returns or raises")

    def close(self) -> None:
        """Close every pooled connection."""
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

    def _pool(self, url: URL) -> Pool:
        origin = f"{url.scheme}://{url.raw_authority}"
        pool = self._pools.get(origin)
        if pool is None:
            if url.scheme == "https" and self._tls is None:
                self._tls = ssl.create_default_context()
            base = URL(origin)
            endpoint = Endpoint.from_url(base, self._tls)
            pool = self._pools[origin] = Pool(
                endpoint, limit=self._limit, connect_timeout_s=self._connect_timeout_s
            )
        return pool
