"""Which requests are searches, and whether the indices they name are ones the proxy reranks.

`classify_endpoint` is asked of every request the listener sees, so it is cached; the nginx front routes
by a regular expression tested to accept the same paths (tests/test_front.py).
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote

_SEARCH_PATH = re.compile(r"/(?:([^/]+)/)?(_search|_msearch)/?")


@dataclass(frozen=True, slots=True)
class SearchEndpoint:
    """A search request: `kind`, and the URL's indices (decoded; empty means all)."""

    kind: Literal["search", "msearch"]
    indices: tuple[str, ...]

    def __init__(self, kind: Literal["search", "msearch"], indices: tuple[str, ...]) -> None:
        # Written out: mypyc compiles this one, not the one @dataclass generates (tests/test_inits.py).
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "indices", indices)


@functools.lru_cache(maxsize=1024)  # a frontend sends a few paths, asked of every request
def classify_endpoint(method: str, path: str) -> SearchEndpoint | None:
    """A GET/POST `[/{index}]/_search` or `/_msearch` (raw, percent-encoded path); None for anything else."""
    if method.upper() not in ("GET", "POST"):
        return None
    match = _SEARCH_PATH.fullmatch(path)
    if match is None:
        return None
    target, endpoint = match.group(1), match.group(2)
    indices: tuple[str, ...] = ()
    if target is not None:
        indices = tuple(part for part in unquote(target).split(",") if part)
        if not indices or any(name.startswith("_") and name != "_all" for name in indices):
            return None  # `/_pit/_search`-like internal paths are not index names
    return SearchEndpoint("search" if endpoint == "_search" else "msearch", indices)


def indices_match(indices: Sequence[str], patterns: Sequence[str]) -> bool:
    """Every requested index (none means `_all`) is covered by one of the configured globs."""
    requested = [name.strip() for name in indices if name.strip()] or ["_all"]
    for name in requested:
        if name.startswith("-") or name in ("_all", "*"):
            if "*" not in patterns:
                return False
        elif not any(_covers(pattern, name) for pattern in patterns):
            return False
    return True


def _covers(pattern: str, name: str) -> bool:
    # A wildcard request is covered by a pattern whose matches include all of its matches: the pattern
    # itself, or a `*`-only pattern matching it with `*` read literally (`lib-*` covers `lib-2*`). With `?`
    # or `[...]` in the pattern that reading is unsound (`a?` matches the text `a*`), so only equality counts.
    if "*" in name or "?" in name:
        if pattern == name:
            return True
        return not any(c in pattern for c in "?[") and fnmatch.fnmatchcase(name, pattern)
    return fnmatch.fnmatchcase(name, pattern)
