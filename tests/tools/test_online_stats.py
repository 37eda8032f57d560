"""The online report's numbers on a fixed event set, worked out by hand; the sign test; bootstrap rules."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from es_rerank_proxy.tools.online_stats import (
    interleave_verdict,
    online_report,
    sign_test,
)
from es_rerank_proxy.tools.ubi_records import (
    SearchClicks,
    click_from_doc,
    join_clicks,
    parse_timestamp,
    search_from_doc,
)

T0 = "2026-11-20T10:00:00Z"
ABC = ["a", "b", "c"]


def query(query_id: str, arm: str, hits: list[str], **attributes: Any) -> dict[str, Any]:
    return {
        "query_id": query_id,
        "client_id": "c1",
        "user_query": "vitamin d",
        "timestamp": T0,
        "application": "library",
        "query_response_hit_ids": hits,
        "query_attributes": {"arm": arm, "outcome": "applied", "page_from": 0, **attributes},
    }


def click(
    query_id: str, object_id: str, seconds: int, ordinal: int | None = None, action: str = "click"
) -> dict:
    return {
        "action_name": action,
        "query_id": query_id,
        "client_id": "c1",
        "timestamp": f"2026-11-20T10:00:{seconds:02d}Z",
        "event_attributes": {"object": {"object_id": object_id}, "position": {"ordinal": ordinal}},
    }


# off: o1 clicks b (rank 2) after 4 s then a; o2 clicks a after 2 s; o3 no click; o4 no results.
# rerank: r1 clicks a after 3 s; r2 clicks c (rank 3) after 10 s; r3 clicks a twice (counts once) after 1 s.
QUERIES = [
    query("o1", "off", ABC),
    query("o2", "off", ABC),
    query("o3", "off", ABC),
    query("o4", "off", []),
    query("r1", "rerank", ABC),
    query("r2", "rerank", ABC),
    query("r3", "rerank", ABC),
]
EVENTS = [
    click("o1", "b", 4),
    click("o1", "a", 6),
    click("o2", "a", 2),
    click("r1", "a", 3),
    click("r2", "c", 10),
    click("r3", "a", 1),
    click("r3", "a", 2),
    click("unknown", "a", 1),  # a search not recorded (or outside the window): ignored
    click("o3", "b", 5, action="view"),  # not a click
]


def joined(queries: list[dict[str, Any]], events: list[dict[str, Any]]) -> list[SearchClicks]:
    searches = [s for s in map(search_from_doc, queries) if s is not None]
    clicks = [c for c in map(click_from_doc, events) if c is not None]
    return join_clicks(searches, clicks)


REPORT = online_report(joined(QUERIES, EVENTS), resamples=200, seed=1, min_searches=1)


@pytest.mark.parametrize(
    ("arm", "metric", "expected"),
    [
        # off shows 9 results (o4 none) and gets 3 clicks.
        ("off", "ctr", 3 / 9),
        # clicked searches o1 (first click rank 2) and o2 (rank 1).
        ("off", "first_click_rate", 1 / 2),
        ("off", "mrr", (1 / 2 + 1) / 2),
        # of o1, o2, o3 (with results) o3 has no click; o4 had no results.
        ("off", "abandonment", 1 / 3),
        ("off", "zero_results", 1 / 4),
        ("off", "seconds_to_first_click", (4 + 2) / 2),
        # rerank: 3 distinct clicks over 9 shown; r3's second click on a is the same object.
        ("rerank", "ctr", 3 / 9),
        ("rerank", "first_click_rate", 2 / 3),
        ("rerank", "mrr", (1 + 1 / 3 + 1) / 3),
        ("rerank", "abandonment", 0.0),
        ("rerank", "zero_results", 0.0),
        ("rerank", "seconds_to_first_click", 3.0),
    ],
)
def test_report_on_a_fixed_event_set_gives_hand_computed_numbers(
    arm: str, metric: str, expected: float
) -> None:
    assert REPORT.arms[arm].metrics[metric].value == pytest.approx(expected)


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        ("ctr", 0.0),
        ("first_click_rate", 2 / 3 - 1 / 2),
        ("mrr", 7 / 9 - 3 / 4),
        ("abandonment", -1 / 3),
        ("zero_results", -1 / 4),
        ("seconds_to_first_click", 0.0),
    ],
)
def test_difference_is_rerank_minus_off(metric: str, expected: float) -> None:
    assert REPORT.difference is not None
    assert REPORT.difference[metric].value == pytest.approx(expected)


def test_searches_per_arm_count_every_record() -> None:
    assert (REPORT.arms["off"].searches, REPORT.arms["rerank"].searches) == (4, 3)


def test_a_click_off_the_recorded_page_is_placed_by_its_zero_based_ordinal() -> None:
    rows = joined([query("q", "off", ABC)], [click("q", "z", 3, ordinal=4)])
    assert rows[0].ranks == (5,)


def test_second_page_ranks_count_from_the_top_of_the_list() -> None:
    rows = joined([query("q", "off", ["k", "l"], page_from=10)], [click("q", "l", 3)])
    assert rows[0].ranks == (12,)


def test_a_query_recorded_twice_keeps_its_first_record() -> None:
    later = {**query("q", "rerank", ABC), "timestamp": "2026-11-20T11:00:00Z"}
    rows = joined([later, query("q", "off", ABC)], [])
    assert [row.search.arm for row in rows] == ["off"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-20T10:00:00Z", 1795168800.0),
        ("2026-11-20T10:00:00+00:00", 1795168800.0),
        ("2026-11-20T11:00:00+01:00", 1795168800.0),
        (1795168800000, 1795168800.0),
        ("yesterday", None),
        (None, None),
        (True, None),
    ],
)
def test_timestamps_read_iso_8601_and_epoch_millis(value: object, expected: float | None) -> None:
    assert parse_timestamp(value) == expected


def test_records_without_id_or_time_are_skipped() -> None:
    assert search_from_doc({"timestamp": T0}) is None
    assert search_from_doc({"query_id": "q"}) is None
    assert click_from_doc({"action_name": "click", "query_id": "q", "timestamp": T0}) is None


def test_teams_not_aligned_with_the_hits_are_ignored() -> None:
    record = search_from_doc(query("q", "interleave", ABC, teams=["es", "rerank"]))
    assert record is not None and record.teams == ()


@pytest.mark.parametrize(
    ("wins", "losses", "expected"),
    [
        (0, 0, None),
        (1, 1, 1.0),
        (5, 0, 2 / 32),
        (0, 6, 2 / 64),
        # P(X <= 3) for n = 13: (1 + 13 + 78 + 286) / 8192
        (10, 3, 2 * 378 / 8192),
        (3, 10, 2 * 378 / 8192),
    ],
)
def test_sign_test_is_the_exact_two_sided_binomial(wins: int, losses: int, expected: float | None) -> None:
    assert sign_test(wins, losses) == (None if expected is None else pytest.approx(expected))


@given(st.integers(0, 300), st.integers(0, 300))
def test_sign_test_is_a_probability_symmetric_in_its_arguments(wins: int, losses: int) -> None:
    p = sign_test(wins, losses)
    assert p == sign_test(losses, wins)
    assert p is None or 0.0 < p <= 1.0


def interleaved(query_id: str, teams: list[str]) -> dict[str, Any]:
    return query(query_id, "interleave", ["a", "b", "c", "d"][: len(teams)], teams=teams)


def test_interleaving_credits_clicks_to_the_team_of_the_clicked_hit() -> None:
    teams = ["rerank", "es", "es", "rerank"]
    queries = [interleaved(f"i{n}", teams) for n in range(1, 6)] + [query("plain", "interleave", ABC)]
    events = [
        click("i1", "a", 1),
        click("i1", "d", 2),  # rerank 2 - es 0: win
        click("i2", "b", 1),  # es: loss
        click("i3", "a", 1),
        click("i3", "b", 2),  # 1 - 1: tie
        # i4: no click
        click("i5", "d", 1),  # win
        click("plain", "a", 1),  # degraded: no teams recorded, not part of the verdict
    ]
    verdict = interleave_verdict(joined(queries, events))
    assert (verdict.searches, verdict.wins, verdict.ties, verdict.losses, verdict.no_clicks) == (
        5,
        2,
        1,
        1,
        1,
    )
    assert verdict.p_value == pytest.approx(1.0)  # n = 3, min 1: 2 * (1 + 3) / 8


def test_same_seed_gives_the_same_intervals_and_the_value_lies_inside() -> None:
    rows = joined(QUERIES, EVENTS) * 7  # 28 and 21 searches: enough for intervals
    first = online_report(rows, resamples=300, seed=7)
    assert first == online_report(rows, resamples=300, seed=7)
    for arm in first.arms.values():
        for estimate in arm.metrics.values():
            assert estimate.low is not None and estimate.high is not None and estimate.value is not None
            assert estimate.low <= estimate.value + 1e-12 and estimate.value <= estimate.high + 1e-12


def test_identical_searches_give_an_interval_of_width_zero() -> None:
    rows = joined(
        [query(f"q{n}", "off", ABC) for n in range(30)], [click(f"q{n}", "a", 2) for n in range(30)]
    )
    estimate = online_report(rows, resamples=100).arms["off"].metrics["first_click_rate"]
    assert (estimate.value, estimate.low, estimate.high) == (1.0, 1.0, 1.0)


def test_too_few_searches_get_values_but_no_intervals_and_no_difference() -> None:
    report = online_report(joined(QUERIES, EVENTS), resamples=100)  # 4 and 3 searches, below 20
    assert not report.arms["off"].enough
    assert report.arms["off"].metrics["ctr"].value == pytest.approx(1 / 3)
    assert report.arms["off"].metrics["ctr"].low is None
    assert report.difference is None


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 2)), min_size=1, max_size=40), st.integers(0, 5))
def test_rates_and_their_intervals_stay_between_zero_and_one(
    shape: list[tuple[bool, int]], seed: int
) -> None:
    queries = [query(f"q{n}", "off", ABC if shown else []) for n, (shown, _) in enumerate(shape)]
    events = [click(f"q{n}", ABC[k], 1 + k) for n, (shown, k) in enumerate(shape) if shown and k]
    report = online_report(joined(queries, events), resamples=30, seed=seed, min_searches=1)
    for name in ("ctr", "first_click_rate", "abandonment", "zero_results", "mrr"):
        estimate = report.arms["off"].metrics[name]
        for bound in (estimate.value, estimate.low, estimate.high):
            assert bound is None or (0.0 <= bound <= 1.0 and not math.isnan(bound))
