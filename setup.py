"""The optional native build: `ES_RERANK_PROXY_COMPILE=1` compiles the request path with mypyc.

    ES_RERANK_PROXY_COMPILE=1 pip wheel --no-build-isolation --no-deps .   # needs mypy and a C compiler

Everything else about the package is in pyproject.toml; without the variable this is a plain setuptools
build (what `pip install -e .` does for development: a compiled module would shadow its edited source).
The compiled modules behave as their source does, with mypy's types checked at run time; the test suite
runs against both builds (scripts/check), and the Dockerfile ships the compiled one. Why: the proxy's own
CPU per search is CPython executing typed, pure code (docs/PERFORMANCE.md, "Compiled with mypyc").
"""

from __future__ import annotations

import os

from setuptools import setup

# The modules a search or a pass-through runs, under src/es_rerank_proxy. Not compiled: edge/listener.py
# (a subclass of aiohttp's slotted protocol, so what the fast lane runs per request lives in fast_lane.py),
# and whatever runs once or off the request path (config, cli, admin, tools). mypyc has no async
# generators: the request path uses classes with `__anext__` / `__aenter__` instead.
COMPILED_MODULES = (
    "edge/exchange.py",
    "edge/fast_lane.py",
    "edge/headers.py",
    "edge/http_io.py",
    "edge/passthrough.py",
    "edge/request_mirror.py",
    "edge/upstream.py",
    "http1/connection.py",
    "http1/pool.py",
    "http1/request.py",
    "model/model_calls.py",
    "model/model_server.py",
    "model/reranker.py",
    "model/resilience.py",
    "model/scoring.py",
    "observe/deferred.py",
    "observe/metrics.py",
    "observe/record.py",
    "observe/search_log.py",
    "rollout/canary.py",
    "rollout/interleave.py",
    "rollout/order_stats.py",
    "search/blend.py",
    "search/endpoint.py",
    "search/guard.py",
    "search/msearch.py",
    "search/page.py",
    "search/pipeline.py",
    "search/plan.py",
    "search/query_text.py",
    "search/rerank_step.py",
    "search/result.py",
    "search/search_run.py",
    "search/settings.py",
    "search/ubi.py",
    "search/ubi_tap.py",
)


def _ext_modules() -> list[object]:
    if os.environ.get("ES_RERANK_PROXY_COMPILE") != "1":
        return []
    from mypyc.build import mypycify

    return list(mypycify([f"src/es_rerank_proxy/{path}" for path in COMPILED_MODULES], opt_level="3"))


if __name__ == "__main__":
    setup(ext_modules=_ext_modules())
