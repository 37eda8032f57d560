"""Fast stand-ins for warming at scale: an Elasticsearch that only scrolls, and an instant embeddings server.

noida-db scans every document per request and indexing 100,000 documents into it takes minutes, so the
warm tests scroll this fake instead: an aiohttp app serving `count` tiny generated documents through
`POST /{index}/_search?scroll=`, `POST /_search/scroll` and `DELETE /_search/scroll`, as Elasticsearch
answers them. `FastEmbeddings` answers `POST /v1/embeddings` at once with small deterministic vectors;
`gate` (cleared) holds its answers until the test sets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import orjson
from aiohttp import web

DIMS = 8


def doc_title(i: int) -> str:
    return f"document {i}"


@dataclass
class ScrollElasticsearch:
    """`count` documents `{"title": "document i"}` with ids `d{i}`; `titles` overrides some of them."""

    count: int
    index: str = "papers"
    url: str = ""
    titles: dict[int, str] = field(default_factory=dict)
    searches: int = 0
    scrolls: int = 0
    cleared: int = 0
    fail_status: int | None = None
    authorizations: list[str | None] = field(default_factory=list)
    searched: asyncio.Event = field(default_factory=asyncio.Event)
    _cursors: dict[str, tuple[int, int]] = field(default_factory=dict)  # scroll id -> (next, size)

    def _page(self, start: int, size: int) -> dict[str, object]:
        hits = [
            {
                "_index": self.index,
                "_id": f"d{i}",
                "_score": None,
                "_source": {"title": self.titles.get(i, doc_title(i))},
            }
            for i in range(start, min(start + size, self.count))
        ]
        scroll_id = f"scroll-{len(self._cursors)}"
        self._cursors[scroll_id] = (start + size, size)
        return {
            "_scroll_id": scroll_id,
            "took": 0,
            "timed_out": False,
            "hits": {"total": {"value": self.count, "relation": "eq"}, "max_score": None, "hits": hits},
        }

    async def search(self, request: web.Request) -> web.Response:
        self.authorizations.append(request.headers.get("Authorization"))
        if self.fail_status is not None:
            return web.json_response(
                {"error": {"type": "boom"}, "status": self.fail_status}, status=self.fail_status
            )
        if request.match_info["index"] != self.index:
            return web.json_response(
                {"error": {"type": "index_not_found_exception"}, "status": 404}, status=404
            )
        self.searches += 1
        self.searched.set()
        body = orjson.loads(await request.read())
        return web.json_response(self._page(0, int(body.get("size", 10))))

    async def scroll(self, request: web.Request) -> web.Response:
        self.scrolls += 1
        body = orjson.loads(await request.read())
        start, size = self._cursors.pop(body["scroll_id"])
        return web.json_response(self._page(start, size))

    async def clear(self, request: web.Request) -> web.Response:
        self.cleared += 1
        return web.json_response({"succeeded": True, "num_freed": 1})


@dataclass
class FastEmbeddings:
    """Instant, deterministic `DIMS`-dimensional vectors of each input text."""

    url: str = ""
    texts: int = 0
    requests: int = 0
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    loop: asyncio.AbstractEventLoop | None = None

    def __post_init__(self) -> None:
        self.gate.set()

    def hold(self, held: bool) -> None:
        """Hold (or release) the answers; callable from any thread."""
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.gate.clear if held else self.gate.set)

    @staticmethod
    def vector(text: str) -> list[float]:
        digest = hashlib.blake2b(text.encode(), digest_size=DIMS).digest()
        return [b / 255 + 0.01 for b in digest]

    async def handle(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        await self.gate.wait()
        self.requests += 1
        self.texts += len(body["input"])
        data = [
            {"object": "embedding", "index": i, "embedding": self.vector(t)}
            for i, t in enumerate(body["input"])
        ]
        return web.Response(
            body=orjson.dumps({"object": "list", "data": data}), content_type="application/json"
        )


@contextlib.asynccontextmanager
async def _serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def scroll_elasticsearch(count: int, index: str = "papers") -> AsyncIterator[ScrollElasticsearch]:
    """The fake scroll-only Elasticsearch on a free loopback port."""
    fake = ScrollElasticsearch(count=count, index=index)
    app = web.Application()
    app.router.add_post("/{index}/_search", fake.search)
    app.router.add_post("/_search/scroll", fake.scroll)
    app.router.add_delete("/_search/scroll", fake.clear)
    async with _serve(app) as url:
        fake.url = url
        yield fake


@contextlib.asynccontextmanager
async def fast_embeddings() -> AsyncIterator[FastEmbeddings]:
    """The instant embeddings server on a free loopback port."""
    fake = FastEmbeddings(loop=asyncio.get_running_loop())
    app = web.Application()
    app.router.add_post("/v1/embeddings", fake.handle)
    async with _serve(app) as url:
        fake.url = url
        try:
            yield fake
        finally:
            fake.gate.set()
