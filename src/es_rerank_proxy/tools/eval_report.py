"""Report formatting for `es-rerank-proxy eval`: the plain-text table, the JSON report and the change plot."""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import EvalError
from .evaluation import Comparison, Report

OUTCOMES = ("applied", "skipped", "degraded")


@dataclass(slots=True)
class SideRun:
    """What one side returned: ranked ids per query, latencies and the proxy's X-Rerank outcomes."""

    name: str
    url: str
    run: dict[str, list[str]] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)


def _latency(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "p50": 0.0, "p95": 0.0}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    return {"mean": statistics.fmean(ordered), "p50": statistics.median(ordered), "p95": p95}


def _outcome_counts(side: SideRun) -> dict[str, int]:
    counts = {name: side.outcomes.get(name, 0) for name in OUTCOMES}
    counts.update({name: n for name, n in side.outcomes.items() if name not in counts})
    return counts


def format_table(
    reports: Mapping[str, Report], sides: Mapping[str, SideRun], comparisons: Mapping[str, Comparison]
) -> str:
    """The aligned plain-text report: one row per metric, one column per side, then the change."""
    names = list(reports)
    metrics = next(iter(reports.values())).metrics
    header = ["metric", *names] + (["change", "wins", "ties", "losses"] if comparisons else [])
    rows: list[list[str]] = []
    for metric in metrics:
        row = [metric, *(f"{reports[name].means[metric]:.4f}" for name in names)]
        if metric in comparisons:
            c = comparisons[metric]
            row += [f"{c.mean_difference:+.4f}", str(c.wins), str(c.ties), str(c.losses)]
        rows.append(row)
    for stat in ("p50", "p95"):
        row = [f"latency {stat} ms", *(f"{_latency(sides[n].latencies_ms)[stat]:.1f}" for n in names)]
        rows.append(row + [""] * (len(header) - len(row)))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [header, *rows]
    ]
    if "proxy" in sides:
        counts = ", ".join(f"{name} {n}" for name, n in _outcome_counts(sides["proxy"]).items())
        reasons = ", ".join(f"{name} {n}" for name, n in sorted(sides["proxy"].reasons.items()))
        lines.append(f"X-Rerank (proxy): {counts}" + (f" (reasons: {reasons})" if reasons else ""))
    return "\n".join(line.rstrip() for line in lines)


def report_json(
    meta: Mapping[str, object],
    reports: Mapping[str, Report],
    sides: Mapping[str, SideRun],
    comparisons: Mapping[str, Comparison],
) -> dict[str, object]:
    """Every number of the run, including per-query values, as a JSON-ready dict."""
    out_sides: dict[str, object] = {}
    for name, report in reports.items():
        side = sides[name]
        entry: dict[str, object] = {
            "url": side.url,
            "means": dict(report.means),
            "per_query": {qid: dict(values) for qid, values in report.per_query.items()},
            "missing": list(report.missing),
            "latency_ms": _latency(side.latencies_ms),
        }
        if name == "proxy":
            entry["x_rerank"] = _outcome_counts(side)
            entry["x_rerank_reasons"] = dict(side.reasons)
        out_sides[name] = entry
    return {
        **meta,
        "sides": out_sides,
        "comparison": {metric: dataclasses.asdict(c) for metric, c in comparisons.items()},
    }


def plot_changes(comparison: Comparison, path: Path) -> None:
    """Per-query change of `comparison.metric` as a sorted bar chart (PNG, Agg backend, no pyplot state)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise EvalError("--plot needs matplotlib: pip install 'es-rerank-proxy[demo]'") from None

    diffs = sorted(comparison.per_query.values(), reverse=True)
    figure = Figure(figsize=(10, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    colors = ["#2e7d32" if d >= 1e-9 else "#c62828" if d <= -1e-9 else "#9e9e9e" for d in diffs]
    axes.bar(range(len(diffs)), diffs, width=1.0, color=colors)
    axes.axhline(0, color="black", linewidth=0.8)
    axes.set_xlabel(f"queries, sorted by change (n={len(diffs)})")
    axes.set_ylabel(f"{comparison.metric} change")
    axes.set_title(
        f"{comparison.metric}: proxy − Elasticsearch, mean {comparison.mean_difference:+.4f} "
        f"(wins {comparison.wins}, ties {comparison.ties}, losses {comparison.losses})"
    )
    figure.tight_layout()
    figure.savefig(path, format="png")
