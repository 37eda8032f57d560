"""The admin listener's operational routes: health, readiness, the effective config and metrics."""

from __future__ import annotations

from datetime import datetime, timezone

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from ..config import config_to_dict
from ..runtime import Runtime


def add_routes(admin: web.Application, runtime: Runtime) -> None:
    """`/_rerank/health`, `/_rerank/ready`, `/_rerank/config` and `/metrics`."""

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(_: web.Request) -> web.Response:
        nodes = await runtime.es.reachable()
        ok = any(nodes.values())
        reranker = {
            "breakers": runtime.scorer.breaker_states(),
            "self_test": {
                url: {"ok": r.ok, "detail": r.detail} for url, r in runtime.self_test_results.items()
            },
            "required": False,
        }
        body = {
            "ready": ok,
            "elasticsearch": nodes,
            "reranker": reranker,
            # Never part of `ready`: a search goes on without Redis.
            "shared_cache": runtime.shared_cache_state(),
        }
        return web.json_response(body, status=200 if ok else 503)

    async def metrics(_: web.Request) -> web.Response:
        runtime.observations.flush()  # searches answered a moment ago count in this scrape
        response = web.Response(body=runtime.metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def effective_config(_: web.Request) -> web.Response:
        loaded = datetime.fromtimestamp(runtime.loaded_at, timezone.utc).isoformat(timespec="seconds")
        body = {
            "path": runtime.config_path,
            "loaded_at": loaded,
            "last_reload_error": runtime.last_reload_error,
            "config": config_to_dict(runtime.config),
        }
        return web.json_response(body)

    admin.router.add_get("/_rerank/health", health)
    admin.router.add_get("/_rerank/ready", ready)
    admin.router.add_get("/_rerank/config", effective_config)
    admin.router.add_get("/metrics", metrics)
