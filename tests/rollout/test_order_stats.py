"""How far a reranked order moved: the numbers behind the shadow-mode and displacement metrics."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from es_rerank_proxy.rollout.order_stats import (
    compared_part,
    kendall_tau,
    mean_position_change,
    top_k_overlap,
)


@pytest.mark.parametrize(
    ("order", "k", "expected"),
    [
        ([], 10, 0.0),
        ([0, 1, 2], 10, 0.0),
        ([1, 0, 2], 10, 2 / 3),  # two hits moved by one place each, over three shown
        ([2, 1, 0], 2, 1.0),  # |0-2| + |1-1| over two
        ([9, 0, 1, 2, 3, 4, 5, 6, 7, 8], 10, 18 / 10),  # one jump of 9, nine steps of 1
    ],
)
def test_mean_position_change(order: list[int], k: int, expected: float) -> None:
    assert mean_position_change(order, k) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("order", "k", "expected"),
    [
        ([], 10, 1.0),
        (list(range(20)), 10, 1.0),
        ([10, 11, 12, 13, 14, 15, 16, 17, 18, 19, *range(10)], 10, 0.0),
        ([15, *range(15)], 10, 0.9),
        ([1, 0], 10, 1.0),
    ],
)
def test_top_k_overlap(order: list[int], k: int, expected: float) -> None:
    assert top_k_overlap(order, k) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        ([], 1.0),
        ([0], 1.0),
        ([0, 1, 2, 3], 1.0),
        ([3, 2, 1, 0], -1.0),
        ([1, 0, 2, 3], 1 - 2 * 1 / 6),  # one discordant pair of six
        ([0, 2, 1], 1 - 2 * 1 / 3),
    ],
)
def test_kendall_tau(order: list[int], expected: float) -> None:
    assert kendall_tau(order) == pytest.approx(expected)


@given(st.permutations(list(range(12))))
def test_measures_stay_in_range(order: list[int]) -> None:
    assert -1.0 <= kendall_tau(order) <= 1.0
    assert 0.0 <= top_k_overlap(order) <= 1.0
    assert mean_position_change(order) >= 0.0
    assert (kendall_tau(order) == 1.0) == (order == sorted(order))


WINDOW = list(range(100))


@pytest.mark.parametrize(
    ("order", "reranked", "expected"),
    [
        pytest.param([1, 0, *WINDOW[2:]], 20, (1, 0, *WINDOW[2:20]), id="the 20 reranked hits"),
        pytest.param([3, 1, 0, 2, *WINDOW[4:]], 4, (3, 1, 0, 2, *WINDOW[4:10]), id="at least the first 10"),
        pytest.param([7, 50, 2, 0, 1], 3, (7, 50, 2, 0, 1), id="a short window whole"),
        pytest.param([], 0, (), id="empty"),
    ],
)
def test_compared_part(order: list[int], reranked: int, expected: tuple[int, ...]) -> None:
    assert compared_part(order, reranked) == expected


def test_unmoved_tail_no_longer_hides_a_reranked_swap() -> None:
    swapped = [1, 0, *WINDOW[2:]]
    assert kendall_tau(swapped) > 0.999  # one discordant pair among 4,950
    assert kendall_tau(compared_part(swapped, 20)) == pytest.approx(1 - 2 / 190)
