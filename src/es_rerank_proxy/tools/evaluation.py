"""Pure IR metrics with graded relevance, following BEIR / trec_eval conventions (no I/O)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Sequence[str]]

TIE_TOLERANCE = 1e-9
_FAMILIES = ("ndcg", "mrr", "recall")


def _top_k(ranked_ids: Iterable[str], k: int) -> list[str]:
    """The first `k` distinct ids; a repeated id keeps only its first position."""
    seen: set[str] = set()
    top: list[str] = []
    for doc_id in ranked_ids:
        if len(top) >= k:
            break
        if doc_id not in seen:
            seen.add(doc_id)
            top.append(doc_id)
    return top


def ndcg_at_k(ranked_ids: Sequence[str], qrels_for_query: Mapping[str, int], k: int) -> float:
    """NDCG@k with linear gain `grade / log2(rank + 1)`; 0 when nothing is relevant."""
    ideal = sorted((g for g in qrels_for_query.values() if g > 0), reverse=True)[:k]
    idcg = sum(grade / math.log2(rank + 1) for rank, grade in enumerate(ideal, start=1))
    if idcg == 0:
        return 0.0
    dcg = sum(
        max(qrels_for_query.get(doc_id, 0), 0) / math.log2(rank + 1)
        for rank, doc_id in enumerate(_top_k(ranked_ids, k), start=1)
    )
    return dcg / idcg


def mrr_at_k(ranked_ids: Sequence[str], qrels_for_query: Mapping[str, int], k: int) -> float:
    """Reciprocal rank of the first document with grade > 0 within the top k; else 0."""
    for rank, doc_id in enumerate(_top_k(ranked_ids, k), start=1):
        if qrels_for_query.get(doc_id, 0) > 0:
            return 1.0 / rank
    return 0.0


def recall_at_k(ranked_ids: Sequence[str], qrels_for_query: Mapping[str, int], k: int) -> float:
    """Share of the relevant documents (grade > 0) found in the top k; 0 when nothing is relevant."""
    relevant = {doc_id for doc_id, grade in qrels_for_query.items() if grade > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(_top_k(ranked_ids, k))) / len(relevant)


_METRICS: dict[str, Callable[[Sequence[str], Mapping[str, int], int], float]] = {
    "ndcg": ndcg_at_k,
    "mrr": mrr_at_k,
    "recall": recall_at_k,
}


def parse_metric(name: str) -> tuple[str, int]:
    """Split `"ndcg@10"` into `("ndcg", 10)`; ValueError for an unknown family or a bad cut-off."""
    family, sep, cutoff = name.partition("@")
    if not sep or family not in _METRICS or not cutoff.isdigit() or int(cutoff) < 1:
        raise ValueError(f"unknown metric {name!r}: expected one of {'/'.join(_FAMILIES)} followed by @k")
    return family, int(cutoff)


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    """Per-query values and means for each metric name (e.g. `ndcg@10`), queries in qrels order."""

    metrics: tuple[str, ...]
    per_query: Mapping[str, Mapping[str, float]]
    means: Mapping[str, float]
    missing: tuple[str, ...] = ()  # judged queries absent from the run (scored 0)

    @property
    def query_ids(self) -> tuple[str, ...]:
        return tuple(self.per_query)


def evaluate(run: Run, qrels: Qrels, ks: Sequence[int] = (10, 100), *, metrics: Sequence[str] = ()) -> Report:
    """Score `run` against `qrels`: every metric family at every k in `ks`, or exactly `metrics` if given.

    Queries without a relevant judgment (grade > 0) are skipped; judged queries absent from `run` score 0.
    """
    names = tuple(metrics) or tuple(f"{family}@{k}" for family in _FAMILIES for k in ks)
    parsed = [(name, *parse_metric(name)) for name in names]
    per_query: dict[str, dict[str, float]] = {}
    missing: list[str] = []
    for qid, judged in qrels.items():
        if not any(grade > 0 for grade in judged.values()):
            continue
        if qid not in run:
            missing.append(qid)
        ranked = run.get(qid, ())
        per_query[qid] = {name: _METRICS[family](ranked, judged, k) for name, family, k in parsed}
    means = {
        name: (
            math.fsum(values[name] for values in per_query.values()) / len(per_query) if per_query else 0.0
        )
        for name in names
    }
    return Report(metrics=names, per_query=per_query, means=means, missing=tuple(missing))


@dataclass(frozen=True, slots=True, kw_only=True)
class Comparison:
    """Candidate minus baseline on one metric; a tie is |difference| < 1e-9."""

    metric: str
    baseline_mean: float
    candidate_mean: float
    mean_difference: float
    per_query: Mapping[str, float]
    wins: int
    ties: int
    losses: int


def compare(baseline: Report, candidate: Report, metric: str = "ndcg@10") -> Comparison:
    """Per-query wins/ties/losses of `candidate` over `baseline`; both must cover the same queries."""
    if set(baseline.per_query) != set(candidate.per_query):
        raise ValueError("the two reports cover different queries; evaluate both against the same qrels")
    if metric not in baseline.means or metric not in candidate.means:
        raise ValueError(f"metric {metric!r} is not in both reports")
    diffs = {
        qid: candidate.per_query[qid][metric] - values[metric] for qid, values in baseline.per_query.items()
    }
    wins = sum(1 for d in diffs.values() if d >= TIE_TOLERANCE)
    losses = sum(1 for d in diffs.values() if d <= -TIE_TOLERANCE)
    return Comparison(
        metric=metric,
        baseline_mean=baseline.means[metric],
        candidate_mean=candidate.means[metric],
        mean_difference=math.fsum(diffs.values()) / len(diffs) if diffs else 0.0,
        per_query=diffs,
        wins=wins,
        ties=len(diffs) - wins - losses,
        losses=losses,
    )
