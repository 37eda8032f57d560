"""Blend Elasticsearch's score, recency, citations and the reranker's relevance into one order.

Every hit of the recall window gets components in [0, 1]:

    bm25      = (s - min(s)) / (max(s) - min(s)) over the window's `_score`s (None counts as 0;
                every hit gets 1.0 when all scores are equal)
    recency   = 0.5 ** (age_days / recency.half_life_days)   (future dates: 1.0; no date: recency.missing)
    citations = min(1, log1p(count) / log1p(citations.saturation))   (no usable count: 0)
    rerank    = the model's relevance probability (only for the candidates it scored); with
                blend.normalise_rerank, min-max normalised over those candidates (for scores that are
                not calibrated probabilities, such as embedding cosines); with blend.rerank_range
                [low, high], (score - low) / (high - low) clipped to [0, 1] instead

and two weighted sums (weights as configured, not divided by their total):

    prior = w.bm25 * bm25 + w.recency * recency + w.citations * citations
    final = prior + w.rerank * rerank

The `top_n` hits by prior are the candidates sent to the model. Scored candidates come first by
`final`; every other hit follows by `prior`. With recency and citation weights 0 the prior order is
Elasticsearch's own order.
"""

from __future__ import annotations

import functools
import math
import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from itertools import repeat
from typing import NamedTuple

from ..config import BlendConfig, BlendWeights, CitationsConfig, RecencyConfig

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_SECONDS_PER_DAY = 86_400.0
_MICROSECOND = timedelta(microseconds=1)
# Builds a named tuple from a row in C: `Components._make` adds a Python call per hit.
_new_tuple = tuple.__new__
# Distinct date strings remembered as epoch microseconds: the same documents recur from search to search.
_DATE_CACHE_SIZE = 4096
# Elasticsearch's default date format, strict_date_optional_time: every part after the year is optional.
_ISO_DATE = re.compile(
    r"(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:[T ](?P<hour>\d{2})(?::(?P<minute>\d{2})(?::(?P<second>\d{2})(?:[.,](?P<fraction>\d{1,9}))?)?)?"
    r"(?P<tz>Z|z|[+-]\d{2}(?::?\d{2})?)?)?)?)?"
)


@dataclass(frozen=True, slots=True)
class HitFeatures:
    """What blending needs from one hit: its `_score`, date value and citation value as found."""

    es_score: float | None
    date: object | None  # not plain `object`: mypyc (setup.py) cannot load it as a dataclass annotation
    citations: object | None


class Components(NamedTuple):
    """One hit's score components; `rerank` and `final` are None until the model has scored it.

    A named tuple: a window's hundred are built per search, at a third of a frozen dataclass's cost."""

    es_rank: int
    es_score: float | None
    rerank: float | None
    bm25: float
    recency: float
    citations: float
    prior: float
    final: float | None

    def as_explanation(self) -> dict[str, float | int | None]:
        """The `_rerank` explanation object shown on a hit."""
        return {
            "es_rank": self.es_rank,
            "es_score": self.es_score,
            "rerank": self.rerank,
            "bm25": self.bm25,
            "recency": self.recency,
            "citations": self.citations,
            "prior": self.prior,
            "final": self.final,
        }


@dataclass(frozen=True, slots=True)
class Prior:
    """Components per hit in Elasticsearch order, and the window indices to send to the model."""

    components: tuple[Components, ...]
    candidates: tuple[int, ...]

    def __init__(self, components: tuple[Components, ...], candidates: tuple[int, ...]) -> None:
        # Written out: mypyc compiles this one, not the one @dataclass generates (tests/test_inits.py).
        object.__setattr__(self, "components", components)
        object.__setattr__(self, "candidates", candidates)


@dataclass(frozen=True, slots=True)
class Ranking:
    """Window indices in final order, the `_score` to show per position, and components per window index."""

    order: tuple[int, ...]
    scores: tuple[float, ...]
    components: tuple[Components, ...]

    def __init__(
        self,
        order: tuple[int, ...],
        scores: tuple[float, ...],
        components: tuple[Components, ...],
    ) -> None:
        # Written out: mypyc compiles this one, not the one @dataclass generates (tests/test_inits.py).
        object.__setattr__(self, "order", order)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "components", components)


def needs_model(blend: BlendConfig) -> bool:
    """Whether the reranker's score counts at all; with weight 0 the model is never called."""
    return blend.weights.rerank > 0


def plan_prior(hits: Sequence[HitFeatures], blend: BlendConfig, top_n: int, now: datetime) -> Prior:
    """Score every hit without the model and pick the `top_n` candidates by prior."""
    return prior_from_columns(
        [hit.es_score for hit in hits],
        [hit.date for hit in hits],
        [hit.citations for hit in hits],
        blend,
        top_n,
        now,
    )


def prior_from_columns(
    es_scores: Sequence[float | None],
    dates: Sequence[object],
    citations: Sequence[object],
    blend: BlendConfig,
    top_n: int,
    now: datetime,
) -> Prior:
    """`plan_prior` from the window's `_score`s, date values and citation values, one list each."""
    weights = blend.weights
    bm25 = _normalise_scores(es_scores)
    recency = _recency_column(dates, blend.recency, now)
    citation = _citation_column(citations, blend.citations)
    w_bm25, w_recency, w_citations = weights.bm25, weights.recency, weights.citations
    priors = [
        b * w_bm25 + r * w_recency + c * w_citations for b, r, c in zip(bm25, recency, citation, strict=True)
    ]
    size = len(priors)
    nothing = [None] * size
    rows = zip(range(size), es_scores, nothing, bm25, recency, citation, priors, nothing, strict=True)
    components = tuple(map(_new_tuple, repeat(Components, size), rows))
    if not needs_model(blend) or top_n <= 0:
        return Prior(components=components, candidates=())
    return Prior(components=components, candidates=tuple(_prior_order(priors, weights)[:top_n]))


def rank(prior: Prior, rerank_scores: Mapping[int, float] | None, blend: BlendConfig) -> Ranking:
    """Final order: scored candidates by `final`, then every other hit by prior; display scores never rise."""
    weights = blend.weights
    components = list(prior.components)
    shown = [c.prior for c in components]  # the prior, or `final` once the model has scored the hit
    prior_order = _prior_order(shown, weights)
    given = rerank_scores or {}
    answered: dict[int, float] = {}
    for index in prior.candidates:
        score = given.get(index)
        if score is None or not math.isfinite(score) or not 0 <= index < len(components) or index in answered:
            continue  # a candidate the model did not answer for is ranked as if never sent
        answered[index] = min(1.0, max(0.0, float(score)))
    if blend.normalise_rerank:
        answered = dict(zip(answered, _normalise_scores(list(answered.values())), strict=True))
    elif blend.rerank_range:
        low, high = blend.rerank_range
        answered = {index: min(1.0, max(0.0, (s - low) / (high - low))) for index, s in answered.items()}
    w_rerank = weights.rerank
    for index, rerank_value in answered.items():
        es_rank, es_score, _, bm25, recency, citations, prior_value, _ = components[index]
        final = prior_value + rerank_value * w_rerank
        components[index] = Components(
            es_rank, es_score, rerank_value, bm25, recency, citations, prior_value, final
        )
        shown[index] = final
    if answered:
        # Listed in prior order, then sorted stably (a reversed sort is stable too): ties of `final` keep
        # their prior order.
        scored = [index for index in prior_order if index in answered]
        scored.sort(key=shown.__getitem__, reverse=True)
        order = scored + [index for index in prior_order if index not in answered]
    else:
        order = prior_order
    scores = [shown[index] for index in order]
    for position in range(1, len(scores)):
        # min(value, previous), spelt out: `min` is a call per hit.
        previous = scores[position - 1]
        if previous < scores[position]:
            scores[position] = previous
    return Ranking(order=tuple(order), scores=tuple(scores), components=tuple(components))


def recency_score(value: object, recency: RecencyConfig, now: datetime) -> float:
    """0.5 ** (age_days / half_life_days); future dates count as age 0, unusable dates as `missing`."""
    return _recency_column((value,), recency, now)[0]


def citation_score(value: object, citations: CitationsConfig) -> float:
    """min(1, log1p(count) / log1p(saturation)); no usable count scores 0."""
    return _citation_column((value,), citations)[0]


def _recency_column(values: Sequence[object], recency: RecencyConfig, now: datetime) -> list[float]:
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    # Whole microseconds, as `(now - when).total_seconds()` counts them: the same float, bit for bit.
    now_micros = _epoch_micros(now)
    half_life, missing = recency.half_life_days, recency.missing
    seconds_per_day, text_micros = _SECONDS_PER_DAY, _text_date_micros
    # int / int rounded once, as `total_seconds` does. Written `/`, the compiled build (setup.py) makes
    # floats of both ints first, which is a bit off for ages past 2**53 µs (104 years: old books).
    divide = operator.truediv
    scores: list[float] = []
    for value in values:
        when = text_micros(value) if type(value) is str else _date_micros(value)
        if when is None:
            scores.append(missing)
            continue
        age_days = divide(now_micros - when, 1_000_000) / seconds_per_day
        scores.append(1.0 if age_days <= 0 else 0.5 ** (age_days / half_life))
    return scores


def _citation_column(values: Sequence[object], citations: CitationsConfig) -> list[float]:
    log1p = math.log1p
    log_saturation = log1p(citations.saturation)
    scores: list[float] = []
    for value in values:
        # A plain non-negative int is the common case; anything else takes parse_count's checks.
        count = float(value) if type(value) is int and value >= 0 else parse_count(value)
        if count is None:
            scores.append(0.0)
        else:
            share = log1p(count) / log_saturation
            scores.append(share if share < 1.0 else 1.0)  # min(1.0, share), without a call per hit
    return scores


def _date_micros(value: object) -> int | None:
    value = _single(value)
    if isinstance(value, str):
        return _text_date_micros(value)
    when = parse_date(value)
    return None if when is None else _epoch_micros(when)


@functools.lru_cache(maxsize=_DATE_CACHE_SIZE)
def _text_date_micros(text: str) -> int | None:
    when = parse_date(text)
    return None if when is None else _epoch_micros(when)


def _epoch_micros(when: datetime) -> int:
    return (when - _EPOCH) // _MICROSECOND


def parse_date(value: object) -> datetime | None:
    """An aware UTC datetime from a date as Elasticsearch returns it (ISO, year, epoch millis), or None."""
    value = _single(value)
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    if isinstance(value, int | float):
        return _from_epoch_millis(float(value))
    if not isinstance(value, str):
        return None
    text = value.strip()
    if len(text) == 10 and text[4] == "-" and text[7] == "-" and text.isascii():
        # The common plain date, parsed in C: the regex below cost a tenth of a search's own time.
        return _from_plain_date(text)
    match = _ISO_DATE.fullmatch(text)
    if match is not None:
        return _from_iso_match(match)
    # Elasticsearch's default format falls back to epoch_millis, so "1577836800000" is a date too.
    number = _parse_number(text)
    return None if number is None else _from_epoch_millis(number)


def parse_count(value: object) -> float | None:
    """A citation count from a number, numeric string or one-element list; None if unusable or negative."""
    value = _single(value)
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number: float | None = float(value)
    elif isinstance(value, str):
        number = _parse_number(value.strip())
    else:
        return None
    if number is None or not math.isfinite(number) or number < 0:
        return None
    return number


def _single(value: object) -> object:
    # The `fields` API wraps every value in a list; several values are ambiguous, so they count as missing.
    if isinstance(value, list | tuple):
        return value[0] if len(value) == 1 else None
    return value


def _parse_number(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _from_epoch_millis(millis: float) -> datetime | None:
    if not math.isfinite(millis):
        return None
    try:
        return _EPOCH + timedelta(milliseconds=millis)
    except OverflowError:
        return None


def _from_plain_date(text: str) -> datetime | None:
    if not (text[:4].isdigit() and text[5:7].isdigit() and text[8:].isdigit()):
        match = _ISO_DATE.fullmatch(text)
        return None if match is None else _from_iso_match(match)
    try:
        day = date.fromisoformat(text)
    except ValueError:
        return None
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)


def _from_iso_match(match: re.Match[str]) -> datetime | None:
    parts = match.groupdict()
    fraction = (parts["fraction"] or "").ljust(6, "0")[:6]
    try:
        when = datetime(
            int(parts["year"]),
            int(parts["month"] or 1),
            int(parts["day"] or 1),
            int(parts["hour"] or 0),
            int(parts["minute"] or 0),
            int(parts["second"] or 0),
            int(fraction),
            tzinfo=_zone(parts["tz"]),
        )
        return when.astimezone(timezone.utc)
    except (ValueError, OverflowError):
        return None


def _zone(text: str | None) -> timezone:
    if text is None or text in ("Z", "z"):
        return timezone.utc
    digits = text[1:].replace(":", "")
    if int(digits[2:] or 0) >= 60:
        raise ValueError(f"bad offset minutes in {text!r}")
    minutes = int(digits[:2]) * 60 + int(digits[2:] or 0)
    # timezone() rejects offsets of 24h or more with ValueError, which the caller turns into None.
    return timezone(timedelta(minutes=-minutes if text[0] == "-" else minutes))


def _normalise_scores(scores: Sequence[float | None]) -> list[float]:
    values = [s if s is not None and math.isfinite(s) else 0.0 for s in scores]
    if not values:
        return []
    low, high = min(values), max(values)
    if high <= low:
        return [1.0] * len(values)
    if not math.isfinite(high - low):
        # Halving keeps scores near the float limits from overflowing the span into inf / inf.
        values, low, high = [v / 2 for v in values], low / 2, high / 2
    span = high - low
    # No clipping needed: rounding is monotone, so low <= v <= high keeps (v - low) / span in [0, 1].
    return [(v - low) / span for v in values]


def _prior_order(priors: Sequence[float], weights: BlendWeights) -> list[int]:
    if weights.recency == 0 and weights.citations == 0:
        # Only BM25 counts, and Elasticsearch has already ordered by it (ties, sorts and all).
        return list(range(len(priors)))
    # Highest first; a reversed sort is still stable, so ties keep Elasticsearch's order.
    return sorted(range(len(priors)), key=priors.__getitem__, reverse=True)
