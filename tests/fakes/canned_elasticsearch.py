"""An Elasticsearch stand-in answering every request with a canned body: answer shapes nobody foresaw."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web

from .serving import local_server


@dataclass
class CannedElasticsearch:
    url: str = ""
    payload: bytes = b"{}"
    status: int = 200
    bodies: list[bytes] = field(default_factory=list)  # what it received, in order


@asynccontextmanager
async def canned_elasticsearch() -> AsyncIterator[CannedElasticsearch]:
    state = CannedElasticsearch()

    async def handle(request: web.Request) -> web.Response:
        state.bodies.append(await request.read())
        return web.Response(
            status=state.status,
            body=state.payload,
            headers={"Content-Type": "application/json", "X-Elastic-Product": "Elasticsearch"},
        )

    async with local_server(handle) as url:
        state.url = url
        yield state
