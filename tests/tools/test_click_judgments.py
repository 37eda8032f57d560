"""COEC judgments from clicks: per-rank CTR, clicks over expected clicks, grades and the BEIR files."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from es_rerank_proxy.tools.click_judgments import (
    coec_pairs,
    ctr_by_rank,
    grade,
    graded_judgments,
    qrels_tsv,
    query_key,
    query_texts,
)
from es_rerank_proxy.tools.datasets import parse_qrels
from es_rerank_proxy.tools.ubi_records import ClickEvent, SearchClicks, SearchRecord, join_clicks


def search(query_id: str, text: str, hits: list[str], at: float = 0.0, page_from: int = 0) -> SearchRecord:
    return SearchRecord(
        query_id=query_id,
        user_query=text,
        application="library",
        timestamp=at,
        arm="off",
        outcome="skipped",
        page_from=page_from,
        hit_ids=tuple(hits),
        teams=(),
    )


def clicks(*pairs: tuple[str, str]) -> list[ClickEvent]:
    return [ClickEvent(query_id=q, object_id=o, ordinal=None, timestamp=1.0) for q, o in pairs]


# "Vitamin D" (any case/spacing) 4 times: a,b twice and b,a twice; "x" once.
# Rank 1: 5 impressions, clicks s1:a, s3:b, s5:c -> CTR 3/5. Rank 2: 5 impressions, click s2:b -> 1/5.
SEARCHES = [
    search("s1", "Vitamin D", ["a", "b"], 1),
    search("s2", "vitamin d", ["a", "b"], 2),
    search("s3", " VITAMIN   D ", ["b", "a"], 3),
    search("s4", "vitamin d", ["b", "a"], 4),
    search("s5", "x", ["c", "d"], 5),
]
ROWS: list[SearchClicks] = join_clicks(SEARCHES, clicks(("s1", "a"), ("s2", "b"), ("s3", "b"), ("s5", "c")))


def test_ctr_per_rank_is_clicks_over_impressions_at_that_rank() -> None:
    assert ctr_by_rank(ROWS, max_rank=20) == pytest.approx({1: 3 / 5, 2: 1 / 5})


@pytest.mark.parametrize(
    ("query", "doc", "min_impressions", "clicks_", "expected", "coec"),
    [
        # a: ranks 1, 1, 2, 2 -> expected 0.6 + 0.6 + 0.2 + 0.2 = 1.6; one click -> 0.625
        ("vitamin d", "a", 3, 1, 1.6, 1 / 1.6),
        # b: ranks 2, 2, 1, 1 -> expected 1.6; two clicks -> 1.25 (better than its ranks explain)
        ("vitamin d", "b", 3, 2, 1.6, 2 / 1.6),
        # c: shown once at rank 1 -> 1 / 0.6
        ("x", "c", 1, 1, 0.6, 1 / 0.6),
        # d: shown once at rank 2, never clicked -> 0
        ("x", "d", 1, 0, 0.2, 0.0),
    ],
)
def test_coec_is_clicks_over_the_clicks_expected_at_the_ranks_shown(
    query: str, doc: str, min_impressions: int, clicks_: int, expected: float, coec: float
) -> None:
    stats = coec_pairs(ROWS, min_impressions=min_impressions)[query][doc]
    assert (stats.clicks, stats.expected_clicks, stats.coec) == (
        clicks_,
        pytest.approx(expected),
        pytest.approx(coec),
    )


def test_pairs_below_the_minimum_impressions_are_not_judged() -> None:
    assert set(coec_pairs(ROWS, min_impressions=2)) == {"vitamin d"}


def test_ranks_past_max_rank_neither_count_nor_get_judged() -> None:
    pairs = coec_pairs(ROWS, max_rank=1, min_impressions=1)
    # rank 1 only: a shown (s1, s2) with one click; expected 2 * 0.6
    assert pairs["vitamin d"]["a"].coec == pytest.approx(1 / 1.2)
    assert "d" not in pairs["x"]


@pytest.mark.parametrize(
    ("coec", "thresholds", "expected"),
    [
        (0.0, (1.0, 2.0), 0),
        (0.99, (1.0, 2.0), 0),
        (1.0, (1.0, 2.0), 1),
        (2.0, (1.0, 2.0), 2),
        (7.0, (1.0, 2.0), 2),
        (0.6, (0.5,), 1),
    ],
)
def test_grade_counts_the_thresholds_reached(
    coec: float, thresholds: tuple[float, ...], expected: int
) -> None:
    assert grade(coec, thresholds) == expected


def test_judgments_round_trip_through_the_qrels_reader_eval_uses() -> None:
    qrels = graded_judgments(coec_pairs(ROWS, min_impressions=1))
    assert parse_qrels(qrels_tsv(qrels).splitlines()) == qrels
    assert qrels[query_key("Vitamin D")] == {"a": 0, "b": 1}
    assert qrels[query_key("x")] == {"c": 1, "d": 0}


def test_query_ids_are_stable_and_texts_are_what_users_typed_first() -> None:
    assert query_key("vitamin d") == query_key("  Vitamin  D") != query_key("vitamin c")
    texts = query_texts(ROWS, {query_key("vitamin d"): None})
    assert texts == {query_key("vitamin d"): "Vitamin D"}


def doc_lists() -> Any:
    return st.lists(
        st.tuples(st.permutations(["a", "b", "c", "d"]), st.lists(st.sampled_from("abcd"), max_size=3)),
        min_size=1,
        max_size=30,
    )


@given(doc_lists())
def test_click_weighted_expected_clicks_equal_total_clicks(
    sessions: list[tuple[list[str], list[str]]],
) -> None:
    # COEC's normalisation: summed over every pair, expected clicks equal the clicks observed.
    rows = join_clicks(
        [search(f"s{n}", "q", hits, n) for n, (hits, _) in enumerate(sessions)],
        clicks(*[(f"s{n}", doc) for n, (_, docs) in enumerate(sessions) for doc in docs]),
    )
    pairs = coec_pairs(rows, min_impressions=1).get("q", {})
    total_clicks = sum(len(row.ranks) for row in rows)
    assert sum(p.expected_clicks for p in pairs.values()) == pytest.approx(total_clicks)
    assert sum(p.clicks for p in pairs.values()) == total_clicks
