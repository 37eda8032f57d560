"""The rerank path on the wire: where each millisecond of a reranked search goes, from packet timestamps.

    sudo .venv/bin/python scripts/bench_wire.py             # about 3 minutes; tcpdump needs root
    .venv/bin/python scripts/bench_wire.py --pure           # the source instead of the compiled package

Starts the static 100-hit window, the fake reranker with a fixed latency and the proxy, each its own
process, and captures their loopback packets with tcpdump while searches go one at a time (a gap between
them, so every packet belongs to one search): straight to the window, straight to the model, then through
the proxy, then through the floor (scripts/bench_floor.py: the proxy's search functions with the least
plumbing). It prints the proxy's own time between packets (`pre`, `mid`, `post`; bench_lib/wire.py) beside
the floor's, and the figures bench.py computes from the client's side and the proxy's `Server-Timing`
header for the same searches. bench.py runs the same phase at the end of its rerank figures. Method and
results: docs/PERFORMANCE.md, "On the wire".
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_lib import report, services, wire_phase

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--searches", type=int, default=300, help="searches of each kind")
    parser.add_argument(
        "--gap-ms", type=float, default=wire_phase.GAP_S * 1000, help="pause between searches"
    )
    parser.add_argument("--model-latency-ms", type=float, default=20.0, help="the fake reranker's latency")
    parser.add_argument("--pure", action="store_true", help="run the proxy from the source")
    parser.add_argument("--json", default="artifacts/bench-wire.json", help="where to save the numbers")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    why_not = wire_phase.unavailable()
    if why_not is not None:
        print(f"cannot capture packets: {why_not}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-wire-") as tmp:
        build = services.proxy_build(Path(tmp), args.pure)
        with (
            services.windowed_proxy(Path(tmp), args.model_latency_ms) as (window_url, model_url, proxy),
            services.floor(Path(tmp), window_url, model_url) as floor_url,
        ):
            results = wire_phase.measure(
                window_url, model_url, proxy.url, args.searches, args.gap_ms / 1000, Path(tmp), floor_url
            )
    results["settings"] = {**{k: v for k, v in vars(args).items() if k != "json"}, "proxy_build": build}
    print(f"Proxy: {build}; {results['searches']} searches one at a time, {results['applied']} reranked")
    print("On the wire (p50 ms between packets):")
    print(wire_phase.render(results))
    print(f"\nSaved {report.save(results, args.json, REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
