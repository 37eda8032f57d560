"""Team-draft interleaving: a fair mix of both orders, every hit credited, pages cut from one list."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from es_rerank_proxy.rollout.interleave import query_seed, team_draft

permutations = st.integers(min_value=0, max_value=40).flatmap(
    lambda n: st.tuples(st.permutations(range(n)), st.permutations(range(n)))
)
seeds = st.text(max_size=12)


@given(permutations, seeds)
def test_interleaved_list_is_a_permutation_with_a_team_for_each_position(
    orders: tuple[list[int], list[int]], seed: str
) -> None:
    es, rerank = orders
    merged = team_draft(es, rerank, seed)
    assert sorted(item for item, _ in merged) == sorted(es)
    assert all(team in ("es", "rerank") for _, team in merged)


@given(
    st.lists(st.integers(0, 30), unique=True, max_size=20),
    st.lists(st.integers(0, 30), unique=True, max_size=20),
    seeds,
)
def test_rankings_of_different_items_interleave_to_their_union(
    es: list[int], rerank: list[int], seed: str
) -> None:
    merged = [item for item, _ in team_draft(es, rerank, seed)]
    assert sorted(merged) == sorted(set(es) | set(rerank))


@given(permutations, seeds)
def test_each_team_picks_its_own_best_remaining_in_its_order(
    orders: tuple[list[int], list[int]], seed: str
) -> None:
    es, rerank = orders
    merged = team_draft(es, rerank, seed)
    taken: set[int] = set()
    for item, team in merged:
        ranking = es if team == "es" else rerank
        assert item == next(x for x in ranking if x not in taken), "a team took less than its best"
        taken.add(item)
    for team, ranking in (("es", es), ("rerank", rerank)):
        credited = [item for item, owner in merged if owner == team]
        assert credited == sorted(credited, key=ranking.index), f"{team}'s hits out of its order"


@given(permutations, seeds)
def test_teams_stay_within_one_pick_of_each_other_while_both_can_pick(
    orders: tuple[list[int], list[int]], seed: str
) -> None:
    es, rerank = orders
    counts = {"es": 0, "rerank": 0}
    for _, team in team_draft(es, rerank, seed):
        counts[team] += 1
        assert abs(counts["es"] - counts["rerank"]) <= 1


@given(permutations, seeds, st.integers(1, 12))
def test_pages_cut_from_one_seed_concatenate_to_the_whole_list(
    orders: tuple[list[int], list[int]], seed: str, page_size: int
) -> None:
    es, rerank = orders
    whole = team_draft(es, rerank, seed)
    pages = [
        team_draft(es, rerank, seed)[start : start + page_size] for start in range(0, len(es), page_size)
    ]
    assert [entry for page in pages for entry in page] == whole


def test_identical_rankings_show_that_ranking() -> None:
    order = list(range(10))
    assert [item for item, _ in team_draft(order, order, "q1")] == order


def test_first_hit_is_one_of_the_two_top_hits_and_the_seed_decides_which() -> None:
    es, rerank = list(range(10)), list(reversed(range(10)))
    firsts = {team_draft(es, rerank, f"query-{i}")[0] for i in range(64)}
    assert firsts == {(0, "es"), (9, "rerank")}


@pytest.mark.parametrize(
    ("query_id", "text", "client", "same_as"),
    [
        ("abc", "neural search", "10.0.0.1", ("abc", "other words", None)),  # the id alone decides
        (None, "neural search", "10.0.0.1", (None, "neural search", "10.0.0.1")),
        ("", "neural search", "10.0.0.1", (None, "neural search", "10.0.0.1")),  # empty id: no id
    ],
)
def test_query_seed_is_stable(
    query_id: str | None, text: str, client: str | None, same_as: tuple[str | None, str, str | None]
) -> None:
    assert query_seed(query_id, text, client) == query_seed(*same_as)


def test_query_seed_differs_by_client_and_text() -> None:
    seeds = {
        query_seed(None, "neural search", "10.0.0.1"),
        query_seed(None, "neural search", "10.0.0.2"),
        query_seed(None, "neural searches", "10.0.0.1"),
        query_seed("neural search", "", None),
    }
    assert len(seeds) == 4
