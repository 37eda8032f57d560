"""Three proxy replicas behind the nginx front (round-robin): model calls and latency, memory vs redis cache.

    .venv/bin/python scripts/bench_replicas.py [--searches 6000] [--clients 8] [--redis-timeouts-ms 5,50]

One run per backend, each with fresh replicas (and a fresh redis-server for `redis`, once per
`redis_timeout_ms` given: the default 5 ms, and a looser one to see what a loaded machine's late answers
cost), the same stream: a Zipf
(exponent 1.0) draw over 2,000 distinct SciFact queries (its 1,109 claims, train and test, then document
titles, shuffled so popularity has nothing to do with the source), each search page 1, 2 or 3 (10 hits)
uniformly. Elasticsearch is a static 100-hit window (scripts/bench_static_window.py), so what is measured is
the proxies, the cache and the model, not a search engine; the model is the fake vLLM with a fixed 20 ms.
Prints, per backend: model calls per search (counted at the fake model), cache hits by level, p50/p99
latency through the front, and the ratios redis/memory.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import orjson
import requests
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fakes.redis_server import run_redis

from bench_lib import services
from bench_lib.load import Request, closed_loop, percentile
from es_rerank_proxy.tools.datasets import load_collection, parse_queries, read_lines

DISTINCT_QUERIES = 2000
REPLICAS = 3
MODEL_LATENCY_MS = 20.0
INDEX = "papers_recall"  # any name: the static window answers every index
TRAIN_QUERIES = Path(__file__).resolve().parent / "data" / "scifact-train-queries.jsonl.gz"


def scifact_queries(count: int, seed: int = 5) -> list[str]:
    """`count` distinct query texts: SciFact's claims (test and train), then its titles; shuffled."""
    collection = load_collection("scifact")
    train = parse_queries(read_lines(TRAIN_QUERIES), "train queries")
    texts = dict.fromkeys([*collection.queries.values(), *train.values()])
    for doc in collection.corpus:
        if len(texts) >= count:
            break
        texts[doc["title"]] = None
    if len(texts) < count:
        raise ValueError(f"SciFact has {len(texts)} distinct queries and titles, fewer than {count}")
    chosen = list(texts)[:count]
    random.Random(seed).shuffle(chosen)
    return chosen


def zipf_stream(count: int, queries: list[str], seed: int = 3) -> list[Request]:
    """`count` searches: the query of rank r drawn with weight 1/r, page 1-3 uniformly."""
    rng = random.Random(seed)
    weights = [1.0 / (rank + 1) for rank in range(len(queries))]
    stream = []
    for text in rng.choices(queries, weights, k=count):
        page = rng.randint(1, 3)
        body = {"query": {"match": {"abstract": text}}, "from": (page - 1) * 10, "size": 10}
        stream.append(Request("POST", f"/{INDEX}/_search", orjson.dumps(body)))
    return stream


def _model_counts(model_url: str) -> dict[str, int]:
    counts: dict[str, int] = requests.get(f"{model_url}/_bench/counts", timeout=10).json()
    return counts


def _cache_counts(admin_url: str, into: dict[str, float]) -> None:
    """Add a replica's score-cache hits by level and its shared-cache errors by kind to `into`."""
    text = requests.get(f"{admin_url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "es_rerank_proxy_cache_hits_total":
                name = f"{sample.labels['level']}_hits"
            elif sample.name == "es_rerank_proxy_shared_cache_errors_total":
                name = f"shared_{sample.labels['kind']}"
            else:
                continue
            into[name] = into.get(name, 0.0) + sample.value


def _breaker_openings(log_path: Path) -> int:
    """How often a replica's shared-cache breaker opened (its log says so at WARNING)."""
    text = log_path.read_text(encoding="utf-8", errors="replace")
    return sum(
        1 for line in text.splitlines() if "shared cache circuit breaker" in line and "-> open" in line
    )


def _self_tests_done(admin_urls: list[str], timeout_s: float = 60.0) -> None:
    """Wait until every replica's start-up self-test has run: its probes must not count as searches'."""
    deadline = time.monotonic() + timeout_s
    for url in admin_urls:
        while not requests.get(f"{url}/_rerank/ready", timeout=10).json()["reranker"]["self_test"]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url}: no self-test result within {timeout_s} s")
            time.sleep(0.1)


def run_backend(
    tmp: Path,
    es_url: str,
    model_url: str,
    stream: list[Request],
    clients: int,
    redis_timeout_ms: int | None,
) -> dict[str, Any]:
    """Fresh replicas (and Redis, unless `redis_timeout_ms` is None), the whole stream once through the
    front; what it cost."""
    backend = "memory" if redis_timeout_ms is None else f"redis-{redis_timeout_ms}ms"
    with ExitStack() as stack:
        cache: dict[str, object] = {"backend": "memory"}
        if redis_timeout_ms is not None:
            (tmp / backend).mkdir()
            server = stack.enter_context(run_redis(tmp / backend))
            cache = {"backend": "redis", "redis_url": server.url, "redis_timeout_ms": redis_timeout_ms}
        replicas = [
            stack.enter_context(services.proxy(tmp, es_url, model_url, name=f"{backend}-{i}", cache=cache))
            for i in range(REPLICAS)
        ]
        front = stack.enter_context(services.front(tmp / backend, es_url, [r.url for r in replicas]))
        _self_tests_done([r.admin_url for r in replicas])
        before = _model_counts(model_url)
        samples = asyncio.run(closed_loop(front, stream, clients))
        after = _model_counts(model_url)
        counts = {"local_hits": 0.0, "shared_hits": 0.0}
        for replica in replicas:
            _cache_counts(replica.admin_url, counts)
        opened = sum(_breaker_openings(replica.log_path) for replica in replicas)
    latencies = [s.latency_ms for s in samples]
    calls = after["rerank_calls"] - before["rerank_calls"]
    return {
        "backend": backend,
        "searches": len(samples),
        "errors": sum(1 for s in samples if s.status != 200),
        "model_calls": calls,
        "model_calls_per_search": calls / max(1, len(samples)),
        "documents_per_search": (after["documents"] - before["documents"]) / max(1, len(samples)),
        **counts,
        "breaker_openings": opened,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--searches", type=int, default=6000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--queries", type=int, default=DISTINCT_QUERIES, help="distinct queries")
    parser.add_argument(
        "--redis-timeouts-ms", default="5,50", help="a redis run for each redis_timeout_ms (comma-separated)"
    )
    args = parser.parse_args()
    timeouts = [int(t) for t in args.redis_timeouts_ms.split(",") if t.strip()]
    stream = zipf_stream(args.searches, scifact_queries(args.queries))
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as name, ExitStack() as stack:
        tmp = Path(name)
        es_url = stack.enter_context(services.static_window(tmp))
        model_url = stack.enter_context(services.fake_reranker(tmp, MODEL_LATENCY_MS))
        results = [
            run_backend(tmp, es_url, model_url, stream, args.clients, timeout)
            for timeout in [None, *timeouts]
        ]
    print(
        f"{REPLICAS} replicas, round-robin front, {args.searches} Zipf searches over {args.queries} "
        f"SciFact queries (pages 1-3), {args.clients} clients, model {MODEL_LATENCY_MS:g} ms"
    )
    print(
        f"{'backend':12} {'errors':>6} {'model/search':>12} {'docs/search':>11} {'local hits':>10} "
        f"{'shared hits':>11} {'p50 ms':>7} {'p99 ms':>7}"
    )
    for r in results:
        print(
            f"{r['backend']:12} {r['errors']:>6} {r['model_calls_per_search']:>12.3f} "
            f"{r['documents_per_search']:>11.2f} {r['local_hits']:>10.0f} {r['shared_hits']:>11.0f} "
            f"{r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f}"
        )
    memory = results[0]
    for shared in results[1:]:
        errors = {k[7:]: v for k, v in shared.items() if k.startswith("shared_") and k != "shared_hits"}
        calls = shared["model_calls"] / max(1, memory["model_calls"])
        p50, p99 = shared["p50_ms"] / memory["p50_ms"], shared["p99_ms"] / memory["p99_ms"]
        print(
            f"ratio {shared['backend']}/memory: model calls {calls:.2f}, p50 {p50:.2f}, p99 {p99:.2f};"
            f" failed shared-cache calls: {errors or 'none'}; breaker opened {shared['breaker_openings']}x"
        )


if __name__ == "__main__":
    main()
