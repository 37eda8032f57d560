"""A fake vLLM rerank server with a fixed latency, as its own process, for scripts/bench.py.

    .venv/bin/python scripts/bench_fake_reranker.py --port 8000 --latency-ms 20

It is tests/fakes/fake_reranker.py (the fake the tests use) served until SIGTERM or SIGINT. The request log
the tests read is cleared every second, so a long soak does not grow this process's memory.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiohttp import web
from tests.fakes.fake_reranker import FakeReranker, build_app


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-ms", type=float, default=20.0, help="sleep this long before each answer")
    return parser.parse_args()


async def _forget_requests(fake: FakeReranker, forgotten: dict[str, int]) -> None:
    while True:
        await asyncio.sleep(1)
        forgotten["documents"] += sum(map(len, fake.documents_seen()))
        fake.requests.clear()
        fake.seen.clear()


def _counts_route(fake: FakeReranker, forgotten: dict[str, int]) -> web.RouteDef:
    """`GET /_bench/counts`: rerank calls and documents scored so far (scripts/bench_replicas.py reads it)."""

    async def counts(_: web.Request) -> web.Response:
        documents = forgotten["documents"] + sum(map(len, fake.documents_seen()))
        return web.json_response({"rerank_calls": fake.rerank_calls, "documents": documents})

    return web.get("/_bench/counts", counts)


async def serve(host: str, port: int, latency_ms: float) -> None:
    """Serve the fake on host:port until SIGTERM or SIGINT."""
    fake = FakeReranker(model="Qwen/Qwen3-Reranker-0.6B")
    fake.faults.latency_s = latency_ms / 1000
    forgotten = {"documents": 0}
    app = build_app(fake)
    app.router.add_routes([_counts_route(fake, forgotten)])
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    janitor = asyncio.create_task(_forget_requests(fake, forgotten))
    print(f"fake reranker on http://{host}:{port}, latency {latency_ms:g} ms", flush=True)
    try:
        await stop.wait()
    finally:
        janitor.cancel()
        await runner.cleanup()


def main() -> None:
    args = _parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.host, args.port, args.latency_ms))
    else:
        uvloop.run(serve(args.host, args.port, args.latency_ms))


if __name__ == "__main__":
    main()
