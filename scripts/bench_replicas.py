"""Three proxy replicas behind the nginx front (round-robin): model calls and latency, memory vs redis cache.

    .venv/bin/python scripts/bench_replicas.py [--searches 600] [--clients 4]

One run per backend, each with fresh replicas (and a fresh redis-server for `redis`), the same Zipf
(exponent 1.0) stream over 2,000 distinct synthetic queries, pages 1-3, and a fake model with a fixed 20 ms
latency. Prints, per backend: model calls per search (searches whose log line shows documents sent to the
model), cache hits by level, p50/p99 latency through the front, and the ratio redis/memory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import orjson
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fakes.redis_server import run_redis

from bench_lib import corpus, services
from bench_lib.load import Request, closed_loop, percentile

DOCS = 1000  # noida scans every document per search: kept small so Elasticsearch is not the bottleneck
DISTINCT_QUERIES = 2000
REPLICAS = 3
MODEL_LATENCY_MS = 20.0


def zipf_stream(count: int, seed: int = 3) -> list[Request]:
    """`count` searches: query rank r drawn with weight 1/r, page 1-3 uniformly."""
    rng = random.Random(seed)
    texts = corpus.queries(DISTINCT_QUERIES, seed=5)
    weights = [1.0 / (rank + 1) for rank in range(len(texts))]
    stream = []
    for text in rng.choices(texts, weights, k=count):
        page = rng.randint(1, 3)
        body = {"query": {"match": {"abstract": text}}, "from": (page - 1) * 10, "size": 10}
        stream.append(Request("POST", f"/{corpus.INDEX}/_search", orjson.dumps(body)))
    return stream


def _log_counts(log_path: Path) -> tuple[int, int]:
    """(searches logged, of which sent documents to the model) from a replica's JSON search log."""
    searches = model = 0
    for line in log_path.read_bytes().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "documents_sent" in record:
            searches += 1
            model += record["documents_sent"] > 0
    return searches, model


def _hits(admin_url: str) -> dict[str, float]:
    hits = {"local": 0.0, "shared": 0.0}
    for line in requests.get(f"{admin_url}/metrics", timeout=10).text.splitlines():
        for level in hits:
            if line.startswith(f'es_rerank_proxy_cache_hits_total{{level="{level}"}}'):
                hits[level] += float(line.split()[-1])
    return hits


def run_backend(
    tmp: Path, es_url: str, model_url: str, stream: list[Request], clients: int, backend: str
) -> dict[str, Any]:
    """Fresh replicas (and Redis), the whole stream once through the front; what it cost."""
    with ExitStack() as stack:
        cache: dict[str, object] = {"backend": backend}
        if backend == "redis":
            (tmp / "redis").mkdir()
            server = stack.enter_context(run_redis(tmp / "redis"))
            cache.update(redis_url=server.url, redis_timeout_ms=5)
        replicas = [
            stack.enter_context(services.proxy(tmp, es_url, model_url, name=f"{backend}-{i}", cache=cache))
            for i in range(REPLICAS)
        ]
        front = stack.enter_context(services.front(tmp / backend, es_url, [r.url for r in replicas]))
        samples = asyncio.run(closed_loop(front, stream, clients))
        hits = {"local": 0.0, "shared": 0.0}
        for replica in replicas:
            for level, value in _hits(replica.admin_url).items():
                hits[level] += value
    logged = [_log_counts(r.log_path) for r in replicas]
    searches = sum(s for s, _ in logged)
    latencies = [s.latency_ms for s in samples]
    return {
        "backend": backend,
        "searches": len(samples),
        "errors": sum(1 for s in samples if s.status != 200),
        "model_calls_per_search": sum(m for _, m in logged) / max(1, searches),
        "local_hits": hits["local"],
        "shared_hits": hits["shared"],
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--searches", type=int, default=600)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--docs", type=int, default=DOCS, help="documents in the index")
    args = parser.parse_args()
    stream = zipf_stream(args.searches)
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as name, ExitStack() as stack:
        tmp = Path(name)
        (tmp / "noida").mkdir()
        es_url = stack.enter_context(services.noida(tmp / "noida"))
        asyncio.run(corpus.seed_index(es_url, corpus.INDEX, args.docs))
        model_url = stack.enter_context(services.fake_reranker(tmp, MODEL_LATENCY_MS))
        results = [
            run_backend(tmp, es_url, model_url, stream, args.clients, backend)
            for backend in ("memory", "redis")
        ]
    print(f"{REPLICAS} replicas, round-robin front, {args.searches} Zipf searches, {args.clients} clients")
    print(
        f"{'backend':8} {'errors':>6} {'model/search':>12} {'local hits':>10} {'shared hits':>11} "
        f"{'p50 ms':>7} {'p99 ms':>7}"
    )
    for r in results:
        print(
            f"{r['backend']:8} {r['errors']:>6} {r['model_calls_per_search']:>12.3f} "
            f"{r['local_hits']:>10.0f} {r['shared_hits']:>11.0f} {r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f}"
        )
    memory, shared = results
    if memory["model_calls_per_search"]:
        ratio = shared["model_calls_per_search"] / memory["model_calls_per_search"]
        print(f"model calls per search, redis / memory: {ratio:.2f}")


if __name__ == "__main__":
    main()
