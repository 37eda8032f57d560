"""Pure `ext.ubi` handling: take the UBI section out of a search body before Elasticsearch sees it.

Stock Elasticsearch rejects an unknown `ext` section, so a UBI frontend works against it only when the
proxy removes `ext.ubi` (and `ext` if that leaves it empty). A body without `ext.ubi` is returned as
the very same bytes: bypassed searches still reach Elasticsearch byte for byte.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson

from ..observe.ubi_queries import UbiRequest
from . import msearch
from .plan import Bypass

# `"ext"` spelt plainly, or with JSON escapes: only such bodies can hold an `ext` key.
_MAY_HOLD_EXT = (b'"ext"', b"\\u")


def strip_search(body: bytes) -> tuple[bytes, UbiRequest | None]:
    """The body without `ext.ubi`, and what `ext.ubi` said; unchanged bytes and None without one."""
    if not any(marker in body for marker in _MAY_HOLD_EXT):
        return body, None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body, None  # Elasticsearch answers an unreadable body itself
    ext = parsed.get("ext") if isinstance(parsed, dict) else None
    if not isinstance(ext, dict) or "ubi" not in ext:
        return body, None
    ubi = ext.pop("ubi")
    if not ext:
        del parsed["ext"]
    return orjson.dumps(parsed), UbiRequest.parse(ubi)


def strip_msearch(body: bytes) -> tuple[bytes, tuple[UbiRequest | None, ...]]:
    """`strip_search` on every search of an NDJSON `_msearch`; the body is rewritten only if one had it."""
    items = msearch.split_msearch(body)
    if isinstance(items, Bypass):
        return body, ()
    stripped = [strip_search(item.body_raw) for item in items]
    requests = tuple(request for _, request in stripped)
    if all(request is None for request in requests):
        return body, requests
    lines = [(item.header_raw, new_body) for item, (new_body, _) in zip(items, stripped, strict=True)]
    return msearch.join_msearch(lines), requests


def search_bodies(kind: str, body: bytes) -> tuple[bytes, ...]:
    """The body of each search of a request: the body itself, or each `_msearch` search's line."""
    if kind == "search":
        return (body,)
    items = msearch.split_msearch(body)
    return () if isinstance(items, Bypass) else tuple(item.body_raw for item in items)


def page_bounds(body: bytes, params: Mapping[str, str]) -> tuple[int, int]:
    """`from` and `size` the client asked for (URL params over the body; Elasticsearch's 0 and 10 by
    default); a value that is not a count reads as its default."""
    try:
        parsed = orjson.loads(body) if body.strip() else {}
    except orjson.JSONDecodeError:
        parsed = {}
    if not isinstance(parsed, dict):
        parsed = {}
    return (
        _count(params.get("from", parsed.get("from")), 0),
        _count(params.get("size", parsed.get("size")), 10),
    )


def _count(value: object, default: int) -> int:
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return default
