"""The search pipeline: recall the window from Elasticsearch, rerank the top hits, answer the client's page.

Decisions are made by the pure modules (`search`, `blend`, `canary`); this module does the I/O between
them and measures it. A model failure never fails the search: the answer then keeps the prior order.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import parse_qsl, quote, urlencode

import orjson
from aiohttp import hdrs, web
from multidict import CIMultiDict

from . import blend, canary, msearch, page, passthrough, search
from .config import Config
from .errors import UpstreamError
from .order_stats import mean_position_change
from .scoring import ScoreDoc, Scorer
from .upstream import Elasticsearch, forwardable_request_headers, forwardable_response_headers

log = logging.getLogger(__name__)

RERANK_HEADER = "X-Rerank"
REASON_HEADER = "X-Rerank-Reason"

# Request headers that describe the client's body; the recall request carries a body of its own.
_BODY_HEADERS = (hdrs.CONTENT_LENGTH, hdrs.CONTENT_ENCODING, hdrs.ACCEPT_ENCODING)


@dataclass(frozen=True, slots=True)
class Settings:
    """What the pipeline derives from one Config: computed once per (re)load, not per request."""

    config: Config
    canary: canary.CanaryRules
    needed: search.NeededFields
    model_key: str

    @classmethod
    def from_config(cls, config: Config) -> Settings:
        reranker = config.reranker
        key = "\x1f".join(
            (
                reranker.api,
                reranker.model,
                reranker.prompt_format,
                config.rerank.instruction,
                reranker.passage_prefix,
            )
        )
        return cls(
            config=config,
            canary=canary.compile_canary(config.canary),
            needed=search.NeededFields(
                text_fields=config.rerank.text_fields,
                date_field=config.blend.recency.field if config.blend.weights.recency > 0 else "",
                citations_field=config.blend.citations.field if config.blend.weights.citations > 0 else "",
            ),
            model_key=key,
        )


@dataclass(slots=True)
class SearchRecord:
    """One search as the logs and metrics see it."""

    kind: str
    indices: tuple[str, ...]
    client: str | None
    mode: str
    outcome: str  # applied | skipped | degraded | shadow | error
    reason: str | None = None
    query_text: str | None = None
    es_s: float = 0.0
    rerank_s: float = 0.0
    total_s: float = 0.0
    documents_sent: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    moved_top10: float | None = None
    searches: int = 1
    started: float = field(default_factory=time.perf_counter)

    def server_timing(self) -> str:
        """`Server-Timing` value: where this search's time went so far, in milliseconds."""
        total = (time.perf_counter() - self.started) * 1000
        return f"es;dur={self.es_s * 1000:.3f}, rerank;dur={self.rerank_s * 1000:.3f}, total;dur={total:.3f}"


@dataclass(slots=True)
class _Reranked:
    page: dict[str, object]
    outcome: str
    reason: str | None
    rerank_s: float
    documents_sent: int
    cache_hits: int
    cache_misses: int
    moved_top10: float | None


@dataclass(slots=True)
class _Body:
    raw: bytes
    decoded: bytes | None  # None: undecodable, Elasticsearch must answer it


Observer = Callable[[SearchRecord], None]


@dataclass(slots=True)
class SearchPipeline:
    """Handles `_search` and `_msearch`; everything it cannot keep exact is forwarded untouched."""

    es: Elasticsearch
    scorer: Scorer
    settings: Callable[[], Settings]
    observe: Observer = field(default=lambda record: None)
    wall_clock: Callable[[], datetime] = field(default=lambda: datetime.now(timezone.utc))
    shadow: Callable[[web.Request, search.SearchEndpoint, _Body, Settings], Awaitable[None]] | None = None

    async def handle(self, request: web.Request, endpoint: search.SearchEndpoint) -> web.StreamResponse:
        settings = self.settings()
        record = SearchRecord(
            kind=endpoint.kind, indices=endpoint.indices, client=None, mode="rerank", outcome="skipped"
        )
        try:
            body = await _read_body(request)
        except web.HTTPRequestEntityTooLarge:
            record.reason = "body_too_large"
            self._finish(record)
            limit = settings.config.server.max_search_body_bytes
            return _es_error(413, "content_too_long_exception", f"search body larger than {limit} bytes")
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
        try:
            if decision.mode == "off":
                return await self._bypass(request, body, "canary_off", record)
            if body.decoded is None:
                return await self._bypass(request, body, "undecodable_body", record)
            if decision.mode == "shadow" and self.shadow is not None:
                record.outcome = "shadow"
                response = await passthrough.forward(
                    request, self.es, body=body.raw, extra_headers={RERANK_HEADER: "shadow"}
                )
                await self.shadow(request, endpoint, body, settings)
                return response
            if endpoint.kind == "search":
                return await self._search(request, endpoint, body, body.decoded, settings, record)
            return await self._msearch(request, endpoint, body, body.decoded, settings, record)
        finally:
            self._finish(record)

    def _finish(self, record: SearchRecord) -> None:
        record.total_s = time.perf_counter() - record.started
        try:
            self.observe(record)
        except Exception:  # observability must never fail a search
            log.exception("search observer failed")

    async def _bypass(
        self, request: web.Request, body: _Body, reason: str, record: SearchRecord
    ) -> web.StreamResponse:
        record.outcome, record.reason = "skipped", reason
        headers = {RERANK_HEADER: "skipped", REASON_HEADER: reason}
        return await passthrough.forward(request, self.es, body=body.raw, extra_headers=headers)

    # --- _search -------------------------------------------------------------------------------------

    async def _search(
        self,
        request: web.Request,
        endpoint: search.SearchEndpoint,
        body: _Body,
        decoded: bytes,
        settings: Settings,
        record: SearchRecord,
    ) -> web.StreamResponse:
        rerank_cfg = settings.config.rerank
        if not search.indices_match(endpoint.indices, rerank_cfg.indices):
            return await self._bypass(request, body, "index_not_configured", record)
        params = dict(parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True))
        plan = search.plan_search(
            decoded,
            params,
            endpoint.indices,
            rerank_cfg,
            settings.needed,
            request.headers.get("X-Rerank-Query"),
        )
        if isinstance(plan, search.Bypass):
            return await self._bypass(request, body, plan.reason, record)
        record.query_text = plan.query_text
        path = request.rel_url.raw_path + _query_string(plan.recall_params)
        recalled = await self._recall(request, path, plan.recall_body, record)
        if isinstance(recalled, web.Response):
            return recalled
        es_headers, payload = recalled
        es_response = _json_object(payload)
        if es_response is None or _hits_list(es_response) is None:
            # Not the answer shape we know how to keep exact: ask again with the client's own request.
            return await self._bypass(request, body, "unexpected_response", record)
        reranked = await self._rerank(es_response, plan, settings, request)
        if not _hits_list(es_response):
            # Nothing to rerank, but the window still has to be cut back to the client's page.
            return self._answer(request, es_headers, reranked, record, "skipped", "no_hits")
        return self._answer(request, es_headers, reranked, record)

    def _answer(
        self,
        request: web.Request,
        es_headers: Mapping[str, str],
        reranked: _Reranked,
        record: SearchRecord,
        outcome: str | None = None,
        reason: str | None = None,
    ) -> web.StreamResponse:
        record.outcome = outcome or reranked.outcome
        record.reason = reason or reranked.reason
        record.rerank_s = reranked.rerank_s
        record.documents_sent = reranked.documents_sent
        record.cache_hits, record.cache_misses = reranked.cache_hits, reranked.cache_misses
        record.moved_top10 = reranked.moved_top10
        extra = {RERANK_HEADER: record.outcome}
        if record.reason:
            extra[REASON_HEADER] = record.reason
        extra["Server-Timing"] = record.server_timing()
        return _json_response(request, es_headers, orjson.dumps(reranked.page), extra)

    async def _rerank(
        self,
        es_response: dict[str, object],
        plan: search.SearchPlan,
        settings: Settings,
        request: web.Request,
    ) -> _Reranked:
        config = settings.config
        hits = _hits_list(es_response) or []
        data = [page.hit_data(hit, settings.needed) for hit in hits]
        features = [
            blend.HitFeatures(es_score=_score_of(hit), date=item.date, citations=item.citations)
            for hit, item in zip(hits, data, strict=True)
        ]
        prior = blend.plan_prior(features, config.blend, config.rerank.top_n, self.wall_clock())
        scores: dict[int, float] | None = None
        outcome, reason = "applied", None
        rerank_s, sent, hits_cached, misses = 0.0, 0, 0, 0
        if prior.candidates:
            docs = [
                ScoreDoc(
                    doc_id=f"{hits[i].get('_index', '')}/{hits[i].get('_id', '')}",
                    text=page.document_text(data[i], config.rerank.max_doc_chars),
                )
                for i in prior.candidates
            ]
            started = time.perf_counter()
            result = await self.scorer.score(plan.query_text, docs, config.reranker.timeout_ms / 1000)
            rerank_s = time.perf_counter() - started
            sent, hits_cached, misses = result.cache_misses, result.cache_hits, result.cache_misses
            if result.scores is None:
                outcome, reason = "degraded", result.reason or "unavailable"
            else:
                scores = {prior.candidates[position]: score for position, score in result.scores.items()}
        ranking = blend.rank(prior, scores, config.blend)
        explain = request.headers.get("X-Rerank-Explain", "").lower() in ("true", "1", "yes")
        explanations = [c.as_explanation() for c in ranking.components] if explain else None
        answer = page.build_page(es_response, ranking.order, ranking.scores, plan, explanations)
        moved = mean_position_change(ranking.order)
        return _Reranked(answer, outcome, reason, rerank_s, sent, hits_cached, misses, moved)

    async def _recall(
        self, request: web.Request, path: str, body: bytes, record: SearchRecord, *, ndjson: bool = False
    ) -> tuple[Mapping[str, str], bytes] | web.Response:
        """The rewritten request to Elasticsearch; its error, or a transport failure, as the final answer."""
        started = time.perf_counter()
        try:
            status, es_headers, payload = await self.es.fetch(
                request.method, path, _recall_headers(request, ndjson=ndjson), body
            )
        except UpstreamError as exc:
            record.outcome, record.reason = "error", "elasticsearch_unavailable"
            return passthrough.error_response(exc)
        finally:
            record.es_s = time.perf_counter() - started
        if status != 200:
            # Elasticsearch's own answer to the search, exactly: the client sees the error it would have seen.
            record.outcome, record.reason = "skipped", "elasticsearch_error"
            headers = {RERANK_HEADER: "skipped", REASON_HEADER: "elasticsearch_error"}
            return _raw_response(status, es_headers, payload, headers)
        return es_headers, payload

    # --- _msearch ------------------------------------------------------------------------------------

    async def _msearch(
        self,
        request: web.Request,
        endpoint: search.SearchEndpoint,
        body: _Body,
        decoded: bytes,
        settings: Settings,
        record: SearchRecord,
    ) -> web.StreamResponse:
        items = msearch.split_msearch(decoded)
        if isinstance(items, search.Bypass):
            return await self._bypass(request, body, items.reason, record)
        params = dict(parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True))
        header_query = request.headers.get("X-Rerank-Query")
        plans: list[search.SearchPlan | search.Bypass] = []
        for item in items:
            indices = msearch.msearch_item_indices(item, endpoint.indices)
            if not search.indices_match(indices, settings.config.rerank.indices):
                plans.append(search.Bypass("index_not_configured"))
                continue
            plans.append(
                msearch.plan_msearch_item(
                    item, endpoint.indices, params, settings.config.rerank, settings.needed, header_query
                )
            )
        record.searches = len(items)
        reasons = [plan.reason if isinstance(plan, search.Bypass) else "" for plan in plans]
        if all(isinstance(plan, search.Bypass) for plan in plans):
            return await self._bypass(request, body, _summarise(reasons), record)
        lines = [
            (item.header_raw, item.body_raw if isinstance(plan, search.Bypass) else plan.recall_body)
            for item, plan in zip(items, plans, strict=True)
        ]
        recalled = await self._recall(
            request, request.rel_url.raw_path_qs, msearch.join_msearch(lines), record, ndjson=True
        )
        if isinstance(recalled, web.Response):
            return recalled
        es_headers, payload = recalled
        parsed = _json_object(payload)
        responses = parsed.get("responses") if parsed is not None else None
        if parsed is None or not isinstance(responses, list) or len(responses) != len(plans):
            return await self._bypass(request, body, "unexpected_response", record)
        jobs: dict[int, asyncio.Task[_Reranked]] = {}
        for i, plan in enumerate(plans):
            answer = responses[i]
            if (
                isinstance(plan, search.SearchPlan)
                and isinstance(answer, dict)
                and isinstance(_hits_list(answer), list)
            ):
                jobs[i] = asyncio.ensure_future(self._rerank(answer, plan, settings, request))
            elif isinstance(plan, search.SearchPlan):
                # Elasticsearch answered this search with an error: the client gets that error unchanged.
                reasons[i] = "elasticsearch_error"
        outcomes: list[str] = ["skipped"] * len(plans)
        for i, job in jobs.items():
            reranked = await job
            responses[i] = reranked.page
            outcomes[i] = reranked.outcome
            reasons[i] = reranked.reason or ""
            record.rerank_s = max(record.rerank_s, reranked.rerank_s)
            record.documents_sent += reranked.documents_sent
            record.cache_hits += reranked.cache_hits
            record.cache_misses += reranked.cache_misses
        record.outcome = (
            "applied" if "applied" in outcomes else ("degraded" if "degraded" in outcomes else "skipped")
        )
        record.reason = _summarise(reasons) or None
        extra = {RERANK_HEADER: ",".join(outcomes)}
        if any(reasons):
            extra[REASON_HEADER] = ",".join(reason or "-" for reason in reasons)
        extra["Server-Timing"] = record.server_timing()
        return _json_response(request, es_headers, orjson.dumps(parsed), extra)


# --- helpers ---------------------------------------------------------------------------------------------


async def _read_body(request: web.Request) -> _Body:
    raw = await request.read() if request.body_exists else b""
    encoding = request.headers.get(hdrs.CONTENT_ENCODING, "").strip().lower()
    if not encoding or encoding == "identity":
        return _Body(raw, raw)
    try:
        if encoding == "gzip":
            return _Body(raw, gzip.decompress(raw))
        if encoding == "deflate":
            return _Body(raw, zlib.decompress(raw))
    except (OSError, EOFError, zlib.error):
        pass
    return _Body(raw, None)


def _recall_headers(request: web.Request, *, ndjson: bool = False) -> CIMultiDict[str]:
    headers = forwardable_request_headers(request.headers)
    for name in _BODY_HEADERS:
        headers.popall(name, None)
    if ndjson and hdrs.CONTENT_TYPE not in headers:
        headers[hdrs.CONTENT_TYPE] = "application/x-ndjson"
    elif hdrs.CONTENT_TYPE not in headers:
        headers[hdrs.CONTENT_TYPE] = "application/json"
    return headers


def _query_string(params: Mapping[str, str]) -> str:
    return "?" + urlencode(params, quote_via=quote, safe=",*:") if params else ""


def _json_object(payload: bytes) -> dict[str, object] | None:
    try:
        parsed = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _hits_list(response: Mapping[str, object]) -> list[dict[str, object]] | None:
    hits = response.get("hits")
    inner = hits.get("hits") if isinstance(hits, dict) else None
    return inner if isinstance(inner, list) else None


def _score_of(hit: Mapping[str, object]) -> float | None:
    score = hit.get("_score")
    return float(score) if isinstance(score, int | float) and not isinstance(score, bool) else None


def _summarise(reasons: Sequence[str]) -> str:
    return ",".join(reason or "-" for reason in reasons)


def _json_response(
    request: web.Request, es_headers: Mapping[str, str], body: bytes, extra: Mapping[str, str]
) -> web.Response:
    headers = forwardable_response_headers(es_headers)  # type: ignore[arg-type]
    for name in (hdrs.CONTENT_LENGTH, hdrs.CONTENT_ENCODING):
        headers.popall(name, None)
    headers.update(extra)
    response = web.Response(status=200, body=body, headers=headers)
    if "gzip" in request.headers.get(hdrs.ACCEPT_ENCODING, "").lower():
        response.enable_compression(web.ContentCoding.gzip)
    return response


def _raw_response(
    status: int, es_headers: Mapping[str, str], payload: bytes, extra: Mapping[str, str]
) -> web.Response:
    headers = forwardable_response_headers(es_headers)  # type: ignore[arg-type]
    headers.popall(hdrs.CONTENT_LENGTH, None)
    headers.update(extra)
    return web.Response(status=status, body=payload, headers=headers)


def _es_error(status: int, error_type: str, reason: str) -> web.Response:
    from .upstream import error_body

    return web.Response(
        status=status, body=error_body(status, error_type, reason), content_type="application/json"
    )
