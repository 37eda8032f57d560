"""Small real HTTP servers standing in for a broken or nosy upstream: recording, hanging, large bodies."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web

from es_rerank_proxy.tools.local_elasticsearch import free_port

_KEPT_BODY = 64 * 1024


@dataclass
class Recorded:
    method: str
    raw_path: str
    headers: dict[str, str]
    body_bytes: int
    body_sha256: str
    body: bytes = b""  # the body itself, when small (up to 64 KiB)


@dataclass
class RecordingUpstream:
    """Answers every request with a small JSON body and remembers what it got (hashing bodies as streamed)."""

    url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    hang: bool = False
    delay_s: float = 0.0  # answer after this long
    response_bytes: int = 0  # >0: answer with a streamed body of this size instead


@asynccontextmanager
async def recording_upstream(port: int | None = None) -> AsyncIterator[RecordingUpstream]:
    state = RecordingUpstream()

    async def handle(request: web.Request) -> web.StreamResponse:
        digest = hashlib.sha256()
        size = 0
        kept = bytearray()
        async for chunk in request.content.iter_chunked(1 << 20):
            digest.update(chunk)
            size += len(chunk)
            if len(kept) < _KEPT_BODY:
                kept.extend(chunk)
        body = bytes(kept) if size <= _KEPT_BODY else b""
        state.requests.append(
            Recorded(request.method, request.raw_path, dict(request.headers), size, digest.hexdigest(), body)
        )
        if state.hang:
            await asyncio.sleep(3600)
        if state.delay_s:
            await asyncio.sleep(state.delay_s)
        if state.response_bytes:
            response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            response.content_length = state.response_bytes
            await response.prepare(request)
            block = b"x" * (1 << 20)
            remaining = state.response_bytes
            while remaining:
                piece = block[: min(remaining, len(block))]
                await response.write(piece)
                remaining -= len(piece)
            await response.write_eof()
            return response
        return web.json_response(
            {"took": 1, "errors": False, "received": size, "sha256": digest.hexdigest()},
            headers={"X-Elastic-Product": "Elasticsearch"},
        )

    app = web.Application(client_max_size=1 << 40)
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None, auto_decompress=False, shutdown_timeout=0.1)
    await runner.setup()
    port = port or free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    state.url = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        await runner.cleanup()
