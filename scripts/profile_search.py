"""Profile reranked searches in one process: the static window, an instant fake model and the proxy.

    .venv/bin/python scripts/profile_search.py --searches 2000

Everything runs on one event loop under cProfile, so the profile shows where the proxy's own CPU goes per
search (the upstreams' share is listed too and easy to tell apart: bench_static_window, fake_reranker).
Prints the proxy's top functions by own time and per-search CPU milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tests.fakes.fake_reranker import FakeReranker
from tests.fakes.fake_reranker import build_app as model_app
from tests.fakes.proxy_server import make_config, running_proxy

from bench_lib import corpus, phases
from bench_static_window import build_app as window_app


async def _site(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def run(searches: int, profile: cProfile.Profile) -> float:
    window_runner, window_url = await _site(window_app(phases.RECALL_INDEX))
    model_runner, model_url = await _site(model_app(FakeReranker(model="Qwen/Qwen3-Reranker-0.6B")))
    config = make_config(
        window_url,
        model_url,
        reranker={"url": [model_url], "timeout_ms": 2000},
        canary={"default": "rerank"},
        log={"level": "WARNING"},
    )
    queries = corpus.queries(searches, 5)
    try:
        async with running_proxy(config) as proxy, aiohttp.ClientSession(proxy.url) as session:
            for query in queries[:50]:  # warm-up: connections, first-call imports
                async with session.post(
                    f"/{phases.RECALL_INDEX}/_search", data=phases.search_body(query, 10)
                ):
                    pass
            started = time.perf_counter()
            profile.enable()
            for query in queries:
                body = phases.search_body(query, 10)
                headers = {"Content-Type": "application/json"}
                async with session.post(f"/{phases.RECALL_INDEX}/_search", data=body, headers=headers) as r:
                    await r.read()
                    assert r.headers.get("X-Rerank") == "applied", r.headers.get("X-Rerank-Reason")
            profile.disable()
            return time.perf_counter() - started
    finally:
        await model_runner.cleanup()
        await window_runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--searches", type=int, default=2000)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    profile = cProfile.Profile()
    elapsed = asyncio.run(run(args.searches, profile))
    print(f"{args.searches} searches in {elapsed:.2f} s: {elapsed / args.searches * 1000:.2f} ms each, all")
    print("processes on one loop (client, proxy, window, model); proxy functions by own time:\n")
    stats = pstats.Stats(profile)
    stats.sort_stats("tottime").print_stats("es_rerank_proxy", args.top)
    stats.sort_stats("cumulative").print_stats("es_rerank_proxy/(search|edge|model)", args.top)


if __name__ == "__main__":
    main()
