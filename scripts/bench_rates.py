"""The proxy's CPU per reranked search at several request rates: how much a search costs when it runs cold.

    .venv/bin/python scripts/bench_rates.py                     # 50, 100, 200, 400 searches/s, twice
    .venv/bin/python scripts/bench_rates.py --rates 100,800 --seconds 10

The static 100-hit window, the fake reranker with a fixed latency and the compiled proxy, as in bench.py's
rerank phase; each rate runs `--seconds` in turn, `--rounds` times. Between searches the proxy sleeps, and
on a shared virtual machine its caches go cold; the busier it is, the less each search costs. Method and
results: docs/PERFORMANCE.md, "On the wire".
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_lib import corpus, phases, services

WARM_UP = 100


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rates", default="50,100,200,400", help="searches per second, comma list")
    parser.add_argument("--seconds", type=float, default=5.0, help="each rate's slice")
    parser.add_argument("--rounds", type=int, default=2, help="times every rate runs, in turn")
    parser.add_argument("--model-latency-ms", type=float, default=20.0, help="the fake reranker's latency")
    parser.add_argument("--pure", action="store_true", help="run the proxy from the source")
    return parser.parse_args(argv)


def measure_rate(proxy: services.Proxy, rate: float, queries: list[str], seconds: float) -> str:
    """One open-loop slice of distinct searches at `rate`: its line of the report."""
    before = phases.cpu_seconds(proxy.pid)
    samples = phases.at_rate(proxy.url, phases.cycling(phases.client_search, queries), rate, seconds)
    after = phases.cpu_seconds(proxy.pid)
    own = [v for v in map(phases.header_own_ms, samples) if v is not None]
    cpu = None
    if before is not None and after is not None:
        cpu = round((after - before) * 1000 / len(samples), 2)
    own_summary = phases.summarize(own)
    own_p50 = round(own_summary["p50_ms"], 3) if own_summary else None
    searches = len(samples)
    return f"{rate:6.0f}/s  {searches:5d} searches  CPU/search {cpu} ms  Server-Timing own p50 {own_p50} ms"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rates = [float(rate) for rate in args.rates.split(",")]
    slices = [round(rate * args.seconds) + 1 for rate in rates]  # searches per slice, one spare
    with tempfile.TemporaryDirectory(prefix="bench-rates-") as tmp:
        build = services.proxy_build(Path(tmp), args.pure)
        with services.windowed_proxy(Path(tmp), args.model_latency_ms) as (_, _, proxy):
            queries = iter(corpus.queries(WARM_UP + sum(slices) * args.rounds, 11))
            phases.top_up(proxy.url, [next(queries) for _ in range(WARM_UP)])  # connections open, code loaded
            print(f"Proxy: {build}")
            for _ in range(args.rounds):
                for rate, size in zip(rates, slices, strict=True):
                    chunk = [next(queries) for _ in range(size)]
                    print(measure_rate(proxy, rate, chunk, args.seconds), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
