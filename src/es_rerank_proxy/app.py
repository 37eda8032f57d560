"""Application factories: the public proxy listener and the admin listener; `serve` runs both."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CollectorRegistry

from .admin import debug_ui, routes, vector_transfer, warm_jobs
from .config import Config
from .edge import passthrough
from .runtime import Runtime
from .search.plan import classify_endpoint

log = logging.getLogger(__name__)

RUNTIME = web.AppKey("runtime", Runtime)


def create_app(
    config: Config,
    *,
    config_path: str | None = None,
    registry: CollectorRegistry | None = None,
    self_test: bool = True,
) -> web.Application:
    """The public listener: eligible searches go through the pipeline, everything else streams through."""
    app = web.Application(client_max_size=config.server.max_search_body_bytes)
    app[RUNTIME] = Runtime(config, config_path=config_path, registry=registry, self_test=self_test)
    app.cleanup_ctx.append(_runtime_ctx)
    app.router.add_route("*", "/{tail:.*}", _handle)
    return app


async def _runtime_ctx(app: web.Application) -> AsyncIterator[None]:
    runtime = app[RUNTIME]
    await runtime.start()
    yield
    await runtime.close()


async def _handle(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    endpoint = classify_endpoint(request.method, request.rel_url.raw_path)
    if endpoint is None:
        runtime.metrics.passthrough.labels(request.method).inc()
        return await passthrough.forward(request, runtime.es)
    return await runtime.pipeline.handle(request, endpoint)


def create_admin_app(public: web.Application) -> web.Application:
    """Health, readiness, metrics, config and debug: on the admin listener only, never the public one."""
    admin = web.Application()
    runtime = public[RUNTIME]
    routes.add_routes(admin, runtime)
    debug_ui.add_routes(admin, runtime)
    warm_jobs.add_routes(admin, runtime)
    vector_transfer.add_routes(admin, runtime)
    return admin


def public_runner(app: web.Application, config: Config) -> web.AppRunner:
    """The runner `serve` and the tests use for the public listener."""
    return web.AppRunner(
        app,
        auto_decompress=False,  # a gzip body must reach Elasticsearch exactly as the client sent it
        shutdown_timeout=config.server.shutdown_timeout_s,
        access_log=None,
    )


async def serve(
    config: Config, *, config_path: str | None = None, ready: asyncio.Event | None = None
) -> None:
    """Run both listeners until SIGTERM or SIGINT, then drain in-flight requests and close cleanly.

    SIGHUP, or a change of the config file on disk, reloads the config.
    """
    public = create_app(config, config_path=config_path)
    runner = public_runner(public, config)
    await runner.setup()
    admin_runner = web.AppRunner(create_admin_app(public), access_log=None)
    await admin_runner.setup()
    runtime = public[RUNTIME]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, runtime.reload)
    try:
        await web.TCPSite(runner, config.server.host, config.server.port, reuse_address=True).start()
        await web.TCPSite(admin_runner, config.admin.host, config.admin.port, reuse_address=True).start()
        runtime.start_watching()
        log.info(
            "listening on http://%s:%d (admin http://%s:%d), elasticsearch %s, reranker %s",
            config.server.host,
            config.server.port,
            config.admin.host,
            config.admin.port,
            ", ".join(config.elasticsearch.url),
            ", ".join(config.reranker.url),
        )
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("stopping: draining in-flight requests for up to %g s", config.server.shutdown_timeout_s)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await admin_runner.cleanup()
        await runner.cleanup()
