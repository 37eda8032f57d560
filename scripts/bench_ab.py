"""Two builds of the proxy side by side in one run, measured between their packets: is a change a gain?

    sudo .venv/bin/python scripts/bench_ab.py --a build/before --b build/after --requests search
    sudo .venv/bin/python scripts/bench_ab.py --a build/before --b source --requests rerank

A build is a directory made by `scripts/build_compiled DIR` (put first on the proxy's PYTHONPATH) or
`source` (the editable source). Both proxies run at once against the same upstreams; blocks of requests
go to one, then the other, the order flipping each round, so a drift of this shared machine lands on both
arms alike. Run one after the other, the same build moved by more than the changes of a session did
(docs/PERFORMANCE.md, "The bypassed search"). tcpdump stamps every loopback packet, so each arm's figure
is the proxy's own time (`bench_lib.wire`), not a client's.

- `--requests doc` or `search`: `_doc` GETs or searches the proxy bypasses (`sort`), sent back to back to
  noida-db through each proxy, as the bench's pass-through rows; own = pre + post.
- `--requests rerank`: reranked searches one at a time, 12 ms apart, against the static window and the
  fake model (20 ms), as the bench's wire phase; own = pre + mid + post.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_lib import corpus, load, phases, services, wire, wire_phase

WARM_UP = 50
ARMS = ("A", "B")


def _start_proxies(
    stack: ExitStack, tmp: Path, builds: dict[str, str], es_url: str, model_url: str
) -> dict[str, services.Proxy]:
    proxies = {}
    for arm, build in builds.items():
        previous = os.environ.pop("PYTHONPATH", None)
        if build != "source":
            os.environ["PYTHONPATH"] = str(Path(build).resolve())
        try:
            proxies[arm] = stack.enter_context(services.proxy(tmp, es_url, model_url, name=f"proxy-{arm}"))
        finally:
            os.environ.pop("PYTHONPATH", None)
            if previous is not None:
                os.environ["PYTHONPATH"] = previous
        ran = _running_build(proxies[arm].log_path)
        if ran != ("source" if build == "source" else "compiled"):
            sys.exit(f"{arm}: asked for {build}, but the proxy runs the {ran} build (its start-up line)")
    return proxies


def _running_build(log_path: Path) -> str:
    """What the proxy's start-up line says it runs: "compiled" or "source"."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        for build in ("compiled", "source"):
            if f"{build} build" in text:
                return build
        time.sleep(0.1)
    return "unknown"


def _rounds(
    send: Callable[[str, int, int], None], urls: dict[str, str], block: int, rounds: int
) -> dict[str, list[tuple[float, float]]]:
    """Blocks taking turns (A B, B A, ...); each arm's spans of time. `send(url, first, count)`."""
    spans: dict[str, list[tuple[float, float]]] = {arm: [] for arm in ARMS}
    for arm in ARMS:
        send(urls[arm], 0, WARM_UP)
    for turn in range(rounds):
        for position, arm in enumerate(ARMS if turn % 2 == 0 else ARMS[::-1]):
            first = WARM_UP + (2 * turn + position) * block
            started = time.time()
            send(urls[arm], first, block)
            spans[arm].append((started, time.time()))
    return spans


def _summaries(parts_by_arm: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, object]]:
    report: dict[str, dict[str, object]] = {}
    for arm, parts in parts_by_arm.items():
        names = parts[0].keys() if parts else ()
        report[arm] = {"count": len(parts)} | {
            name: wire.summary_ms([p[name] for p in parts]) for name in names
        }
    return report


def run(args: argparse.Namespace, tmp: Path) -> dict[str, object]:
    builds = {"A": args.a, "B": args.b}
    with ExitStack() as stack:
        if args.requests == "rerank":
            upstream = stack.enter_context(services.static_window(tmp))
            model = stack.enter_context(services.fake_reranker(tmp, 20))
        else:
            upstream = stack.enter_context(services.noida(tmp / "noida"))
            asyncio.run(corpus.seed_index(upstream, corpus.INDEX, 2000))
            asyncio.run(corpus.seed_index(upstream, phases.RECALL_INDEX, 300))
            model = stack.enter_context(services.fake_reranker(tmp, 20))
        proxies = _start_proxies(stack, tmp, builds, upstream, model)
        urls = {arm: proxy.url for arm, proxy in proxies.items()}
        port = {arm: int(url.rsplit(":", 1)[1]) for arm, url in urls.items()}
        upstream_port, model_port = (int(url.rsplit(":", 1)[1]) for url in (upstream, model))
        dump = tmp / "packets.txt"
        tcpdump = wire_phase._capture([upstream_port, model_port, *port.values()], dump)
        try:
            count = WARM_UP + 2 * args.rounds * args.block
            if args.requests == "rerank":
                queries = corpus.queries(count, 7)

                def send(url: str, first: int, n: int) -> None:
                    make = lambda i: phases.client_search(queries[first + i])  # noqa: E731
                    asyncio.run(wire_phase.one_at_a_time(url, make, n, wire_phase.GAP_S))
            else:
                paths = (
                    phases.search_paths(count) if args.requests == "search" else phases.doc_paths(2000, count)
                )

                def send(url: str, first: int, n: int) -> None:
                    make = lambda i: load.Request("GET", paths[first + i], None)  # noqa: E731
                    asyncio.run(wire_phase.one_at_a_time(url, make, n, 0.0))  # back to back

            spans = _rounds(send, urls, args.block, args.rounds)
            time.sleep(0.5)  # the last packets reach the dump
        finally:
            tcpdump.terminate()
            tcpdump.wait()
    packets = [p for p in map(wire.parse_line, dump.read_text().splitlines()) if p is not None]
    parts_by_arm: dict[str, list[dict[str, float]]] = {}
    for arm in ARMS:
        parts: list[dict[str, float]] = []
        for start, end in spans[arm]:
            client = wire.exchanges(packets, port[arm], start, end)
            if args.requests == "rerank":
                window, model_calls = (
                    wire.exchanges(packets, p, start, end) for p in (upstream_port, model_port)
                )
                parts += [
                    {"pre": s.pre, "mid": s.mid, "post": s.post, "own": s.own}
                    for s in wire.search_parts(client, window, model_calls)
                ]
            else:
                forwarded = wire.exchanges(packets, upstream_port, start, end)
                parts += [
                    {"pre": f.pre, "post": f.post, "own": f.own}
                    for f in wire.forward_parts(client, forwarded)
                ]
        parts_by_arm[arm] = parts
    return {"requests": args.requests, "builds": builds, "arms": _summaries(parts_by_arm)}


def render(report: dict[str, object]) -> str:
    arms, builds = report["arms"], report["builds"]
    assert isinstance(arms, dict) and isinstance(builds, dict)
    lines = [f"{report['requests']}: p50 ms on the wire (p90 in brackets), blocks taking turns"]
    for arm in ARMS:
        summary = arms[arm]
        cells = [
            f"{name} {value['p50_ms']:.3f} ({value['p90_ms']:.3f})"
            for name, value in summary.items()
            if isinstance(value, dict)
        ]
        lines.append(f"  {arm} {builds[arm]}: n={summary['count']}  " + "  ".join(cells))
    a_own, b_own = (arms[arm].get("own") for arm in ARMS)
    if isinstance(a_own, dict) and isinstance(b_own, dict):
        lines.append(f"  own B - A: {b_own['p50_ms'] - a_own['p50_ms']:+.3f} ms p50")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--a", required=True, help="a build directory (scripts/build_compiled DIR) or source")
    parser.add_argument("--b", required=True, help="the other build, the same way")
    parser.add_argument("--requests", choices=("doc", "search", "rerank"), default="search")
    parser.add_argument("--block", type=int, default=None, help="requests per block (200; rerank 50)")
    parser.add_argument("--rounds", type=int, default=8, help="turns of the two arms")
    parser.add_argument("--json", type=Path, help="also save the figures here")
    args = parser.parse_args()
    if args.block is None:
        args.block = 50 if args.requests == "rerank" else 200
    missing = wire_phase.unavailable()
    if missing is not None:
        sys.exit(f"cannot capture packets: {missing}")
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as name:
        report = run(args, Path(name))
    print(render(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
