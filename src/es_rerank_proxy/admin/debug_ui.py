"""The side-by-side debug page on the admin listener: Elasticsearch's order next to the proxy's.

`GET /_rerank/ui` serves a static page (`static/`); `POST /_rerank/compare` runs the real pipeline with
the weights asked for and answers both orders. Staff-only: the canary does not apply, nothing is counted.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TypedDict
from urllib.parse import quote

import orjson
from aiohttp import hdrs, web
from multidict import CIMultiDict

from ..config import BlendWeights, Config
from ..edge import http_io
from ..edge.upstream import upstream_error_status
from ..errors import UpstreamError
from ..observe.record import SearchRecord
from ..runtime import Runtime
from ..search import page, pipeline
from ..search.endpoint import classify_endpoint
from ..search.plan import NeededFields
from ..search.settings import Settings

WEIGHT_NAMES = ("rerank", "bm25", "recency", "citations")
COMPONENT_NAMES = ("es_score", "rerank", "bm25", "recency", "citations", "prior", "final")
# i18n.json: the page's labels in each language it speaks (English, Chinese), read by ui.js.
_STATIC_TYPES = {
    "ui.html": "text/html",
    "ui.css": "text/css",
    "ui.js": "text/javascript",
    "i18n.json": "application/json",
}
_DEFAULT_SIZE = 20


class CompareHit(TypedDict):
    id: str
    index: str
    title: str
    es_rank: int  # 0-based position in Elasticsearch's order
    rank: int  # 0-based position in the proxy's order
    moved: int | str  # es_rank - rank (up is positive); "new" / "out" when outside the other top `size`
    components: dict[str, float | None]


class InvalidField(ValueError):
    """A compare request field is wrong; the message starts with the field's name."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field


@dataclass(frozen=True, slots=True)
class CompareRequest:
    index: str
    query: str
    size: int
    weights: BlendWeights


def parse_compare(payload: object, config: Config) -> CompareRequest:
    """Validate a compare request; omitted weights are the config's, weights not named in `weights` are 0."""
    if not isinstance(payload, dict):
        raise InvalidField("body", "expected a JSON object")
    index = payload.get("index")
    if not isinstance(index, str) or not index.strip() or "/" in index:
        raise InvalidField("index", f"expected an index name, got {index!r}")
    query = payload.get("query", "")
    if not isinstance(query, str):
        raise InvalidField("query", f"expected a string, got {query!r}")
    window = config.rerank.window
    size = payload.get("size", min(_DEFAULT_SIZE, window))
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= window:
        raise InvalidField("size", f"expected an integer from 1 to {window}, got {size!r}")
    return CompareRequest(
        index=index.strip(), query=query.strip(), size=size, weights=_weights(payload, config)
    )


def _weights(payload: Mapping[str, object], config: Config) -> BlendWeights:
    raw = payload.get("weights")
    if raw is None:
        return config.blend.weights
    if not isinstance(raw, dict):
        raise InvalidField("weights", "expected an object of rerank, bm25, recency, citations")
    values: dict[str, float] = {}
    for name, value in raw.items():
        if name not in WEIGHT_NAMES:
            raise InvalidField(
                f"weights.{name}", f"unknown weight, expected one of {', '.join(WEIGHT_NAMES)}"
            )
        number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
        if number is None or not math.isfinite(number) or number < 0:
            raise InvalidField(f"weights.{name}", f"expected a number >= 0, got {value!r}")
        values[name] = float(number)
    if not any(values.values()):
        raise InvalidField("weights", "at least one weight must be above 0")
    return BlendWeights(**{name: values.get(name, 0.0) for name in WEIGHT_NAMES})


def search_body(query: str, text_fields: Sequence[str], size: int) -> bytes:
    """The search the page compares: a multi_match over the text fields (match_all without query text)."""
    if not query:
        return orjson.dumps({"query": {"match_all": {}}, "size": size})
    return orjson.dumps(
        {"query": {"multi_match": {"query": query, "fields": list(text_fields)}}, "size": size}
    )


def compare_orders(
    hits: Sequence[Mapping[str, object]], size: int, title_field: str
) -> tuple[list[CompareHit], list[CompareHit]]:
    """Both top-`size` lists from the proxy's explained window (hits in the proxy's order)."""
    rows = [_row(hit, _es_rank(hit, rank), rank, size, title_field) for rank, hit in enumerate(hits)]
    elasticsearch = []
    for row in sorted(rows, key=lambda row: row["es_rank"])[:size]:
        shown = row.copy()
        shown["moved"] = "out" if row["rank"] >= size else row["es_rank"] - row["rank"]
        elasticsearch.append(shown)
    return elasticsearch, rows[:size]


def _row(hit: Mapping[str, object], es_rank: int, rank: int, size: int, title_field: str) -> CompareHit:
    explanation = hit.get("_rerank")
    given = explanation if isinstance(explanation, dict) else {"es_score": hit.get("_score")}
    components = {name: _rounded(given.get(name)) for name in COMPONENT_NAMES}
    needed = NeededFields(text_fields=(title_field,), date_field="", citations_field="")
    texts = page.hit_data(hit, needed).texts
    return CompareHit(
        id=str(hit.get("_id", "")),
        index=str(hit.get("_index", "")),
        title=texts[0][1] if texts else str(hit.get("_id", "")),
        es_rank=es_rank,
        rank=rank,
        moved="new" if es_rank >= size else es_rank - rank,
        components=components,
    )


def _es_rank(hit: Mapping[str, object], fallback: int) -> int:
    explanation = hit.get("_rerank")
    value = explanation.get("es_rank") if isinstance(explanation, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else fallback


def _rounded(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return round(float(value), 4)
    return None


def _hits(body: Mapping[str, object]) -> list[Mapping[str, object]]:
    hits = body.get("hits")
    inner = hits.get("hits") if isinstance(hits, dict) else None
    return [hit for hit in inner if isinstance(hit, dict)] if isinstance(inner, list) else []


def _error(status: int, field: str | None, error_type: str, reason: str) -> web.Response:
    error: dict[str, object] = {"type": error_type, "reason": reason}
    if field is not None:
        error["field"] = field
    return web.json_response({"error": error}, status=status, dumps=_dumps)


def _dumps(value: object) -> str:
    return orjson.dumps(value).decode()


async def compare(runtime: Runtime, request: web.Request) -> web.Response:
    """Run one comparison through the real pipeline with the request's weights."""
    config = runtime.config
    try:
        asked = parse_compare(orjson.loads(await request.read() or b"null"), config)
    except orjson.JSONDecodeError:
        return _error(400, "body", "invalid_request", "body: expected a JSON object")
    except InvalidField as exc:
        return _error(400, exc.field, "invalid_request", str(exc))
    path = f"/{quote(asked.index, safe=',*')}/_search"
    endpoint = classify_endpoint("POST", path)
    if endpoint is None or endpoint.kind != "search":
        return _error(400, "index", "invalid_request", f"index: not a searchable index name: {asked.index!r}")
    headers: CIMultiDict[str] = CIMultiDict()
    if hdrs.AUTHORIZATION in request.headers:  # the user's own credentials, never the proxy's
        headers[hdrs.AUTHORIZATION] = request.headers[hdrs.AUTHORIZATION]
    meta = http_io.SearchRequest(
        method="POST",
        raw_path=path,
        raw_path_qs=path,
        params={},
        headers=headers,
        header_query=None,
        explain=True,
        accepts_gzip=False,
    )
    blend = dataclasses.replace(config.blend, weights=asked.weights)
    settings = Settings.from_config(dataclasses.replace(config, blend=blend))
    record = SearchRecord(kind="search", indices=endpoint.indices, mode="debug")
    text_fields = config.rerank.text_fields
    window_body = search_body(asked.query, text_fields, config.rerank.window)
    result = await runtime.pipeline.computation.run(meta, endpoint, window_body, settings, record)
    if isinstance(result, pipeline.Failed):
        return _error(
            upstream_error_status(result.error), None, "elasticsearch_unavailable", result.error.reason
        )
    if isinstance(result, pipeline.EsAnswer):
        return _es_error(result.status, result.payload)
    if isinstance(result, pipeline.Done):
        outcome, reason, hits = result.outcomes[0], result.reasons[0] or None, _hits(result.body)
    else:  # a bypass: Elasticsearch's own answer to the plain search, in both columns
        outcome, reason = "skipped", result.reason
        started = time.perf_counter()
        try:
            status, _, payload = await runtime.es.fetch(
                "POST", path, meta.recall_headers(), search_body(asked.query, text_fields, asked.size)
            )
        except UpstreamError as exc:
            return _error(upstream_error_status(exc), None, "elasticsearch_unavailable", exc.reason)
        finally:
            record.es_s += time.perf_counter() - started
        if status != 200:
            return _es_error(status, payload)
        hits = _hits(http_io.json_object(payload) or {})
    elasticsearch, proxy = compare_orders(hits, asked.size, text_fields[0] if text_fields else "")
    total = time.perf_counter() - record.started
    answer = {
        "index": asked.index,
        "query": asked.query,
        "size": asked.size,
        "weights": {name: getattr(asked.weights, name) for name in WEIGHT_NAMES},
        "outcome": outcome,
        "reason": reason,
        "timing_ms": {
            "es": round(record.es_s * 1000, 1),
            "rerank": round(record.rerank_s * 1000, 1),
            "total": round(total * 1000, 1),
        },
        "elasticsearch": elasticsearch,
        "proxy": proxy,
    }
    response = web.json_response(answer, dumps=_dumps)
    response.headers["Server-Timing"] = record.server_timing()
    return response


def _es_error(status: int, payload: bytes) -> web.Response:
    """Elasticsearch's own error, passed through with its status."""
    parsed = http_io.json_object(payload)
    error = parsed.get("error") if parsed is not None else None
    reason = payload.decode("utf-8", "replace")[:2000]
    body = {"error": error if error is not None else {"type": "elasticsearch_error", "reason": reason}}
    return web.json_response(body, status=status, dumps=_dumps)


def defaults(config: Config) -> dict[str, object]:
    """What the page starts from: the effective config's index patterns, weights, top_n and window."""
    patterns = config.rerank.indices
    concrete = [name for name in patterns if not any(c in name for c in "*?,") and name[:1] not in "-_"]
    return {
        "index": concrete[0] if concrete else "",
        "indices": list(patterns),
        "weights": {name: getattr(config.blend.weights, name) for name in WEIGHT_NAMES},
        "top_n": config.rerank.top_n,
        "window": config.rerank.window,
        "size": min(_DEFAULT_SIZE, config.rerank.window),
        "title_field": config.rerank.text_fields[0] if config.rerank.text_fields else "",
    }


def add_routes(admin: web.Application, runtime: Runtime) -> None:
    """Register the debug page, its static files and its JSON API on the admin app."""
    folder = resources.files(__package__).joinpath("static")
    files = {name: folder.joinpath(name).read_bytes() for name in _STATIC_TYPES}

    async def ui(_: web.Request) -> web.Response:
        return _static("ui.html")

    async def to_page(_: web.Request) -> web.Response:
        raise web.HTTPFound("../ui")  # relative links on the page resolve against `/_rerank/ui`

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in files or name == "ui.html":
            raise web.HTTPNotFound()
        return _static(name)

    def _static(name: str) -> web.Response:
        response = web.Response(body=files[name], content_type=_STATIC_TYPES[name], charset="utf-8")
        response.headers["Cache-Control"] = "no-cache"
        return response

    async def get_defaults(_: web.Request) -> web.Response:
        return web.json_response(defaults(runtime.config), dumps=_dumps)

    async def post_compare(request: web.Request) -> web.Response:
        return await compare(runtime, request)

    admin.router.add_get("/_rerank/ui", ui)
    admin.router.add_get("/_rerank/ui/", to_page)
    admin.router.add_get("/_rerank/ui/{name}", static)
    admin.router.add_get("/_rerank/compare", get_defaults)
    admin.router.add_post("/_rerank/compare", post_compare)
