"""The rerank path on the wire: where each millisecond of a reranked search goes, from packet timestamps.

    sudo .venv/bin/python scripts/bench_wire.py             # about a minute; tcpdump needs root
    .venv/bin/python scripts/bench_wire.py --pure           # the source instead of the compiled package

Starts the static 100-hit window, the fake reranker with a fixed latency and the proxy, each its own
process, and captures their loopback packets with tcpdump while searches go one at a time (a gap between
them, so every packet belongs to one search): straight to the window, straight to the model, then through
the proxy. It prints the proxy's own time between packets (`pre`, `mid`, `post`; wire.py), next to the
figures bench.py computes from the client's side and the proxy's `Server-Timing` header, for the same
searches. Method and results: docs/PERFORMANCE.md, "On the wire".
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_lib import corpus, load, phases, report, services, wire

REPO = Path(__file__).resolve().parents[1]
WARM_UP = 50


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--searches", type=int, default=300, help="searches of each kind")
    parser.add_argument("--gap-ms", type=float, default=12.0, help="pause between searches")
    parser.add_argument("--model-latency-ms", type=float, default=20.0, help="the fake reranker's latency")
    parser.add_argument("--pure", action="store_true", help="run the proxy from the source")
    parser.add_argument("--json", default="artifacts/bench-wire.json", help="where to save the numbers")
    return parser.parse_args(argv)


async def one_at_a_time(url: str, make: Callable[[int], load.Request], count: int, gap_s: float) -> list[Any]:
    samples = []
    async with load.new_session(url, 1) as session:
        for i in range(count):
            samples.append(await load.send(session, make(i), phases.KEEP_HEADERS))
            await asyncio.sleep(gap_s)
    return samples


def client_ms(samples: list[load.Sample]) -> float:
    return round(statistics.median(s.latency_ms for s in samples if s.status == 200), 3)


def capture(ports: list[int], out: Path) -> subprocess.Popen[bytes]:
    """tcpdump on the loopback device, one line per packet with its epoch time, buffered to `out`."""
    port_filter = " or ".join(f"port {port}" for port in ports)
    command = ["tcpdump", "-i", "lo", "-n", "-tt", "-l", "-B", "16384", f"tcp and ({port_filter})"]
    child = subprocess.Popen(command, stdout=out.open("w"), stderr=subprocess.PIPE)
    time.sleep(1.0)  # tcpdump prints "listening on lo" once its capture is open
    if child.poll() is not None:
        error = child.stderr.read().decode(errors="replace") if child.stderr else ""
        raise SystemExit(f"tcpdump could not capture (root is needed): {error.strip()}")
    return child


def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    gap_s = args.gap_ms / 1000
    count = args.searches
    with ExitStack() as stack:
        window_url = stack.enter_context(services.static_window(tmp))
        model_url = stack.enter_context(services.fake_reranker(tmp, args.model_latency_ms))
        proxy = stack.enter_context(services.proxy(tmp, window_url, model_url, name="proxy-window"))
        port = {name: int(url.rsplit(":", 1)[1]) for name, url in
                (("window", window_url), ("model", model_url), ("proxy", proxy.url))}  # fmt: skip
        dump = tmp / "packets.txt"
        tcpdump = capture(list(port.values()), dump)
        queries = corpus.queries(3 * count + WARM_UP, 7)
        texts = phases.model_texts()
        asyncio.run(one_at_a_time(proxy.url, lambda i: phases.client_search(queries[i]), WARM_UP, gap_s))
        rest = queries[WARM_UP:]
        marks = [time.time()]
        straight_window = asyncio.run(
            one_at_a_time(window_url, lambda i: phases.recall_search(rest[i]), count, gap_s)
        )
        marks.append(time.time())
        straight_model = asyncio.run(
            one_at_a_time(model_url, lambda i: phases.model_request(rest[count + i], texts), count, gap_s)
        )
        marks.append(time.time())
        proxied = asyncio.run(
            one_at_a_time(proxy.url, lambda i: phases.client_search(rest[2 * count + i]), count, gap_s)
        )
        marks.append(time.time())
        time.sleep(0.5)  # the last packets reach the dump
        tcpdump.terminate()
        tcpdump.wait()
    packets = [p for p in map(wire.parse_line, dump.read_text().splitlines()) if p is not None]
    window_alone = wire.exchanges(packets, port["window"], marks[0], marks[1])
    model_alone = wire.exchanges(packets, port["model"], marks[1], marks[2])
    through_proxy = wire.exchanges(packets, port["proxy"], marks[2], marks[3])
    searches = wire.search_parts(
        through_proxy,
        wire.exchanges(packets, port["window"], marks[2], marks[3]),
        wire.exchanges(packets, port["model"], marks[2], marks[3]),
    )
    own_header = [v for v in map(phases.header_own_ms, proxied) if v is not None]
    outside = client_ms(proxied) - client_ms(straight_window) - client_ms(straight_model)
    return {
        "searches": len(searches),
        "applied": sum(1 for s in proxied if s.headers.get("X-Rerank") == "applied"),
        "wire": {
            name: wire.summary_ms([getattr(s, name) for s in searches])
            for name in ("pre", "window", "mid", "model", "post")
        }
        | {"own": wire.summary_ms([s.own for s in searches])},
        "client": {
            "through_proxy_ms": client_ms(proxied),
            "through_proxy_wire": wire.summary_ms([e.span_s for e in through_proxy]),
            "window_straight_ms": client_ms(straight_window),
            "model_straight_ms": client_ms(straight_model),
            "window_straight_wire": wire.summary_ms([e.span_s for e in window_alone]),
            "model_straight_wire": wire.summary_ms([e.span_s for e in model_alone]),
        },
        "own_outside_ms": round(outside, 3),
        "own_server_timing_ms": round(statistics.median(own_header), 3) if own_header else None,
    }


def render(results: dict[str, Any]) -> str:
    w, c = results["wire"], results["client"]

    def wire_p50(name: str) -> str:
        spans = c[f"{name}_wire"]
        return f"{spans['p50_ms']:.3f}" if spans else "-"

    def p50(part: str) -> str:
        return f"{w[part]['p50_ms']:.3f}" if w.get(part) else "-"

    lines = [
        f"Proxy: {results['settings']['proxy_build']}; {results['searches']} searches one at a time, "
        f"{results['applied']} applied",
        "",
        "On the wire (p50 ms between packets):",
        f"  pre  (request in -> window request out)   {p50('pre')}",
        f"  window exchange                           {p50('window')}",
        f"  mid  (window in -> model request out)     {p50('mid')}",
        f"  model exchange                            {p50('model')}",
        f"  post (model answer in -> answer out)      {p50('post')}",
        f"  own = pre + mid + post                    {p50('own')}   (p90 {w['own']['p90_ms']:.3f})"
        if w.get("own")
        else "  own                                       -",
        "",
        "The same searches as bench.py reads them:",
        f"  from outside (client - window - model)    {results['own_outside_ms']:.3f}",
        f"  Server-Timing (total - es - rerank)       {results['own_server_timing_ms']}",
        "  the bench client's p50 (ms), and the same exchanges on the wire:",
        *(
            f"    {label:22s}{c[f'{name}_ms']:8.3f}   on the wire {wire_p50(name)}"
            for label, name in (
                ("through the proxy", "through_proxy"),
                ("window straight", "window_straight"),
                ("model straight", "model_straight"),
            )
        ),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("tcpdump") is None:
        print("tcpdump is not installed: apt-get install -y tcpdump", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-wire-") as tmp:
        if not args.pure:
            services.use_compiled_package(Path(tmp))
        results = measure(args, Path(tmp))
    results["settings"] = {
        **{k: v for k, v in vars(args).items() if k != "json"},
        "proxy_build": "source" if args.pure else "compiled (mypyc)",
    }
    print(render(results))
    out = report.save(results, args.json, REPO)
    print(f"\nSaved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
