"""A static-window Elasticsearch for scripts/bench.py: every `_search` gets the same 100-hit answer.

    .venv/bin/python scripts/bench_static_window.py --port 9299

The rerank path's own cost is client latency minus the recall minus the model call. With a real
Elasticsearch the recall's time and noise dwarf a millisecond; this server answers from bytes built once,
so the recall measured straight from it is nearly constant and the subtraction leaves the proxy's cost.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

import orjson
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_lib import corpus

WINDOW = 100


def window_body(index: str, size: int = WINDOW) -> bytes:
    """A `_search` answer in Elasticsearch's shape: `size` hits of the bench corpus, scores descending."""
    hits = []
    for rank, doc in enumerate(corpus.documents(size)):
        source = {k: v for k, v in doc.items() if k != "_id"}
        hits.append({"_index": index, "_id": doc["_id"], "_score": 20.0 - rank * 0.1, "_source": source})
    return orjson.dumps(
        {
            "took": 1,
            "timed_out": False,
            "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
            "hits": {"total": {"value": 300, "relation": "eq"}, "max_score": 20.0, "hits": hits},
        }
    )


def build_app(index: str) -> web.Application:
    body = window_body(index)
    headers = {"Content-Type": "application/json", "X-Elastic-Product": "Elasticsearch"}

    async def search(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, headers=headers)

    async def root(request: web.Request) -> web.Response:
        return web.Response(
            body=b'{"version":{"number":"8.15.5"},"tagline":"static window"}', headers=headers
        )

    app = web.Application()
    app.router.add_route("*", "/{index}/_search", search)
    app.router.add_get("/", root)
    return app


async def serve(host: str, port: int, index: str) -> None:
    """Serve until SIGTERM or SIGINT."""
    runner = web.AppRunner(build_app(index), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"static window on http://{host}:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--index", default="papers_recall")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.host, args.port, args.index))
    else:
        uvloop.run(serve(args.host, args.port, args.index))


if __name__ == "__main__":
    main()
