"""search.blend's fast column path against the blend written out hit by hit, as its docstring defines it.

The reference below is the straightforward version (one hit at a time, dates through `parse_date` and
`timedelta.total_seconds`, a sort by `-prior`): order, shown scores and every component must be equal,
not merely close, so no tie can break differently.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from es_rerank_proxy.config import BlendConfig, BlendWeights, CitationsConfig, RecencyConfig
from es_rerank_proxy.search.blend import (
    HitFeatures,
    parse_count,
    parse_date,
    plan_prior,
    prior_from_columns,
    rank,
)

UTC = timezone.utc
NOW = datetime(2025, 1, 1, 12, 30, tzinfo=UTC)

Row = tuple[int, float | None, float | None, float, float, float, float, float | None]


def reference_blend(
    hits: Sequence[HitFeatures],
    scores: Mapping[int, float] | None,
    blend: BlendConfig,
    top_n: int,
    now: datetime,
) -> tuple[list[int], list[float], list[Row], list[int]]:
    """Order, shown scores, components and candidates, computed one hit at a time."""
    weights = blend.weights
    bm25 = _reference_min_max([hit.es_score for hit in hits])
    aware_now = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
    rows: list[Row] = []
    for index, hit in enumerate(hits):
        when = parse_date(hit.date)
        if when is None:
            recency = blend.recency.missing
        else:
            age_days = (aware_now - when).total_seconds() / 86_400.0
            recency = 1.0 if age_days <= 0 else 0.5 ** (age_days / blend.recency.half_life_days)
        count = parse_count(hit.citations)
        citations = (
            0.0 if count is None else min(1.0, math.log1p(count) / math.log1p(blend.citations.saturation))
        )
        prior = bm25[index] * weights.bm25 + recency * weights.recency + citations * weights.citations
        rows.append((index, hit.es_score, None, bm25[index], recency, citations, prior, None))
    if weights.recency == 0 and weights.citations == 0:
        prior_order = list(range(len(rows)))
    else:
        prior_order = sorted(range(len(rows)), key=lambda i: -rows[i][6])
    candidates = prior_order[:top_n] if weights.rerank > 0 and top_n > 0 else []
    answered: dict[int, float] = {}
    for index in candidates:
        score = (scores or {}).get(index)
        if score is not None and math.isfinite(score):
            answered[index] = min(1.0, max(0.0, score))
    if blend.normalise_rerank:
        answered = dict(zip(answered, _reference_min_max(list(answered.values())), strict=True))
    for index, value in answered.items():
        row = rows[index]
        rows[index] = (*row[:2], value, *row[3:7], row[6] + value * weights.rerank)
    scored = sorted(answered, key=lambda i: (-(rows[i][7] or 0.0), prior_order.index(i)))
    order = scored + [i for i in prior_order if i not in answered]
    shown: list[float] = []
    for index in order:
        final = rows[index][7]
        value = rows[index][6] if final is None else final
        shown.append(min(value, shown[-1]) if shown else value)
    return order, shown, rows, candidates


def _reference_min_max(values: Sequence[float | None]) -> list[float]:
    clean = [v if v is not None and math.isfinite(v) else 0.0 for v in values]
    if not clean:
        return []
    low, high = min(clean), max(clean)
    if high <= low:
        return [1.0] * len(clean)
    if not math.isfinite(high - low):
        clean, low, high = [v / 2 for v in clean], low / 2, high / 2
    return [min(1.0, max(0.0, (v - low) / (high - low))) for v in clean]


_date_values = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(["2020", "2024-05", "2024-12-31T23:59:59Z", "2024-02-30", "garbage", "2999-01-01", ""]),
    st.integers(min_value=-(10**14), max_value=10**14),
    st.floats(allow_nan=True, allow_infinity=True),
    st.dates().map(date.isoformat),
    st.datetimes(timezones=st.sampled_from([UTC, timezone.max, timezone.min])).map(lambda d: d.isoformat()),
    st.datetimes(),
    st.dates(),
    st.lists(st.dates().map(date.isoformat), max_size=2),
)
_count_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**12),
    st.floats(),
    st.sampled_from(["12", " 7 ", "-1", "1e3", "nan", "x"]),
    st.lists(st.integers(0, 100), max_size=2),
)
_hits = st.lists(
    st.builds(
        HitFeatures,
        es_score=st.one_of(st.none(), st.floats(), st.sampled_from([1.0, 2.0, 2.0, 3.0])),
        date=_date_values,
        citations=_count_values,
    ),
    max_size=40,
)
_weight = st.one_of(st.just(0.0), st.floats(min_value=0, max_value=3))
_blends = st.builds(
    BlendConfig,
    weights=st.builds(BlendWeights, rerank=_weight, bm25=_weight, recency=_weight, citations=_weight),
    recency=st.builds(
        RecencyConfig,
        half_life_days=st.floats(min_value=0.001, max_value=1e5),
        missing=st.floats(min_value=0, max_value=1),
    ),
    citations=st.builds(CitationsConfig, saturation=st.floats(min_value=0.001, max_value=1e6)),
    normalise_rerank=st.booleans(),
)


@settings(max_examples=400, deadline=None)
@given(st.data(), _hits, _blends, st.integers(0, 45), st.sampled_from([NOW, NOW.replace(tzinfo=None)]))
def test_column_blend_equals_the_hit_by_hit_definition(
    data: st.DataObject, hits: list[HitFeatures], blend: BlendConfig, top_n: int, now: datetime
) -> None:
    prior = plan_prior(hits, blend, top_n, now)
    # A few fixed scores as well: equal `final`s must break their tie by prior order, as defined.
    model_scores = st.floats(0, 1) | st.sampled_from([0.0, 0.5, 1.0])
    scores = {i: data.draw(model_scores) for i in prior.candidates if data.draw(st.booleans())}
    ranking = rank(prior, scores, blend)
    order, shown, rows, candidates = reference_blend(hits, scores, blend, top_n, now)
    assert list(prior.candidates) == candidates
    assert list(ranking.order) == order
    assert list(ranking.scores) == shown
    assert [tuple(c) for c in ranking.components] == rows


@pytest.mark.parametrize(
    ("es_scores", "dates", "citations"),
    [
        ([], [], []),
        ([3.0, None, 1.0], ["2024-01-02", None, [1700000000000]], [10, "5", None]),
        ([1.0, 1.0], ["2024-06-01T10:00:00+08:00", "2024-06-01"], [0, 10**6]),
    ],
)
def test_prior_from_columns_is_plan_prior_of_the_same_hits(
    es_scores: list[float | None], dates: list[object], citations: list[object]
) -> None:
    blend = BlendConfig(weights=BlendWeights(rerank=0.7, bm25=0.1, recency=0.1, citations=0.1))
    hits = [HitFeatures(s, d, c) for s, d, c in zip(es_scores, dates, citations, strict=True)]
    assert prior_from_columns(es_scores, dates, citations, blend, 2, NOW) == plan_prior(hits, blend, 2, NOW)
