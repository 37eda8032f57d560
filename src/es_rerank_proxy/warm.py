"""Embed an index's documents ahead of traffic (`reranker.api: embeddings`), and the `warm` CLI command.

The passage vectors live in the `EmbeddingsClient` that embedded them, so warming helps the process that
owns that client: pass the proxy's own client as `client=` to warm its cache. The CLI command runs in its
own process; it measures and exercises the embedding server, and only leaves vectors behind if the server
caches them itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Callable, Mapping
from typing import TextIO

import aiohttp
import orjson

from . import search
from .config import Config, load_config
from .embeddings import EmbeddingsClient
from .errors import ConfigError, ProxyError, UpstreamError
from .page import document_text, hit_data

Progress = Callable[[int, int], None]

_PAGE_SIZE = 500
_SCROLL_KEEP_ALIVE = "1m"
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
) -> int:
    """Scroll `index` and embed each document's text exactly as the pipeline builds it; the count embedded.

    `progress(seen, total)` counts documents read from Elasticsearch against the index's (or `limit`'s)
    total. Without `client`, a client of its own (closed at the end) warms `config.reranker.url[0]`.
    """
    needed = search.NeededFields(text_fields=config.rerank.text_fields, date_field="", citations_field="")
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
        page = await _es_json(session, "POST", f"{base}/{index}/_search?scroll={_SCROLL_KEEP_ALIVE}", body)
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
            texts = [document_text(hit_data(hit, needed), config.rerank.max_doc_chars) for hit in hits]
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
            )
    finally:
        if scroll_id is not None:
            await _clear_scroll(session, base, scroll_id)
        if own:
            await embedder.aclose()
    return embedded


async def _es_json(
    session: aiohttp.ClientSession, method: str, url: str, body: Mapping[str, object]
) -> dict[str, object]:
    try:
        async with session.request(
            method,
            url,
            data=orjson.dumps(body),
            headers={"Content-Type": "application/json", "Accept": "application/json"},
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


async def _clear_scroll(session: aiohttp.ClientSession, base: str, scroll_id: str) -> None:
    # Best effort: the scroll expires on its own after the keep-alive anyway.
    with contextlib.suppress(UpstreamError):
        await _es_json(session, "DELETE", f"{base}/_search/scroll", {"scroll_id": scroll_id})


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


# --- CLI --------------------------------------------------------------------------------------------


def add_warm_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `warm --index I [--config FILE] [--es URL] [--limit N]` to the CLI's subcommands."""
    warm = subparsers.add_parser(
        "warm",
        help="embed an index's documents ahead of traffic (reranker.api: embeddings)",
        description="Scroll an index and embed every document's rerank text with the embeddings server.",
    )
    warm.add_argument("--index", required=True, metavar="INDEX", help="index (or pattern) to scroll")
    warm.add_argument("--config", "-c", metavar="FILE", help="YAML config (default: built-in defaults)")
    warm.add_argument("--es", metavar="URL", help="Elasticsearch URL (default: elasticsearch.url[0])")
    warm.add_argument("--limit", type=int, metavar="N", help="stop after N documents")


def run_warm(args: argparse.Namespace) -> int:
    """Run the `warm` command; 0 on success, 1 on a config, Elasticsearch or model-server error."""
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"ConfigError: {exc}", file=sys.stderr)
        return 1
    if config.reranker.api != "embeddings":
        print(
            f"warm: reranker.api is {config.reranker.api!r}; only 'embeddings' has vectors to warm",
            file=sys.stderr,
        )
        return 1
    es_url = args.es or config.elasticsearch.url[0]
    bar = ProgressBar(sys.stderr)
    started = time.monotonic()
    try:
        count = asyncio.run(_warm(es_url, args.index, config, bar, args.limit))
    except ProxyError as exc:
        bar.finish()
        print(f"warm: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    bar.finish()
    print(f"warm: embedded {count} documents in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return 0


async def _warm(es_url: str, index: str, config: Config, progress: Progress, limit: int | None) -> int:
    async with aiohttp.ClientSession() as session:
        return await warm_index(es_url, index, config=config, session=session, progress=progress, limit=limit)


class ProgressBar:
    """`[#####-----]  120/400  30%` redrawn in place on a terminal, one line per 10% otherwise."""

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        self._stream = stream
        self._width = width
        self._tty = stream.isatty()
        self._last_tenth = -1
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        fraction = done / total if total > 0 else 1.0
        if not self._tty:
            tenth = int(fraction * 10)
            if tenth == self._last_tenth:
                return
            self._last_tenth = tenth
        filled = int(fraction * self._width)
        line = f"[{'#' * filled}{'-' * (self._width - filled)}] {done}/{total} {fraction:4.0%}"
        self._stream.write(("\r" + line) if self._tty else line + "\n")
        self._stream.flush()
        self._drawn = True

    def finish(self) -> None:
        """End the redrawn line."""
        if self._tty and self._drawn:
            self._stream.write("\n")
            self._stream.flush()
        self._drawn = False
