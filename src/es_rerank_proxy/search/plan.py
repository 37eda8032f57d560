"""Pure search decisions: whether a search can be reranked exactly as asked, the recall rewrite (page 0 of
`window` hits), reading a hit's fields, and rebuilding the client's page. Which requests are searches,
and on which indices, is `endpoint`'s.

A search is reranked only when the proxy can give back exactly the ES response shape the client asked for;
anything else is a `Bypass` with a short snake_case reason for `X-Rerank-Reason`.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import orjson

from ..config import RerankConfig
from .endpoint import indices_match
from .guard import deeper_than
from .query_text import find_query_text

# URL params that leave hit order and shape as we can rebuild them. Anything not listed is a bypass.
# Not here on purpose: stored_fields (can hide _source/_id), terminate_after, format (yaml/cbor/smile),
# source/source_content_type (the body in the URL), pretty (answers are re-serialised compactly),
# plus the ones with their own reason in _PARAM_REASONS.
SEARCH_PARAMS = frozenset(
    {
        "from", "size", "q", "df", "default_operator", "analyzer", "analyze_wildcard", "lenient",
        "_source", "_source_includes", "_source_excludes", "docvalue_fields", "track_total_hits",
        "track_scores", "timeout", "allow_no_indices", "expand_wildcards", "ignore_unavailable",
        "ignore_throttled", "preference", "routing", "request_cache", "search_type", "typed_keys",
        "rest_total_hits_as_int", "batched_reduce_size", "max_concurrent_shard_requests",
        "pre_filter_shard_size", "ccs_minimize_roundtrips", "allow_partial_search_results",
        "seq_no_primary_term", "version", "stats", "suggest_field", "suggest_mode", "suggest_size",
        "suggest_text", "include_named_queries_score", "error_trace", "human",
    }
)  # fmt: skip
_PARAM_REASONS: Mapping[str, str] = {
    "sort": "sort", "scroll": "scroll", "filter_path": "filter_path", "explain": "explain",
}  # fmt: skip
# Top-level body keys that the recall rewrite keeps exactly (aggregations, suggest and total do not
# depend on size/from; highlight, fields and friends are per hit). Not here: stored_fields, ext, slice,
# terminate_after and anything unknown (unsupported_body_key), plus the ones in _BODY_REASONS.
SEARCH_BODY_KEYS = frozenset(
    {
        "query", "from", "size", "_source", "fields", "docvalue_fields", "highlight", "aggs",
        "aggregations", "post_filter", "min_score", "track_total_hits", "track_scores", "timeout",
        "suggest", "stats", "version", "seq_no_primary_term", "indices_boost", "runtime_mappings",
        "script_fields",
    }
)  # fmt: skip
_BODY_REASONS: Mapping[str, str] = {
    "sort": "sort", "search_after": "search_after", "pit": "pit", "collapse": "collapse",
    "rescore": "rescore", "knn": "knn", "retriever": "retriever", "profile": "profile", "explain": "explain",
}  # fmt: skip
# Body keys and URL params that shape only what is shown, never which hits match or their order.
_SHADOW_UNREAD = frozenset(
    {
        "_source", "fields", "docvalue_fields", "script_fields", "highlight", "aggs", "aggregations",
        "suggest", "track_total_hits", "version", "seq_no_primary_term", "stats",
    }
)  # fmt: skip
_SHADOW_UNREAD_PARAMS = frozenset(
    {
        "_source", "_source_includes", "_source_excludes", "docvalue_fields", "track_total_hits",
        "typed_keys", "rest_total_hits_as_int", "seq_no_primary_term", "version", "stats",
        "suggest_field", "suggest_mode", "suggest_size", "suggest_text",
    }
)  # fmt: skip
_FALSE_OK = frozenset({"explain", "profile"})  # `"explain": false` changes nothing
_DIGITS = re.compile(r"[0-9]{1,9}")


@dataclass(frozen=True, slots=True)
class Bypass:
    """Forward the request untouched; `reason` goes to `X-Rerank-Reason`."""

    reason: str

    def __init__(self, reason: str) -> None:
        # Written out: mypyc compiles this one, not the one @dataclass generates (tests/test_inits.py).
        object.__setattr__(self, "reason", reason)


@dataclass(frozen=True, slots=True)
class NeededFields:
    """The document fields the pipeline reads; an empty date or citations field is not needed."""

    text_fields: tuple[str, ...]
    date_field: str
    citations_field: str

    def names(self) -> tuple[str, ...]:
        """Every needed field once, text fields first."""
        names = (*self.text_fields, self.date_field, self.citations_field)
        return tuple(dict.fromkeys(name for name in names if name))


@dataclass(frozen=True, slots=True)
class SearchPlan:
    """How to recall the window and cut the client's page from it."""

    query_text: str
    client_from: int
    client_size: int
    recall_body: bytes
    recall_params: dict[str, str]
    added_fields: tuple[str, ...]

    def __init__(
        self,
        query_text: str,
        client_from: int,
        client_size: int,
        recall_body: bytes,
        recall_params: dict[str, str],
        added_fields: tuple[str, ...],
    ) -> None:
        # Written out: mypyc compiles this one, not the one @dataclass generates (tests/test_inits.py).
        object.__setattr__(self, "query_text", query_text)
        object.__setattr__(self, "client_from", client_from)
        object.__setattr__(self, "client_size", client_size)
        object.__setattr__(self, "recall_body", recall_body)
        object.__setattr__(self, "recall_params", recall_params)
        object.__setattr__(self, "added_fields", added_fields)


def plan_search(
    body: bytes,
    params: Mapping[str, str],
    indices: Sequence[str],
    rerank: RerankConfig,
    needed: NeededFields,
    header_query: str | None,
) -> SearchPlan | Bypass:
    """Decide whether a `_search` can be reranked exactly as asked, and if so how to recall its window."""
    if not indices_match(indices, rerank.indices):
        return Bypass("index_not_configured")
    parsed = parse_body(body, rerank.max_query_depth)
    if isinstance(parsed, Bypass):
        return parsed
    for name, value in params.items():
        if name in _PARAM_REASONS:
            if not _harmless_param(name, value):
                return Bypass(_PARAM_REASONS[name])
        elif name not in SEARCH_PARAMS:
            return Bypass("unsupported_param")
    return plan_parsed(parsed, params, rerank, needed, header_query)


def plan_parsed(
    parsed: dict[str, object],
    params: Mapping[str, str],
    rerank: RerankConfig,
    needed: NeededFields,
    header_query: str | None,
) -> SearchPlan | Bypass:
    """Body checks and the recall rewrite, once indices and URL params are vetted (msearch reuses it)."""
    for key, value in parsed.items():
        if key in _BODY_REASONS:
            if not (key in _FALSE_OK and value is False) and not (key == "sort" and _score_sort(value)):
                return Bypass(_BODY_REASONS[key])
        elif key not in SEARCH_BODY_KEYS:
            return Bypass("unsupported_body_key")
    client_from = _paging(params.get("from", parsed.get("from", 0)))
    client_size = _paging(params.get("size", parsed.get("size", 10)))
    if client_from is None or client_size is None:
        return Bypass("invalid_paging")
    if client_size == 0:
        return Bypass("size_zero")
    if client_from + client_size > rerank.window:
        return Bypass("window_exceeded")
    query_text = header_query.strip() if header_query else ""
    if not query_text:
        # ES runs the `q` param instead of the body's `query` when both are given.
        source = {k: v for k, v in parsed.items() if k != "query"} if "q" in params else parsed
        query_text = find_query_text(source, url_q=params.get("q"), paths=rerank.query_text_paths) or ""
    if not query_text:
        return Bypass("no_query_text")
    recall = _recall_fields(parsed, params, needed)
    if isinstance(recall, Bypass):
        return recall
    recall_body, added = recall
    if "from" in recall_body:
        recall_body["from"] = 0
    if "size" in recall_body or "size" not in params:
        recall_body["size"] = rerank.window
    recall_params = {name: value for name, value in params.items() if name != "from"}
    if "size" in recall_params:
        recall_params["size"] = str(rerank.window)
    return SearchPlan(
        query_text=query_text,
        client_from=client_from,
        client_size=client_size,
        recall_body=orjson.dumps(recall_body),
        recall_params=recall_params,
        added_fields=added,
    )


def shadow_plan(plan: SearchPlan, needed: NeededFields) -> SearchPlan:
    """The recall a shadow rerank needs: the same window in the same order, with the needed fields only.

    The window stays whole, as live: BM25 is min-maxed over it, so even its last hit sets every
    candidate's `bm25`, and with recency or citation weights any of its hits may become a candidate. But
    a shadow's answer has already gone out, so `_source`, highlights, aggregations, suggestions and the
    total are work Elasticsearch would do for nothing; none of them changes which hits match or their order.
    """
    body = {key: value for key, value in orjson.loads(plan.recall_body).items() if key not in _SHADOW_UNREAD}
    body.update({"_source": False, "fields": list(needed.names()), "track_total_hits": False})
    params = {name: value for name, value in plan.recall_params.items() if name not in _SHADOW_UNREAD_PARAMS}
    return replace(plan, recall_body=orjson.dumps(body), recall_params=params, added_fields=())


def parse_body(body: bytes, max_depth: int) -> dict[str, object] | Bypass:
    """The search body as a JSON object (empty body: `{}`), or why not (`invalid_json`, `query_too_deep`).

    The depth check runs before anything walks the body recursively: a deeper body is Elasticsearch's to
    refuse, with its own error.
    """
    if not body.strip():
        return {}  # a GET with only URL params
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return Bypass("invalid_json")
    if not isinstance(parsed, dict):
        return Bypass("invalid_json")
    return Bypass("query_too_deep") if deeper_than(parsed, max_depth) else parsed


def _harmless_param(name: str, value: str) -> bool:
    if name == "explain":
        return value == "false"
    if name == "sort":
        return value in ("_score", "_score:desc")
    return False


def _score_sort(value: object) -> bool:
    """Only `_score` descending: `"_score"`, `{"_score": "desc"}`, `{"_score": {"order": "desc"}}`, or [x]."""
    if isinstance(value, list):
        return len(value) == 1 and _score_sort(value[0])
    if value == "_score":
        return True
    if isinstance(value, dict) and len(value) == 1 and "_score" in value:
        order: object = value["_score"]
        return order == "desc" or order == {"order": "desc"}
    return False


def _paging(value: object) -> int | None:
    if isinstance(value, str):
        return int(value) if _DIGITS.fullmatch(value) else None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**9:
        return value
    return None


# --- fields the pipeline needs ---------------------------------------------------------------------


def _recall_fields(
    parsed: dict[str, object], params: Mapping[str, str], needed: NeededFields
) -> tuple[dict[str, object], tuple[str, ...]] | Bypass:
    """A copy of the body with `fields` extended by the needed fields that `_source` might hide."""
    body = dict(parsed)
    fields = body.get("fields")
    if fields is not None and not isinstance(fields, list):
        return Bypass("unsupported_body_key")
    shown = _source_filter(parsed, params)
    covered = [*_field_names(fields), *_field_names(body.get("docvalue_fields"))]
    covered.extend(_csv(params.get("docvalue_fields", "")))
    script_fields = body.get("script_fields")
    if isinstance(script_fields, dict):
        covered.extend(script_fields)
    added = tuple(
        name
        for name in needed.names()
        if not (shown is not None and _source_shows(shown, name))
        and not any(fnmatch.fnmatchcase(name, pattern) for pattern in covered)
    )
    if added:
        body["fields"] = [*(fields or []), *added]
    return body, added


def _field_names(entries: object) -> list[str]:
    if not isinstance(entries, list):
        return []
    names: list[str] = []
    for entry in entries:
        if isinstance(entry, dict):
            entry = entry.get("field")
        if isinstance(entry, str):
            names.append(entry)
    return names


_SourceFilter = tuple[bool, tuple[str, ...], tuple[str, ...]]  # enabled, includes, excludes


def _source_filter(parsed: Mapping[str, object], params: Mapping[str, str]) -> _SourceFilter | None:
    """The effective `_source` filtering (URL params replace the body's, as in ES); None if not understood."""
    if any(name in params for name in ("_source", "_source_includes", "_source_excludes")):
        source = params.get("_source", "true")
        listed = _csv(params.get("_source_includes", "" if source in ("true", "false") else source))
        return source != "false", listed, _csv(params.get("_source_excludes", ""))
    value = parsed.get("_source", True)
    if isinstance(value, bool):
        return value, (), ()
    if isinstance(value, dict) and set(value) <= {"includes", "include", "excludes", "exclude"}:
        includes = _patterns(value.get("includes", value.get("include", [])))
        excludes = _patterns(value.get("excludes", value.get("exclude", [])))
        return None if includes is None or excludes is None else (True, includes, excludes)
    includes = _patterns(value)
    return None if includes is None else (True, includes, ())


def _patterns(value: object) -> tuple[str, ...] | None:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(str(item) for item in value)
    return None


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _source_shows(source: _SourceFilter, name: str) -> bool:
    """True only when `_source` surely keeps field `name` (its own path or an ancestor included)."""
    enabled, includes, excludes = source
    if not enabled:
        return False
    parts = name.split(".")
    paths = [".".join(parts[: i + 1]) for i in range(len(parts))]
    if includes and not any(fnmatch.fnmatchcase(path, pattern) for path in paths for pattern in includes):
        return False
    # An exclude on the field, an ancestor or anything below it may remove (part of) the value.
    return not any(
        fnmatch.fnmatchcase(path, pattern) or pattern.startswith(name + ".")
        for pattern in excludes
        for path in paths
    )
