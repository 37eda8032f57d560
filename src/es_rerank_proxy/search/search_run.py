"""One search computed without answering anyone: plan, recall the window, rerank it, cut the page.

`SearchRun.run` is the live computation and, unchanged, the shadow one; `pipeline` answers the client with
its result. A model failure never fails the search: the result keeps the prior order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from multidict import CIMultiDictProxy

from ..edge import http_io
from ..edge.upstream import Elasticsearch
from ..errors import UpstreamError
from ..model.scoring import Scorer
from ..observe.record import SearchRecord
from ..rollout.interleave import query_seed
from . import msearch, rerank_step
from .endpoint import SearchEndpoint
from .guard import msearch_searches
from .plan import Bypass, SearchPlan, plan_search, shadow_plan
from .result import Done, EsAnswer, Failed, Result
from .settings import Settings


@dataclass(frozen=True, slots=True)
class SearchRun:
    """Recalls from Elasticsearch and reranks with the scorer; nothing here writes to a client."""

    es: Elasticsearch
    scorer: Scorer
    wall_clock: Callable[[], datetime]

    def __init__(self, es: Elasticsearch, scorer: Scorer, wall_clock: Callable[[], datetime]) -> None:
        # Written out: mypyc compiles this one, not the one @dataclass generates (tests/test_inits.py).
        object.__setattr__(self, "es", es)
        object.__setattr__(self, "scorer", scorer)
        object.__setattr__(self, "wall_clock", wall_clock)

    async def run(
        self,
        meta: http_io.SearchRequest,
        endpoint: SearchEndpoint,
        decoded: bytes,
        settings: Settings,
        record: SearchRecord,
        *,
        shadow: bool = False,
        interleave: Sequence[str | None] | None = None,
    ) -> Result:
        """Plan, recall and rerank one request; nothing is sent to the client here.

        A `shadow` run recalls only what decides the reranked order (shadow_plan): its answer has
        already been sent, and every extra millisecond of Elasticsearch's time is taken from live searches.
        `interleave` (the UBI query id of each search, where known) interleaves instead of reranking.
        """
        if endpoint.kind == "search":
            return await self._run_search(meta, endpoint, decoded, settings, record, shadow, interleave)
        return await self._run_msearch(meta, endpoint, decoded, settings, record, shadow, interleave)

    # --- _search -------------------------------------------------------------------------------------

    async def _run_search(
        self,
        meta: http_io.SearchRequest,
        endpoint: SearchEndpoint,
        decoded: bytes,
        settings: Settings,
        record: SearchRecord,
        shadow: bool,
        interleave: Sequence[str | None] | None,
    ) -> Result:
        plan = plan_search(
            decoded, meta.params, endpoint.indices, settings.config.rerank, settings.needed, meta.header_query
        )
        if isinstance(plan, Bypass):
            return plan
        if shadow:
            plan = shadow_plan(plan, settings.needed)
        record.query_text = plan.query_text
        path = meta.raw_path + http_io.query_string(plan.recall_params)
        recalled = await self._recall(meta, path, plan.recall_body, record)
        if not isinstance(recalled, tuple):
            return recalled
        es_headers, es_response = recalled
        if rerank_step.hits_list(es_response) is None:
            # Not the answer shape we know how to keep exact: ask again with the client's own request.
            return Bypass("unexpected_response")
        seed = _seed(interleave, 0, plan, record)
        reranked = await rerank_step.rerank_window(
            es_response, plan, settings, self.scorer, self.wall_clock(), meta.explain, record, seed
        )
        if not rerank_step.hits_list(es_response):
            # Nothing to rerank, but the window still has to be cut back to the client's page.
            reranked.outcome, reranked.reason = "skipped", "no_hits"
        record.outcome, record.reason = reranked.outcome, reranked.reason
        return Done(
            es_headers, reranked.page, (reranked.outcome,), (reranked.reason or "",), (reranked.teams,)
        )

    async def _recall(
        self,
        meta: http_io.SearchRequest,
        path: str,
        body: bytes,
        record: SearchRecord,
        *,
        ndjson: bool = False,
    ) -> tuple[CIMultiDictProxy[str], dict[str, object]] | EsAnswer | Failed | Bypass:
        """The rewritten request to Elasticsearch and its parsed answer."""
        started = time.perf_counter()
        try:
            status, headers, payload = await self.es.fetch(
                meta.method, path, meta.recall_headers(ndjson=ndjson), body
            )
        except UpstreamError as exc:
            return Failed(exc)
        finally:
            record.es_s += time.perf_counter() - started
        if status != 200:
            return EsAnswer(status, headers, payload)
        parsed = http_io.json_object(payload)
        if parsed is None:
            return Bypass("unexpected_response")
        return headers, parsed

    # --- _msearch ------------------------------------------------------------------------------------

    async def _run_msearch(
        self,
        meta: http_io.SearchRequest,
        endpoint: SearchEndpoint,
        decoded: bytes,
        settings: Settings,
        record: SearchRecord,
        shadow: bool,
        interleave: Sequence[str | None] | None,
    ) -> Result:
        rerank_cfg = settings.config.rerank
        if msearch_searches(decoded) > rerank_cfg.max_msearch_searches:
            return Bypass("msearch_too_large")
        items = msearch.split_msearch(decoded)
        if isinstance(items, Bypass):
            return items
        plans = [
            msearch.plan_msearch_item(
                item, endpoint.indices, meta.params, rerank_cfg, settings.needed, meta.header_query
            )
            for item in items
        ]
        record.searches = len(items)
        reasons = [plan.reason if isinstance(plan, Bypass) else "" for plan in plans]
        if all(isinstance(plan, Bypass) for plan in plans):
            return Bypass(_summarise(reasons))
        if shadow:
            # Only the searches a rerank would change are worth Elasticsearch's time again.
            eligible = [
                (item, shadow_plan(plan, settings.needed))
                for item, plan in zip(items, plans, strict=True)
                if isinstance(plan, SearchPlan)
            ]
            items, plans = [item for item, _ in eligible], [plan for _, plan in eligible]
            reasons = [""] * len(plans)
        lines = [
            (item.header_raw, item.body_raw if isinstance(plan, Bypass) else plan.recall_body)
            for item, plan in zip(items, plans, strict=True)
        ]
        recalled = await self._recall(
            meta, meta.raw_path_qs, msearch.join_msearch(lines), record, ndjson=True
        )
        if not isinstance(recalled, tuple):
            return recalled
        es_headers, parsed = recalled
        responses = parsed.get("responses")
        if not isinstance(responses, list) or len(responses) != len(plans):
            return Bypass("unexpected_response")
        jobs: dict[int, asyncio.Task[rerank_step.Reranked]] = {}
        for i, plan in enumerate(plans):
            if not isinstance(plan, SearchPlan):
                continue
            answer = responses[i]
            window = rerank_step.hits_list(answer)
            if window and isinstance(answer, dict):
                jobs[i] = asyncio.ensure_future(
                    rerank_step.rerank_window(
                        answer,
                        plan,
                        settings,
                        self.scorer,
                        self.wall_clock(),
                        meta.explain,
                        record,
                        _seed(interleave, i, plan, record),
                    )
                )
            else:  # nothing to rerank; this search's own error keeps its place unchanged
                reasons[i] = "no_hits" if window == [] else "elasticsearch_error"
        outcomes = ["skipped"] * len(plans)
        teams: list[tuple[str, ...] | None] = [None] * len(plans)
        finished = await asyncio.gather(*jobs.values(), return_exceptions=True)
        for failure in finished:
            if isinstance(failure, BaseException):
                raise failure  # every job has ended: none is left running unobserved
        for i, reranked in zip(jobs, finished, strict=True):
            assert not isinstance(reranked, BaseException)
            responses[i] = reranked.page
            outcomes[i], reasons[i], teams[i] = reranked.outcome, reranked.reason or "", reranked.teams
        record.outcome = next((o for o in ("applied", "degraded") if o in outcomes), "skipped")
        record.reason = _summarise(reasons) if any(reasons) else None
        return Done(es_headers, parsed, tuple(outcomes), tuple(reasons), tuple(teams))


def _seed(
    interleave: Sequence[str | None] | None, i: int, plan: SearchPlan, record: SearchRecord
) -> str | None:
    """The interleaving seed of search `i` (None: rerank, not interleave)."""
    if interleave is None:
        return None
    return query_seed(interleave[i] if i < len(interleave) else None, plan.query_text, record.client)


def _summarise(reasons: Sequence[str]) -> str:
    return ",".join(reason or "-" for reason in reasons)
