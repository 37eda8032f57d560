"""The UBI query record: what `ext.ubi` carries, the `ubi_queries` document the proxy writes for one
search, and the index templates of `ubi_queries` and `ubi_events` (User Behavior Insights spec 1.x).

Pure: no I/O. `query_attributes` keeps the client's own attributes and adds the proxy's (`arm`,
`outcome`, `reason`, `page_from`, `page_size`, and `teams` when interleaved); the online report reads
exactly these keys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

# The proxy's own keys in query_attributes; a client attribute of the same name is overwritten.
ARM, OUTCOME, REASON, PAGE_FROM, PAGE_SIZE, TEAMS = (
    "arm",
    "outcome",
    "reason",
    "page_from",
    "page_size",
    "teams",
)
OUTCOMES = ("applied", "degraded", "skipped")


@dataclass(frozen=True, slots=True)
class UbiRequest:
    """`ext.ubi` of one search as a UBI client sent it; a field the client left out is None."""

    query_id: str | None = None
    client_id: str | None = None
    user_query: str | None = None
    object_id_field: str | None = None
    application: str | None = None
    query_attributes: Mapping[str, object] = field(default_factory=dict)

    @classmethod
    def parse(cls, value: object) -> UbiRequest:
        """Read `ext.ubi` leniently: a field of the wrong type counts as missing, never as an error."""
        if not isinstance(value, dict):
            return cls()
        attributes = value.get("query_attributes")
        return cls(
            query_id=_text(value.get("query_id")),
            client_id=_text(value.get("client_id")),
            user_query=_text(value.get("user_query")),
            object_id_field=_text(value.get("object_id_field")),
            application=_text(value.get("application")),
            query_attributes=dict(attributes) if isinstance(attributes, dict) else {},
        )


@dataclass(frozen=True, slots=True)
class ShownPage:
    """What one search showed its client and how: the arm, the outcome and the page's place."""

    arm: str
    outcome: str
    reason: str | None
    page_from: int
    page_size: int
    hit_ids: tuple[str, ...]
    teams: tuple[str, ...] | None = None


def hit_ids(response: object, object_id_field: str | None) -> tuple[str, ...]:
    """The ids of the hits in a search answer, in order: `object_id_field` of each hit where it has one
    (in `_source` or `fields`), else its `_id`."""
    hits = response.get("hits") if isinstance(response, dict) else None
    inner = hits.get("hits") if isinstance(hits, dict) else None
    if not isinstance(inner, list):
        return ()
    ids: list[str] = []
    for hit in inner:
        if not isinstance(hit, dict):
            continue
        value = _field_value(hit, object_id_field) if object_id_field else None
        if value is None:
            value = _text(hit.get("_id"))
        ids.append(value or "")
    return tuple(ids)


def query_document(
    query_id: str,
    request: UbiRequest | None,
    shown: ShownPage,
    timestamp: datetime,
    *,
    query_response_id: str,
    query_text: str | None = None,
) -> dict[str, object]:
    """One `ubi_queries` document; `query_text` (the words the proxy found) stands in for a missing
    `user_query`."""
    request = request or UbiRequest()
    attributes: dict[str, object] = dict(request.query_attributes)
    attributes.update(
        {
            ARM: shown.arm,
            OUTCOME: shown.outcome if shown.outcome in OUTCOMES else "skipped",
            REASON: shown.reason or "",
            PAGE_FROM: shown.page_from,
            PAGE_SIZE: shown.page_size,
        }
    )
    if shown.teams is not None:
        attributes[TEAMS] = list(shown.teams)
    document: dict[str, object] = {
        "query_id": query_id,
        "client_id": request.client_id,
        "user_query": request.user_query if request.user_query is not None else query_text,
        "timestamp": format_timestamp(timestamp),
        "application": request.application,
        "object_id_field": request.object_id_field or "_id",
        "query_response_id": query_response_id,
        "query_response_hit_ids": list(shown.hit_ids),
        "query_attributes": attributes,
    }
    return document


def format_timestamp(moment: datetime) -> str:
    """UTC, milliseconds, `Z`: Elasticsearch's `strict_date_time`, as the UBI mappings declare."""
    utc = moment.astimezone(timezone.utc) if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def index_templates(queries_index: str, events_index: str) -> dict[str, dict[str, object]]:
    """Composable index templates (by template name) for the two UBI indices, mappings as the spec's."""
    return {
        queries_index: _template(queries_index, _QUERY_PROPERTIES),
        events_index: _template(events_index, _EVENT_PROPERTIES),
    }


def _template(index: str, properties: dict[str, object]) -> dict[str, object]:
    return {
        "index_patterns": [index],
        "priority": 100,
        "template": {"mappings": {"dynamic": True, "properties": properties}},
        "_meta": {"managed_by": "es-rerank-proxy", "spec": "ubi 1.x"},
    }


def _keyword(ignore_above: int = 256) -> dict[str, object]:
    return {"type": "keyword", "ignore_above": ignore_above}


_TIMESTAMP = {"type": "date", "format": "strict_date_time"}
_QUERY_PROPERTIES: dict[str, object] = {
    "timestamp": _TIMESTAMP,
    "query_id": _keyword(100),
    "query_response_id": _keyword(100),
    "query_response_hit_ids": {"type": "keyword"},
    "user_query": _keyword(),
    "client_id": _keyword(100),
    "application": _keyword(100),
    "object_id_field": _keyword(100),
    # OpenSearch maps this as flat_object; Elasticsearch has no such type. An object keeps the proxy's
    # keys typed for the report, and lets a client's own attributes map themselves.
    "query_attributes": {
        "type": "object",
        "dynamic": True,
        "properties": {
            ARM: {"type": "keyword"},
            OUTCOME: {"type": "keyword"},
            REASON: {"type": "keyword"},
            PAGE_FROM: {"type": "integer"},
            PAGE_SIZE: {"type": "integer"},
            TEAMS: {"type": "keyword"},
        },
    },
}
_EVENT_PROPERTIES: dict[str, object] = {
    "application": _keyword(),
    "action_name": _keyword(100),
    "client_id": _keyword(100),
    "query_id": _keyword(100),
    "session_id": _keyword(100),
    "user_query": _keyword(),
    "message": _keyword(1024),
    "message_type": _keyword(100),
    "timestamp": {**_TIMESTAMP, "ignore_malformed": True},
    "event_attributes": {
        "type": "object",
        "dynamic": True,
        "properties": {
            "position": {
                "properties": {
                    "ordinal": {"type": "integer"},
                    "page_depth": {"type": "integer"},
                    "scroll_depth": {"type": "integer"},
                    "x": {"type": "integer"},
                    "y": {"type": "integer"},
                }
            },
            "object": {
                "properties": {
                    "object_id": _keyword(),
                    "object_id_field": _keyword(),
                    "internal_id": _keyword(),
                    "description": {"type": "text"},
                }
            },
            "browser": _keyword(),
            "dwell_time": {"type": "float"},
            "result_count": {"type": "integer"},
        },
    },
}


def _text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)  # numeric ids are common in catalogues; UBI stores them as keywords
    return None


def _field_value(hit: Mapping[str, object], name: str) -> str | None:
    source: object = hit.get("_source")
    for part in name.split("."):
        source = source.get(part) if isinstance(source, dict) else None
    value = _text(source)
    if value is not None:
        return value
    fields = hit.get("fields")
    listed = fields.get(name) if isinstance(fields, dict) else None
    if isinstance(listed, list) and listed:
        return _text(listed[0])
    return None


def shown_pages(
    arm: str,
    answers: Sequence[object],
    outcomes: Sequence[str],
    reasons: Sequence[str | None],
    bounds: Sequence[tuple[int, int]],
    teams: Sequence[tuple[str, ...] | None],
    id_fields: Sequence[str | None],
) -> list[ShownPage]:
    """One ShownPage per search of a request, from its answers and the per-search outcome lists."""
    return [
        ShownPage(
            arm=arm,
            outcome=outcomes[i],
            reason=reasons[i] or None,
            page_from=bounds[i][0],
            page_size=bounds[i][1],
            hit_ids=hit_ids(answers[i], id_fields[i]),
            teams=teams[i] if i < len(teams) else None,
        )
        for i in range(len(answers))
    ]
