#!/usr/bin/env python3
"""Shadow mode must not slow answers: p50 latency of `shadow` against `off`, in one proxy, one run.

Starts noida-db (seeded like scripts/bench.py), a fake reranker with a fixed latency and the proxy with
`canary.default: off` and an override token, then sends the same searches in three phases, `off`,
`shadow` (forced per request with X-Rerank-Mode) and `off` again, and compares shadow with the mean of
the two off phases (which cancels drift). Shadow phases carry their own background reranks, including a
second (slimmed) recall request to Elasticsearch per search, so any load they add shows in their own
latency. It also counts, from the proxy's metrics, how many shadows ran and how many were dropped, and
why: a shadow that never runs costs nothing, so the latency is only half of the result.
Target: shadow p50 <= off p50 + 2 ms.

    .venv/bin/python scripts/bench_shadow.py [--requests 2000] [--clients 1,8] [--model-latency-ms 20]
        [--rates 50,100] [--duration-s 20]      # open-loop levels: searches started at a fixed rate
        [--shadow-max-es-inflight N]   # the admission limit; 0 turns it off (every shadow runs)
        [--es-nodes 2]                 # noida-db searches on one thread; two nodes run two at once
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_lib import corpus, load, services
from bench_lib.phases import RECALL_INDEX, client_search, summarize
from es_rerank_proxy.config import CanaryConfig
from es_rerank_proxy.tools.local_elasticsearch import free_port, wait_for_http

TOKEN = "bench-shadow"
MODES = ("off", "shadow", "off")  # off before and after shadow: their mean cancels drift
TARGET_MS = 2.0


def parse_args() -> argparse.Namespace:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--requests", type=int, default=2000, help="requests per concurrency level")
    parser.add_argument("--clients", default="1,8", help="closed-loop levels (clients), comma-separated")
    parser.add_argument(
        "--rates", default="50,100", help="open-loop levels (searches/s), comma-separated; '' for none"
    )
    parser.add_argument("--duration-s", type=float, default=20.0, help="length of each open-loop phase")
    parser.add_argument("--model-latency-ms", type=float, default=20.0)
    parser.add_argument(
        "--shadow-max-es-inflight",
        type=int,
        default=CanaryConfig().shadow_max_elasticsearch_inflight,
        help="canary.shadow_max_elasticsearch_inflight (default: the proxy's, %(default)s; 0: no limit)",
    )
    parser.add_argument(
        "--es-nodes",
        type=int,
        default=1,
        help="noida-db nodes with the same data, used in turn by the proxy: noida-db runs one search at a"
        " time, Elasticsearch runs several (default %(default)s)",
    )
    parser.add_argument("--json", default="artifacts/bench-shadow.json")
    return parser.parse_args()


async def phase(url: str, queries: list[str], requests: int, clients: int, mode: str) -> list[float]:
    """Latencies of `requests` searches in `mode` from `clients` workers (only answers in that mode)."""
    latencies: list[float] = []
    jobs: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        jobs.put_nowait(i)

    async def worker() -> None:
        async with load.new_session(url, 1) as session:
            while not jobs.empty():
                i = jobs.get_nowait()
                sample = await _send(session, client_search(queries[i % len(queries)]), mode)
                if sample is not None:
                    latencies.append(sample)

    await asyncio.gather(*(worker() for _ in range(clients)))
    await asyncio.sleep(1.0)  # let this phase's background shadow work finish before the next one
    return latencies


async def open_phase(url: str, queries: list[str], rate: float, duration_s: float, mode: str) -> list[float]:
    """Latencies of searches started at a fixed rate, answered or not (users arrive on their own)."""
    loop = asyncio.get_running_loop()
    async with load.new_session(url, 512) as session:
        start = loop.time()
        tasks = []
        for i in range(max(1, round(rate * duration_s))):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            request = client_search(queries[i % len(queries)])
            tasks.append(asyncio.create_task(_send(session, request, mode)))
        samples = await asyncio.gather(*tasks)
    await asyncio.sleep(1.0)  # let this phase's background shadow work finish before the next one
    return [sample for sample in samples if sample is not None]


async def _send(session: aiohttp.ClientSession, request: load.Request, mode: str) -> float | None:
    """One search's latency in ms; None unless it was answered 200 in the mode asked for."""
    headers = {"Content-Type": "application/json", "X-Rerank-Mode": mode, "X-Rerank-Token": TOKEN}
    expected = "shadow" if mode == "shadow" else "skipped"
    started = time.perf_counter()
    async with session.request(request.method, request.path, data=request.body, headers=headers) as response:
        await response.read()
        if response.status != 200 or response.headers.get("X-Rerank") != expected:
            return None
    return (time.perf_counter() - started) * 1000


def shadow_counts(admin_url: str) -> dict[str, float]:
    """Shadows finished (`ran`) and dropped per reason so far, from the proxy's metrics."""
    counts: dict[str, float] = {"ran": 0.0}
    text = requests.get(f"{admin_url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "es_rerank_proxy_shadow_runs_total":
                counts["ran"] += sample.value
            elif sample.name == "es_rerank_proxy_shadow_dropped_total":
                key = f"dropped:{sample.labels['reason']}"
                counts[key] = counts.get(key, 0.0) + sample.value
    return counts


def main() -> int:
    args = parse_args()
    levels: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as temp:
        tmp = Path(temp)
        with contextlib.ExitStack() as stack:
            nodes = [stack.enter_context(services.noida(tmp / f"noida{n}")) for n in range(args.es_nodes)]
            model = stack.enter_context(services.fake_reranker(tmp, args.model_latency_ms))
            for node in nodes:
                asyncio.run(corpus.seed_index(node, RECALL_INDEX, 300))
            config = services.proxy_config(nodes[0], model, free_port(), free_port())
            config["elasticsearch"] = {"url": nodes}
            config["canary"] = {
                "default": "off",
                "override_token": TOKEN,
                "shadow_max_inflight": 16,
                "shadow_max_elasticsearch_inflight": args.shadow_max_es_inflight,
            }
            config_path = tmp / "proxy.yaml"
            config_path.write_text(yaml.safe_dump(config))
            command = [sys.executable, "-m", "es_rerank_proxy", "serve", "--config", str(config_path)]
            with services.process(command, tmp / "proxy.log"):
                admin = f"http://127.0.0.1:{config['admin']['port']}"
                wait_for_http(admin + "/_rerank/health")
                url = f"http://127.0.0.1:{config['server']['port']}"
                queries = corpus.queries(500, seed=5)
                asyncio.run(phase(url, queries, 200, 1, "off"))  # warm-up
                levels_to_run: list[tuple[str, Callable[[str], list[float]]]] = [
                    (
                        f"{c} client{'s' if int(c) > 1 else ''}",
                        lambda mode, c=int(c): asyncio.run(phase(url, queries, args.requests, c, mode)),
                    )
                    for c in args.clients.split(",")
                    if c
                ] + [
                    (
                        f"{r}/s open",
                        lambda mode, r=float(r): asyncio.run(
                            open_phase(url, queries, r, args.duration_s, mode)
                        ),
                    )
                    for r in args.rates.split(",")
                    if r
                ]
                for name, run in levels_to_run:
                    runs, before = [], shadow_counts(admin)
                    for mode in MODES:
                        runs.append(run(mode))
                    after = shadow_counts(admin)
                    first_off, shadow, second_off = (summarize(run) for run in runs)
                    assert first_off is not None and shadow is not None and second_off is not None
                    off = {key: (first_off[key] + second_off[key]) / 2 for key in ("p50_ms", "p99_ms")}
                    counts = {key: after[key] - before.get(key, 0.0) for key in after}
                    levels[name] = {"off": off, "shadow": shadow, "shadows": counts}
    limit = args.shadow_max_es_inflight or "none"
    print(
        f"Shadow vs off, same proxy, phases off/shadow/off (model latency {args.model_latency_ms:g} ms,"
        f" shadow_max_elasticsearch_inflight {limit}, {args.es_nodes} noida-db node(s))"
    )
    print(
        f"{'load':>12}{'off p50':>10}{'shadow p50':>12}{'off p99':>10}{'shadow p99':>12}{'p50 diff':>10}"
        "         shadows ran / dropped (reason)"
    )
    missed = []
    for name, level in levels.items():
        off, shadow = level["off"], level["shadow"]
        diff = shadow["p50_ms"] - off["p50_ms"]
        if diff > TARGET_MS:
            missed.append(name)
        print(
            f"{name:>12}{off['p50_ms']:>10.2f}{shadow['p50_ms']:>12.2f}{off['p99_ms']:>10.2f}"
            f"{shadow['p99_ms']:>12.2f}{diff:>+10.2f}  {'MISS' if diff > TARGET_MS else 'PASS'}"
            f"   {describe(level['shadows'])}"
        )
    passed = not missed
    verdict = "at every level" if passed else f"missed at: {', '.join(missed)}"
    print(f"{'PASS' if passed else 'MISS'}  shadow p50 <= off p50 + {TARGET_MS:g} ms, {verdict}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "model_latency_ms": args.model_latency_ms,
        "shadow_max_elasticsearch_inflight": args.shadow_max_es_inflight,
        "es_nodes": args.es_nodes,
        "levels": levels,
    }
    out.write_text(json.dumps(result, indent=2))
    print(f"saved {out}; reproduce with: .venv/bin/python {' '.join(sys.argv)}")
    return 0 if passed else 1


def describe(counts: dict[str, float]) -> str:
    dropped = {
        key.split(":", 1)[1]: value for key, value in counts.items() if key.startswith("dropped:") and value
    }
    reasons = ", ".join(f"{value:g} {reason}" for reason, value in dropped.items())
    return f"{counts.get('ran', 0):g} / {sum(dropped.values()):g}" + (f" ({reasons})" if reasons else "")


if __name__ == "__main__":
    raise SystemExit(main())
