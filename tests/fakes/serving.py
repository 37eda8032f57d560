"""Serve an aiohttp app on a free loopback port for the length of a test: the fakes' shared plumbing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from es_rerank_proxy.tools.local_elasticsearch import free_port


@asynccontextmanager
async def local_server(handle: web.Handler, *, client_max_size: int = 1 << 30) -> AsyncIterator[str]:
    """Every method and path goes to `handle`; bodies arrive as sent (no decompression). Yields the URL."""
    app = web.Application(client_max_size=client_max_size)
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None, auto_decompress=False, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
