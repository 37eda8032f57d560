"""Reading UBI searches and click events from Elasticsearch (scroll), for `online-report` and `judgments`."""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from typing import cast

import aiohttp
import orjson

from ..errors import ProxyError
from .ubi_records import SearchClicks, click_from_doc, join_clicks, search_from_doc

QUERIES_INDEX = "ubi_queries"
EVENTS_INDEX = "ubi_events"
_SINCE = re.compile(r"^[1-9][0-9]*[mhdw]$")
_PAGE = 1000
_KEEP_ALIVE = "2m"


class UbiReadError(ProxyError):
    """Elasticsearch refused or failed a read of the UBI indices; the message says which and why."""


def add_ubi_source_arguments(parser: argparse.ArgumentParser) -> None:
    """`--es URL [--api-key K] [--since 7d] [--application A]` and the two index names."""
    parser.add_argument("--es", required=True, metavar="URL", help="Elasticsearch holding the UBI indices")
    parser.add_argument("--api-key", metavar="KEY", help="an Elasticsearch API key with read on ubi_*")
    parser.add_argument(
        "--since", default="7d", type=since_argument, help="how far back: 30m, 12h, 7d (default), 2w"
    )
    parser.add_argument("--application", metavar="A", help="only searches of this UBI application")
    parser.add_argument(
        "--queries-index", default=QUERIES_INDEX, metavar="INDEX", help="(default ubi_queries)"
    )
    parser.add_argument("--events-index", default=EVENTS_INDEX, metavar="INDEX", help="(default ubi_events)")


async def read_from_arguments(args: argparse.Namespace) -> list[SearchClicks]:
    """`read_searches_and_clicks` with what `add_ubi_source_arguments` parsed."""
    return await read_searches_and_clicks(
        args.es,
        api_key=args.api_key,
        since=args.since,
        application=args.application,
        queries_index=args.queries_index,
        events_index=args.events_index,
    )


def since_argument(text: str) -> str:
    """Validate `--since`: a positive count of minutes, hours, days or weeks (Elasticsearch date math)."""
    if not _SINCE.match(text):
        raise argparse.ArgumentTypeError(f"expected a count and m, h, d or w (e.g. 7d), got {text!r}")
    return text


def _headers(api_key: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"ApiKey {api_key}"
    return headers


async def scroll_documents(
    session: aiohttp.ClientSession,
    es_url: str,
    index: str,
    query: Mapping[str, object],
    *,
    api_key: str | None = None,
    page_size: int = _PAGE,
) -> list[dict[str, object]]:
    """Every `_source` in `index` matching `query`, by scroll in index order; a missing index is empty."""
    base = es_url.rstrip("/")
    headers = _headers(api_key)
    body = {"size": page_size, "sort": ["_doc"], "query": query}
    async with session.post(
        f"{base}/{index}/_search", params={"scroll": _KEEP_ALIVE}, data=orjson.dumps(body), headers=headers
    ) as response:
        if response.status == 404:
            return []
        answer = await _answer(response, f"search {index}")
    documents: list[dict[str, object]] = []
    scroll_id = answer.get("_scroll_id")
    try:
        while True:
            hits = cast("list[dict[str, object]]", cast("dict[str, object]", answer["hits"])["hits"])
            documents.extend(cast("dict[str, object]", hit.get("_source", {})) for hit in hits)
            if not hits or not scroll_id:
                return documents
            scroll = {"scroll": _KEEP_ALIVE, "scroll_id": scroll_id}
            async with session.post(
                f"{base}/_search/scroll", data=orjson.dumps(scroll), headers=headers
            ) as response:
                answer = await _answer(response, f"scroll {index}")
            scroll_id = answer.get("_scroll_id", scroll_id)
    finally:
        if scroll_id:
            async with session.delete(
                f"{base}/_search/scroll", data=orjson.dumps({"scroll_id": scroll_id}), headers=headers
            ) as response:
                await response.read()


async def _answer(response: aiohttp.ClientResponse, what: str) -> dict[str, object]:
    body = await response.read()
    if response.status != 200:
        raise UbiReadError(f"{what}: HTTP {response.status}: {body[:300].decode('utf-8', 'replace')}")
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise UbiReadError(f"{what}: not JSON ({exc})") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("hits"), dict):
        raise UbiReadError(f"{what}: no hits in the answer")
    return answer


async def read_searches_and_clicks(
    es_url: str,
    *,
    api_key: str | None = None,
    since: str = "7d",
    application: str | None = None,
    queries_index: str = QUERIES_INDEX,
    events_index: str = EVENTS_INDEX,
) -> list[SearchClicks]:
    """The recorded searches of the last `since` (of one application if given), each with its clicks."""
    window = {"range": {"timestamp": {"gte": f"now-{since}"}}}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=60)) as session:
        try:
            query_docs = await scroll_documents(session, es_url, queries_index, window, api_key=api_key)
            event_docs = await scroll_documents(session, es_url, events_index, window, api_key=api_key)
        except (aiohttp.ClientError, OSError) as exc:
            raise UbiReadError(f"cannot read {es_url}: {exc}") from None
    searches = [s for s in map(search_from_doc, query_docs) if s is not None]
    if application is not None:
        # client-side: the field may be text or keyword depending on how the index was created
        searches = [s for s in searches if s.application == application]
    clicks = [c for c in map(click_from_doc, event_docs) if c is not None]
    return join_clicks(searches, clicks)
