"""Application factories: the public proxy listener and the admin listener; `serve` runs both."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CollectorRegistry

from .admin import debug_ui, routes, vector_transfer, warm_jobs
from .config import Config, redact_url
from .edge import passthrough
from .edge.fast_lane import FastLane
from .edge.headers import undecodable_header
from .edge.http_io import es_error
from .edge.listener import GuardedAppRunner, tcp_site
from .edge.request_mirror import HeadLimits
from .edge.tls import ListenerTls, listener_tls
from .runtime import Runtime
from .search import pipeline
from .search.endpoint import SearchEndpoint, classify_endpoint

log = logging.getLogger(__name__)

RUNTIME = web.AppKey("runtime", Runtime)
# CPython's default is (700, 10, 10); see settle_garbage_collector.
_GC_THRESHOLDS = (2_000, 20, 20)


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
    bad_header = undecodable_header(request.raw_headers)
    if bad_header is not None:
        # Forwarding it would silently drop bytes (a credential, a signature): refuse it instead, clearly.
        return es_error(400, "illegal_argument_exception", f"header [{bad_header}] is not valid UTF-8")
    endpoint = classify_endpoint(request.method, passthrough.raw_path(request))
    if endpoint is None:
        runtime.metrics.count_passthrough(request.method)
        return await passthrough.forward(request, runtime.es)
    exchange = passthrough.AiohttpExchange(request)
    await runtime.pipeline.handle(exchange, endpoint)
    assert exchange.response is not None, "the pipeline answers every search"
    return exchange.response


def fast_lane(app: web.Application, config: Config) -> FastLane[SearchEndpoint]:
    """The lane for plain requests; it reads the runtime's Elasticsearch and pipeline once started."""
    server = config.server
    runtime = app[RUNTIME]
    return FastLane(
        es=lambda: runtime.es,
        classify=classify_endpoint,
        counted=runtime.metrics.count_fast_lane,
        limits=HeadLimits(
            max_line_size=server.max_line_size,
            max_field_size=server.max_field_size,
            max_headers=server.max_headers,
        ),
        client_write_timeout_s=server.client_write_timeout_s,
        search=lambda exchange, endpoint: runtime.pipeline.handle(exchange, endpoint),
    )


def running_build() -> str:
    """Which build runs the request path: "compiled" by mypyc (the image; setup.py) or "source". The start-up
    line says it, so an operator can tell what a deployment runs."""
    return "source" if pipeline.__file__ is None or pipeline.__file__.endswith(".py") else "compiled"


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
    return GuardedAppRunner(
        app,
        config.server,
        fast_lane=fast_lane(app, config) if config.server.fast_lane else None,
        auto_decompress=False,  # a gzip body must reach Elasticsearch exactly as the client sent it
        shutdown_timeout=config.server.shutdown_timeout_s,
        access_log=None,
    )


def admin_runner(admin: web.Application, config: Config) -> web.AppRunner:
    """The admin listener's runner: the same parser limits and timeouts as the public one."""
    return GuardedAppRunner(admin, config.server, access_log=None)


def listeners_tls(config: Config) -> tuple[ListenerTls | None, ListenerTls | None]:
    """TLS for the public and the admin listener (None: plain HTTP), each reloadable on SIGHUP."""
    return listener_tls("server.tls", config.server.tls), listener_tls("admin.tls", config.admin.tls)


def settle_garbage_collector() -> None:
    """Move what start-up built out of the collector's sight, and collect young objects less often.

    A reranked search parses a 100-hit window into thousands of short-lived containers. With CPython's
    defaults a full collection came every ~200 searches and walked every object the process had (modules,
    config, caches): 50 ms at the median in scripts/profile_search.py's process, the p99 of the rerank
    path. Frozen, start-up's objects are never walked again (full collections: 5 ms); a first threshold of
    2,000 rather than 700 lets most windows be freed by reference counting before a collection looks at
    them (all collections together: 80 ms per 2,000 searches instead of 980, the longest pause 4 ms).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLDS)


async def serve(
    config: Config, *, config_path: str | None = None, ready: asyncio.Event | None = None
) -> None:
    """Run both listeners until SIGTERM or SIGINT, then drain in-flight requests and close cleanly.

    SIGHUP, or a change of the config file on disk, reloads the config.
    """
    public = create_app(config, config_path=config_path)
    runner = public_runner(public, config)
    await runner.setup()
    admin_listener = admin_runner(create_admin_app(public), config)
    await admin_listener.setup()
    runtime = public[RUNTIME]
    public_tls, admin_tls = listeners_tls(config)
    settle_garbage_collector()

    def reload() -> None:
        runtime.reload()
        for tls in (public_tls, admin_tls):
            if tls is not None:
                tls.reload()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    try:
        await tcp_site(runner, config.server.host, config.server.port, public_tls).start()
        await tcp_site(admin_listener, config.admin.host, config.admin.port, admin_tls).start()
        runtime.start_watching()
        log.info(
            "listening on %s://%s:%d (admin %s://%s:%d), elasticsearch %s, reranker %s, %s build",
            "https" if public_tls else "http",
            config.server.host,
            config.server.port,
            "https" if admin_tls else "http",
            config.admin.host,
            config.admin.port,
            ", ".join(map(redact_url, config.elasticsearch.url)),
            ", ".join(map(redact_url, config.reranker.url)),
            running_build(),
        )
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("stopping: draining in-flight requests for up to %g s", config.server.shutdown_timeout_s)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await admin_listener.cleanup()
        await runner.cleanup()
