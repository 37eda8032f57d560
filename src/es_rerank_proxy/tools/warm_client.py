"""The `warm` command: ask a running proxy's admin listener to embed an index, and draw its progress."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable

import aiohttp
import orjson

from .progress import ProgressBar

Progress = Callable[[int, int], None]


def add_warm_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `warm --index I [--admin URL] [--limit N]` to the CLI's subcommands."""
    warm = subparsers.add_parser(
        "warm",
        help="embed an index's documents in a running proxy ahead of traffic (reranker.api: embeddings)",
        description="Ask a running proxy (its admin listener) to embed every document of INDEX now, "
        "so the first searches find their vectors cached.",
    )
    warm.add_argument("--index", required=True, metavar="INDEX", help="index (or pattern) to scroll")
    warm.add_argument("--admin", metavar="URL", default="http://127.0.0.1:9202", help="the proxy's admin URL")
    warm.add_argument("--limit", type=int, metavar="N", help="stop after N documents")


def run_warm(args: argparse.Namespace) -> int:
    """Run the `warm` command; 0 on success, 1 when the proxy refused or failed."""
    bar = ProgressBar(sys.stderr)
    try:
        final = asyncio.run(request_warm(args.admin, args.index, args.limit, bar))
    except (aiohttp.ClientError, OSError) as exc:
        print(f"warm: cannot reach the proxy's admin listener at {args.admin}: {exc}", file=sys.stderr)
        return 1
    finally:
        bar.finish()
    if "error" in final:
        print(f"warm: {final['error']}", file=sys.stderr)
        return 1
    print(f"warm: embedded {final.get('embedded')} documents in {final.get('seconds')} s", file=sys.stderr)
    return 0


async def request_warm(
    admin_url: str, index: str, limit: int | None, progress: Progress
) -> dict[str, object]:
    """Call the admin endpoint and report its progress lines; the final line (count or error) is returned."""
    params = {"index": index, **({"limit": str(limit)} if limit is not None else {})}
    final: dict[str, object] = {"error": "the proxy closed the stream without a result"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(admin_url.rstrip("/") + "/_rerank/warm", params=params) as response,
    ):
        if response.status != 200:
            body = await response.json(content_type=None)
            return body if isinstance(body, dict) else {"error": f"HTTP {response.status}"}
        async for line in response.content:
            item = orjson.loads(line)
            if "done" in item:
                progress(int(item["done"]), int(item["total"]))
            else:
                final = item
    return final
