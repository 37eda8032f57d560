"""Team-draft interleaving (Radlinski, Kurup, Joachims, CIKM 2008) of two rankings of one query.

The whole window is interleaved once, seeded by the query id, and every page is cut from that one list:
page 2 of a query continues page 1 with no gap and no repeat, in any process or replica.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Hashable, Sequence
from typing import Literal, TypeVar

Team = Literal["es", "rerank"]
T = TypeVar("T", bound=Hashable)


def team_draft(es_order: Sequence[T], rerank_order: Sequence[T], seed: str) -> list[tuple[T, Team]]:
    """Every item of either ranking once, each credited to the team that picked it.

    The team with fewer picks picks next (a seeded coin flip when even); it takes its highest-ranked item
    not yet taken. A team with nothing left to give passes its turn to the other.
    """
    rng = random.Random(_seed_number(seed))
    rankings: dict[Team, Sequence[T]] = {"es": es_order, "rerank": rerank_order}
    next_index: dict[Team, int] = {"es": 0, "rerank": 0}
    picks: dict[Team, int] = {"es": 0, "rerank": 0}
    taken: set[T] = set()
    merged: list[tuple[T, Team]] = []
    total = len(set(es_order) | set(rerank_order))
    while len(merged) < total:
        if picks["es"] != picks["rerank"]:
            team: Team = "es" if picks["es"] < picks["rerank"] else "rerank"
        else:
            team = "es" if rng.random() < 0.5 else "rerank"
        item = _next_untaken(rankings[team], next_index, team, taken)
        if item is None:
            team = "rerank" if team == "es" else "es"
            item = _next_untaken(rankings[team], next_index, team, taken)
            assert item is not None  # fewer than `total` taken: some ranking still has one
        taken.add(item)
        picks[team] += 1
        merged.append((item, team))
    return merged


def query_seed(query_id: str | None, query_text: str, client: str | None) -> str:
    """The interleaving seed: the UBI query id, else the query text and client (stable across replicas)."""
    if query_id:
        return f"id:{query_id}"
    return "text:" + hashlib.blake2b(f"{client or ''}\0{query_text}".encode(), digest_size=16).hexdigest()


def _next_untaken(ranking: Sequence[T], next_index: dict[Team, int], team: Team, taken: set[T]) -> T | None:
    index = next_index[team]
    while index < len(ranking) and ranking[index] in taken:
        index += 1
    next_index[team] = index
    return ranking[index] if index < len(ranking) else None


def _seed_number(seed: str) -> int:
    # random.Random(str) is stable too, but an explicit hash says so and does not depend on its version.
    return int.from_bytes(hashlib.blake2b(seed.encode("utf-8"), digest_size=8).digest(), "big")
