"""The measurements: pass-through cells, the rerank path, the cache-hit path, and proxy memory."""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from . import corpus, load
from .load import Request, Sample

TIMING_HEADER = "Server-Timing"  # the proxy sends "es;dur=3.1, rerank;dur=20.4, total;dur=25.0" (ms)
KEEP_HEADERS = ("X-Rerank", "X-Rerank-Reason", TIMING_HEADER)
RECALL_INDEX = "papers_recall"
WINDOW = 100  # the proxy's default rerank.window
TOP_N = 20  # the proxy's default rerank.top_n


# --- requests -----------------------------------------------------------------------------------------


def doc_paths(docs: int, count: int = 2000) -> list[str]:
    rng = random.Random(1)
    return [f"/{corpus.INDEX}/_doc/{rng.randrange(docs)}" for _ in range(count)]


def search_paths(count: int = 2000) -> list[str]:
    """Searches the proxy bypasses (a `sort` param) and forwards untouched."""
    rng = random.Random(2)
    words = corpus.search_words()
    return [f"/{RECALL_INDEX}/_search?q=title:{rng.choice(words)}&sort=_doc" for _ in range(count)]


def search_body(query: str, size: int) -> bytes:
    """Every document matches (match_all), title BM25 orders them: each recall window is a full 100 hits."""
    bool_query = {"must": [{"match_all": {}}], "should": [{"match": {"title": query}}]}
    return orjson.dumps({"query": {"bool": bool_query}, "size": size})


def client_search(query: str) -> Request:
    return Request("POST", f"/{RECALL_INDEX}/_search", search_body(query, 10))


def recall_search(query: str) -> Request:
    """What the proxy asks Elasticsearch for the same client search: the whole window."""
    return Request("POST", f"/{RECALL_INDEX}/_search", search_body(query, WINDOW))


def model_request(query: str, texts: Sequence[str]) -> Request:
    body = {"model": "Qwen/Qwen3-Reranker-0.6B", "query": query, "documents": list(texts)}
    return Request("POST", "/v1/rerank", orjson.dumps(body))


def model_texts(count: int = TOP_N) -> list[str]:
    return [f"Title: {d['title']}\nAbstract: {d['abstract']}" for d in corpus.documents(count)]


# --- pass-through -------------------------------------------------------------------------------------


def passthrough(
    targets: Mapping[str, str],
    concurrencies: Sequence[int],
    duration_s: int,
    use_wrk: bool,
    tmp: Path,
    docs: int,
    rounds: int = 1,
) -> dict[str, Any]:
    """req/s and p50/p99 per operation, target and concurrency.

    With `rounds` > 1 each cell runs `rounds` times for `duration_s / rounds`, the targets taking turns,
    and the medians are kept: noida-db's speed drifts over seconds, and one target measured after another
    would carry that drift into the ratios.
    """
    operations = {
        "doc": (f"GET /{corpus.INDEX}/_doc/<random id>", doc_paths(docs)),
        "search": (f"GET /{RECALL_INDEX}/_search?q=title:<word>&sort=_doc (bypassed)", search_paths()),
    }
    slice_s = max(1, round(duration_s / max(1, rounds)))
    results: dict[str, Any] = {}
    for op, (label, paths) in operations.items():
        cells: dict[tuple[str, int], list[load.Throughput]] = {}
        for _ in range(max(1, rounds)):
            for conc in concurrencies:
                for name, url in targets.items():
                    if use_wrk:
                        cell = load.run_wrk(url, paths, conc, slice_s, tmp)
                    else:
                        cell = load.run_aiohttp(url, paths, conc, slice_s)
                    cells.setdefault((name, conc), []).append(cell)
        results[op] = {"label": label}
        for (name, conc), runs in cells.items():
            results[op].setdefault(name, {})[str(conc)] = asdict(_median_cell(runs))
    return results


def _median_cell(runs: Sequence[load.Throughput]) -> load.Throughput:
    return load.Throughput(
        rps=statistics.median(run.rps for run in runs),
        p50_ms=statistics.median(run.p50_ms for run in runs),
        p99_ms=statistics.median(run.p99_ms for run in runs),
        errors=sum(run.errors for run in runs),
        tool=runs[0].tool,
    )


# --- rerank path --------------------------------------------------------------------------------------


def summarize(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "p50_ms": load.percentile(values, 50),
        "p99_ms": load.percentile(values, 99),
        "count": len(values),
    }


def header_own_ms(sample: Sample) -> float | None:
    """total − es − model from the proxy's timing header, or None when it sent none."""
    raw = sample.headers.get(TIMING_HEADER)
    if not raw:
        return None
    try:
        parts = {
            name.strip(): float(value)
            for name, value in (item.split(";dur=", 1) for item in raw.split(",") if ";dur=" in item)
        }
        return parts["total"] - parts["es"] - parts.get("rerank", 0.0)
    except (KeyError, ValueError):
        return None


def log_own_ms(log_path: Path, offset: int) -> list[float]:
    """total_ms − es_ms − rerank_ms from JSON log lines written after `offset`."""
    own = []
    with log_path.open("rb") as log:
        log.seek(offset)
        for line in log:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and {"es_ms", "total_ms"} <= record.keys():
                own.append(record["total_ms"] - record["es_ms"] - record.get("rerank_ms", 0.0))
    return own


def proxy_own(
    samples: Sequence[Sample], log_path: Path, log_offset: int
) -> tuple[dict[str, float] | None, str | None]:
    """The proxy's own cost from its own timings: the header if present, else its JSON log lines."""
    from_header = [v for v in map(header_own_ms, samples) if v is not None]
    if from_header:
        return summarize(from_header), f"{TIMING_HEADER} header"
    from_log = log_own_ms(log_path, log_offset)
    if from_log:
        return summarize(from_log), "JSON log lines"
    return None, None


def at_rate(url: str, make: Callable[[int], Request], rate: float, seconds: float) -> list[Sample]:
    return asyncio.run(load.open_loop(url, make, rate, seconds, KEEP_HEADERS))


def latencies(samples: Sequence[Sample]) -> list[float]:
    return [s.latency_ms for s in samples if s.status == 200]


def own_outside(
    client: dict[str, float] | None, *parts: dict[str, float] | None
) -> dict[str, float | None] | None:
    """Per percentile: client − Σ parts. An estimate: the tails of separate runs need not line up, so a
    negative difference (noise larger than the signal) is reported as None."""
    if client is None or any(p is None for p in parts):
        return None
    own = {key: client[key] - sum(p[key] for p in parts if p) for key in ("p50_ms", "p99_ms")}
    return {key: (value if value >= 0 else None) for key, value in own.items()}


def cycling(make: Callable[[str], Request], queries: Sequence[str]) -> Callable[[int], Request]:
    """Request i of an open loop: made from the queries in turn."""
    return lambda i: make(queries[i % len(queries)])


def rerank_path(
    es_url: str,
    model_url: str,
    proxy_url: str,
    log_path: Path,
    queries: Sequence[str],
    rate: float,
    seconds: float,
    rounds: int = 1,
    proxy_pid: int | None = None,
) -> dict[str, Any]:
    """The same distinct queries, at the same rate: directly to Elasticsearch, then through the proxy.

    With `proxy_pid`, the proxy process's CPU time (user + system) during its slices, per search: the
    steadiest of these figures on a shared machine, as it does not subtract distributions.

    With `rounds` > 1 the three measurements take turns in slices of `seconds / rounds`, so a drift in the
    machine's speed lands in all three alike instead of in the difference; percentiles are of all samples.
    """
    texts = model_texts()
    per_round = max(1, round(rate * seconds / max(1, rounds)))
    slice_s = per_round / rate
    es_samples: list[Sample] = []
    model_samples: list[Sample] = []
    samples: list[Sample] = []
    proxy_cpu_s = 0.0
    offset = log_path.stat().st_size
    for turn in range(max(1, rounds)):
        chunk = queries[turn * per_round : (turn + 1) * per_round] or queries[:per_round]
        es_samples += at_rate(es_url, cycling(recall_search, chunk), rate, slice_s)
        model_samples += at_rate(model_url, cycling(lambda q: model_request(q, texts), chunk), rate, slice_s)
        before = cpu_seconds(proxy_pid)
        samples += at_rate(proxy_url, cycling(client_search, chunk), rate, slice_s)
        after = cpu_seconds(proxy_pid)
        if before is not None and after is not None:
            proxy_cpu_s += after - before
    es = summarize(latencies(es_samples))
    model = summarize(latencies(model_samples))
    client = summarize(latencies(samples))
    own, source = proxy_own(samples, log_path, offset)
    applied = sum(1 for s in samples if s.headers.get("X-Rerank") == "applied")
    reasons = sorted({s.headers.get("X-Rerank-Reason", "") for s in samples} - {""})
    return {
        "client": client,
        "es_direct": es,
        "model_direct": model,
        "own_outside": own_outside(client, es, model),
        "own_proxy": own,
        "timing_source": source,
        "applied_share": applied / len(samples),
        "proxy_cpu_ms_per_search": proxy_cpu_s * 1000 / len(samples) if proxy_cpu_s else None,
        "reasons_seen": reasons,
        "errors": sum(1 for s in samples if s.status != 200),
        "searches": len(samples),
    }


def capacity(url: str, queries: Sequence[str], clients: int, seconds: float) -> dict[str, Any]:
    """Closed loop: `clients` send distinct reranked searches back to back; answered searches per second."""
    requests = [client_search(q) for q in queries]
    started = time.perf_counter()
    samples = asyncio.run(_closed_loop_keeping(url, requests, clients, seconds))
    elapsed = time.perf_counter() - started
    ok = [s for s in samples if s.status == 200]
    applied = sum(1 for s in ok if s.headers.get("X-Rerank") == "applied")
    return {
        "searches_per_s": applied / elapsed,
        "latency": summarize([s.latency_ms for s in ok]),
        "applied_share": applied / len(samples) if samples else 0.0,
        "errors": len(samples) - len(ok),
    }


async def _closed_loop_keeping(
    url: str, requests: Sequence[Request], clients: int, seconds: float
) -> list[Sample]:
    samples: list[Sample] = []
    deadline = time.perf_counter() + seconds
    turn = 0

    async def worker(session: Any) -> None:
        nonlocal turn
        while time.perf_counter() < deadline:
            request = requests[turn % len(requests)]
            turn += 1
            samples.append(await load.send(session, request, KEEP_HEADERS))

    async with load.new_session(url, clients) as session:
        await asyncio.gather(*(worker(session) for _ in range(clients)))
    return samples


def cache_hit_path(
    proxy_url: str, es_direct: dict[str, float] | None, queries: Sequence[str], rate: float, seconds: float
) -> dict[str, Any]:
    """Warm the model-score cache with `queries`, then replay them at `rate`: every score is a hit."""
    asyncio.run(load.closed_loop(proxy_url, [client_search(q) for q in queries], 8))
    samples = at_rate(proxy_url, lambda i: client_search(queries[i % len(queries)]), rate, seconds)
    client = summarize(latencies(samples))
    return {
        "client": client,
        "own_outside": own_outside(client, es_direct),
        "errors": sum(1 for s in samples if s.status != 200),
        "searches": len(samples) + len(queries),
    }


# --- memory -------------------------------------------------------------------------------------------


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of `pid` so far; None without a pid or psutil."""
    if pid is None:
        return None
    try:
        import psutil
    except ImportError:
        return None
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def rss_mb(pid: int) -> float | None:
    """Resident memory of `pid` in MiB; None without psutil (installed with the `test` extra)."""
    try:
        import psutil
    except ImportError:
        return None
    return float(psutil.Process(pid).memory_info().rss) / 2**20


def top_up(proxy_url: str, queries: Sequence[str], connections: int = 16) -> int:
    """Send one search per query, `connections` at a time; returns how many were sent."""
    asyncio.run(load.closed_loop(proxy_url, [client_search(q) for q in queries], connections))
    return len(queries)


async def _soak(
    proxy_url: str, pid: int, queries: Sequence[str], paths: Sequence[str], rate: float, seconds: float
) -> list[float]:
    """Distinct searches (every score a cache miss) and `_doc` GETs, each at `rate`; RSS sampled every 5 s."""
    samples: list[float] = []

    async def sample_rss() -> None:
        while True:
            value = rss_mb(pid)
            if value is not None:
                samples.append(value)
            await asyncio.sleep(5)

    sampler = asyncio.create_task(sample_rss())
    try:
        await asyncio.gather(
            load.open_loop(proxy_url, lambda i: client_search(queries[i % len(queries)]), rate, seconds),
            load.open_loop(proxy_url, lambda i: Request("GET", paths[i % len(paths)]), rate, seconds),
        )
    finally:
        sampler.cancel()
    return samples


def memory(
    proxy_url: str,
    pid: int,
    done: int,
    target: int,
    queries: Sequence[str],
    paths: Sequence[str],
    rate: float,
    minutes: float,
) -> dict[str, Any]:
    """RSS after `target` searches (topping up from `done`), then after `minutes` more of load."""
    fill, soak_queries = queries[: max(0, target - done)], queries[max(0, target - done) :]
    searches = done + top_up(proxy_url, fill)
    after_searches = rss_mb(pid)
    started = time.perf_counter()
    peaks = asyncio.run(_soak(proxy_url, pid, soak_queries, paths, rate, minutes * 60))
    after_soak = rss_mb(pid)
    growth = after_soak - after_searches if after_soak is not None and after_searches is not None else None
    return {
        "searches": searches,
        "rss_after_searches_mb": after_searches,
        "soak_minutes": minutes,
        "soak_seconds_measured": time.perf_counter() - started,
        "rss_after_soak_mb": after_soak,
        "rss_peak_mb": max([*peaks, after_soak or 0.0]) if peaks or after_soak else None,
        "growth_mb": growth,
    }
