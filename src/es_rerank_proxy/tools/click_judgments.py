"""Graded judgments from users' clicks with COEC (clicks over expected clicks), as OpenSearch's Search
Relevance Workbench derives implicit judgments. Pure.

A result at rank r is clicked at the rate every result at rank r is clicked (position bias) times how
attractive it is. COEC divides a query-document pair's clicks by the clicks an average result would have
got at the ranks where this one was shown: sum over its impressions of CTR(rank). 1 is average for its
positions, above 1 better. Impressions are the pages the proxy recorded, so a pair shown and never clicked
is judged too. Unlike the Workbench, which takes one observed rank per pair, every impression counts at its
own rank.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .ubi_records import SearchClicks

DEFAULT_THRESHOLDS = (1.0, 2.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class PairStats:
    """One query-document pair: impressions, clicks, expected clicks at its ranks, and COEC."""

    impressions: int
    clicks: int
    expected_clicks: float
    coec: float


def normalise_query(text: str) -> str:
    """The form searches are grouped by: case-folded, whitespace collapsed."""
    return " ".join(text.casefold().split())


def query_key(text: str) -> str:
    """A stable query id for a user query (BEIR needs ids): `q` + 12 hex digits of its sha256."""
    return "q" + hashlib.sha256(normalise_query(text).encode("utf-8")).hexdigest()[:12]


def ctr_by_rank(rows: Sequence[SearchClicks], max_rank: int) -> dict[int, float]:
    """Clicks over impressions at each 1-based rank up to `max_rank`, across all searches."""
    shown: dict[int, int] = {}
    clicked: dict[int, int] = {}
    for row in rows:
        start = row.search.page_from + 1
        for rank in range(start, min(start + len(row.search.hit_ids), max_rank + 1)):
            shown[rank] = shown.get(rank, 0) + 1
        for click_rank in row.ranks:
            if click_rank is not None and click_rank <= max_rank:
                clicked[click_rank] = clicked.get(click_rank, 0) + 1
    return {rank: clicked.get(rank, 0) / count for rank, count in sorted(shown.items())}


def coec_pairs(
    rows: Sequence[SearchClicks], *, max_rank: int = 20, min_impressions: int = 3
) -> dict[str, dict[str, PairStats]]:
    """COEC per normalised user query and document shown at ranks up to `max_rank`, for pairs with at
    least `min_impressions` impressions and some expected clicks."""
    ctr = ctr_by_rank(rows, max_rank)
    counts: dict[tuple[str, str], list[float]] = {}  # impressions, clicks, expected clicks
    for row in rows:
        query = normalise_query(row.search.user_query)
        if not query:
            continue
        clicked = set(row.clicked_ids)
        for index, object_id in enumerate(row.search.hit_ids):
            rank = row.search.page_from + index + 1
            if rank > max_rank:
                break
            entry = counts.setdefault((query, object_id), [0, 0, 0.0])
            entry[0] += 1
            entry[1] += object_id in clicked
            entry[2] += ctr.get(rank, 0.0)
    pairs: dict[str, dict[str, PairStats]] = {}
    for (query, object_id), (impressions, clicks, expected) in counts.items():
        if impressions >= min_impressions and expected > 0:
            pairs.setdefault(query, {})[object_id] = PairStats(
                impressions=int(impressions),
                clicks=int(clicks),
                expected_clicks=expected,
                coec=clicks / expected,
            )
    return pairs


def grade(coec: float, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> int:
    """The number of thresholds COEC reaches: with (1, 2), 0 below average, 1 from average, 2 from twice."""
    return sum(1 for threshold in thresholds if coec >= threshold)


def graded_judgments(
    pairs: Mapping[str, Mapping[str, PairStats]], thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> dict[str, dict[str, int]]:
    """qrels (query id -> document id -> grade) keyed by `query_key` of each normalised query."""
    return {
        query_key(query): {object_id: grade(stats.coec, thresholds) for object_id, stats in docs.items()}
        for query, docs in pairs.items()
    }


def qrels_tsv(qrels: Mapping[str, Mapping[str, int]]) -> str:
    """BEIR's qrels TSV (header `query-id corpus-id score`), sorted for stable diffs."""
    lines = ["query-id\tcorpus-id\tscore"]
    for qid in sorted(qrels):
        lines.extend(f"{qid}\t{doc}\t{score}" for doc, score in sorted(qrels[qid].items()))
    return "\n".join(lines) + "\n"


def query_texts(rows: Sequence[SearchClicks], qids: Mapping[str, object]) -> dict[str, str]:
    """For the query ids in `qids`, the first text a user typed that normalises to it (queries.jsonl)."""
    texts: dict[str, str] = {}
    for row in sorted(rows, key=lambda r: r.search.timestamp):
        qid = query_key(row.search.user_query)
        if qid in qids:
            texts.setdefault(qid, row.search.user_query.strip())
    return texts
