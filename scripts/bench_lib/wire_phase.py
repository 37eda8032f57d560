"""The rerank path on the wire: searches one at a time while tcpdump stamps every loopback packet.

Used by scripts/bench_wire.py on its own and by scripts/bench.py as its last rerank figure; the packets
are read by `wire` (pure). tcpdump captures as root only: without it the phase is skipped, and says why.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from . import corpus, load, phases, wire

WARM_UP = 50
# Between searches: every packet belongs to one search, and each starts from an idle proxy as at 100/s.
GAP_S = 0.012
TCPDUMP_HINT = "apt-get install -y tcpdump"


def unavailable() -> str | None:
    """Why packets cannot be captured here, or None when they can."""
    if shutil.which("tcpdump") is None:
        return f"tcpdump is not installed ({TCPDUMP_HINT})"
    if os.geteuid() != 0:
        return "tcpdump captures as root only"
    return None


async def one_at_a_time(
    url: str, make: Callable[[int], load.Request], count: int, gap_s: float
) -> list[load.Sample]:
    samples = []
    async with load.new_session(url, 1) as session:
        for i in range(count):
            samples.append(await load.send(session, make(i), phases.KEEP_HEADERS))
            await asyncio.sleep(gap_s)
    return samples


def _p50_ms(summary: Mapping[str, float | None] | None) -> float | None:
    """The p50 of one of bench.py's summaries (`phases.summarize`, `phases.own_outside`), if any."""
    value = summary.get("p50_ms") if summary else None
    return None if value is None else round(value, 3)


def _capture(ports: list[int], out: Path) -> subprocess.Popen[bytes]:
    """tcpdump on the loopback device, one line per packet with its epoch time, buffered to `out`."""
    port_filter = " or ".join(f"port {port}" for port in ports)
    command = ["tcpdump", "-i", "lo", "-n", "-tt", "-l", "-B", "16384", f"tcp and ({port_filter})"]
    child = subprocess.Popen(command, stdout=out.open("w"), stderr=subprocess.PIPE)
    time.sleep(1.0)  # time for tcpdump to open its capture
    if child.poll() is not None:
        error = child.stderr.read().decode(errors="replace") if child.stderr else ""
        raise RuntimeError(f"tcpdump could not capture: {error.strip()}")
    return child


def measure(
    window_url: str,
    model_url: str,
    proxy_url: str,
    searches: int,
    gap_s: float,
    tmp: Path,
    floor_url: str | None = None,
) -> dict[str, Any]:
    """`searches` each straight to the window, straight to the model, then through the proxy (and then
    through the floor, scripts/bench_floor.py, when given), one at a time `gap_s` apart; the proxy's parts
    between packets, the floor's, and bench.py's figures for the same searches."""
    port = {name: int(url.rsplit(":", 1)[1]) for name, url in
            (("window", window_url), ("model", model_url), ("proxy", proxy_url))}  # fmt: skip
    if floor_url is not None:
        port["floor"] = int(floor_url.rsplit(":", 1)[1])
    dump = tmp / "packets.txt"
    tcpdump = _capture(list(port.values()), dump)
    try:
        queries = corpus.queries(4 * searches + WARM_UP, 7)
        texts = phases.model_texts()
        asyncio.run(one_at_a_time(proxy_url, lambda i: phases.client_search(queries[i]), WARM_UP, gap_s))
        rest = queries[WARM_UP:]
        marks = [time.time()]
        straight_window = asyncio.run(
            one_at_a_time(window_url, lambda i: phases.recall_search(rest[i]), searches, gap_s)
        )
        marks.append(time.time())
        straight_model = asyncio.run(
            one_at_a_time(
                model_url, lambda i: phases.model_request(rest[searches + i], texts), searches, gap_s
            )
        )
        marks.append(time.time())
        proxied = asyncio.run(
            one_at_a_time(proxy_url, lambda i: phases.client_search(rest[2 * searches + i]), searches, gap_s)
        )
        marks.append(time.time())
        if floor_url is not None:
            asyncio.run(one_at_a_time(floor_url, lambda i: phases.client_search(queries[i]), WARM_UP, gap_s))
            marks.append(time.time())
            asyncio.run(
                one_at_a_time(
                    floor_url, lambda i: phases.client_search(rest[3 * searches + i]), searches, gap_s
                )
            )
            marks.append(time.time())
        time.sleep(0.5)  # the last packets reach the dump
    finally:
        tcpdump.terminate()
        tcpdump.wait()
    packets = [p for p in map(wire.parse_line, dump.read_text().splitlines()) if p is not None]
    window_alone = wire.exchanges(packets, port["window"], marks[0], marks[1])
    model_alone = wire.exchanges(packets, port["model"], marks[1], marks[2])
    through_proxy = wire.exchanges(packets, port["proxy"], marks[2], marks[3])

    def searches_through(front: str, start: float, end: float) -> list[wire.SearchParts]:
        """The parts of each search sent to `front` ("proxy" or "floor") between two marks."""
        exchanges = (wire.exchanges(packets, port[name], start, end) for name in (front, "window", "model"))
        return wire.search_parts(*exchanges)

    parts = searches_through("proxy", marks[2], marks[3])
    floor_parts = None if floor_url is None else searches_through("floor", marks[4], marks[5])
    own_header = [v for v in map(phases.header_own_ms, proxied) if v is not None]
    # bench.py's own figures for the same searches: its p50s, and its outside subtraction
    through, window, model = (
        phases.summarize(phases.latencies(samples)) for samples in (proxied, straight_window, straight_model)
    )
    outside = phases.own_outside(through, window, model)
    client = {
        "through_proxy_ms": _p50_ms(through),
        "window_straight_ms": _p50_ms(window),
        "model_straight_ms": _p50_ms(model),
        "through_proxy_wire": wire.summary_ms([e.span_s for e in through_proxy]),
        "window_straight_wire": wire.summary_ms([e.span_s for e in window_alone]),
        "model_straight_wire": wire.summary_ms([e.span_s for e in model_alone]),
    }
    on_wire = _wire_summary(parts)
    return {
        "searches": len(parts),
        "applied": sum(1 for s in proxied if s.headers.get("X-Rerank") == "applied"),
        "gap_ms": gap_s * 1000,
        "wire": on_wire,
        "floor": None if floor_parts is None else _floor(on_wire, floor_parts),
        "client": client,
        "own_outside_ms": _p50_ms(outside),
        "own_server_timing_ms": _p50_ms(phases.summarize(own_header)),
    }


def _wire_summary(parts: list[wire.SearchParts]) -> dict[str, dict[str, float] | None]:
    summary = {name: wire.summary_ms([getattr(p, name) for p in parts]) for name in wire.PART_NAMES}
    return summary | {"own": wire.summary_ms([p.own for p in parts])}


def _floor(proxy: Mapping[str, Any], parts: list[wire.SearchParts]) -> dict[str, Any]:
    """The floor's parts, and the proxy's own p50 over the floor's: what the proxy's plumbing costs."""
    floor = _wire_summary(parts)
    ratio = None
    if proxy["own"] and floor["own"] and floor["own"]["p50_ms"] > 0:
        ratio = round(proxy["own"]["p50_ms"] / floor["own"]["p50_ms"], 2)
    return {"searches": len(parts), "wire": floor, "own_ratio": ratio}


def render(results: Mapping[str, Any]) -> str:
    """The phase's lines of the report."""
    if "skipped" in results:
        return f"  skipped: {results['skipped']}"
    parts, client = results["wire"], results["client"]

    def p50(summary: Mapping[str, float] | None) -> str:
        return f"{summary['p50_ms']:.3f}" if summary else "-"

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    own = parts["own"]
    floor = results.get("floor")
    rows = (
        ("pre  (request in -> window request out)", "pre"),
        ("window exchange", "window"),
        ("mid  (window in -> model request out)", "mid"),
        ("model exchange", "model"),
        ("post (model answer in -> answer out)", "post"),
        ("own = pre + mid + post", "own"),
    )
    lines = [f"  {'':42s}{'proxy':>8s}" + (f"{'floor':>9s}" if floor else "")]
    for label, name in rows:
        line = f"  {label:42s}{p50(parts[name]):>8s}"
        if floor:
            line += f"{p50(floor['wire'][name]):>9s}"
        lines.append(line)
    if own:
        lines.append(f"  {'own p90':42s}{own['p90_ms']:8.3f}")
    if floor:
        lines.append(
            f"  the proxy's own time is {floor['own_ratio']} x the floor's (scripts/bench_floor.py: its"
            " search functions, the least plumbing)"
        )
    lines += [
        f"  the same searches: outside {ms(results['own_outside_ms'])}, "
        f"Server-Timing {ms(results['own_server_timing_ms'])}",
        "  the bench client's p50, and the same exchanges on the wire:",
    ]
    exchanges = (
        ("through the proxy", "through_proxy"),
        ("window straight", "window_straight"),
        ("model straight", "model_straight"),
    )
    for label, name in exchanges:
        on_wire = p50(client[f"{name}_wire"])
        lines.append(f"    {label:22s}{ms(client[f'{name}_ms']):>8s}   on the wire {on_wire}")
    return "\n".join(lines)
