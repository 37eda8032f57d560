"""Find the user's query text inside an Elasticsearch search: configured paths, the query DSL, the `q` param.

Only clauses that score hits are read: `bool.must` and `bool.should`, never `filter` or `must_not`, and
`boosting.positive`, never `negative`. Lucene syntax (`q`, `query_string`, `simple_query_string`) is reduced
to plain words. Several texts are joined, each once, in document order.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

# Full-text leaf queries whose value is `{field: text}` or `{field: {"query": text, ...}}`.
_FIELD_QUERIES = frozenset({"match", "match_phrase", "match_phrase_prefix", "match_bool_prefix"})
# Leaf queries with a top-level `query` string; the Lucene ones are cleaned of their syntax.
_TEXT_QUERIES = frozenset({"multi_match", "combined_fields"})
_LUCENE_QUERIES = frozenset({"query_string", "simple_query_string"})
# Compound queries: the keys under which scoring sub-queries sit (each a query or a list of queries).
_COMPOUND_KEYS: Mapping[str, tuple[str, ...]] = {
    "bool": ("must", "should"),
    "function_score": ("query",),
    "script_score": ("query",),
    "dis_max": ("queries",),
    "boosting": ("positive",),
    "constant_score": ("filter",),
    # A nested query scores its parent with the inner match (e.g. authors.name), so its text counts too.
    "nested": ("query",),
}

_OPERATORS = frozenset({"AND", "OR", "NOT", "&&", "||", "!", "|", "+", "-"})
# A range such as `year:[2000 TO 2010]` or `{a TO *}`: bounds, not words.
_RANGE = re.compile(r"(?:(?:\\.|[^\s:\"()\\])+:)?[\[{][^\]}]*?\s+TO\s+[^\]}]*?[\]}]")
# A /regular expression/ term.
_REGEX = re.compile(r"(?:(?:\\.|[^\s:\"()\\])+:)?/(?:\\.|[^/\\])*/")
# A quoted phrase, or a bare term (escaped characters kept inside it).
_TOKEN = re.compile(r'"((?:\\.|[^"\\])*)"?|((?:\\.|[^\s"()\\])+)', re.DOTALL)
_FIELD_PREFIX = re.compile(r"^(?:\\.|[^:\\])+:")
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_SUFFIX = re.compile(r"(?:[~^][0-9.]*)+$")


def find_query_text(
    body: Mapping[str, object] | None, *, url_q: str | None, paths: Sequence[str]
) -> str | None:
    """The query text: the first configured path with a non-empty string, else the DSL walk, else `url_q`."""
    if body is not None:
        for path in paths:
            value = _at_path(body, path)
            if isinstance(value, str) and value.strip():
                return _squash(value)
        texts: list[str] = []
        _walk(body.get("query"), texts)
        if texts:
            return " ".join(_distinct(texts))
    if url_q is not None:
        return clean_lucene(url_q)
    return None


def clean_lucene(text: str) -> str | None:
    """Lucene query syntax reduced to its words: no fields, operators, quotes, boosts, wildcards or ranges."""
    text = _REGEX.sub(" ", _RANGE.sub(" ", text))
    words: list[str] = []
    for match in _TOKEN.finditer(text):
        phrase, term = match.group(1), match.group(2)
        if phrase is not None:
            words.extend(_ESCAPE.sub(r"\1", phrase).split())
            continue
        if term in _OPERATORS:
            continue
        term = _SUFFIX.sub("", _FIELD_PREFIX.sub("", term.lstrip("+-!")))
        if term in _OPERATORS:
            continue
        word = _ESCAPE.sub(r"\1", term.replace("*", "").replace("?", "")).strip("|&")
        if word:
            words.append(word)
    return " ".join(words) or None


def _at_path(node: object, path: str) -> object:
    for part in path.split("."):
        if isinstance(node, Mapping):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _walk(query: object, out: list[str]) -> None:
    """Collect the texts of one query (a `{type: params}` object, or a list of them) in document order."""
    if isinstance(query, list):
        for item in query:
            _walk(item, out)
        return
    if not isinstance(query, Mapping):
        return
    for kind, params in query.items():
        if not isinstance(params, Mapping):
            continue
        if kind in _FIELD_QUERIES:
            for field, value in params.items():
                if isinstance(value, Mapping):
                    value = value.get("query")
                if isinstance(value, str) and not field.startswith("_"):
                    _add(out, value)
        elif kind in _TEXT_QUERIES:
            value = params.get("query")
            if isinstance(value, str):
                _add(out, value)
        elif kind in _LUCENE_QUERIES:
            value = params.get("query")
            if isinstance(value, str):
                _add(out, clean_lucene(value))
        elif kind in _COMPOUND_KEYS:
            for key in _COMPOUND_KEYS[kind]:
                _walk(params.get(key), out)


def _add(out: list[str], text: str | None) -> None:
    if text is not None and text.strip():
        out.append(_squash(text))


def _squash(text: str) -> str:
    # str.split() splits on every Unicode space (U+3000 included) and never inside CJK text.
    return " ".join(text.split())


def _distinct(texts: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(texts))
