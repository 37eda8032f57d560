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
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_lib import corpus, phases, services


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rates = [float(rate) for rate in args.rates.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-rates-") as tmp, ExitStack() as stack:
        if not args.pure:
            services.use_compiled_package(Path(tmp))
        window_url = stack.enter_context(services.static_window(Path(tmp)))
        model_url = stack.enter_context(services.fake_reranker(Path(tmp), args.model_latency_ms))
        proxy = stack.enter_context(services.proxy(Path(tmp), window_url, model_url, name="proxy-window"))
        total = round(sum(rates) * args.seconds * args.rounds) + 100
        queries = iter(corpus.queries(total + 1000, 11))
        phases.top_up(proxy.url, [next(queries) for _ in range(100)])  # connections open, code loaded
        print(f"Proxy: {'source' if args.pure else 'compiled (mypyc)'}")
        for _ in range(args.rounds):
            for rate in rates:
                chunk = [next(queries) for _ in range(round(rate * args.seconds) + 1)]
                before = phases.cpu_seconds(proxy.pid)
                samples = phases.at_rate(
                    proxy.url, phases.cycling(phases.client_search, chunk), rate, args.seconds
                )
                after = phases.cpu_seconds(proxy.pid)
                own = [v for v in map(phases.header_own_ms, samples) if v is not None]
                cpu = None
                if before is not None and after is not None:
                    cpu = (after - before) * 1000 / len(samples)
                print(
                    f"{rate:6.0f}/s  {len(samples):5d} searches  CPU/search "
                    f"{cpu if cpu is None else round(cpu, 2)} ms  Server-Timing own p50 "
                    f"{round(statistics.median(own), 3) if own else None} ms",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
