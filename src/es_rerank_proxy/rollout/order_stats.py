"""Pure measures of how far a reranked order moved from Elasticsearch's (the identity order 0..n-1)."""

from __future__ import annotations

from collections.abc import Sequence


def mean_position_change(order: Sequence[int], k: int = 10) -> float:
    """Mean |shown position - Elasticsearch position| over the first `k` hits shown (0 when none)."""
    top = order[:k]
    return sum(abs(position - original) for position, original in enumerate(top)) / len(top) if top else 0.0


def top_k_overlap(order: Sequence[int], k: int = 10) -> float:
    """Share of Elasticsearch's first `k` hits that are still among the first `k` shown (1 when empty)."""
    size = min(k, len(order))
    if size == 0:
        return 1.0
    return len(set(order[:size]) & set(range(size))) / size


def kendall_tau(order: Sequence[int]) -> float:
    """Kendall's tau-a between `order` and the identity: 1 unchanged, -1 reversed (1 below 2 hits)."""
    n = len(order)
    if n < 2:
        return 1.0
    discordant = sum(1 for i in range(n) for j in range(i + 1, n) if order[i] > order[j])
    pairs = n * (n - 1) // 2
    return 1.0 - 2.0 * discordant / pairs


def compared_part(order: Sequence[int], reranked: int, k: int = 10) -> tuple[int, ...]:
    """The part of a final order worth comparing: the reranked hits, and at least the first `k` shown.

    The rest of the window follows the prior unchanged; counted in, its always-concordant pairs would
    pull every Kendall tau towards 1 and hide how much the reranked hits moved.
    """
    return tuple(order[: max(reranked, k)])
