"""The search pipeline: choose the mode, answer the client's page, forward what cannot be kept exact.

Decisions are made by the pure modules (`plan`, `msearch`, `page`, `blend`, `canary`); `search_run` computes
a search's result without answering, so shadow mode reuses exactly the live computation; this module turns
results into answers, and any fault nobody planned for into the client's own request, forwarded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import orjson

from ..edge import http_io
from ..edge.exchange import Answer, BodyTooLarge, ClientRequest, Exchange, upstream_error_answer
from ..edge.upstream import Elasticsearch
from ..model.scoring import Scorer
from ..observe.fault_log import FaultLog
from ..observe.record import SearchRecord
from ..rollout import canary
from . import ubi_tap
from .endpoint import SearchEndpoint
from .guard import header_list
from .plan import Bypass
from .result import Done as Done
from .result import EsAnswer as EsAnswer
from .result import Failed as Failed
from .result import Result as Result
from .search_run import SearchRun
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
    # Called as each search ends, before its answer is written: the runtime's defers the work
    # (observe.deferred), so the client never waits for it.
    observe: Observer = field(default=lambda record: None)
    wall_clock: Callable[[], datetime] = field(default=lambda: datetime.now(timezone.utc))
    # Shadow work is handed to this; it answers why it refused the work, or None when it started it.
    start_shadow: StartShadow | None = None
    faults: FaultLog = field(default_factory=lambda: FaultLog(log))
    record_query: ubi_tap.Sink | None = None  # takes each UBI query record; must not block

    async def handle(self, exchange: Exchange, endpoint: SearchEndpoint) -> None:
        """Answer the client's search: reranked, or Elasticsearch's own answer to its request."""
        settings = self.settings()
        record = SearchRecord(kind=endpoint.kind, indices=endpoint.indices)
        request = exchange.request
        limit = settings.config.server.max_search_body_bytes
        try:
            raw = await exchange.read_body(limit)
        except BodyTooLarge:
            record.reason = "body_too_large"
            self._finish(record)
            reason = f"search body larger than {limit} bytes"
            exchange.send(http_io.es_error_answer(413, "content_too_long_exception", reason))
            return
        body = http_io.decode_body(raw, request.headers, limit)
        try:
            address = canary.client_address(
                request.remote,
                ",".join(request.headers.getall("X-Forwarded-For", [])) or None,
                ",".join(request.headers.getall("Forwarded", [])) or None,
                settings.canary,
            )
            record.client_address = address
            decision = canary.choose_mode(
                settings.canary,
                address,
                endpoint.indices,
                http_io.readable_header(request.headers.get("X-Rerank-Mode")),
                http_io.readable_header(request.headers.get("X-Rerank-Token")),
            )
            record.mode = decision.mode
            tap = self._open_tap(endpoint, body, request, settings)
            if tap is None:
                await self._forward(exchange, body, record, "skipped", "proxy_error")
                return
            body, query_tap = tap
            record.query_id = query_tap.header
            result, answer = await self._route(
                exchange, endpoint, body, settings, record, decision.mode, query_tap
            )
            self._record_ubi(query_tap, decision.mode, answer, result, record)
        finally:
            self._finish(record)

    async def _route(
        self,
        exchange: Exchange,
        endpoint: SearchEndpoint,
        body: http_io.Body,
        settings: Settings,
        record: SearchRecord,
        mode: str,
        tap: ubi_tap.QueryTap,
    ) -> tuple[Result | None, Answer]:
        """The result (None when not computed) and the answer the client was given."""
        if mode == "off":
            return None, await self._forward(exchange, body, record, "skipped", "canary_off")
        if body.decoded is None:
            return None, await self._forward(exchange, body, record, "skipped", body.refusal)
        if mode == "shadow":
            answer = await self._forward(exchange, body, record, "shadow", None)
            self._shadow(exchange.request, endpoint, body.decoded, settings, record.client_address)
            return None, answer
        computed = await self._answer(exchange.request, endpoint, body.decoded, settings, record, mode, tap)
        if isinstance(computed, Bypass):
            return computed, await self._forward(exchange, body, record, "skipped", computed.reason)
        result, answer = computed
        exchange.send(answer)
        return result, answer

    async def _answer(
        self,
        request: ClientRequest,
        endpoint: SearchEndpoint,
        decoded: bytes,
        settings: Settings,
        record: SearchRecord,
        mode: str,
        tap: ubi_tap.QueryTap,
    ) -> tuple[Result, Answer] | Bypass:
        """The reranked answer, ready to send; or why the client's own request should go instead.

        Nothing has been sent to the client yet, so an exception nobody planned for (a bug, a body shape
        nobody foresaw) still leaves the honest fallback: Elasticsearch answers the request as sent.
        """
        try:
            meta = http_io.SearchRequest.capture(request)
            interleave = tap.ubi_query_ids() if mode == "interleave" else None
            result = await self.computation.run(
                meta, endpoint, decoded, settings, record, interleave=interleave
            )
            return result if isinstance(result, Bypass) else (result, self._respond(meta, result, record))
        except Exception as exc:
            self.faults.report(exc, f"reranking a {endpoint.kind}")
            return Bypass("proxy_error")

    def _open_tap(
        self, endpoint: SearchEndpoint, body: http_io.Body, request: ClientRequest, settings: Settings
    ) -> tuple[http_io.Body, ubi_tap.QueryTap] | None:
        """The body without `ext.ubi` and its query records' ids; None when that failed unplanned."""
        ubi_cfg = settings.config.ubi
        try:
            return ubi_tap.open_tap(
                endpoint.kind, body, request, record=ubi_cfg.record, record_all=ubi_cfg.record_all
            )
        except Exception as exc:
            self.faults.report(exc, f"reading ext.ubi of a {endpoint.kind}")
            return None

    def _record_ubi(
        self,
        tap: ubi_tap.QueryTap,
        mode: str,
        answer: Answer,
        result: Result | None,
        record: SearchRecord,
    ) -> None:
        """Hand the query records to the recorder; the answer is ready and nothing here may spoil it."""
        try:
            done = result if isinstance(result, Done) else None
            ubi_tap.schedule_records(tap, self.record_query, mode, answer, done, record, self.wall_clock)
        except Exception as exc:
            self.faults.report(exc, "recording a UBI query")

    @property
    def computation(self) -> SearchRun:
        """What computes a search's result, live or shadow, with the current Elasticsearch and scorer."""
        return SearchRun(self.es, self.scorer, self.wall_clock)

    # --- answering ----------------------------------------------------------------------------------

    def _respond(
        self, meta: http_io.SearchRequest, result: EsAnswer | Failed | Done, record: SearchRecord
    ) -> Answer:
        if isinstance(result, Failed):
            record.outcome, record.reason = "error", "elasticsearch_unavailable"
            return upstream_error_answer(result.error)
        if isinstance(result, EsAnswer):
            record.outcome, record.reason = "skipped", "elasticsearch_error"
            extra = {RERANK_HEADER: "skipped", REASON_HEADER: "elasticsearch_error"}
            return http_io.raw_answer(result.status, result.headers, result.payload, extra)
        extra = {RERANK_HEADER: header_list(result.outcomes), "Server-Timing": record.server_timing()}
        if record.query_id:
            extra[ubi_tap.QUERY_ID_HEADER] = record.query_id
        if any(result.reasons):
            extra[REASON_HEADER] = header_list([reason or "-" for reason in result.reasons])
        return http_io.json_answer(meta.accepts_gzip, result.headers, orjson.dumps(result.body), extra)

    async def _forward(
        self,
        exchange: Exchange,
        body: http_io.Body,
        record: SearchRecord,
        outcome: str,
        reason: str | None,
    ) -> Answer:
        """The client's own request, untouched, to Elasticsearch; its answer, untouched, back."""
        record.outcome, record.reason = outcome, reason
        headers = {RERANK_HEADER: outcome}
        if reason:
            headers[REASON_HEADER] = reason
        if record.query_id:
            headers[ubi_tap.QUERY_ID_HEADER] = record.query_id
        return await exchange.forward(self.es, body.raw, headers)

    def _finish(self, record: SearchRecord) -> None:
        record.total_s = time.perf_counter() - record.started
        try:
            self.observe(record)
        except Exception:  # observability must never fail a search
            log.exception("search observer failed")

    # --- shadow --------------------------------------------------------------------------------------

    def _shadow(
        self,
        request: ClientRequest,
        endpoint: SearchEndpoint,
        decoded: bytes,
        settings: Settings,
        client: canary.IPAddress | None,
    ) -> None:
        """Rerank in the background what was just answered in Elasticsearch's order, to compare the two."""
        if self.start_shadow is None:
            return
        record = SearchRecord(endpoint.kind, endpoint.indices, client_address=client, mode="shadow")
        record.phase = "shadow"
        meta = http_io.SearchRequest.capture(request)

        async def work() -> None:
            try:
                result = await self.computation.run(meta, endpoint, decoded, settings, record, shadow=True)
                if isinstance(result, Bypass):
                    record.outcome, record.reason = "skipped", result.reason
                elif not isinstance(result, Done):
                    record.outcome, record.reason = "error", "elasticsearch_error"
            except Exception as exc:  # the client has its answer; a bug here must only be reported
                self.faults.report(exc, f"shadow-reranking a {endpoint.kind}")
                record.outcome, record.reason = "error", "proxy_error"
            finally:
                self._finish(record)

        refusal = self.start_shadow(work)
        if refusal is not None:
            record.outcome, record.reason = "dropped", refusal
            self._finish(record)
