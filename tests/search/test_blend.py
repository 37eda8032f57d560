from __future__ import annotations

import itertools
import math
from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from es_rerank_proxy.config import BlendConfig, BlendWeights, CitationsConfig, RecencyConfig
from es_rerank_proxy.search.blend import (
    Components,
    HitFeatures,
    Prior,
    Ranking,
    citation_score,
    needs_model,
    parse_count,
    parse_date,
    plan_prior,
    rank,
    recency_score,
)

UTC = timezone.utc
NOW = datetime(2025, 1, 1, tzinfo=UTC)


def blend_config(
    rerank: float = 0.7,
    bm25: float = 0.1,
    recency: float = 0.1,
    citations: float = 0.1,
    half_life_days: float = 365.0,
    missing: float = 0.0,
    saturation: float = 1000.0,
) -> BlendConfig:
    return BlendConfig(
        weights=BlendWeights(rerank=rerank, bm25=bm25, recency=recency, citations=citations),
        recency=RecencyConfig(half_life_days=half_life_days, missing=missing),
        citations=CitationsConfig(saturation=saturation),
    )


def hits_with(
    scores: list[float | None] | None = None,
    dates: list[object] | None = None,
    counts: list[object] | None = None,
) -> list[HitFeatures]:
    size = len(scores or dates or counts or [])
    return [
        HitFeatures(
            es_score=scores[i] if scores is not None else 1.0,
            date=dates[i] if dates is not None else None,
            citations=counts[i] if counts is not None else None,
        )
        for i in range(size)
    ]


def millis(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def assert_non_increasing(scores: tuple[float, ...]) -> None:
    assert all(a >= b for a, b in itertools.pairwise(scores)), scores


# --- components -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scores", "expected"),
    [
        ([10.0, 5.0, 0.0], [1.0, 0.5, 0.0]),
        ([8.0, 6.0, 4.0, 2.0], [1.0, 2 / 3, 1 / 3, 0.0]),
        ([-1.0, 1.0], [0.0, 1.0]),
        ([4.0, None, 2.0], [1.0, 0.0, 0.5]),
        ([3.0, 3.0, 3.0], [1.0, 1.0, 1.0]),
        ([7.5], [1.0]),
        ([None, None], [1.0, 1.0]),
        ([0.0, None], [1.0, 1.0]),
        ([float("nan"), 2.0], [0.0, 1.0]),
        ([1e308, -1e308, 0.0], [1.0, 0.0, 0.5]),
        ([], []),
    ],
)
def test_bm25_is_min_max_normalised_over_the_window(
    scores: list[float | None], expected: list[float]
) -> None:
    prior = plan_prior(hits_with(scores=scores), blend_config(), 10, NOW)
    assert [c.bm25 for c in prior.components] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-01-02", 0.5),  # exactly one half-life (365 days) before NOW
        ("2024-01-02T00:00:00Z", 0.5),
        ("2024-01-02T02:00:00+02:00", 0.5),
        ("2023-01-02", 0.25),  # two half-lives
        ("2025-01-01", 1.0),  # age 0
        ("2025-01-01T00:00:00Z", 1.0),
        ("2030-06-01", 1.0),  # future dates clamp to age 0
        (millis(datetime(2024, 1, 2, tzinfo=UTC)), 0.5),
        ([str(millis(datetime(2024, 1, 2, tzinfo=UTC)))], 0.5),
        ("2024-07-02T12:00:00Z", 0.5 ** (182.5 / 365)),
        (None, 0.3),  # missing -> recency.missing
        ("not a date", 0.3),
        ("2024-02-30", 0.3),
        ([], 0.3),
        (["2024-01-02", "2020-01-01"], 0.3),
    ],
)
def test_recency_halves_every_half_life(value: object, expected: float) -> None:
    recency = RecencyConfig(half_life_days=365.0, missing=0.3)
    assert recency_score(value, recency, NOW) == pytest.approx(expected)


def test_recency_treats_naive_now_as_utc() -> None:
    recency = RecencyConfig(half_life_days=1.0)
    assert recency_score("2024-12-31T00:00:00Z", recency, NOW.replace(tzinfo=None)) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2020-01-01", datetime(2020, 1, 1, tzinfo=UTC)),
        ("2020-01-01T10:00:00Z", datetime(2020, 1, 1, 10, tzinfo=UTC)),
        ("2020-01-01T10:00:00.000Z", datetime(2020, 1, 1, 10, tzinfo=UTC)),
        ("2020-01-01T10:00:00.123Z", datetime(2020, 1, 1, 10, 0, 0, 123000, tzinfo=UTC)),
        ("2020-01-01T10:00:00.123456789Z", datetime(2020, 1, 1, 10, 0, 0, 123456, tzinfo=UTC)),
        ("2020-01-01T10:00:00+02:00", datetime(2020, 1, 1, 8, tzinfo=UTC)),
        ("2020-01-01T10:00:00-0530", datetime(2020, 1, 1, 15, 30, tzinfo=UTC)),
        ("2020-01-01T01:00:00+02", datetime(2019, 12, 31, 23, tzinfo=UTC)),
        ("2020-01-01T10:00:00", datetime(2020, 1, 1, 10, tzinfo=UTC)),  # naive is UTC
        ("2020-01-01T10:30", datetime(2020, 1, 1, 10, 30, tzinfo=UTC)),
        ("2020-01-01 10:30:00", datetime(2020, 1, 1, 10, 30, tzinfo=UTC)),
        ("2020", datetime(2020, 1, 1, tzinfo=UTC)),
        ("2020-05", datetime(2020, 5, 1, tzinfo=UTC)),
        (" 2020-05 ", datetime(2020, 5, 1, tzinfo=UTC)),
        (1577836800000, datetime(2020, 1, 1, tzinfo=UTC)),
        (1577836800000.0, datetime(2020, 1, 1, tzinfo=UTC)),
        (1577836800500.0, datetime(2020, 1, 1, 0, 0, 0, 500000, tzinfo=UTC)),
        ("1577836800000", datetime(2020, 1, 1, tzinfo=UTC)),
        (-86_400_000, datetime(1969, 12, 31, tzinfo=UTC)),
        (0, datetime(1970, 1, 1, tzinfo=UTC)),
        (["2020-05"], datetime(2020, 5, 1, tzinfo=UTC)),
        ([1577836800000], datetime(2020, 1, 1, tzinfo=UTC)),
        (("2020-01-01T10:00:00Z",), datetime(2020, 1, 1, 10, tzinfo=UTC)),
        (datetime(2020, 1, 1, 10), datetime(2020, 1, 1, 10, tzinfo=UTC)),
        (datetime(2020, 1, 1, 12, tzinfo=timezone(timedelta(hours=2))), datetime(2020, 1, 1, 10, tzinfo=UTC)),
        (date(2020, 1, 1), datetime(2020, 1, 1, tzinfo=UTC)),
    ],
)
def test_parse_date_reads_elasticsearch_formats(value: object, expected: datetime) -> None:
    parsed = parse_date(value)
    assert parsed == expected
    assert parsed is not None and parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "   ",
        "yesterday",
        "2020-13-01",
        "2020-02-30",
        "2020-1-5",
        "0000-01-01",
        "2020-01-01T25:00:00Z",
        "2020-01-01T10:00:00+24:00",
        "2020-01-01T10:00:00+02:99",
        "2020-01-01T10:00:00 UTC",
        "NaN",
        "inf",
        "1e400",
        True,
        float("nan"),
        float("inf"),
        10**20,
        -(10**20),
        [],
        ["2020", "2021"],
        [["2020"]],
        {"date": "2020"},
        b"2020",
    ],
)
def test_parse_date_returns_none_for_garbage(value: object) -> None:
    assert parse_date(value) is None


@pytest.mark.parametrize(
    ("value", "saturation", "expected"),
    [
        (0, 1000.0, 0.0),
        (1000, 1000.0, 1.0),
        (5000, 1000.0, 1.0),
        (9, 99.0, 0.5),  # log1p(9) / log1p(99) = log 10 / log 100
        (9.0, 99.0, 0.5),
        ("9", 99.0, 0.5),
        (" 9.0 ", 99.0, 0.5),
        (["9"], 99.0, 0.5),
        ((9,), 99.0, 0.5),
        ("1000", 1000.0, 1.0),
        ([1000], 1000.0, 1.0),
        (None, 1000.0, 0.0),
        (-5, 1000.0, 0.0),
        ("-5", 1000.0, 0.0),
        ("many", 1000.0, 0.0),
        ("", 1000.0, 0.0),
        (True, 1000.0, 0.0),
        (float("nan"), 1000.0, 0.0),
        (float("inf"), 1000.0, 0.0),
        ([], 1000.0, 0.0),
        ([9, 10], 99.0, 0.0),
        ({"count": 9}, 99.0, 0.0),
    ],
)
def test_citations_saturate_logarithmically(value: object, saturation: float, expected: float) -> None:
    assert citation_score(value, CitationsConfig(saturation=saturation)) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (3, 3.0),
        (2.5, 2.5),
        ("12", 12.0),
        (["7"], 7.0),
        (0, 0.0),
        (-1, None),
        ("x", None),
        (None, None),
        (False, None),
    ],
)
def test_parse_count(value: object, expected: float | None) -> None:
    assert parse_count(value) == expected


# --- candidates -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "hits", "top_n", "expected"),
    [
        # Only BM25 in the prior: the first top_n in Elasticsearch order, even when scores disagree.
        (blend_config(bm25=1, recency=0, citations=0), hits_with(scores=[9, 8, 7, 6]), 2, (0, 1)),
        (blend_config(bm25=1, recency=0, citations=0), hits_with(scores=[1, 5, 3, None]), 3, (0, 1, 2)),
        (blend_config(bm25=0, recency=0, citations=0, rerank=1), hits_with(scores=[1, 2, 3]), 2, (0, 1)),
        # Citations decide; ties keep Elasticsearch order.
        (
            blend_config(bm25=0, recency=0, citations=1),
            hits_with(counts=[0, 100, 10, 1000, 100]),
            3,
            (3, 1, 4),
        ),
        (
            blend_config(bm25=0, recency=1, citations=0),
            hits_with(dates=["2001", "2024-06-01", None, "2020-01-01"]),
            2,
            (1, 3),
        ),
        (blend_config(), hits_with(scores=[3, 2, 1]), 10, (0, 1, 2)),
        (blend_config(), hits_with(scores=[3, 2, 1]), 0, ()),
        (blend_config(), [], 5, ()),
        # No rerank weight: nothing to send to the model.
        (blend_config(rerank=0), hits_with(scores=[3, 2, 1]), 2, ()),
    ],
)
def test_candidates_are_top_n_by_prior(
    config: BlendConfig, hits: list[HitFeatures], top_n: int, expected: tuple[int, ...]
) -> None:
    assert plan_prior(hits, config, top_n, NOW).candidates == expected


@pytest.mark.parametrize(("rerank_weight", "expected"), [(0.0, False), (0.01, True), (1.0, True)])
def test_needs_model_only_with_rerank_weight(rerank_weight: float, expected: bool) -> None:
    assert needs_model(blend_config(rerank=rerank_weight)) is expected


def test_prior_components_are_in_es_order_without_model_values() -> None:
    hits = hits_with(scores=[2.0, None], dates=["2024-01-02", None], counts=[999, "x"])
    prior = plan_prior(hits, blend_config(rerank=1, bm25=0.5, recency=0.25, citations=0.25), 2, NOW)
    first, second = prior.components
    assert (first.es_rank, second.es_rank) == (0, 1)
    assert first.rerank is None and first.final is None
    assert first.prior == pytest.approx(0.5 * 1.0 + 0.25 * 0.5 + 0.25 * math.log1p(999) / math.log1p(1000))
    assert second.prior == 0.0
    assert second.es_score is None


# --- ranking --------------------------------------------------------------------------------------

RERANK_ONLY = blend_config(rerank=1, bm25=0, recency=0, citations=0)


@pytest.mark.parametrize(
    ("scores", "expected_order", "expected_shown"),
    [
        ({0: 0.1, 1: 0.9, 2: 0.5}, (1, 2, 0, 3, 4), (0.9, 0.5, 0.1, 0.0, 0.0)),
        ({0: 0.5, 1: 0.5, 2: 0.7}, (2, 0, 1, 3, 4), (0.7, 0.5, 0.5, 0.0, 0.0)),
        ({0: 0.0, 1: 0.0, 2: 1.0}, (2, 0, 1, 3, 4), (1.0, 0.0, 0.0, 0.0, 0.0)),
        # Partial answers: an unscored candidate falls back to prior order behind the scored ones.
        ({2: 0.3}, (2, 0, 1, 3, 4), (0.3, 0.0, 0.0, 0.0, 0.0)),
        # Out-of-range scores are clamped, NaN counts as unscored, non-candidates are ignored.
        ({0: 2.0, 1: -1.0, 2: float("nan"), 4: 0.9}, (0, 1, 2, 3, 4), (1.0, 0.0, 0.0, 0.0, 0.0)),
    ],
)
def test_rerank_only_weights_order_by_rerank_score(
    scores: dict[int, float], expected_order: tuple[int, ...], expected_shown: tuple[float, ...]
) -> None:
    prior = plan_prior(hits_with(scores=[5, 4, 3, 2, 1]), RERANK_ONLY, 3, NOW)
    ranking = rank(prior, scores, RERANK_ONLY)
    assert ranking.order == expected_order
    assert ranking.scores == pytest.approx(expected_shown)


def test_recency_only_weights_order_by_date() -> None:
    config = blend_config(rerank=0, bm25=0, recency=1, citations=0)
    dates: list[object] = [
        "1999",
        "2024-12-01",
        None,
        "2010-05-05",
        [millis(datetime(2024, 12, 20, tzinfo=UTC))],
    ]
    prior = plan_prior(hits_with(dates=dates), config, 3, NOW)
    ranking = rank(prior, None, config)
    assert ranking.order == (4, 1, 3, 0, 2)
    assert_non_increasing(ranking.scores)


def test_citations_only_weights_order_by_count() -> None:
    config = blend_config(rerank=0, bm25=0, recency=0, citations=1)
    prior = plan_prior(hits_with(counts=[5, "50", None, [500], 5000, 50]), config, 3, NOW)
    ranking = rank(prior, None, config)
    assert ranking.order == (4, 3, 1, 5, 0, 2)
    assert ranking.scores[:2] == pytest.approx((1.0, math.log1p(500) / math.log1p(1000)))


@pytest.mark.parametrize(
    "scores",
    [[9.0, 7.0, 7.0, 1.0], [1.0, 5.0, None, 3.0], [None, None, None], [2.0], []],
)
@pytest.mark.parametrize("rerank_scores", [None, {}])
def test_all_bm25_weights_return_es_order_exactly(
    scores: list[float | None], rerank_scores: dict[int, float] | None
) -> None:
    config = blend_config(rerank=0, bm25=1, recency=0, citations=0)
    prior = plan_prior(hits_with(scores=scores), config, 2, NOW)
    ranking = rank(prior, rerank_scores, config)
    assert ranking.order == tuple(range(len(scores)))
    assert_non_increasing(ranking.scores)


@pytest.mark.parametrize("rerank_scores", [None, {}])
def test_degraded_ranking_is_prior_order(rerank_scores: dict[int, float] | None) -> None:
    config = blend_config(rerank=0.7, bm25=0.1, recency=0.1, citations=0.2)
    hits = hits_with(scores=[3.0, 2.0, 1.0], counts=[0, 0, 1000])
    prior = plan_prior(hits, config, 2, NOW)
    assert prior.candidates == (2, 0)
    ranking = rank(prior, rerank_scores, config)
    assert ranking.order == (2, 0, 1)
    assert ranking.scores == pytest.approx((0.2, 0.1, 0.05))
    assert all(c.final is None and c.rerank is None for c in ranking.components)


def test_partial_scores_cap_the_prior_of_unscored_candidates() -> None:
    config = blend_config(rerank=1, bm25=1, recency=0, citations=0)
    prior = plan_prior(hits_with(scores=[1.0, 0.9, 0.8, 0.0]), config, 2, NOW)
    ranking = rank(prior, {1: 0.0}, config)
    # Hit 0 was sent but not answered: it follows the reranked block and shows at most hit 1's 0.9.
    assert ranking.order == (1, 0, 2, 3)
    assert ranking.scores == pytest.approx((0.9, 0.9, 0.8, 0.0))
    assert ranking.components[0].final is None


def test_unreranked_score_is_capped_by_the_score_above() -> None:
    config = blend_config(rerank=1, bm25=0, recency=0, citations=1)
    prior = plan_prior(hits_with(counts=[1000, 0, 0]), config, 2, NOW)
    assert prior.candidates == (0, 1)
    ranking = rank(prior, {0: 0.0, 1: 0.2}, config)
    # Hit 0 (prior 1.0, final 1.0) leads; hit 1 shows 0.2; hit 2 (prior 0) shows 0.
    assert ranking.order == (0, 1, 2)
    capped = rank(Prior(prior.components, (1, 2)), {1: 0.1, 2: 0.05}, config)
    # Hit 0 was not a candidate: its prior (1.0) is shown no higher than the last reranked final (0.05).
    assert capped.order == (1, 2, 0)
    assert capped.scores == pytest.approx((0.1, 0.05, 0.05))


def test_components_carry_rerank_and_final_for_scored_hits() -> None:
    config = blend_config(rerank=0.5, bm25=0.5, recency=0, citations=0)
    prior = plan_prior(hits_with(scores=[2.0, 1.0, 0.0]), config, 2, NOW)
    ranking = rank(prior, {1: 0.8}, config)
    first, second, third = ranking.components
    assert (first.rerank, first.final) == (None, None)
    assert second.rerank == 0.8
    assert second.final == pytest.approx(0.25 + 0.4)
    assert third.final is None
    assert ranking.order == (1, 0, 2)
    assert ranking.scores == pytest.approx((0.65, 0.5, 0.0))


def test_explanation_has_exactly_the_documented_keys() -> None:
    components = Components(
        es_rank=3, es_score=1.5, rerank=0.9, bm25=0.5, recency=0.25, citations=0.0, prior=0.2, final=0.83
    )
    assert components.as_explanation() == {
        "es_rank": 3,
        "es_score": 1.5,
        "rerank": 0.9,
        "bm25": 0.5,
        "recency": 0.25,
        "citations": 0.0,
        "prior": 0.2,
        "final": 0.83,
    }


# --- invariants -----------------------------------------------------------------------------------

_dates = st.one_of(
    st.none(),
    st.sampled_from(["2020", "2024-05", "2024-12-31T23:59:59Z", "garbage", "2999-01-01"]),
    st.integers(min_value=-(10**13), max_value=10**13),
    st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
)
_counts = st.one_of(st.none(), st.integers(-5, 10**6), st.floats(), st.text(max_size=5))
_hits = st.lists(
    st.builds(HitFeatures, es_score=st.one_of(st.none(), st.floats()), date=_dates, citations=_counts),
    max_size=100,
)
_weight = st.floats(min_value=0, max_value=3)
_configs = st.builds(blend_config, rerank=_weight, bm25=_weight, recency=_weight, citations=_weight)


@st.composite
def _scenarios(draw: st.DrawFn) -> tuple[Prior, Ranking, BlendConfig, int, str]:
    hits = draw(_hits)
    config = draw(_configs)
    top_n = draw(st.integers(min_value=0, max_value=len(hits) + 3))
    prior = plan_prior(hits, config, top_n, NOW)
    kind = draw(st.sampled_from(["all", "partial", "none", "degraded"]))
    probability = st.floats(min_value=0, max_value=1)
    scores: dict[int, float] | None
    if kind == "all":
        scores = {i: draw(probability) for i in prior.candidates}
    elif kind == "partial":
        scores = {i: draw(probability) for i in prior.candidates if draw(st.booleans())}
    else:
        scores = None if kind == "degraded" else {}
    return prior, rank(prior, scores, config), config, top_n, kind


@settings(max_examples=300, deadline=None)
@given(_scenarios())
def test_ranking_invariants(scenario: tuple[Prior, Ranking, BlendConfig, int, str]) -> None:
    prior, ranking, config, top_n, kind = scenario
    size = len(prior.components)
    assert sorted(ranking.order) == list(range(size))
    assert len(ranking.scores) == size == len(ranking.components)
    assert all(math.isfinite(s) for s in ranking.scores)
    assert_non_increasing(ranking.scores)
    assert [c.es_rank for c in ranking.components] == list(range(size))
    assert len(prior.candidates) == (min(top_n, size) if needs_model(config) else 0)
    for c in ranking.components:
        assert all(0.0 <= v <= 1.0 for v in (c.bm25, c.recency, c.citations))
    if kind == "all":
        assert set(ranking.order[: len(prior.candidates)]) == set(prior.candidates)
    if kind in ("none", "degraded"):
        assert all(c.final is None for c in ranking.components)


def test_normalise_rerank_spreads_uncalibrated_scores_over_zero_to_one() -> None:
    """Embedding cosines bunch near 0.9: min-max lets them outweigh a BM25 difference as intended."""
    hits = [HitFeatures(es_score=s, date=None, citations=None) for s in (10.0, 9.0, 1.0)]
    weights = BlendWeights(rerank=0.7, bm25=0.3, recency=0.0, citations=0.0)
    raw = BlendConfig(weights=weights)
    normalised = BlendConfig(weights=weights, normalise_rerank=True)
    scores = {0: 0.90, 1: 0.92, 2: 0.91}
    prior = plan_prior(hits, raw, 3, NOW)
    assert rank(prior, scores, raw).order == (0, 1, 2), "raw: BM25's spread dominates"
    ranked = rank(plan_prior(hits, normalised, 3, NOW), scores, normalised)
    assert ranked.order == (1, 2, 0), "0.7 x 0.5 for hit 2 now beats 0.3 x 1.0 of BM25 for hit 0"
    assert [ranked.components[i].rerank for i in (0, 1, 2)] == pytest.approx([0.0, 1.0, 0.5])


@pytest.mark.parametrize(
    ("scores", "expected_rerank", "expected_order"),
    [
        # All three cosines sit low in e5's range: BM25's order stands, where min-max would overturn it.
        ({0: 0.880, 1: 0.881, 2: 0.882}, [0.05, 0.06, 0.07], (0, 1, 2)),
        # One clearly closer passage rises past a BM25 lead.
        ({0: 0.880, 1: 0.960, 2: 0.882}, [0.05, 0.85, 0.07], (1, 0, 2)),
        # Scores outside the range are clipped to 0 and 1, never past them.
        ({0: 0.500, 1: 0.999, 2: 0.900}, [0.0, 1.0, 0.25], (1, 2, 0)),
    ],
)
def test_rerank_range_maps_model_scores_on_a_fixed_scale(
    scores: dict[int, float], expected_rerank: list[float], expected_order: tuple[int, ...]
) -> None:
    hits = [HitFeatures(es_score=s, date=None, citations=None) for s in (10.0, 9.0, 1.0)]
    config = BlendConfig(
        weights=BlendWeights(rerank=0.85, bm25=0.15, recency=0.0, citations=0.0), rerank_range=(0.875, 0.975)
    )
    ranked = rank(plan_prior(hits, config, 3, NOW), scores, config)
    assert [ranked.components[i].rerank for i in (0, 1, 2)] == pytest.approx(expected_rerank)
    assert ranked.order == expected_order


_DATE_CHARS = st.sampled_from("0123456789-١٢x ")


@given(
    st.one_of(
        st.dates().map(date.isoformat),
        st.lists(_DATE_CHARS, min_size=8, max_size=8).map(
            lambda c: "".join(c[:4]) + "-" + "".join(c[4:6]) + "-" + "".join(c[6:])
        ),
        st.tuples(st.integers(0, 9999), st.integers(0, 99), st.integers(0, 99)).map(
            lambda ymd: f"{ymd[0]:04d}-{ymd[1]:02d}-{ymd[2]:02d}"
        ),
    )
)
def test_plain_date_reads_the_same_as_midnight_utc(text: str) -> None:
    # The plain YYYY-MM-DD form has a fast path; the same date at 00:00Z takes the general one.
    assert parse_date(text) == parse_date(text + "T00:00:00Z")
