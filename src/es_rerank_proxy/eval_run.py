"""`es-rerank-proxy eval`: judged queries to Elasticsearch and through the proxy; compare the rankings."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import statistics
import sys
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO, cast

import aiohttp
import orjson

from .datasets import SHIPPED, DatasetError, load_collection, parse_qrels, parse_queries, read_lines
from .errors import ProxyError
from .evaluation import Comparison, Report, compare, evaluate

PLACEHOLDER = "{{query}}"
OUTCOMES = ("applied", "skipped", "degraded")
SIDES = ("elasticsearch", "proxy")


class EvalError(ProxyError):
    """An input or option is unusable (exit code 2)."""


class SearchFailed(EvalError):
    """A search request failed: refused, timed out, non-200 or not a search response (exit code 1)."""


@dataclass(slots=True)
class SideRun:
    """What one side returned: ranked ids per query, latencies and the proxy's X-Rerank outcomes."""

    name: str
    url: str
    run: dict[str, list[str]] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)


class Progress:
    """A one-line `\\r` progress bar on a terminal; silent when the stream is not a TTY."""

    def __init__(self, label: str, total: int, stream: TextIO, *, width: int = 30) -> None:
        self.label, self.total, self.stream, self.width = label, total, stream, width
        self.enabled = stream.isatty()
        self.done = 0

    def advance(self) -> None:
        self.done += 1
        if self.enabled:
            filled = self.width * self.done // max(self.total, 1)
            bar = "#" * filled + "." * (self.width - filled)
            self.stream.write(f"\r{self.label:<14} [{bar}] {self.done}/{self.total}")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def _contains_placeholder(value: object) -> bool:
    if isinstance(value, str):
        return PLACEHOLDER in value
    if isinstance(value, dict):
        return any(_contains_placeholder(v) for v in value.values())
    if isinstance(value, list):
        return any(_contains_placeholder(v) for v in value)
    return False


def fill_template(template: object, query: str) -> object:
    """A copy of the parsed JSON `template` with `{{query}}` replaced inside every string (JSON-safe)."""
    if isinstance(template, str):
        return template.replace(PLACEHOLDER, query)
    if isinstance(template, dict):
        return {key: fill_template(value, query) for key, value in template.items()}
    if isinstance(template, list):
        return [fill_template(value, query) for value in template]
    return template


def default_body(query: str, fields: Sequence[str], size: int) -> dict[str, object]:
    """The request a typical frontend sends: multi_match over `fields`, ids only."""
    return {
        "query": {"multi_match": {"query": query, "fields": list(fields)}},
        "size": size,
        "_source": False,
    }


async def search_side(
    side: SideRun,
    index: str,
    queries: Mapping[str, str],
    make_body: Callable[[str], bytes],
    *,
    session: aiohttp.ClientSession,
    concurrency: int,
    progress: Progress,
) -> None:
    """Run every query against `side.url` with at most `concurrency` requests in flight."""
    url = f"{side.url.rstrip('/')}/{urllib.parse.quote(index, safe=',*')}/_search"
    pending = iter(queries.items())

    async def worker() -> None:
        for qid, text in pending:
            started = time.perf_counter()
            try:
                async with session.post(
                    url, data=make_body(text), headers={"Content-Type": "application/json"}
                ) as response:
                    body = await response.read()
                    outcome = response.headers.get("X-Rerank")
                    reason = response.headers.get("X-Rerank-Reason")
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise SearchFailed(f"{side.name} {url}: {type(exc).__name__}: {exc}") from None
            if response.status != 200:
                detail = body[:300].decode("utf-8", "replace")
                raise SearchFailed(f"{side.name} {url}: HTTP {response.status} for query {qid}: {detail}")
            side.latencies_ms.append((time.perf_counter() - started) * 1000)
            side.run[qid] = _hit_ids(body, side.name)
            side.outcomes[outcome.lower() if outcome else "missing"] += 1
            if reason:
                side.reasons[reason] += 1
            progress.advance()

    tasks = [asyncio.ensure_future(worker()) for _ in range(max(1, concurrency))]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        progress.close()


def _hit_ids(body: bytes, side: str) -> list[str]:
    try:
        hits = cast("list[dict[str, object]]", orjson.loads(body)["hits"]["hits"])
        return [str(hit["_id"]) for hit in hits]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise SearchFailed(f"{side}: not a search response ({exc!r}): {body[:200]!r}") from None


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


def _check_options(args: argparse.Namespace) -> None:
    disabled = [url.lower() == "none" for url in (args.es, args.proxy)]
    if all(disabled):
        raise EvalError("--es and --proxy are both 'none'; nothing to evaluate")
    if args.plot and any(disabled):
        raise EvalError("--plot needs both --es and --proxy")
    for name in ("k", "size", "concurrency"):
        if getattr(args, name) < 1:
            raise EvalError(f"--{name} must be at least 1")


def _inputs(args: argparse.Namespace) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    if not args.dataset and not (args.queries and args.qrels):
        raise EvalError("give --dataset NAME, or both --queries FILE and --qrels FILE")
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    if args.dataset:
        collection = load_collection(args.dataset)
        queries, qrels = collection.queries, collection.qrels
    if args.queries:
        queries = parse_queries(read_lines(args.queries), args.queries)
    if args.qrels:
        qrels = parse_qrels(read_lines(args.qrels), args.qrels)
    judged = {qid: text for qid, text in queries.items() if any(g > 0 for g in qrels.get(qid, {}).values())}
    if args.limit:
        judged = dict(list(judged.items())[: args.limit])
    if not judged:
        raise EvalError("no query has a relevant judgment in the qrels")
    return judged, {qid: qrels[qid] for qid in judged}


def _body_maker(args: argparse.Namespace) -> Callable[[str], bytes]:
    if args.template is None:
        fields = [f.strip() for f in args.fields.split(",") if f.strip()]
        return lambda query: orjson.dumps(default_body(query, fields, args.size))
    try:
        template: object = orjson.loads(Path(args.template).read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise EvalError(f"--template {args.template}: {exc}") from None
    if not _contains_placeholder(template):
        raise EvalError(f"--template {args.template}: no {PLACEHOLDER} placeholder inside a JSON string")
    return lambda query: orjson.dumps(fill_template(template, query))


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Both sides' runs, their metric reports, and the comparison of the proxy against Elasticsearch."""

    metrics: tuple[str, ...]
    reports: dict[str, Report]
    sides: dict[str, SideRun]
    comparisons: dict[str, Comparison]


async def run_evaluation(
    index: str,
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    urls: Mapping[str, str],
    make_body: Callable[[str], bytes],
    k: int = 10,
    size: int = 100,
    concurrency: int = 4,
    timeout_s: float = 60.0,
) -> Evaluation:
    """Send every query to each side in `urls` ("elasticsearch", "proxy"; "none" skips one) and score them."""
    sides = {name: SideRun(name, url) for name, url in urls.items() if url.lower() != "none"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        for side in sides.values():  # one side after the other, so latencies do not disturb each other
            progress = Progress(side.name, len(queries), sys.stderr)
            await search_side(
                side, index, queries, make_body, session=session, concurrency=concurrency, progress=progress
            )
    metrics = tuple(dict.fromkeys([f"ndcg@{k}", f"mrr@{k}", f"recall@{k}", f"recall@{size}"]))
    reports = {name: evaluate(side.run, qrels, metrics=metrics) for name, side in sides.items()}
    comparisons: dict[str, Comparison] = {}
    if len(reports) == 2:
        comparisons = {m: compare(reports["elasticsearch"], reports["proxy"], m) for m in metrics}
    return Evaluation(metrics, reports, sides, comparisons)


def run_eval(args: argparse.Namespace) -> int:
    """Run the evaluation described by the parsed `eval` arguments; 0 ok, 1 a search failed, 2 bad input."""
    try:
        _evaluate(args)
    except SearchFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (EvalError, DatasetError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _evaluate(args: argparse.Namespace) -> None:
    _check_options(args)
    queries, qrels = _inputs(args)
    k, size = args.k, args.size
    result = asyncio.run(
        run_evaluation(
            args.index,
            queries,
            qrels,
            urls={"elasticsearch": args.es, "proxy": args.proxy},
            make_body=_body_maker(args),
            k=k,
            size=size,
            concurrency=args.concurrency,
            timeout_s=args.timeout,
        )
    )
    print(f"index {args.index}: {len(qrels)} judged queries, k={k}, size={size}")
    print(format_table(result.reports, result.sides, result.comparisons))
    if args.json:
        names = ("index", "dataset", "queries", "qrels", "k", "size")
        meta = {
            **{name: getattr(args, name) for name in names},
            "n_queries": len(qrels),
            "metrics": result.metrics,
        }
        out = report_json(meta, result.reports, result.sides, result.comparisons)
        Path(args.json).write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2))
    if args.plot:
        plot_changes(result.comparisons[f"ndcg@{k}"], Path(args.plot))


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the `eval` options to `parser`."""
    data = parser.add_argument_group("queries and judgments")
    data.add_argument("--dataset", choices=SHIPPED, help="use a shipped collection's queries and qrels")
    data.add_argument("--queries", metavar="FILE", help="JSONL {_id, text} (.gz ok); overrides --dataset")
    data.add_argument(
        "--qrels", metavar="FILE", help="TSV query-id corpus-id score (.gz ok); overrides --dataset"
    )
    data.add_argument("--limit", type=int, default=0, metavar="N", help="only the first N judged queries")
    parser.add_argument("--index", required=True, help="the Elasticsearch index (or comma list) to search")
    parser.add_argument(
        "--es", default="http://127.0.0.1:9200", metavar="URL", help="Elasticsearch, or 'none'"
    )
    parser.add_argument(
        "--proxy", default="http://127.0.0.1:9201", metavar="URL", help="the proxy, or 'none'"
    )
    parser.add_argument("--k", type=int, default=10, help="cut-off for NDCG, MRR and Recall (default 10)")
    parser.add_argument(
        "--size", type=int, default=100, help="hits per request; also the deep Recall cut-off"
    )
    parser.add_argument("--fields", default="title,text", help="multi_match fields (default title,text)")
    parser.add_argument("--template", metavar="FILE.json", help="request body with a {{query}} placeholder")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight per side (default 4)")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="S", help="per-request timeout")
    parser.add_argument("--json", metavar="OUT", help="write every number, per query too, as JSON")
    parser.add_argument("--plot", metavar="OUT.png", help="bar chart of the per-query NDCG change")


def add_eval_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `eval` on the CLI's subparsers."""
    parser = subparsers.add_parser(
        "eval",
        help="compare NDCG/MRR/Recall of Elasticsearch and the proxy on judged queries",
        description="Send judged queries to Elasticsearch and through the proxy; report the metrics.",
    )
    configure_parser(parser)


def main_eval(argv: Sequence[str] | None = None) -> int:
    """`python -m es_rerank_proxy.eval_run ARGS`: the `eval` command on its own."""
    parser = argparse.ArgumentParser(prog="es-rerank-proxy eval", description=__doc__)
    configure_parser(parser)
    return run_eval(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main_eval())
