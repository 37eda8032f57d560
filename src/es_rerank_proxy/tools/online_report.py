"""`es-rerank-proxy online-report`: what users' clicks say about each canary arm, read from UBI indices."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from pathlib import Path

import orjson

from .online_stats import METRICS, MIN_SEARCHES, Estimate, Metric, OnlineReport, online_report
from .ubi_reader import UbiReadError, add_ubi_source_arguments, read_from_arguments

_ARM_ORDER = ("off", "rerank", "shadow", "interleave")


def add_online_report_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `online-report --es URL [--api-key K] [--since 7d] [--application A] [--json OUT] [--plot PNG]`."""
    report = subparsers.add_parser(
        "online-report",
        help="per canary arm, what users clicked (UBI searches and events in Elasticsearch)",
        description="Join the proxy's UBI search records (ubi_queries) with the frontend's click events "
        "(ubi_events) and print, per arm, click-through, first-click rate, MRR of the first click, "
        "abandonment, zero-result rate and time to first click with 95% bootstrap intervals; rerank - off; "
        "and interleaving's wins, ties and losses with a sign test.",
    )
    add_ubi_source_arguments(report)
    report.add_argument("--json", metavar="OUT", help="also write the report as JSON")
    report.add_argument("--plot", metavar="OUT.png", help="also draw each arm's metrics with intervals")
    report.add_argument("--resamples", type=int, default=1000, metavar="N", help="bootstrap resamples (1000)")
    report.add_argument("--seed", type=int, default=0, help="bootstrap seed (same seed, same intervals)")


def run_online_report(args: argparse.Namespace) -> int:
    """Run `online-report`; 0 when a report was printed (even one saying there is too little data)."""
    try:
        rows = asyncio.run(read_from_arguments(args))
    except UbiReadError as exc:
        print(f"online-report: {exc}", file=sys.stderr)
        return 1
    report = online_report(rows, resamples=max(args.resamples, 0), seed=args.seed)
    scope = f"last {args.since}" + (f", application {args.application!r}" if args.application else "")
    print(format_report(report, scope))
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(report_json(report), option=orjson.OPT_INDENT_2))
    if args.plot and report.arms:
        plot_report(report, Path(args.plot))
    return 0


def _number(value: float | None, metric: Metric, signed: bool = False) -> str:
    if value is None:
        return "-"
    if metric.percent:
        return f"{100 * value:+.1f}%" if signed else f"{100 * value:.1f}%"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def format_estimate(estimate: Estimate, metric: Metric, signed: bool = False) -> str:
    """`41.7% [35.2, 48.0]`: the value and its interval, in the metric's unit."""
    value = _number(estimate.value, metric, signed)
    if estimate.low is None or estimate.high is None:
        return value
    low, high = _number(estimate.low, metric, signed), _number(estimate.high, metric, signed)
    return f"{value} [{low.rstrip('%')}, {high}]"


def _ordered(report: OnlineReport) -> list[str]:
    return sorted(report.arms, key=lambda arm: (_ARM_ORDER.index(arm) if arm in _ARM_ORDER else 9, arm))


def format_report(report: OnlineReport, scope: str) -> str:
    """The report as the terminal shows it: one column per arm, then rerank - off, then interleaving."""
    if not report.arms:
        return f"No recorded searches ({scope}): is UBI recording on, and does the frontend send ext.ubi?"
    arms = _ordered(report)
    columns = [*arms, "rerank - off"] if report.difference else arms
    blank = [""] if report.difference else []
    rows = [
        ["searches", *[str(report.arms[arm].searches) for arm in arms], *blank],
        ["  degraded", *[str(report.arms[arm].degraded) for arm in arms], *blank],
    ]
    for metric in METRICS:
        cells = [format_estimate(report.arms[arm].metrics[metric.name], metric) for arm in arms]
        row = [metric.label, *cells]
        if report.difference:
            row.append(format_estimate(report.difference[metric.name], metric, signed=True))
        rows.append(row)
    widths = [max(len(r[i]) for r in [["", *columns], *rows]) for i in range(len(columns) + 1)]
    lines = [f"Users' clicks per canary arm ({scope}); 95% bootstrap intervals, {report.resamples} resamples"]
    for line in [["", *columns], *rows]:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    lines.append("first click and MRR: of the searches with a click (result 1 = the top of the whole list);")
    lines.append("abandonment: of the searches that showed results")
    short = [arm for arm in arms if not report.arms[arm].enough]
    if short:
        lines.append(
            f"too little data for intervals in {', '.join(short)}: fewer than {MIN_SEARCHES} searches"
        )
    if not report.difference:
        lines.append(f"rerank - off needs both arms with at least {MIN_SEARCHES} searches each")
    if report.interleave is not None:
        lines.extend(_interleave_lines(report))
    return "\n".join(lines)


def _interleave_lines(report: OnlineReport) -> list[str]:
    verdict = report.interleave
    assert verdict is not None
    lines = [
        "",
        f"Interleaving: {verdict.searches} searches with teams, {verdict.no_clicks} without a click",
        f"  reranker wins {verdict.wins}, ties {verdict.ties}, losses {verdict.losses}",
    ]
    if verdict.p_value is None:
        lines.append("  too little data: no search had more clicks on one team than the other")
    else:
        side = "reranker" if verdict.wins > verdict.losses else "Elasticsearch"
        decided = "significant at 0.05" if verdict.p_value < 0.05 else "not significant at 0.05"
        lines.append(f"  sign test, two-sided: p = {verdict.p_value:.4g} ({side} ahead; {decided})")
    return lines


def report_json(report: OnlineReport) -> dict[str, object]:
    """The report as plain JSON data."""
    return dataclasses.asdict(report)


def plot_report(report: OnlineReport, path: Path) -> None:
    """Each rate metric per arm as a point with its interval (PNG, Agg backend, no pyplot state)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        print("online-report: --plot needs matplotlib: pip install 'es-rerank-proxy[demo]'", file=sys.stderr)
        return
    metrics = [metric for metric in METRICS if metric.percent]
    arms = _ordered(report)
    figure = Figure(figsize=(3 * len(metrics), 3.5), dpi=100)
    FigureCanvasAgg(figure)
    for axes, metric in zip(figure.subplots(1, len(metrics)), metrics, strict=True):
        for x, arm in enumerate(arms):
            estimate = report.arms[arm].metrics[metric.name]
            if estimate.value is None:
                continue
            low = estimate.value if estimate.low is None else estimate.low
            high = estimate.value if estimate.high is None else estimate.high
            axes.errorbar(
                [x],
                [100 * estimate.value],
                yerr=[[100 * (estimate.value - low)], [100 * (high - estimate.value)]],
                fmt="o",
                capsize=4,
            )
        axes.set_xticks(range(len(arms)), arms)
        axes.set_xlim(-0.5, len(arms) - 0.5)
        axes.set_title(metric.label, fontsize=9)
        axes.set_ylabel("%")
    figure.tight_layout()
    figure.savefig(path, format="png")
