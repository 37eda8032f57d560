"""`es-rerank-proxy judgments --from-ubi`: graded judgments from users' clicks, in the BEIR layout `eval`
reads (qrels TSV, queries JSONL)."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
from pathlib import Path

import orjson

from .click_judgments import DEFAULT_THRESHOLDS, coec_pairs, graded_judgments, qrels_tsv, query_texts
from .ubi_reader import UbiReadError, add_ubi_source_arguments, read_from_arguments


def _thresholds(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ascending numbers like 1,2, got {text!r}") from None
    if not values or any(b <= a for a, b in itertools.pairwise(values)) or values[0] <= 0:
        raise argparse.ArgumentTypeError(f"expected ascending positive numbers like 1,2, got {text!r}")
    return values


def add_judgments_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `judgments --from-ubi --es URL --out qrels.tsv [--queries-out queries.jsonl] ...`."""
    judgments = subparsers.add_parser(
        "judgments",
        help="graded judgments from users' clicks (UBI) for `eval`",
        description="Derive graded judgments from UBI clicks with COEC (clicks over the clicks an average "
        "result gets at the same ranks) and write them as BEIR qrels, so `eval` can compare blends offline.",
    )
    judgments.add_argument("--from-ubi", action="store_true", required=True, help="read UBI searches/clicks")
    add_ubi_source_arguments(judgments)
    judgments.add_argument("--out", required=True, metavar="QRELS.tsv", help="where to write the qrels")
    judgments.add_argument("--queries-out", metavar="QUERIES.jsonl", help="also write the queries")
    judgments.add_argument(
        "--min-impressions", type=int, default=3, metavar="N", help="judge a pair shown at least N times (3)"
    )
    judgments.add_argument("--max-rank", type=int, default=20, metavar="R", help="use ranks 1..R (20)")
    judgments.add_argument(
        "--thresholds",
        type=_thresholds,
        default=DEFAULT_THRESHOLDS,
        metavar="T1,T2",
        help="COEC from which a pair gets grade 1, 2, ... (default 1,2: average for its ranks, twice that)",
    )


def run_judgments(args: argparse.Namespace) -> int:
    """Run `judgments`; 0 when files were written, 1 when UBI could not be read or nothing could be judged."""
    try:
        rows = asyncio.run(read_from_arguments(args))
    except UbiReadError as exc:
        print(f"judgments: {exc}", file=sys.stderr)
        return 1
    pairs = coec_pairs(rows, max_rank=args.max_rank, min_impressions=max(args.min_impressions, 1))
    qrels = graded_judgments(pairs, args.thresholds)
    if not qrels:
        print(
            f"judgments: nothing to judge in {len(rows)} searches: no query-document pair was shown "
            f"{args.min_impressions} times with clicks at its ranks (try a longer --since)",
            file=sys.stderr,
        )
        return 1
    Path(args.out).write_text(qrels_tsv(qrels), encoding="utf-8")
    if args.queries_out:
        texts = query_texts(rows, qrels)
        lines = [orjson.dumps({"_id": qid, "text": text}) for qid, text in sorted(texts.items())]
        Path(args.queries_out).write_bytes(b"\n".join(lines) + b"\n")
    graded = sum(1 for docs in qrels.values() for g in docs.values() if g > 0)
    judged = sum(len(docs) for docs in qrels.values())
    print(
        f"judgments: {len(qrels)} queries, {judged} pairs ({graded} graded above 0) from {len(rows)} "
        f"searches -> {args.out}",
        file=sys.stderr,
    )
    return 0
