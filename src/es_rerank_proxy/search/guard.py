"""Bounds on what a client controls, checked before any recursive walk; and summaries that stay small.

Pure: no I/O. Anything beyond a bound is forwarded untouched with a reason, so Elasticsearch answers it
with its own limits and its own error.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

# A header value the proxy writes stays under this; longer per-search lists are summarised as counts.
MAX_HEADER_VALUE_CHARS = 512


def deeper_than(value: object, limit: int) -> bool:
    """Whether JSON `value` nests objects/arrays more than `limit` levels deep (iterative: no recursion)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Sequence[object] = list(node.values())
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def msearch_searches(body: bytes) -> int:
    """How many searches an NDJSON `_msearch` body holds, counted without parsing (header + body lines)."""
    lines = body.count(b"\n") + (0 if body.endswith(b"\n") or not body else 1)
    return (lines + 1) // 2


def header_list(values: Sequence[str], *, max_chars: int = MAX_HEADER_VALUE_CHARS) -> str:
    """A comma-separated per-search value; past `max_chars`, counts per value in first-seen order."""
    joined = ",".join(values)
    if len(joined) <= max_chars:
        return joined
    counts = Counter(values)
    return ",".join(f"{value}={count}" for value, count in counts.items())[:max_chars]
