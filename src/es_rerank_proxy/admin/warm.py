"""Embed an index's documents ahead of traffic (`reranker.api: embeddings`).

Passage vectors live in the memory of the proxy's own `EmbeddingsClient`, so the proxy warms itself:
`warm_jobs` runs `warm_index` as a job behind `POST /_rerank/warm`, `vector_transfer` reads the same
scroll (`scroll_texts`) to export and import vectors; `tools.warm_client` is the `warm` command.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass

import aiohttp
import orjson

from ..config import Config
from ..errors import UpstreamError
from ..model.embeddings import EmbeddingsClient
from ..search.page import model_text
from ..search.plan import NeededFields

Progress = Callable[[int, int], None]

# Small pages and a long keep-alive: each page is embedded before the next is read, and on a CPU
# a page of long passages can take a minute.
_PAGE_SIZE = 100
_SCROLL_KEEP_ALIVE = "10m"
_ES_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class IndexPage:
    """One scroll page: each document's index, id and model text ('' when it has none), and the total."""

    documents: list[tuple[str, str, str]]
    total: int


async def scroll_texts(
    es_url: str,
    index: str,
    *,
    config: Config,
    session: aiohttp.ClientSession,
    limit: int | None = None,
    query: dict[str, object] | None = None,
    page_size: int = _PAGE_SIZE,
    headers: Mapping[str, str] | None = None,
) -> AsyncGenerator[IndexPage, None]:
    """Scroll `index` and yield its documents' text exactly as the pipeline builds it, page by page.

    `headers` (the caller's credentials) go with every request to Elasticsearch; the scroll is cleared
    however the caller stops.
    """
    extra = dict(headers or {})
    needed = NeededFields(text_fields=config.rerank.text_fields, date_field="", citations_field="")
    page_size = max(1, page_size if limit is None else min(page_size, limit))
    body: dict[str, object] = {
        "size": page_size,
        "_source": list(config.rerank.text_fields),
        "sort": ["_doc"],
        "query": query if query is not None else {"match_all": {}},
    }
    base = es_url.rstrip("/")
    scroll_id: str | None = None
    seen = 0
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
            seen += len(hits)
            yield IndexPage(
                [
                    (str(hit.get("_index", index)), str(hit.get("_id", "")), model_text(hit, needed, config))
                    for hit in hits
                ],
                max(total, seen),
            )
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
    url = config.reranker.url[0]
    own = client is None
    embedder = client if client is not None else EmbeddingsClient(session, config.reranker)
    seen = embedded = 0
    pages = scroll_texts(
        es_url,
        index,
        config=config,
        session=session,
        limit=limit,
        query=query,
        page_size=page_size,
        headers=headers,
    )
    try:
        async for page in pages:
            embedded += await embedder.warm(url, [text for _, _, text in page.documents if text])
            seen += len(page.documents)
            if progress is not None:
                progress(seen, page.total)
    finally:
        await pages.aclose()
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
