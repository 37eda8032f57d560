"""Time the rerank step alone: one 100-hit window in, the client's page out, with an instant model.

    .venv/bin/python scripts/bench_rerank_step.py --searches 3000 [--explain]

No sockets and no event-loop hops: the parsed window goes through `rerank_step.rerank_window` (prior,
candidate texts, blend, page) with a scorer that answers at once, then is serialised as the pipeline does.
Prints microseconds per search (fastest and median of --repeats runs), to compare two versions on one
machine.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import cast

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tests.fakes.proxy_server import make_config

from bench_lib import phases
from bench_static_window import window_body
from es_rerank_proxy.model.scoring import ScoreDoc, ScoreOutcome, Scorer
from es_rerank_proxy.observe.record import SearchRecord
from es_rerank_proxy.search import rerank_step
from es_rerank_proxy.search.plan import SearchPlan, plan_search
from es_rerank_proxy.search.settings import Settings

NOW = datetime(2025, 6, 1, tzinfo=timezone.utc)


class InstantScorer:
    """Answers every document at once with a score that depends on its position only."""

    async def score(self, query: str, docs: Sequence[ScoreDoc], budget_s: float) -> ScoreOutcome:
        scores = {position: 1.0 / (1 + (position * 7) % len(docs)) for position in range(len(docs))}
        return ScoreOutcome(
            scores=scores, reason=None, cache_hits=0, cache_misses=len(docs), model_calls=1, elapsed_s=0.0
        )


async def run(searches: int, explain: bool) -> float:
    """Seconds per search over `searches` rerank steps, each from a fresh parse of the window's bytes."""
    settings = Settings.from_config(make_config("http://127.0.0.1:9"))
    body = window_body(phases.RECALL_INDEX)
    plan = plan_search(
        phases.search_body("kalo", 10),
        {},
        (phases.RECALL_INDEX,),
        settings.config.rerank,
        settings.needed,
        None,
    )
    assert isinstance(plan, SearchPlan), plan
    scorer = cast(Scorer, InstantScorer())  # rerank_window only calls `score`
    started = time.perf_counter()
    for _ in range(searches):
        window = orjson.loads(body)
        record = SearchRecord(kind="search", indices=(phases.RECALL_INDEX,))
        reranked = await rerank_step.rerank_window(window, plan, settings, scorer, NOW, explain, record)
        orjson.dumps(reranked.page)
    return (time.perf_counter() - started) / searches


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--searches", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--explain", action="store_true", help="add the `_rerank` explanations")
    args = parser.parse_args()
    runs = [asyncio.run(run(args.searches, args.explain)) for _ in range(args.repeats)]
    # On a shared machine the fastest run is the truest figure of the step's own CPU; the median says
    # how steady the machine was.
    print(
        f"rerank step, {args.searches} searches x {args.repeats}: {min(runs) * 1e6:.0f} us per search "
        f"(fastest run; median {statistics.median(runs) * 1e6:.0f} us)"
    )


if __name__ == "__main__":
    main()
