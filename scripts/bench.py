"""Benchmark the proxy against direct Elasticsearch and nginx: pass-through, rerank path, cache hits, memory.

    .venv/bin/python scripts/bench.py            # full run: ~3 min plus the 5-minute soak
    .venv/bin/python scripts/bench.py --quick    # about a minute

Starts noida-db (seeded), a fake reranker with a fixed latency, the proxy (`python -m es_rerank_proxy
serve`), nginx, the shipped nginx front and a static 100-hit window (the rerank path's Elasticsearch),
each as its own process on free loopback ports; prints one table with PASS/MISS per target and saves the
numbers as JSON. Method and results: docs/PERFORMANCE.md.

The proxy measured is the package as the Dockerfile ships it, compiled with mypyc (scripts/build_compiled,
about a minute); `--pure` measures the source instead.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import shlex
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_lib import corpus, phases, report, services, wire_phase

REPO = Path(__file__).resolve().parents[1]
# (full, --quick) defaults
DEFAULTS = {
    "duration": (8, 2),
    "rounds": (4, 2),
    "rerank_seconds": (20.0, 5.0),
    "soak_minutes": (5.0, 0.5),
    "memory_searches": (10_000, 3_000),
    "wire_searches": (300, 100),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short durations: about a minute in all")
    parser.add_argument(
        "--docs", type=int, default=10_000, help="documents in the `papers` index (_doc GETs)"
    )
    parser.add_argument(
        "--recall-docs", type=int, default=300, help="documents in `papers_recall`, the index searches run on"
    )
    parser.add_argument(
        "--model-latency-ms", type=float, default=20.0, help="the fake reranker's fixed latency"
    )
    parser.add_argument(
        "--model-budget-ms",
        type=int,
        default=1000,
        help="the proxy's model budget (reranker.timeout_ms), far above the fake's latency",
    )
    parser.add_argument("--rate", type=float, default=100.0, help="searches per second on the rerank path")
    parser.add_argument("--concurrency", default="1,16", help="pass-through client connections, comma list")
    parser.add_argument(
        "--capacity-clients", type=int, default=16, help="closed-loop clients of the capacity phase"
    )
    parser.add_argument("--duration", type=int, help="seconds per pass-through cell (default 8, quick 2)")
    parser.add_argument(
        "--rounds",
        type=int,
        help="pass-through cells and the rerank path run in this many turns across the targets (4, quick 2)",
    )
    parser.add_argument(
        "--rerank-seconds", type=float, help="seconds per rerank measurement (default 20, quick 5)"
    )
    parser.add_argument(
        "--cache-queries", type=int, default=200, help="distinct queries replayed for cache hits"
    )
    parser.add_argument(
        "--memory-searches",
        type=int,
        help="searches before the first RSS reading (default 10000, quick 3000)",
    )
    parser.add_argument(
        "--soak-minutes", type=float, help="load after the first RSS reading (default 5, quick 0.5)"
    )
    parser.add_argument(
        "--wire-searches",
        type=int,
        help="searches of each kind timed between packets, one at a time (default 300, quick 100; root)",
    )
    parser.add_argument(
        "--pure", action="store_true", help="run the proxy from the source, not the compiled package"
    )
    parser.add_argument(
        "--json", default="artifacts/bench.json", metavar="OUT", help="where to save the numbers"
    )
    args = parser.parse_args(argv)
    for name, (full, quick) in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    return args


def check_tools() -> tuple[bool, bool]:
    """(wrk available, nginx available); says how to install what is missing."""
    missing = services.missing_tools()
    if missing:
        print(f"{' and '.join(missing)} not installed: {services.INSTALL_HINT}")
    if "wrk" in missing:
        print("wrk not installed: pass-through load comes from an aiohttp client instead (a lower ceiling)")
    if "nginx" in missing:
        print("nginx not installed: its columns are skipped")
    if importlib.util.find_spec("psutil") is None:
        print("psutil not installed (pip install psutil): proxy memory is not measured")
    return "wrk" not in missing, "nginx" not in missing


def raise_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so every process started is stopped."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def seed(es_url: str, docs: int, recall_docs: int) -> None:
    asyncio.run(corpus.seed_index(es_url, corpus.INDEX, docs))
    asyncio.run(corpus.seed_index(es_url, phases.RECALL_INDEX, recall_docs))


def measure(args: argparse.Namespace, use_wrk: bool, use_nginx: bool, tmp: Path) -> dict[str, Any]:
    """Start everything, run every phase, stop everything (also on Ctrl-C)."""
    with ExitStack() as stack:
        es_url = stack.enter_context(services.noida(tmp / "noida"))
        log(f"noida-db at {es_url}: seeding {args.docs} + {args.recall_docs} documents")
        seed(es_url, args.docs, args.recall_docs)
        model_url = stack.enter_context(services.fake_reranker(tmp, args.model_latency_ms))
        proxy = stack.enter_context(services.proxy(tmp, es_url, model_url, args.model_budget_ms))
        targets = {"direct": es_url, "proxy": proxy.url}
        if use_nginx:
            targets["nginx"] = stack.enter_context(services.nginx(tmp, es_url))
            targets["front"] = stack.enter_context(services.front(tmp, es_url, [proxy.url]))
        concurrencies = [int(c) for c in args.concurrency.split(",")]
        log(
            f"pass-through: {len(targets) * len(concurrencies) * 2} cells of {args.duration:g} s, "
            f"in {args.rounds} turns"
        )
        passthrough = phases.passthrough(
            targets, concurrencies, args.duration, use_wrk, tmp, args.docs, rounds=args.rounds
        )

        # The rerank path runs on a static 100-hit window, so Elasticsearch's time and noise stay out of it.
        window_url = stack.enter_context(services.static_window(tmp))
        windowed = stack.enter_context(services.proxy(tmp, window_url, model_url, name="proxy-window"))
        searches = round(args.rate * args.rerank_seconds)
        queries = corpus.queries(
            searches + args.memory_searches + round(args.rate * args.soak_minutes * 60), 5
        )
        log(f"rerank path: {searches} distinct searches at {args.rate:g}/s, straight and through the proxy")
        rerank = phases.rerank_path(
            window_url,
            model_url,
            windowed.url,
            windowed.log_path,
            queries[:searches],
            args.rate,
            args.rerank_seconds,
            rounds=args.rounds,
            proxy_pid=windowed.pid,
        )
        log("cache-hit path")
        cache_queries = queries[: args.cache_queries]
        cache = phases.cache_hit_path(
            windowed.url, rerank["es_direct"], cache_queries, args.rate, args.rerank_seconds
        )
        why_not = wire_phase.unavailable()
        wire: dict[str, Any] = {"skipped": why_not}
        if why_not is None:
            log(f"rerank path on the wire: {args.wire_searches} searches of each kind, one at a time")
            floor_url = stack.enter_context(services.floor(tmp, window_url, model_url))
            wire = wire_phase.measure(
                window_url, model_url, windowed.url, args.wire_searches, wire_phase.GAP_S, tmp, floor_url
            )
        log(f"capacity: reranked searches/s at {args.capacity_clients} clients, instant model")
        instant = stack.enter_context(services.fake_reranker(tmp, 0.0, name="fake_reranker_instant"))
        one = stack.enter_context(services.proxy(tmp, window_url, instant, name="proxy-capacity-1"))
        capacity = {"1 proxy": phases.capacity(one.url, queries, args.capacity_clients, args.duration)}
        if use_nginx:
            two = stack.enter_context(services.proxy(tmp, window_url, instant, name="proxy-capacity-2"))
            front2 = stack.enter_context(services.front(tmp / "front2", window_url, [one.url, two.url]))
            capacity["2 proxies behind the front"] = phases.capacity(
                front2, queries, args.capacity_clients, args.duration
            )
        log(f"memory: to {args.memory_searches} searches, then a {args.soak_minutes:g}-minute soak")
        memory = phases.memory(
            proxy.url,
            proxy.pid,
            0,
            args.memory_searches,
            queries[searches:],
            phases.doc_paths(args.docs),
            args.rate,
            args.soak_minutes,
        )
    return {
        "passthrough": passthrough,
        "rerank": rerank,
        "cache_hit": cache,
        "wire": wire,
        "capacity": capacity,
        "memory": memory,
    }


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def reproduce_command(argv: list[str]) -> str:
    return f"cd {shlex.quote(str(REPO))} && .venv/bin/python scripts/bench.py {shlex.join(argv)}".rstrip()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    raise_on_sigterm()
    use_wrk, use_nginx = check_tools()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        try:
            if not args.pure:
                log("building the compiled package")
            build = services.proxy_build(Path(tmp), args.pure)
            results = measure(args, use_wrk, use_nginx, Path(tmp))
        except KeyboardInterrupt:
            print("interrupted: every process stopped", file=sys.stderr)
            return 130
    results["settings"] = {
        **{k: v for k, v in vars(args).items() if k != "json"},
        "load_tool": "wrk" if use_wrk else "aiohttp (wrk not installed)",
        "proxy_build": build,
        "nginx": use_nginx,
        "window": phases.WINDOW,
        "duration_s": args.duration,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    results["targets"] = report.evaluate_targets(results)
    results["command"] = reproduce_command(argv)
    print()
    print(report.render(results))
    out = report.save(results, args.json, REPO)
    print(f"\nSaved {out}. Reproduce with:\n  {results['command']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
