"""Pure `_msearch` handling: split the NDJSON body into searches, plan each one, join the recall body.

Lines are read as Elasticsearch 8/9 reads them: every line ends with a newline, an empty header line
means `{}`, one empty line after the last search is ignored. Anything else irregular (a missing final
newline, a header without a body, a line that is not one JSON object) is `invalid_json`, and Elasticsearch
answers it itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import orjson

from ..config import RerankConfig
from .endpoint import indices_match
from .plan import Bypass, NeededFields, SearchPlan, parse_body, plan_parsed

# URL params of `_msearch` (they apply to every search) that leave each answer as we can rebuild it.
MSEARCH_PARAMS = frozenset(
    {
        "max_concurrent_searches", "max_concurrent_shard_requests", "pre_filter_shard_size",
        "typed_keys", "rest_total_hits_as_int", "ccs_minimize_roundtrips", "search_type",
        "allow_no_indices", "expand_wildcards", "ignore_unavailable", "ignore_throttled", "routing",
        "include_named_queries_score", "error_trace", "human",
    }
)  # fmt: skip
# Header keys Elasticsearch accepts in an `_msearch` metadata line; none of them changes a hit's shape.
MSEARCH_HEADER_KEYS = frozenset(
    {
        "index", "indices", "search_type", "ccs_minimize_roundtrips", "request_cache", "preference",
        "routing", "allow_partial_search_results", "expand_wildcards", "ignore_unavailable",
        "allow_no_indices", "ignore_throttled", "searchType", "ccsMinimizeRoundtrips", "requestCache",
        "expandWildcards", "ignoreUnavailable", "allowNoIndices", "ignoreThrottled",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class MsearchItem:
    """One search of an `_msearch`: its parsed header and both raw lines (without the newline)."""

    header: dict[str, object]
    header_raw: bytes
    body_raw: bytes

    def __init__(self, header: dict[str, object], header_raw: bytes, body_raw: bytes) -> None:
        # Written out: mypyc compiles this one, not the one @dataclass generates (tests/test_inits.py).
        object.__setattr__(self, "header", header)
        object.__setattr__(self, "header_raw", header_raw)
        object.__setattr__(self, "body_raw", body_raw)


def split_msearch(body: bytes) -> list[MsearchItem] | Bypass:
    """The header/body pairs of an NDJSON `_msearch` body, or `Bypass("invalid_json")`."""
    if not body.endswith(b"\n"):
        return Bypass("invalid_json")  # ES 8/9: "The msearch request must be terminated by a newline"
    lines = body.split(b"\n")[:-1]
    if len(lines) % 2 == 1 and lines[-1] == b"":
        lines.pop()  # an empty header after the last search: Elasticsearch reads no search from it
    if not lines or len(lines) % 2 == 1:
        return Bypass("invalid_json")
    items: list[MsearchItem] = []
    for header_raw, body_raw in zip(lines[::2], lines[1::2], strict=True):
        header_raw = header_raw or b"{}"  # an empty header line means `{}`; written back explicitly
        try:
            header, search = orjson.loads(header_raw), orjson.loads(body_raw)
        except orjson.JSONDecodeError:
            return Bypass("invalid_json")
        if not isinstance(header, dict) or not isinstance(search, dict):
            return Bypass("invalid_json")
        items.append(MsearchItem(header=header, header_raw=header_raw, body_raw=body_raw))
    return items


def join_msearch(lines: Sequence[tuple[bytes, bytes]]) -> bytes:
    """An NDJSON `_msearch` body from (header, body) line pairs, every line ending in a newline."""
    return b"".join(header + b"\n" + body + b"\n" for header, body in lines)


def msearch_item_indices(item: MsearchItem, url_indices: Sequence[str]) -> tuple[str, ...]:
    """The indices one search targets: its header's `index` (string or list), else the URL's."""
    value = item.header.get("index", item.header.get("indices"))
    if isinstance(value, str):
        return tuple(part for part in value.split(",") if part)
    if isinstance(value, list):
        return tuple(part for entry in value if isinstance(entry, str) for part in entry.split(",") if part)
    return tuple(url_indices)


def plan_msearch_item(
    item: MsearchItem,
    url_indices: Sequence[str],
    url_params: Mapping[str, str],
    rerank: RerankConfig,
    needed: NeededFields,
    header_query: str | None,
) -> SearchPlan | Bypass:
    """`plan_search` for one search of an `_msearch`; `recall_params` are the `_msearch` URL's, unchanged."""
    for name in url_params:
        if name == "filter_path":
            return Bypass("filter_path")
        if name not in MSEARCH_PARAMS:
            return Bypass("unsupported_param")
    if any(key not in MSEARCH_HEADER_KEYS for key in item.header):
        return Bypass("unsupported_header_key")
    if not indices_match(msearch_item_indices(item, url_indices), rerank.indices):
        return Bypass("index_not_configured")
    parsed = parse_body(item.body_raw, rerank.max_query_depth)
    if isinstance(parsed, Bypass):
        return parsed
    plan = plan_parsed(parsed, {}, rerank, needed, header_query)
    return plan if isinstance(plan, Bypass) else dataclasses.replace(plan, recall_params=dict(url_params))
