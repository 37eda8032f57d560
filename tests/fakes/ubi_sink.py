"""A real HTTP server standing in for the Elasticsearch that UBI records go to, with fault switches."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import orjson
from aiohttp import web


@dataclass
class UbiSink:
    """Answers `_bulk` and `_index_template` as Elasticsearch does; remembers documents and headers."""

    url: str = ""
    status: int = 200  # answer every request with this status
    item_status: int = 201  # status of each `_bulk` item (429: the cluster rejected that document)
    delay_s: float = 0.0  # answer after this long
    documents: list[dict[str, object]] = field(default_factory=list)
    templates: dict[str, object] = field(default_factory=dict)
    authorizations: list[str | None] = field(default_factory=list)


@asynccontextmanager
async def ubi_sink() -> AsyncIterator[UbiSink]:
    state = UbiSink()

    async def bulk(request: web.Request) -> web.Response:
        state.authorizations.append(request.headers.get("Authorization"))
        body = await request.read()
        if state.delay_s:
            await asyncio.sleep(state.delay_s)
        if state.status != 200:
            return web.json_response(
                {"error": {"type": "es_rejected_execution_exception"}}, status=state.status
            )
        lines = [orjson.loads(line) for line in body.splitlines() if line.strip()]
        documents = lines[1::2]
        if 200 <= state.item_status < 300:
            state.documents.extend(documents)
        items = [{"create": {"_index": "ubi_queries", "status": state.item_status}} for _ in documents]
        return web.json_response({"took": 1, "errors": state.item_status >= 300, "items": items})

    async def template(request: web.Request) -> web.Response:
        state.authorizations.append(request.headers.get("Authorization"))
        name = request.match_info["name"]
        if name in state.templates:
            reason = f"index template [{name}] already exists"
            return web.json_response(
                {"error": {"type": "illegal_argument_exception", "reason": reason}}, status=400
            )
        state.templates[name] = await request.json()
        return web.json_response({"acknowledged": True})

    app = web.Application()
    app.router.add_post("/_bulk", bulk)
    app.router.add_put("/_index_template/{name}", template)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield state
    finally:
        await runner.cleanup()
