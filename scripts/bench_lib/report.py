"""Targets with PASS/MISS, the aligned text table, and nothing else: the numbers come in as plain dicts."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import wire_phase

TARGETS_DOC = {
    "throughput": "pass-through req/s at 16 clients >= 0.5 x nginx",
    "added_p50": "pass-through p50 added latency at 1 client <= 0.2 ms over direct",
    "own_p50": "rerank own cost p50 <= 1.0 ms",
    "own_p99": "rerank own cost p99 <= 2.5 ms",
    "rss": "proxy RSS <= 150 MB",
}


def _num(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def evaluate_targets(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per target: what was measured, the limit, and whether it passes (None: not measured)."""
    rows: list[dict[str, Any]] = []
    for op, cells in results["passthrough"].items():
        proxy16, nginx16 = cells["proxy"]["16"], cells.get("nginx", {}).get("16")
        ratio = proxy16["rps"] / nginx16["rps"] if nginx16 else None
        rows.append(_row(f"{TARGETS_DOC['throughput']} ({op})", ratio, 0.5, higher_is_better=True))
        added = cells["proxy"]["1"]["p50_ms"] - cells["direct"]["1"]["p50_ms"]
        rows.append(_row(f"{TARGETS_DOC['added_p50']} ({op})", added, 0.2))
    # From outside against the static window: client - window straight - model straight.
    outside = results["rerank"]["own_outside"] or {"p50_ms": None, "p99_ms": None}
    rows.append(_row(f"{TARGETS_DOC['own_p50']} (outside)", outside["p50_ms"], 1.0))
    rows.append(_row(f"{TARGETS_DOC['own_p99']} (outside)", outside["p99_ms"], 2.5))
    memory = results["memory"]
    rss = max((v for v in (memory["rss_after_searches_mb"], memory["rss_after_soak_mb"]) if v), default=None)
    rows.append(_row(TARGETS_DOC["rss"], rss, 150.0))
    return rows


def _row(name: str, value: float | None, limit: float, higher_is_better: bool = False) -> dict[str, Any]:
    if value is None or math.isnan(value):
        return {"target": name, "value": None, "limit": limit, "pass": None}
    ok = value >= limit if higher_is_better else value <= limit
    return {"target": name, "value": round(value, 3), "limit": limit, "pass": ok}


def align(rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """Columns padded to their widest cell; the first `left` columns left-aligned, the rest right-aligned."""
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(max(map(len, rows)))]
    lines = []
    for row in rows:
        cells = [cell.ljust(widths[i]) if i < left else cell.rjust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def passthrough_table(passthrough: Mapping[str, Any]) -> str:
    targets = ["direct", "nginx", "front", "proxy"]
    rows = [["", "", *(f"{t} req/s" for t in targets), *(f"{t} p50/p99 ms" for t in targets)]]
    for cells in passthrough.values():
        rows.append([cells["label"]])
        for conc in sorted(cells["direct"], key=int):
            entry = [cells.get(t, {}).get(conc) for t in targets]
            rps = [f"{e['rps']:.0f}" if e else "n/a" for e in entry]
            lat = [f"{_num(e['p50_ms'])} / {_num(e['p99_ms'])}" if e else "not installed" for e in entry]
            rows.append([f"  {conc} client(s)", "", *rps, *lat])
    return align(rows)


def rerank_table(rerank: Mapping[str, Any], cache: Mapping[str, Any]) -> str:
    rows = [["", "p50 ms", "p99 ms"]]
    named = [
        ("client latency through the proxy", rerank["client"]),
        ("  recall straight from the static window", rerank["es_direct"]),
        ("  model call, direct", rerank["model_direct"]),
        ("  own cost, outside (client - window - model)", rerank["own_outside"]),
        ("  own cost, proxy timings", rerank["own_proxy"]),
        ("cache hit: client latency", cache["client"]),
        ("  cache hit: own cost, outside (client - window)", cache["own_outside"]),
    ]
    for name, entry in named:
        rows.append([name, _num(entry and entry["p50_ms"]), _num(entry and entry["p99_ms"])])
    cpu = rerank.get("proxy_cpu_ms_per_search")
    rows.append(["proxy process CPU per search (user + system)", _num(cpu), ""])
    return align(rows)


def capacity_table(capacity: Mapping[str, Any]) -> str:
    rows = [["", "reranked searches/s", "p50 / p99 ms", "reranked share"]]
    for name, entry in capacity.items():
        lat = entry["latency"]
        latency = f"{_num(lat and lat['p50_ms'])} / {_num(lat and lat['p99_ms'])}"
        rows.append([name, f"{entry['searches_per_s']:.0f}", latency, f"{entry['applied_share']:.1%}"])
    return align(rows)


def memory_table(memory: Mapping[str, Any]) -> str:
    return align(
        [
            [f"RSS after {memory['searches']} searches", f"{_num(memory['rss_after_searches_mb'], 1)} MB"],
            [
                f"RSS after a further {memory['soak_minutes']:g} min of load",
                f"{_num(memory['rss_after_soak_mb'], 1)} MB",
            ],
            ["growth during the soak", f"{_num(memory['growth_mb'], 1)} MB"],
            ["peak during the soak", f"{_num(memory['rss_peak_mb'], 1)} MB"],
        ]
    )


def targets_table(targets: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for t in targets:
        verdict = {True: "PASS", False: "MISS", None: "N/A"}[t["pass"]]
        value = "n/a" if t["value"] is None else f"{t['value']:g}"
        rows.append([verdict, t["target"], f"measured {value}"])
    return align(rows, left=3)


def render(results: Mapping[str, Any]) -> str:
    """The whole report as printed."""
    s = results["settings"]
    rerank = results["rerank"]
    parts = [
        f"Proxy: {s.get('proxy_build', 'source')}",
        "",
        f"Pass-through ({s['load_tool']}, {s['duration_s']:g} s per cell)",
        passthrough_table(results["passthrough"]),
        "",
        f"Rerank path ({s['rate']:g} searches/s open loop, {s['window']}-hit windows, model latency "
        f"{s['model_latency_ms']:g} ms, {rerank['applied_share']:.1%} reranked; proxy timings: "
        f"{rerank['timing_source'] or 'none found'})",
        rerank_table(rerank, results["cache_hit"]),
        "",
        "Rerank path on the wire (searches one at a time; p50 ms between the proxy's packets, tcpdump)",
        wire_phase.render(results.get("wire", {"skipped": "not measured"})),
        "",
        f"Capacity (closed loop, {s['capacity_clients']} clients, instant model, static window)",
        capacity_table(results["capacity"]),
        "",
        "Memory (proxy process)",
        memory_table(results["memory"]),
        "",
        "Targets",
        targets_table(results["targets"]),
    ]
    return "\n".join(parts)


def save(results: Mapping[str, Any], path: str, repo: Path) -> Path:
    """`results` as indented JSON at `path` (relative to the repository unless absolute); returns where."""
    out = Path(path) if Path(path).is_absolute() else repo / path
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    return out
