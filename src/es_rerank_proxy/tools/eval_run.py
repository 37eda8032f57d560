"""`es-rerank-proxy eval`: judged queries to Elasticsearch and through the proxy; compare the rankings."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import aiohttp
import orjson

from ..errors import EvalError
from .datasets import SHIPPED, DatasetError, load_collection, parse_qrels, parse_queries, read_lines
from .eval_report import SideRun, format_table, plot_changes, report_json
from .evaluation import Comparison, Report, compare, evaluate
from .progress import ProgressBar

PLACEHOLDER = "{{query}}"
SIDES = ("elasticsearch", "proxy")


class SearchFailed(EvalError):
    """A search request failed: refused, timed out, non-200 or not a search response (exit code 1)."""


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
    progress: ProgressBar,
) -> None:
    """Run every query against `side.url` with at most `concurrency` requests in flight."""
    url = f"{side.url.rstrip('/')}/{urllib.parse.quote(index, safe=',*')}/_search"
    pending = iter(queries.items())
    done = 0

    async def worker() -> None:
        nonlocal done
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
            done += 1
            progress(done, len(queries))

    tasks = [asyncio.ensure_future(worker()) for _ in range(max(1, concurrency))]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        progress.finish()


def _hit_ids(body: bytes, side: str) -> list[str]:
    try:
        hits = cast("list[dict[str, object]]", orjson.loads(body)["hits"]["hits"])
        return [str(hit["_id"]) for hit in hits]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise SearchFailed(f"{side}: not a search response ({exc!r}): {body[:200]!r}") from None


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
            # quiet off a terminal: `eval` output is often redirected and parsed
            progress = ProgressBar(sys.stderr, label=side.name, quiet=True)
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
    """`python -m es_rerank_proxy.tools.eval_run ARGS`: the `eval` command on its own."""
    parser = argparse.ArgumentParser(prog="es-rerank-proxy eval", description=__doc__)
    configure_parser(parser)
    return run_eval(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main_eval())
