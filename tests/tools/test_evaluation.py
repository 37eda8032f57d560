"""Pure metrics: values worked out by hand on a tiny graded fixture."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from es_rerank_proxy.tools.evaluation import (
    compare,
    evaluate,
    mrr_at_k,
    ndcg_at_k,
    parse_metric,
    recall_at_k,
)

# Graded judgments for one query: d1 is highly relevant (2), d2 relevant (1), d3 judged not relevant (0).
QRELS = {"d1": 2, "d2": 1, "d3": 0}
# Ideal order d1, d2: IDCG = 2/log2(2) + 1/log2(3) = 2 + 0.6309 = 2.6309 (for any k >= 2).
IDCG = 2 / math.log2(2) + 1 / math.log2(3)


@pytest.mark.parametrize(
    ("ranked", "k", "expected"),
    [
        # d1 at rank 1, d2 at rank 2: DCG = IDCG -> 1.
        (["d1", "d2", "d3"], 10, 1.0),
        # d2 (1) at rank 1, d9 (unjudged, 0) at 2, d1 (2) at 3: DCG = 1/1 + 0 + 2/log2(4) = 1 + 1 = 2.
        (["d2", "d9", "d1", "d3"], 3, 2 / IDCG),
        # d9 at 1, d1 at 2, d2 at 3: DCG = 0 + 2/log2(3) + 1/log2(4) = 1.2619 + 0.5.
        (["d9", "d1", "d2"], 3, (2 / math.log2(3) + 1 / math.log2(4)) / IDCG),
        # Cut at k=1: only d2 counts, DCG@1 = 1; IDCG@1 = the best grade alone = 2.
        (["d2", "d1"], 1, 1 / 2),
        # Fewer results than k: d1 alone, DCG = 2; IDCG still counts d2 -> 2 / 2.6309.
        (["d1"], 10, 2 / IDCG),
        # Duplicates keep their first position: d1, d1, d2 -> d1 at 1, d2 at 2 -> perfect.
        (["d1", "d1", "d2"], 2, 1.0),
        # Only judged-irrelevant and unjudged documents: DCG = 0.
        (["d3", "d8"], 10, 0.0),
        ([], 10, 0.0),
    ],
)
def test_ndcg_uses_linear_graded_gain(ranked: list[str], k: int, expected: float) -> None:
    assert ndcg_at_k(ranked, QRELS, k) == pytest.approx(expected, abs=1e-12)


def test_ndcg_ideal_is_truncated_at_k() -> None:
    # Grades 3, 2, 1; k = 2: IDCG@2 = 3/1 + 2/log2(3). The run finds 1 then 3: DCG@2 = 1/1 + 3/log2(3).
    qrels = {"a": 3, "b": 2, "c": 1}
    expected = (1 + 3 / math.log2(3)) / (3 + 2 / math.log2(3))
    assert ndcg_at_k(["c", "a", "b"], qrels, 2) == pytest.approx(expected)


def test_negative_grades_count_as_zero_gain() -> None:
    # trec_eval treats grades <= 0 as not relevant: d-1 adds nothing, d1 at rank 2 gives 1/log2(3).
    qrels = {"bad": -1, "good": 1}
    assert ndcg_at_k(["bad", "good"], qrels, 10) == pytest.approx(1 / math.log2(3))
    assert mrr_at_k(["bad", "good"], qrels, 10) == 0.5


@pytest.mark.parametrize(
    ("ranked", "k", "expected"),
    [
        (["d1", "d2"], 10, 1.0),  # first relevant at rank 1
        (["d3", "d2"], 10, 0.5),  # d3 is judged 0, so the first relevant is d2 at rank 2
        (["d9", "d8", "d1"], 3, 1 / 3),
        (["d9", "d8", "d1"], 2, 0.0),  # the relevant document is past the cut-off
        (["d9", "d9", "d1"], 2, 0.5),  # duplicate d9 ignored: d1 moves up to rank 2
        ([], 10, 0.0),
    ],
)
def test_mrr_is_reciprocal_rank_of_first_relevant(ranked: list[str], k: int, expected: float) -> None:
    assert mrr_at_k(ranked, QRELS, k) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("ranked", "k", "expected"),
    [
        (["d1", "d2"], 10, 1.0),  # both relevant documents (d1, d2) found: 2/2
        (["d9", "d1", "d2"], 2, 0.5),  # top 2 holds d1 only: 1/2
        (["d3", "d9"], 10, 0.0),  # d3 has grade 0, so it is not relevant
        (["d1", "d1", "d1"], 10, 0.5),  # duplicates count once: 1/2
        (["d9", "d9", "d2"], 2, 0.5),  # duplicate d9 ignored: top 2 is d9, d2 -> 1/2
        (["d2"], 100, 0.5),  # fewer results than k
    ],
)
def test_recall_denominator_is_number_of_relevant(ranked: list[str], k: int, expected: float) -> None:
    assert recall_at_k(ranked, QRELS, k) == pytest.approx(expected)


@pytest.mark.parametrize("qrels", [{}, {"d3": 0}, {"d3": 0, "d4": -1}])
def test_metrics_are_zero_without_relevant_documents(qrels: dict[str, int]) -> None:
    ranked = ["d3", "d4", "d5"]
    assert ndcg_at_k(ranked, qrels, 10) == 0.0
    assert mrr_at_k(ranked, qrels, 10) == 0.0
    assert recall_at_k(ranked, qrels, 10) == 0.0


@pytest.mark.parametrize(
    ("name", "expected"), [("ndcg@10", ("ndcg", 10)), ("mrr@1", ("mrr", 1)), ("recall@100", ("recall", 100))]
)
def test_parse_metric_splits_family_and_cutoff(name: str, expected: tuple[str, int]) -> None:
    assert parse_metric(name) == expected


@pytest.mark.parametrize("name", ["ndcg", "map@10", "ndcg@", "ndcg@0", "ndcg@x", "recall@-1"])
def test_parse_metric_rejects_unknown_names(name: str) -> None:
    with pytest.raises(ValueError, match="unknown metric"):
        parse_metric(name)


QRELS_ALL = {
    "q1": {"d1": 2, "d2": 1, "d3": 0},
    "q2": {"e1": 1},
    "q3": {"f1": 0},  # no relevant judgment: skipped
}


def test_evaluate_skips_unjudged_and_scores_missing_queries_zero() -> None:
    run = {"q1": ["d2", "d9", "d1"], "q3": ["f1"], "q4": ["x"]}  # q2 is missing, q4 has no judgments
    report = evaluate(run, QRELS_ALL, ks=(1, 3))
    assert report.metrics == ("ndcg@1", "ndcg@3", "mrr@1", "mrr@3", "recall@1", "recall@3")
    assert report.query_ids == ("q1", "q2")
    assert report.missing == ("q2",)
    # q1: NDCG@3 = (1 + 2/log2(4)) / IDCG = 2 / 2.6309; q2 scores 0 -> mean is half of q1's value.
    assert report.per_query["q1"]["ndcg@3"] == pytest.approx(2 / IDCG)
    assert report.per_query["q2"] == dict.fromkeys(report.metrics, 0.0)
    assert report.means["ndcg@3"] == pytest.approx(1 / IDCG)
    # q1: MRR@1 = 1 (d2 is relevant), recall@1 = 1/2, recall@3 = 2/2.
    assert report.means["mrr@1"] == pytest.approx(0.5)
    assert report.means["recall@1"] == pytest.approx(0.25)
    assert report.means["recall@3"] == pytest.approx(0.5)


def test_evaluate_with_explicit_metric_names() -> None:
    report = evaluate({"q1": ["d1"]}, QRELS_ALL, metrics=["recall@100", "ndcg@10"])
    assert report.metrics == ("recall@100", "ndcg@10")
    assert set(report.means) == {"recall@100", "ndcg@10"}


def test_evaluate_empty_qrels_gives_zero_means() -> None:
    report = evaluate({"q1": ["d1"]}, {}, ks=(10,))
    assert report.per_query == {}
    assert report.means == {"ndcg@10": 0.0, "mrr@10": 0.0, "recall@10": 0.0}


def test_compare_counts_wins_ties_and_losses() -> None:
    qrels = {"a": {"x": 1}, "b": {"y": 1}, "c": {"z": 1}, "d": {"w": 1}}
    baseline = evaluate({"a": ["n", "x"], "b": ["y"], "c": ["z"], "d": []}, qrels, ks=(10,))
    # a: x moves from rank 2 to 1 (win); b: unchanged (tie); c: z lost (loss); d: found at rank 1 (win).
    candidate = evaluate({"a": ["x", "n"], "b": ["y"], "c": ["n"], "d": ["w"]}, qrels, ks=(10,))
    result = compare(baseline, candidate, "mrr@10")
    assert (result.wins, result.ties, result.losses) == (2, 1, 1)
    assert result.per_query == pytest.approx({"a": 0.5, "b": 0.0, "c": -1.0, "d": 1.0})
    # Means: baseline (0.5 + 1 + 1 + 0) / 4 = 0.625; candidate (1 + 1 + 0 + 1) / 4 = 0.75.
    assert result.baseline_mean == pytest.approx(0.625)
    assert result.candidate_mean == pytest.approx(0.75)
    assert result.mean_difference == pytest.approx(0.125)


def test_compare_treats_tiny_differences_as_ties() -> None:
    baseline = evaluate({"a": ["x"]}, {"a": {"x": 1}}, ks=(10,))
    nudged = {"a": {"ndcg@10": 1.0 - 1e-12, "mrr@10": 1.0, "recall@10": 1.0}}
    candidate = type(baseline)(metrics=baseline.metrics, per_query=nudged, means=baseline.means)
    assert (compare(baseline, candidate).ties, compare(candidate, baseline).ties) == (1, 1)


def test_compare_rejects_different_query_sets() -> None:
    one = evaluate({}, {"a": {"x": 1}}, ks=(10,))
    other = evaluate({}, {"b": {"x": 1}}, ks=(10,))
    with pytest.raises(ValueError, match="different queries"):
        compare(one, other)
    with pytest.raises(ValueError, match="not in both"):
        compare(one, one, "ndcg@5")


_ids = st.sampled_from([f"d{i}" for i in range(8)])


@given(
    ranked=st.lists(_ids, max_size=12),
    qrels=st.dictionaries(_ids, st.integers(min_value=-1, max_value=3), max_size=8),
    k=st.integers(min_value=1, max_value=10),
)
def test_metrics_stay_in_unit_interval_and_ideal_order_scores_one(
    ranked: list[str], qrels: dict[str, int], k: int
) -> None:
    for metric in (ndcg_at_k, mrr_at_k, recall_at_k):
        assert 0.0 <= metric(ranked, qrels, k) <= 1.0 + 1e-12
    ideal = sorted((d for d, g in qrels.items() if g > 0), key=lambda d: -qrels[d])
    if ideal:
        assert ndcg_at_k(ideal, qrels, k) == pytest.approx(1.0)
        assert mrr_at_k(ideal, qrels, k) == 1.0
