"""Application factories: the public proxy listener and the admin listener, with their resources."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from . import passthrough, search
from .config import Config
from .pipeline import SearchPipeline, Settings
from .reranker import RerankerClient
from .scoring import Scorer
from .upstream import Elasticsearch, create_session

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ConfigState:
    """The config in force and what is derived from it; hot reload swaps `settings`, new requests read it."""

    settings: Settings
    path: str | None = None
    loaded_at: float = field(default=0.0)

    @property
    def current(self) -> Config:
        return self.settings.config


CONFIG = web.AppKey("config", ConfigState)
ELASTICSEARCH = web.AppKey("elasticsearch", Elasticsearch)
RERANKER = web.AppKey("reranker", RerankerClient)
SCORER = web.AppKey("scorer", Scorer)
PIPELINE = web.AppKey("pipeline", SearchPipeline)


def create_app(
    config: Config, *, config_path: str | None = None, clock: Callable[[], float] | None = None
) -> web.Application:
    """The public listener: eligible searches go through the pipeline, everything else streams through."""
    app = web.Application(client_max_size=config.server.max_search_body_bytes)
    app[CONFIG] = ConfigState(
        Settings.from_config(config), path=config_path, loaded_at=(clock or _wall_clock)()
    )
    app.cleanup_ctx.append(_elasticsearch_ctx)
    app.cleanup_ctx.append(_reranker_ctx)
    app.router.add_route("*", "/{tail:.*}", _handle)
    return app


def _wall_clock() -> float:
    import time

    return time.time()


async def _elasticsearch_ctx(app: web.Application) -> AsyncIterator[None]:
    session = create_session(app[CONFIG].current.elasticsearch)
    app[ELASTICSEARCH] = Elasticsearch(session, app[CONFIG].current.elasticsearch)
    yield
    await session.close()


async def _reranker_ctx(app: web.Application) -> AsyncIterator[None]:
    state = app[CONFIG]
    cfg = state.current
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=cfg.reranker.max_concurrency + 8, keepalive_timeout=60),
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    client = RerankerClient(session, cfg.reranker, cfg.rerank.instruction)
    scorer = Scorer(client, cfg.reranker, model_key=state.settings.model_key, on_breaker_change=_log_breaker)
    app[RERANKER] = client
    app[SCORER] = scorer
    app[PIPELINE] = SearchPipeline(es=app[ELASTICSEARCH], scorer=scorer, settings=lambda: state.settings)
    yield
    await scorer.aclose()
    await session.close()


def _log_breaker(name: str, old: str, new: str) -> None:
    level = logging.WARNING if new == "open" else logging.INFO
    log.log(level, "reranker circuit breaker for %s: %s -> %s", name, old, new)


async def _handle(request: web.Request) -> web.StreamResponse:
    endpoint = search.classify_endpoint(request.method, request.rel_url.raw_path)
    if endpoint is None:
        return await passthrough.forward(request, request.app[ELASTICSEARCH])
    return await request.app[PIPELINE].handle(request, endpoint)


def create_admin_app(public: web.Application) -> web.Application:
    """Health, readiness, metrics and debug: served only on the admin listener, never on the public one."""
    admin = web.Application()

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(_: web.Request) -> web.Response:
        nodes = await public[ELASTICSEARCH].reachable()
        ok = any(nodes.values())
        return web.json_response({"ready": ok, "elasticsearch": nodes}, status=200 if ok else 503)

    admin.router.add_get("/_rerank/health", health)
    admin.router.add_get("/_rerank/ready", ready)
    return admin


async def serve(
    config: Config, *, config_path: str | None = None, ready: asyncio.Event | None = None
) -> None:
    """Run both listeners until SIGTERM or SIGINT, then drain in-flight requests and close cleanly."""
    public = create_app(config, config_path=config_path)
    public_runner = web.AppRunner(
        public,
        auto_decompress=False,  # a gzip body must reach Elasticsearch exactly as the client sent it
        shutdown_timeout=config.server.shutdown_timeout_s,
        access_log=None,
    )
    await public_runner.setup()
    admin_runner = web.AppRunner(create_admin_app(public), access_log=None)
    await admin_runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await web.TCPSite(public_runner, config.server.host, config.server.port, reuse_address=True).start()
        await web.TCPSite(admin_runner, config.admin.host, config.admin.port, reuse_address=True).start()
        log.info(
            "listening on http://%s:%d (admin http://%s:%d), elasticsearch %s",
            config.server.host,
            config.server.port,
            config.admin.host,
            config.admin.port,
            ", ".join(config.elasticsearch.url),
        )
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("stopping: draining in-flight requests for up to %g s", config.server.shutdown_timeout_s)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await admin_runner.cleanup()
        await public_runner.cleanup()
