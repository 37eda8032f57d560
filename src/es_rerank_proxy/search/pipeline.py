"""The search pipeline: recall the window from Elasticsearch, rerank the top hits, answer the client's page.

Decisions are made by the pure modules (`search`, `msearch`, `page`, `blend`, `canary`); this module does
the I/O between them and measures it. A model failure never fails the search: the answer keeps the prior
order. `run` computes a result without answering, so shadow mode can reuse exactly the live computation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

import orjson
from aiohttp import web
from multidict import CIMultiDictProxy

from ..edge import http_io, passthrough
from ..edge.upstream import Elasticsearch
from ..errors import UpstreamError
from ..model.scoring import Scorer
from ..observe.record import SearchRecord
from ..rollout import canary
from ..rollout.interleave import query_seed
from . import msearch, rerank_step, ubi_tap
from .plan import Bypass, SearchEndpoint, SearchPlan, plan_search, shadow_plan
from .result import Done as Done
from .result import EsAnswer as EsAnswer
from .result import Failed as Failed
from .result import Result as Result
from .settings import Settings

log = logging.getLogger(__name__)

RERANK_HEADER = "X-Rerank"
REASON_HEADER = "X-Rerank-Reason"


Observer = Callable[[SearchRecord], None]
StartShadow = Callable[[Callable[[], Awaitable[None]]], str | None]  # the refusal, if any


@dataclass(slots=True)
class SearchPipeline:
    """Handles `_search` and `_msearch`; everything it cannot keep exact is forwarded untouched."""

    es: Elasticsearch
    scorer: Scorer
    settings: Callable[[], Settings]
    observe: Observer = field(default=lambda record: None)
    wall_clock: Callable[[], datetime] = field(default=lambda: datetime.now(timezone.utc))
    # Shadow work is handed to this; it answers why it refused the work, or None when it started it.
    start_shadow: StartShadow | None = None
    record_query: ubi_tap.Sink | None = None  # takes each UBI query record; must not block

    async def handle(self, request: web.Request, endpoint: SearchEndpoint) -> web.StreamResponse:
        settings = self.settings()
        record = SearchRecord(kind=endpoint.kind, indices=endpoint.indices)
        try:
            body = await http_io.read_body(request)
        except web.HTTPRequestEntityTooLarge:
            record.reason = "body_too_large"
            self._finish(record)
            limit = settings.config.server.max_search_body_bytes
            return http_io.es_error(
                413, "content_too_long_exception", f"search body larger than {limit} bytes"
            )
        address = canary.client_address(
            request.remote,
            ",".join(request.headers.getall("X-Forwarded-For", [])) or None,
            ",".join(request.headers.getall("Forwarded", [])) or None,
            settings.canary,
        )
        record.client = str(address) if address is not None else None
        decision = canary.choose_mode(
            settings.canary,
            address,
            endpoint.indices,
            request.headers.get("X-Rerank-Mode"),
            request.headers.get("X-Rerank-Token"),
        )
        record.mode = decision.mode
        ubi_cfg = settings.config.ubi
        body, tap = ubi_tap.open_tap(
            endpoint.kind, body, request, record=ubi_cfg.record, record_all=ubi_cfg.record_all
        )
        record.query_id = tap.header
        try:
            result, response = await self._answer(
                request, endpoint, body, settings, record, decision.mode, tap
            )
            done = result if isinstance(result, Done) else None
            ubi_tap.schedule_records(
                tap, self.record_query, decision.mode, response, done, record, self.wall_clock()
            )
            return response
        finally:
            self._finish(record)

    async def _answer(
        self,
        request: web.Request,
        endpoint: SearchEndpoint,
        body: http_io.Body,
        settings: Settings,
        record: SearchRecord,
        mode: str,
        tap: ubi_tap.QueryTap,
    ) -> tuple[Result | None, web.StreamResponse]:
        if mode == "off":
            return None, await self._forward(request, body, record, "skipped", "canary_off")
        if body.decoded is None:
            return None, await self._forward(request, body, record, "skipped", "undecodable_body")
        meta = http_io.SearchRequest.capture(request)
        if mode == "shadow":
            response = await self._forward(request, body, record, "shadow", None)
            self._shadow(meta, endpoint, body.decoded, settings, record.client)
            return None, response
        interleave = tap.ubi_query_ids() if mode == "interleave" else None
        result = await self.run(meta, endpoint, body.decoded, settings, record, interleave=interleave)
        return result, await self._respond(request, meta, body, result, record)

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

    # --- answering ----------------------------------------------------------------------------------

    async def _respond(
        self,
        request: web.Request,
        meta: http_io.SearchRequest,
        body: http_io.Body,
        result: Result,
        record: SearchRecord,
    ) -> web.StreamResponse:
        if isinstance(result, Bypass):
            return await self._forward(request, body, record, "skipped", result.reason)
        if isinstance(result, Failed):
            record.outcome, record.reason = "error", "elasticsearch_unavailable"
            return passthrough.error_response(result.error)
        if isinstance(result, EsAnswer):
            record.outcome, record.reason = "skipped", "elasticsearch_error"
            extra = {RERANK_HEADER: "skipped", REASON_HEADER: "elasticsearch_error"}
            return http_io.raw_response(result.status, result.headers, result.payload, extra)
        extra = {RERANK_HEADER: ",".join(result.outcomes), "Server-Timing": record.server_timing()}
        if record.query_id:
            extra[ubi_tap.QUERY_ID_HEADER] = record.query_id
        if any(result.reasons):
            extra[REASON_HEADER] = ",".join(reason or "-" for reason in result.reasons)
        return http_io.json_response(meta.accepts_gzip, result.headers, orjson.dumps(result.body), extra)

    async def _forward(
        self, request: web.Request, body: http_io.Body, record: SearchRecord, outcome: str, reason: str | None
    ) -> web.StreamResponse:
        """The client's own request, untouched, to Elasticsearch; its answer, untouched, back."""
        record.outcome, record.reason = outcome, reason
        headers = {RERANK_HEADER: outcome}
        if reason:
            headers[REASON_HEADER] = reason
        if record.query_id:
            headers[ubi_tap.QUERY_ID_HEADER] = record.query_id
        return await passthrough.forward(request, self.es, body=body.raw, extra_headers=headers)

    def _finish(self, record: SearchRecord) -> None:
        record.total_s = time.perf_counter() - record.started
        # Metrics and the log line run once the answer is on its way: the client never waits for them.
        asyncio.get_running_loop().call_soon(self._observe, record)

    def _observe(self, record: SearchRecord) -> None:
        try:
            self.observe(record)
        except Exception:  # observability must never fail a search
            log.exception("search observer failed")

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
        items = msearch.split_msearch(decoded)
        if isinstance(items, Bypass):
            return items
        rerank_cfg = settings.config.rerank
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
        for i, job in jobs.items():
            reranked = await job
            responses[i] = reranked.page
            outcomes[i], reasons[i], teams[i] = reranked.outcome, reranked.reason or "", reranked.teams
        record.outcome = next((o for o in ("applied", "degraded") if o in outcomes), "skipped")
        record.reason = _summarise(reasons) if any(reasons) else None
        return Done(es_headers, parsed, tuple(outcomes), tuple(reasons), tuple(teams))

    # --- shadow --------------------------------------------------------------------------------------

    def _shadow(
        self,
        meta: http_io.SearchRequest,
        endpoint: SearchEndpoint,
        decoded: bytes,
        settings: Settings,
        client: str | None,
    ) -> None:
        """Rerank in the background what was just answered in Elasticsearch's order, to compare the two."""
        if self.start_shadow is None:
            return
        record = SearchRecord(kind=endpoint.kind, indices=endpoint.indices, client=client, mode="shadow")
        record.phase = "shadow"

        async def work() -> None:
            try:
                result = await self.run(meta, endpoint, decoded, settings, record, shadow=True)
                if isinstance(result, Bypass):
                    record.outcome, record.reason = "skipped", result.reason
                elif not isinstance(result, Done):
                    record.outcome, record.reason = "error", "elasticsearch_error"
            finally:
                self._finish(record)

        refusal = self.start_shadow(work)
        if refusal is not None:
            record.outcome, record.reason = "dropped", refusal
            self._finish(record)


def _seed(
    interleave: Sequence[str | None] | None, i: int, plan: SearchPlan, record: SearchRecord
) -> str | None:
    """The interleaving seed of search `i` (None: rerank, not interleave)."""
    if interleave is None:
        return None
    return query_seed(interleave[i] if i < len(interleave) else None, plan.query_text, record.client)


def _summarise(reasons: Sequence[str]) -> str:
    return ",".join(reason or "-" for reason in reasons)
