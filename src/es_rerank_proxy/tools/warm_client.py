"""The `warm` command: ask a running proxy's admin listener to embed an index, and draw its progress;
or move its passage vectors to and from a file (`--export FILE`, `--import FILE`); or say where warming is.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import io
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import aiohttp
import orjson

from .progress import ProgressBar

Progress = Callable[[int, int], None]
T = TypeVar("T")

# The proxy sends a progress line at least every 10 s (warm_jobs.HEARTBEAT_S): a minute of silence
# means it is gone, not that a batch of long passages is slow.
DEFAULT_READ_TIMEOUT_S = 60.0


class WarmFailed(Exception):
    """The call failed; the message says what happened (never empty)."""


def add_warm_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `warm --index I [--admin URL] [--limit N] [--export FILE | --import FILE | --status]`."""
    warm = subparsers.add_parser(
        "warm",
        help="embed an index's documents in a running proxy ahead of traffic (reranker.api: embeddings)",
        description="Ask a running proxy (its admin listener) to embed every document of INDEX now, "
        "so the first searches find their vectors cached. Warming goes on in the proxy if this command "
        "is interrupted; running it again joins the warm-up under way.",
    )
    warm.add_argument("--index", metavar="INDEX", help="index (or pattern) to scroll")
    warm.add_argument("--admin", metavar="URL", default="http://127.0.0.1:9202", help="the proxy's admin URL")
    warm.add_argument("--limit", type=int, metavar="N", help="stop after N documents")
    warm.add_argument(
        "--read-timeout",
        type=float,
        default=DEFAULT_READ_TIMEOUT_S,
        metavar="S",
        help=f"give up when the proxy sends nothing for S seconds (default {DEFAULT_READ_TIMEOUT_S:g})",
    )
    action = warm.add_mutually_exclusive_group()
    action.add_argument(
        "--export",
        metavar="FILE",
        help="write INDEX's cached passage vectors to FILE (gzip if it ends in .gz)",
    )
    action.add_argument("--import", dest="import_file", metavar="FILE", help="load passage vectors from FILE")
    action.add_argument("--status", action="store_true", help="show each index's warm-up and exit")
    warm.add_argument(
        "--float16", action="store_true", help="with --export: half the size, cosines within ~1e-3"
    )


def run_warm(args: argparse.Namespace) -> int:
    """Run the `warm` command; 0 on success, 1 when the proxy could not be reached, refused or failed."""
    if not args.status and not args.index:
        print("warm: --index is required (or --status)", file=sys.stderr)
        return 2
    admin = args.admin.rstrip("/")
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=args.read_timeout)
    try:
        if args.status:
            print(
                orjson.dumps(
                    _call(get_status(admin, timeout), args.read_timeout), option=orjson.OPT_INDENT_2
                ).decode()
            )
            return 0
        if args.export:
            counts = _call(
                export_vectors(admin, args.index, Path(args.export), timeout, args.float16), args.read_timeout
            )
            print(
                f"warm: exported {counts.get('vectors')} vectors to {args.export} "
                f"({counts.get('missing')} documents had none cached)",
                file=sys.stderr,
            )
            return 0
        if args.import_file:
            path = Path(args.import_file)
            if not path.is_file():
                raise WarmFailed(f"no such file: {path}")
            answer = _call(import_vectors(admin, args.index, path, timeout), args.read_timeout)
            verdicts = answer.get("counts")
            counts = verdicts if isinstance(verdicts, dict) else {}
            ignored = {verdict: n for verdict, n in counts.items() if n and verdict != "imported"}
            detail = ", ".join(f"{n} {verdict}" for verdict, n in ignored.items())
            print(
                f"warm: imported {counts.get('imported')} vectors ({detail or 'none ignored'})",
                file=sys.stderr,
            )
            return 0
        bar = ProgressBar(sys.stderr)
        try:
            final = _call(request_warm(admin, args.index, args.limit, bar, timeout, _say), args.read_timeout)
        except KeyboardInterrupt:
            bar.finish()
            _say(f"interrupted; the proxy goes on warming {args.index}: `warm --status` shows where it is")
            return 130
        bar.finish()
        print(
            f"warm: embedded {final.get('embedded')} documents in {final.get('seconds')} s", file=sys.stderr
        )
        return 0
    except WarmFailed as exc:
        print(f"warm: {exc}", file=sys.stderr)
        return 1


def _say(text: str) -> None:
    print(f"warm: {text}", file=sys.stderr)


def _call(work: Awaitable[T], read_timeout_s: float) -> T:
    return asyncio.run(_explained(work, read_timeout_s))


async def _explained(work: Awaitable[T], read_timeout_s: float) -> T:
    """`work`'s result, or `WarmFailed` saying what happened in words a user can act on."""
    try:
        return await work
    except asyncio.TimeoutError as exc:
        raise WarmFailed(
            f"the proxy sent nothing within the read timeout ({read_timeout_s:g} s, --read-timeout); "
            "it may still be warming: see `warm --status`"
        ) from exc
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, ConnectionRefusedError):
            reason = "connection refused (is the proxy running, with its admin listener on that port?)"
        else:
            reason = exc.os_error.strerror or str(exc.os_error) or type(exc.os_error).__name__
        raise WarmFailed(
            f"cannot connect to the proxy's admin listener at {exc.host}:{exc.port}: {reason}"
        ) from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
        raise WarmFailed(
            f"the proxy closed the connection before it finished (did it stop?): {type(exc).__name__}"
        ) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise WarmFailed(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc


async def _refused(response: aiohttp.ClientResponse) -> WarmFailed:
    body = (await response.read())[:500].decode("utf-8", errors="replace")
    try:
        parsed = orjson.loads(body)
        body = str(parsed.get("error", body)) if isinstance(parsed, dict) else body
    except orjson.JSONDecodeError:
        pass
    return WarmFailed(f"the proxy answered HTTP {response.status}: {body.strip() or response.reason}")


async def get_status(admin: str, timeout: aiohttp.ClientTimeout) -> dict[str, object]:
    """`GET /_rerank/warm`: each index's warm-up."""
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(admin + "/_rerank/warm") as response,
    ):
        if response.status != 200:
            raise await _refused(response)
        status: dict[str, object] = orjson.loads(await response.read())
        return status


async def request_warm(
    admin: str,
    index: str,
    limit: int | None,
    progress: Progress,
    timeout: aiohttp.ClientTimeout,
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, object]:
    """Start (or join) the warm-up of `index` and report its progress; the final line (count) is returned."""
    params = {"index": index, **({"limit": str(limit)} if limit is not None else {})}
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(admin + "/_rerank/warm", params=params) as response,
    ):
        if response.status != 200:
            raise await _refused(response)
        async for line in response.content:
            item = orjson.loads(line)
            if "job" in item:
                job = item["job"]
                if job.get("joined"):
                    say(f"joined the warm-up of {index} running since {job.get('started')}")
            elif "done" in item:
                progress(int(item["done"]), int(item["total"]))
            elif "error" in item:
                raise WarmFailed(f"the proxy's warm-up failed: {item['error']}")
            else:
                final: dict[str, object] = item
                return final
    raise WarmFailed("the proxy closed the stream without a result")


async def export_vectors(
    admin: str, index: str, path: Path, timeout: aiohttp.ClientTimeout, float16: bool = False
) -> dict[str, object]:
    """`GET /_rerank/vectors` into `path` (gzip for `.gz`); the trailer's counts. No file on failure."""
    params = {"index": index, "encoding": "float16" if float16 else "float32"}
    partial = path.with_name(path.name + ".partial")
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(admin + "/_rerank/vectors", params=params) as response,
        ):
            if response.status != 200:
                raise await _refused(response)
            with _open_for_writing(partial) as out:
                async for line in response.content:
                    if line.startswith(b'{"end"'):
                        counts: dict[str, object] = orjson.loads(line)["end"]
                        break
                    if line.startswith(b'{"error"'):
                        raise WarmFailed(f"the export failed: {orjson.loads(line)['error']}")
                    out.write(line)
                else:
                    raise WarmFailed("the proxy closed the export before its end line")
        partial.replace(path)
        return counts
    finally:
        partial.unlink(missing_ok=True)


async def import_vectors(
    admin: str, index: str, path: Path, timeout: aiohttp.ClientTimeout
) -> dict[str, object]:
    """`POST /_rerank/vectors` with the file's lines; the proxy's counts per verdict."""
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(
            admin + "/_rerank/vectors",
            params={"index": index},
            data=_file_chunks(path),
            headers={"Content-Type": "application/x-ndjson"},
        ) as response,
    ):
        if response.status != 200:
            raise await _refused(response)
        answer: dict[str, object] = orjson.loads(await response.read())
        return answer


async def _file_chunks(path: Path, size: int = 1 << 16) -> AsyncIterator[bytes]:
    with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as source:
        while chunk := source.read(size):
            yield chunk


def _open_for_writing(path: Path) -> gzip.GzipFile | io.BufferedWriter:
    if path.name.endswith(".gz.partial"):
        return gzip.GzipFile(path, "wb", compresslevel=6)
    return path.open("wb")
