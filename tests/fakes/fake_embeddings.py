"""A fake OpenAI-style embeddings server (`POST /v1/embeddings`): a real aiohttp app on a free port, with
fault switches. Its vectors are a pure function of the text, so two replicas agree on them."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class FakeEmbeddings:
    url: str = ""
    fault: str | None = None  # status_500, status_400, invalid_json, wrong_count, nan, zero, hang
    fault_role: str | None = None  # only fail "query" or "passage" requests
    latency_s: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def vector(self, text: str) -> list[float]:
        digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
        return [b / 255 + 0.01 for b in digest]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        texts: list[str] = body["input"]
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        fault = self.fault if self.fault_role in (None, body.get("input_type")) else None
        if fault == "hang":
            await self.release.wait()
        if fault == "status_500":
            return web.json_response({"error": {"message": "boom"}}, status=500)
        if fault == "status_400":
            return web.json_response({"error": {"message": "too long"}}, status=400)
        if fault == "invalid_json":
            return web.Response(body=b"{oops", content_type="application/json")
        vectors = [self.vector(text) for text in texts]
        if fault == "wrong_count":
            vectors = vectors[:-1] if len(vectors) > 1 else [*vectors, vectors[0]]
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        if fault == "nan":
            return web.Response(body=b'{"data": [{"index": 0, "embedding": [NaN, 1.0]}]}')
        if fault == "zero":
            for item in data:
                item["embedding"] = [0.0] * 8
        return web.json_response({"object": "list", "data": data, "model": body["model"]})


@contextlib.asynccontextmanager
async def start_fake() -> AsyncIterator[FakeEmbeddings]:
    fake = FakeEmbeddings()
    app = web.Application()
    app.router.add_post("/v1/embeddings", fake.handle)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        fake.url = f"http://127.0.0.1:{port}"
        yield fake
    finally:
        fake.release.set()
        await runner.cleanup()
