"""Reading hits and cutting the client's page from the reranked window, in Elasticsearch's exact shape."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from ..config import Config
from .plan import NeededFields, SearchPlan


@dataclass(frozen=True, slots=True)
class HitData:
    """What the pipeline reads from one hit: (field, text) pairs, and the raw date and citation values."""

    texts: tuple[tuple[str, str], ...]
    date: object | None  # not plain `object`: mypyc (setup.py) cannot load it as a dataclass annotation
    citations: object | None


class FeatureColumns(NamedTuple):
    """What the blend reads of a window, one list per feature, in the window's order."""

    es_scores: list[float | None]
    dates: list[object]
    citations: list[object]


def hit_data(hit: Mapping[str, object], needed: NeededFields, *, text_chars: int = 0) -> HitData:
    """The needed values of one hit, from `_source` (dotted paths) or else from `fields`.

    With `text_chars` > 0 each text is exact for that many characters only (it may stop a little past
    them): enough for `document_text` cut to as many, without normalising a long text to its end."""
    texts = tuple(_texts(hit, needed.text_fields, text_chars))
    date = field_value(hit, needed.date_field) if needed.date_field else None
    citations = field_value(hit, needed.citations_field) if needed.citations_field else None
    return HitData(texts=texts, date=date, citations=citations)


def _texts(hit: Mapping[str, object], names: Sequence[str], chars: int) -> list[tuple[str, str]]:
    """(field, text) for each field with text, whitespace normalised (see `_text` for `chars`)."""
    texts: list[tuple[str, str]] = []
    for name in names:
        text = _text(field_value(hit, name), chars) if name else ""
        if text:
            texts.append((name, text))
    return texts


def feature_columns(hits: Sequence[Mapping[str, object]], needed: NeededFields) -> FeatureColumns:
    """Each hit's `_score` (None unless a number), date and citation values; texts are not read."""
    es_scores: list[float | None] = []
    for hit in hits:
        score = hit.get("_score")
        if type(score) is not float:
            score = float(score) if isinstance(score, int | float) and not isinstance(score, bool) else None
        es_scores.append(score)
    return FeatureColumns(es_scores, _column(hits, needed.date_field), _column(hits, needed.citations_field))


def _column(hits: Sequence[Mapping[str, object]], name: str) -> list[object]:
    if not name:
        return [None] * len(hits)
    if "." in name:
        return [field_value(hit, name) for hit in hits]
    column: list[object] = []
    for hit in hits:
        # Inlined for the common case, a top-level field in a `_source` dict: a window has a hundred hits.
        source = hit.get("_source")
        found = source.get(name) if type(source) is dict else None
        column.append(field_value(hit, name) if found is None else found)
    return column


def field_value(hit: Mapping[str, object], name: str) -> object:
    """One field of a hit, from `_source` (dotted paths) or else from `fields`; None when absent."""
    source = hit.get("_source")
    if type(source) is dict and "." not in name:  # the common case: a top-level field, no path to walk
        found = source.get(name)
    elif isinstance(source, Mapping):
        found = _source_value(source, name.split(".")) if "." in name else source.get(name)
    else:
        found = None
    if found is None:
        fields = hit.get("fields")
        if isinstance(fields, Mapping):
            found = fields.get(name)
    return found


def _source_value(node: object, parts: Sequence[str]) -> object:
    # `_source` may hold `{"a": {"b": 1}}`, `{"a.b": 1}` or a list of objects under `a`.
    if not parts:
        return node
    if isinstance(node, list):
        values: list[object] = []
        for item in node:
            found = _source_value(item, parts)
            if isinstance(found, list):
                values.extend(found)
            elif found is not None:
                values.append(found)
        return values or None
    if not isinstance(node, Mapping):
        return None
    for cut in range(len(parts), 0, -1):
        key = ".".join(parts[:cut])
        if key in node and (child := _source_value(node[key], parts[cut:])) is not None:
            return child
    return None


def _text(value: object, chars: int = 0) -> str:
    # Whitespace runs become one space. With `chars` > 0 the result is a prefix of the full one, at least
    # `chars` long or else whole: the normalised head of a string is always a prefix of the whole's.
    if isinstance(value, str):
        cut = chars + chars // 8 + 8 if chars > 0 else 0  # a little over: a clean text needs one pass
        while 0 < cut < len(value):
            head = _squeezed(value[:cut])
            if len(head) >= chars:
                return head
            cut *= 2  # whitespace runs shrank the head below `chars`: take more of the string
        return _squeezed(value)
    if isinstance(value, list):
        texts: list[str] = []
        size = 0
        for item in value:
            text = _text(item, chars)
            if text:
                texts.append(text)
                size += len(text) + 1
                if 0 < chars < size:
                    break  # what follows lies past `chars`
        return " ".join(texts)
    return ""


# The regex engine finds a literal two-space run in half the time of `"  " in text`.
_DOUBLE_SPACE = re.compile("  ")


def _squeezed(text: str) -> str:
    """`" ".join(text.split())`: every whitespace run one space, none at either end."""
    # Most stored text is clean already. For ASCII text that is told by a few scans in C (the whitespace
    # `split` knows in ASCII is these characters and the space), where splitting a 1.4 KB abstract into
    # its 200 words and joining them took three times as long.
    if text.isascii() and not (
        _DOUBLE_SPACE.search(text)
        or text[:1] == " "
        or text[-1:] == " "
        or "\n" in text
        or "\t" in text
        or "\r" in text
        or "\x0b" in text
        or "\x0c" in text
        or "\x1c" in text
        or "\x1d" in text
        or "\x1e" in text
        or "\x1f" in text
    ):
        return text
    return " ".join(text.split())


def document_text(data: HitData, max_chars: int, *, labelled: bool = True) -> str:
    """`Title: ...\\nAbstract: ...` (or the values alone, space-joined), cut to `max_chars` code points
    (never leaving a lone surrogate)."""
    return _joined(data.texts, max_chars, labelled)


def model_text(hit: Mapping[str, object], texts: NeededFields, config: Config) -> str:
    """What the model reads of one hit; the pipeline and the warm-up share it, so warmed vectors are found."""
    max_chars = config.rerank.max_doc_chars
    # document_text(hit_data(...)) without the HitData: this runs for every candidate of every search.
    pairs = _texts(hit, texts.text_fields, max_chars)
    return _joined(pairs, max_chars, config.reranker.labels_documents)


# chr(), not "\ud800" literals: mypyc (setup.py) cannot compile surrogates in string literals.
_HIGH_SURROGATES = (chr(0xD800), chr(0xDBFF))


def _joined(texts: Sequence[tuple[str, str]], max_chars: int, labelled: bool) -> str:
    if labelled:
        joined = "\n".join([f"{_label(name)}: {text}" for name, text in texts])
    else:
        joined = " ".join([text for _, text in texts])
    text = joined[: max(0, max_chars)]
    if text and _HIGH_SURROGATES[0] <= text[-1] <= _HIGH_SURROGATES[1]:
        text = text[:-1]
    return text


@functools.lru_cache(maxsize=256)  # field names come from the config: a handful
def _label(name: str) -> str:
    label = name.replace("_", " ").replace(".", " ").strip()
    return label[:1].upper() + label[1:]


def build_page(
    es_response: dict[str, object],
    order: Sequence[int],
    scores: Sequence[float],
    plan: SearchPlan,
    explanations: Sequence[Mapping[str, object]] | None,
) -> dict[str, object]:
    """The client's page cut from the reordered window, in ES's exact shape; the input is not modified.

    Raises ValueError when the response has no `hits.hits` list (the caller then answers ES's own order).
    """
    hits = es_response.get("hits")
    window = hits.get("hits") if isinstance(hits, dict) else None
    if not isinstance(hits, dict) or not isinstance(window, list):
        raise ValueError("Elasticsearch response has no hits.hits list")
    stop = min(plan.client_from + plan.client_size, len(order))
    page: list[object] = []
    for position in range(plan.client_from, stop):
        original = window[order[position]]
        if not isinstance(original, dict):
            raise ValueError(f"hit {order[position]} is not an object")
        hit = dict(original)
        hit["_score"] = scores[position]
        _strip_fields(hit, plan.added_fields)
        if explanations is not None:
            hit["_rerank"] = dict(explanations[order[position]])
        page.append(hit)
    new_hits = dict(hits)
    new_hits["hits"] = page
    if order and new_hits.get("max_score") is not None:
        new_hits["max_score"] = max(scores)  # scores[0] unless the order is interleaved
    response = dict(es_response)
    response["hits"] = new_hits
    return response


def _strip_fields(hit: dict[str, object], added: Sequence[str]) -> None:
    fields = hit.get("fields")
    if not added or not isinstance(fields, dict) or not any(name in fields for name in added):
        return
    kept = {name: value for name, value in fields.items() if name not in added}
    if kept:
        hit["fields"] = kept
    else:
        del hit["fields"]  # ES leaves `fields` out of a hit that has none
