"""UBI documents as typed records: searches from `ubi_queries`, clicks from `ubi_events`, joined per search.

Pure: no I/O. The position of a click is where its object id stands in the page the proxy recorded
(`query_response_hit_ids`, offset by `query_attributes.page_from`), so it does not depend on how a frontend
counts; only a click whose object is not on the recorded page falls back to `event_attributes.position.
ordinal`, read 0-based as OpenSearch's Search Relevance Workbench reads it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

CLICK = "click"


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchRecord:
    """One search as the proxy recorded it in `ubi_queries`."""

    query_id: str
    user_query: str
    application: str
    timestamp: float  # seconds since the epoch
    arm: str
    outcome: str
    page_from: int
    hit_ids: tuple[str, ...]
    teams: tuple[str, ...]  # aligned with hit_ids for interleaved pages, else empty


@dataclass(frozen=True, slots=True, kw_only=True)
class ClickEvent:
    """One `click` event from `ubi_events`."""

    query_id: str
    object_id: str
    ordinal: int | None
    timestamp: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchClicks:
    """A search and its clicks: 1-based ranks in time order (None: not placeable), delay to the first."""

    search: SearchRecord
    ranks: tuple[int | None, ...]
    clicked_ids: tuple[str, ...]
    seconds_to_first_click: float | None

    @property
    def clicked(self) -> bool:
        return bool(self.ranks)


def parse_timestamp(value: object) -> float | None:
    """Seconds since the epoch from ISO 8601 text (a trailing Z allowed) or epoch milliseconds."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) / 1000.0
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return parsed.timestamp()


def _text(value: object) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def _strings(value: object) -> tuple[str, ...]:
    return tuple(_text(item) for item in value) if isinstance(value, list) else ()


def search_from_doc(doc: Mapping[str, object]) -> SearchRecord | None:
    """A `ubi_queries` document as a SearchRecord; None when it has no query id or timestamp."""
    query_id = _text(doc.get("query_id"))
    timestamp = parse_timestamp(doc.get("timestamp"))
    if not query_id or timestamp is None:
        return None
    attributes = doc.get("query_attributes")
    attrs: Mapping[str, object] = attributes if isinstance(attributes, Mapping) else {}
    hit_ids = _strings(doc.get("query_response_hit_ids"))
    teams = _strings(attrs.get("teams"))
    page_from = attrs.get("page_from")
    return SearchRecord(
        query_id=query_id,
        user_query=_text(doc.get("user_query")),
        application=_text(doc.get("application")),
        timestamp=timestamp,
        arm=_text(attrs.get("arm")) or "unknown",
        outcome=_text(attrs.get("outcome")),
        page_from=page_from if isinstance(page_from, int) and not isinstance(page_from, bool) else 0,
        hit_ids=hit_ids,
        teams=teams if len(teams) == len(hit_ids) else (),
    )


def click_from_doc(doc: Mapping[str, object]) -> ClickEvent | None:
    """A `ubi_events` document as a ClickEvent; None for other actions or when a key field is missing."""
    if _text(doc.get("action_name")).lower() != CLICK:
        return None
    query_id = _text(doc.get("query_id"))
    timestamp = parse_timestamp(doc.get("timestamp"))
    attributes = doc.get("event_attributes")
    attrs: Mapping[str, object] = attributes if isinstance(attributes, Mapping) else {}
    obj = attrs.get("object")
    position = attrs.get("position")
    object_id = _text(obj.get("object_id")) if isinstance(obj, Mapping) else ""
    ordinal = position.get("ordinal") if isinstance(position, Mapping) else None
    if not query_id or timestamp is None or not object_id:
        return None
    return ClickEvent(
        query_id=query_id,
        object_id=object_id,
        ordinal=ordinal if isinstance(ordinal, int) and not isinstance(ordinal, bool) else None,
        timestamp=timestamp,
    )


def _rank(search: SearchRecord, click: ClickEvent) -> int | None:
    try:
        return search.page_from + search.hit_ids.index(click.object_id) + 1
    except ValueError:
        return click.ordinal + 1 if click.ordinal is not None and click.ordinal >= 0 else None


def join_clicks(searches: Iterable[SearchRecord], clicks: Iterable[ClickEvent]) -> list[SearchClicks]:
    """Each search with its clicks (repeat clicks on one object count once); clicks of unknown searches are
    dropped. A query id recorded twice keeps its first record."""
    by_id: dict[str, SearchRecord] = {}
    for search in sorted(searches, key=lambda s: s.timestamp):
        by_id.setdefault(search.query_id, search)
    per_search: dict[str, list[ClickEvent]] = {}
    for click in clicks:
        if click.query_id in by_id:
            per_search.setdefault(click.query_id, []).append(click)
    joined: list[SearchClicks] = []
    for query_id, search in by_id.items():
        seen: dict[str, ClickEvent] = {}
        for click in sorted(per_search.get(query_id, ()), key=lambda c: c.timestamp):
            seen.setdefault(click.object_id, click)
        ordered = list(seen.values())
        joined.append(
            SearchClicks(
                search=search,
                ranks=tuple(_rank(search, click) for click in ordered),
                clicked_ids=tuple(seen),
                seconds_to_first_click=max(0.0, ordered[0].timestamp - search.timestamp) if ordered else None,
            )
        )
    return joined
