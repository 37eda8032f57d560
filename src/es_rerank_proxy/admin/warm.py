"""Embed an index's documents ahead of traffic (`reranker.api: embeddings`).

Passage vectors live in the memory of the proxy's own `EmbeddingsClient`, so the proxy warms itself:
`POST /_rerank/warm?index=I` on the admin listener streams progress as NDJSON; `tools.warm_client` is the
`warm` command that calls it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping

import aiohttp
import orjson
from aiohttp import web

from ..config import Config
from ..errors import ProxyError, UpstreamError
from ..model.embeddings import EmbeddingsClient
from ..runtime import Runtime
from ..search.page import model_text
from ..search.plan import NeededFields

Progress = Callable[[int, int], None]

# Small pages and a long keep-alive: each page is embedded before the next is read, and on a CPU
# a page of long passages can take a minute.
_PAGE_SIZE = 100
_SCROLL_KEEP_ALIVE = "10m"
_ES_TIMEOUT_S = 60.0


async def warm_index(
    es_url: str,
    index: str,
    *,
    config: Config,
    session: aiohttp.ClientSession,
    progress: Progress | None = None,
    limit: int | None = None,
    query: dict[str, object] | None = None,
    client: EmbeddingsClient | None = None,
    page_size: int = _PAGE_SIZE,
    headers: Mapping[str, str] | None = None,
) -> int:
    """Scroll `index` and embed each document's text exactly as the pipeline builds it; the count embedded.

    `progress(seen, total)` counts documents read from Elasticsearch against the index's (or `limit`'s)
    total. Without `client`, a client of its own (closed at the end) warms `config.reranker.url[0]`.
    `headers` (the caller's credentials) go with every request to Elasticsearch.
    """
    extra = dict(headers or {})
    needed = NeededFields(text_fields=config.rerank.text_fields, date_field="", citations_field="")
    url = config.reranker.url[0]
    own = client is None
    embedder = client if client is not None else EmbeddingsClient(session, config.reranker)
    page_size = max(1, page_size if limit is None else min(page_size, limit))
    body: dict[str, object] = {
        "size": page_size,
        "_source": list(config.rerank.text_fields),
        "sort": ["_doc"],
        "query": query if query is not None else {"match_all": {}},
    }
    base = es_url.rstrip("/")
    scroll_id: str | None = None
    seen = embedded = 0
    try:
        page = await _es_json(
            session, "POST", f"{base}/{index}/_search?scroll={_SCROLL_KEEP_ALIVE}", body, extra
        )
        total = _total_hits(page)
        if limit is not None:
            total = min(total, limit)
        while True:
            scroll_id = _scroll_id(page) or scroll_id
            hits = _hits(page)
            if limit is not None:
                hits = hits[: max(0, limit - seen)]
            if not hits:
                break
            texts = [model_text(hit, needed, config) for hit in hits]
            embedded += await embedder.warm(url, [text for text in texts if text])
            seen += len(hits)
            if progress is not None:
                progress(seen, max(total, seen))
            if (limit is not None and seen >= limit) or scroll_id is None:
                break
            page = await _es_json(
                session,
                "POST",
                f"{base}/_search/scroll",
                {"scroll": _SCROLL_KEEP_ALIVE, "scroll_id": scroll_id},
                extra,
            )
    finally:
        if scroll_id is not None:
            await _clear_scroll(session, base, scroll_id, extra)
        if own:
            await embedder.aclose()
    return embedded


async def _es_json(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    body: Mapping[str, object],
    headers: Mapping[str, str],
) -> dict[str, object]:
    try:
        async with session.request(
            method,
            url,
            data=orjson.dumps(body),
            headers={**headers, "Content-Type": "application/json", "Accept": "application/json"},
            timeout=aiohttp.ClientTimeout(total=_ES_TIMEOUT_S),
        ) as resp:
            status, raw = resp.status, await resp.read()
    except asyncio.TimeoutError as exc:
        raise UpstreamError(f"Elasticsearch: no answer within {_ES_TIMEOUT_S:g} s", timed_out=True) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise UpstreamError(f"Elasticsearch: {type(exc).__name__}: {exc}") from exc
    if status != 200:
        raise UpstreamError(f"Elasticsearch answered HTTP {status}: {raw[:300].decode(errors='replace')}")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError("Elasticsearch answered with invalid JSON") from exc
    if not isinstance(data, dict):
        raise UpstreamError("Elasticsearch answered with a JSON value that is not an object")
    return data


async def _clear_scroll(
    session: aiohttp.ClientSession, base: str, scroll_id: str, headers: Mapping[str, str]
) -> None:
    # Best effort: the scroll expires on its own after the keep-alive anyway.
    with contextlib.suppress(UpstreamError):
        await _es_json(session, "DELETE", f"{base}/_search/scroll", {"scroll_id": scroll_id}, headers)


def _hits(page: Mapping[str, object]) -> list[dict[str, object]]:
    hits = page.get("hits")
    items = hits.get("hits") if isinstance(hits, dict) else None
    return [hit for hit in items if isinstance(hit, dict)] if isinstance(items, list) else []


def _total_hits(page: Mapping[str, object]) -> int:
    hits = page.get("hits")
    total = hits.get("total") if isinstance(hits, dict) else None
    if isinstance(total, dict):
        total = total.get("value")
    return total if isinstance(total, int) and not isinstance(total, bool) else 0


def _scroll_id(page: Mapping[str, object]) -> str | None:
    value = page.get("_scroll_id")
    return value if isinstance(value, str) and value else None


# --- the proxy's admin endpoint ----------------------------------------------------------------------


def add_routes(admin: web.Application, runtime: Runtime) -> None:
    """`POST /_rerank/warm?index=I[&limit=N]`: warm the proxy's own vector cache, progress as NDJSON."""

    async def warm(request: web.Request) -> web.StreamResponse:
        index = request.query.get("index", "")
        limit_text = request.query.get("limit", "")
        client = runtime.client
        if not isinstance(client, EmbeddingsClient):
            reason = f"reranker.api is {runtime.config.reranker.api!r}: only 'embeddings' has vectors to warm"
            return web.json_response({"error": reason}, status=409)
        if not index or (limit_text and not limit_text.isdigit()):
            return web.json_response(
                {"error": "expected ?index=NAME and an optional whole-number limit"}, status=400
            )
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        lines: asyncio.Queue[bytes] = asyncio.Queue()
        credentials = {k: v for k, v in request.headers.items() if k.lower() == "authorization"}
        started = time.monotonic()

        def progress(done: int, total: int) -> None:
            lines.put_nowait(orjson.dumps({"done": done, "total": total}) + b"\n")

        async def run() -> None:
            try:
                count = await warm_index(
                    runtime.config.elasticsearch.url[0],
                    index,
                    config=runtime.config,
                    session=runtime.es.session,
                    progress=progress,
                    limit=int(limit_text) if limit_text else None,
                    client=client,
                    headers=credentials,
                )
                final: dict[str, object] = {
                    "embedded": count,
                    "seconds": round(time.monotonic() - started, 1),
                }
            except ProxyError as exc:
                final = {"error": f"{type(exc).__name__}: {exc}"}
            lines.put_nowait(orjson.dumps(final) + b"\n")

        task = asyncio.ensure_future(run())
        try:
            while not (task.done() and lines.empty()):
                getter = asyncio.ensure_future(lines.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    await response.write(getter.result())
                else:
                    getter.cancel()
        finally:
            task.cancel()
        await response.write_eof()
        return response

    admin.router.add_post("/_rerank/warm", warm)
