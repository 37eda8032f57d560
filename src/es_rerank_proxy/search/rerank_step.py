"""One recalled window reranked: prior, the model's scores for the top candidates, final order, the page."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from ..model.scoring import ScoreDoc, Scorer
from ..observe.record import SearchRecord
from ..rollout.interleave import team_draft
from ..rollout.order_stats import compared_part, mean_position_change
from . import blend, page
from .plan import SearchPlan
from .settings import Settings


@dataclass(slots=True)
class Reranked:
    """The client's page cut from the reordered window, and whether the model's order was applied."""

    page: dict[str, object]
    outcome: str
    reason: str | None
    teams: tuple[str, ...] | None = None  # interleaving: "es" or "rerank" for each hit of the page

    def __init__(
        self,
        page: dict[str, object],
        outcome: str,
        reason: str | None,
        teams: tuple[str, ...] | None = None,
    ) -> None:
        # Written out: mypyc compiles this one, not the one @dataclass generates (tests/test_inits.py).
        self.page = page
        self.outcome = outcome
        self.reason = reason
        self.teams = teams


async def rerank_window(
    es_response: dict[str, object],
    plan: SearchPlan,
    settings: Settings,
    scorer: Scorer,
    now: datetime,
    explain: bool,
    record: SearchRecord,
    interleave_seed: str | None = None,
) -> Reranked:
    """Blend one recalled window, with the model's scores for its top candidates when they come in time.

    `record` collects the model time, cache counts and, when applied, the order for the shadow metrics.
    With `interleave_seed` the page is cut from a team-draft interleaving of Elasticsearch's order and
    the reranked one instead (a degraded rerank: Elasticsearch's order, no teams).
    """
    config = settings.config
    hits = hits_list(es_response) or []
    features = page.feature_columns(hits, settings.features)
    prior = blend.prior_from_columns(*features, config.blend, config.rerank.top_n, now)
    scores: dict[int, float] | None = None
    outcome, reason = "applied", None
    if prior.candidates:
        docs = [
            ScoreDoc(
                doc_id=f"{hits[i].get('_index', '')}/{hits[i].get('_id', '')}",
                text=page.model_text(hits[i], settings.texts, config),
            )
            for i in prior.candidates
        ]
        started = time.perf_counter()
        result = await scorer.score(plan.query_text, docs, config.reranker.timeout_ms / 1000)
        record.rerank_s = max(record.rerank_s, time.perf_counter() - started)
        record.documents_sent += result.cache_misses
        record.cache_hits += result.cache_hits
        record.shared_cache_hits += result.shared_hits
        record.cache_misses += result.cache_misses
        if result.scores is None:
            outcome, reason = "degraded", result.reason or "unavailable"
        else:
            scores = {prior.candidates[position]: score for position, score in result.scores.items()}
    ranking = blend.rank(prior, scores, config.blend)
    explanations = [c.as_explanation() for c in ranking.components] if explain else None
    if interleave_seed is not None:
        return _interleaved(
            es_response, features.es_scores, ranking, plan, explanations, outcome, reason, interleave_seed
        )
    answer = page.build_page(es_response, ranking.order, ranking.scores, plan, explanations)
    if outcome == "applied":
        reranked = sum(1 for item in ranking.components if item.rerank is not None)
        record.orders.append(compared_part(ranking.order, reranked))
        record.moved_top10 = mean_position_change(ranking.order)
    return Reranked(answer, outcome, reason)


def _interleaved(
    es_response: dict[str, object],
    window_scores: Sequence[float | None],
    ranking: blend.Ranking,
    plan: SearchPlan,
    explanations: Sequence[Mapping[str, object]] | None,
    outcome: str,
    reason: str | None,
    seed: str,
) -> Reranked:
    """The page cut from the interleaved window; hits keep Elasticsearch's scores, as neither order's
    scores are monotone in the mixed list."""
    es_order = list(range(len(window_scores)))
    es_scores = [score if score is not None else 0.0 for score in window_scores]
    if outcome != "applied":
        answer = page.build_page(es_response, es_order, es_scores, plan, explanations)
        return Reranked(answer, outcome, reason)
    merged = team_draft(es_order, list(ranking.order), seed)
    order = [index for index, _ in merged]
    answer = page.build_page(es_response, order, [es_scores[i] for i in order], plan, explanations)
    shown = merged[plan.client_from : plan.client_from + plan.client_size]
    return Reranked(answer, outcome, reason, tuple(team for _, team in shown))


def hits_list(response: object) -> list[dict[str, object]] | None:
    """`hits.hits` of a search response, or None when it has no such list."""
    hits = response.get("hits") if isinstance(response, dict) else None
    inner = hits.get("hits") if isinstance(hits, dict) else None
    return inner if isinstance(inner, list) else None
