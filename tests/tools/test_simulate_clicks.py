"""scripts/simulate_clicks.py: the cascade user clicks as its parameters say, and its searches and UBI
click events go through the proxy."""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest
from elasticsearch import Elasticsearch
from hypothesis import given
from hypothesis import strategies as st

from es_rerank_proxy.cli import main
from es_rerank_proxy.rollout.interleave import team_draft
from es_rerank_proxy.tools.online_stats import interleave_verdict
from es_rerank_proxy.tools.ubi_records import SearchClicks, SearchRecord

from .. import conftest
from ..fakes.proxy_server import RunningProxy

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture(scope="module")
def sim() -> Iterator[ModuleType]:
    sys.path.insert(0, str(SCRIPTS))
    try:
        import simulate_clicks

        yield simulate_clicks
    finally:
        sys.path.remove(str(SCRIPTS))


PAGE = ["d0", "d1", "d2", "d3", "d4"]


@pytest.mark.parametrize(
    ("relevant", "params", "expected"),
    [
        # every rank examined, relevant always clicked and satisfying: the first relevant result only
        ({"d2", "d4"}, {"position_bias": 0.0, "click_relevant": 1.0, "stop_after_relevant": 1.0}, [2]),
        # never satisfied: every relevant result, top to bottom
        ({"d2", "d4"}, {"position_bias": 0.0, "click_relevant": 1.0, "stop_after_relevant": 0.0}, [2, 4]),
        # nothing relevant and no noise: no click (abandonment)
        (set(), {"position_bias": 0.0, "click_irrelevant": 0.0}, []),
        # noise alone, never stopping: every result
        (
            set(),
            {"position_bias": 0.0, "click_irrelevant": 1.0, "stop_after_irrelevant": 0.0},
            [0, 1, 2, 3, 4],
        ),
    ],
)
def test_cascade_clicks_follow_relevance_and_stopping(
    sim: ModuleType, relevant: set[str], params: dict[str, float], expected: list[int]
) -> None:
    user = sim.CascadeUser(**{"click_irrelevant": 0.0, **params})
    judgments = dict.fromkeys(relevant, 1)
    assert sim.cascade_clicks(PAGE, judgments, user, random.Random(0)) == expected


def test_position_bias_makes_a_lower_rank_examined_less(sim: ModuleType) -> None:
    user = sim.CascadeUser(position_bias=1.0, click_relevant=1.0, click_irrelevant=0.0)
    rng = random.Random(3)
    # the same relevant document at rank 1 and at rank 4: examined with p = 1 and p = 1/4
    at_top = sum(bool(sim.cascade_clicks(["r", "x", "y", "z"], {"r": 1}, user, rng)) for _ in range(4000))
    at_four = sum(bool(sim.cascade_clicks(["x", "y", "z", "r"], {"r": 1}, user, rng)) for _ in range(4000))
    assert at_top == 4000
    assert 0.2 < at_four / 4000 < 0.3


@given(st.lists(st.booleans(), max_size=12), st.integers(0, 10_000))
def test_clicks_are_distinct_positions_on_the_page_in_scan_order(
    sim: ModuleType, relevance: list[bool], seed: int
) -> None:
    page = [f"d{i}" for i in range(len(relevance))]
    judgments = {doc: int(flag) for doc, flag in zip(page, relevance, strict=True)}
    clicks = sim.cascade_clicks(page, judgments, sim.CascadeUser(), random.Random(seed))
    assert clicks == sorted(set(clicks)) and all(0 <= c < len(page) for c in clicks)
    delays = sim.click_delays(clicks, sim.CascadeUser(), random.Random(seed))
    assert delays == sorted(delays) and all(d > 0 for d in delays)


def test_parameters_are_printed(sim: ModuleType) -> None:
    described = sim.CascadeUser(position_bias=1.5, click_irrelevant=0.07).describe()
    assert "1/i^1.5" in described and "0.07 if not" in described


def test_simulated_searches_and_clicks_go_through_the_proxy(
    sim: ModuleType, passthrough_proxy: RunningProxy, es_direct: Elasticsearch, library: str
) -> None:
    events_index = "ubi_events-simulator-test"
    if es_direct.indices.exists(index=events_index):
        es_direct.indices.delete(index=events_index)
    # every library document relevant and always clicked, the user satisfied at once: one click at rank 1
    qrels = {"q1": {f"doc-{n}": 1 for n in range(400)}}
    user = sim.CascadeUser(position_bias=0.0, click_relevant=1.0, stop_after_relevant=1.0)
    clients = sim.simulated_clients(5, "10.1.0.0/16", random.Random(1))
    summary = asyncio.run(
        sim.simulate(
            passthrough_proxy.url,
            queries={"q1": conftest.QUERY["match"]["abstract"]},
            qrels=qrels,
            searches=6,
            user=user,
            application="test-sim",
            clients=clients,
            seed=2,
            index=library,
            events_index=events_index,
            page_size=5,
        )
    )
    assert (summary.searches, summary.clicks, summary.failed) == (6, 6, 0)
    hits = es_direct.search(index=events_index, size=20)["hits"]["hits"]
    events: list[dict[str, Any]] = [hit["_source"] for hit in hits]
    assert len(events) == 6 and len({event["query_id"] for event in events}) == 6
    assert {event["client_id"] for event in events} <= {client.client_id for client in clients}
    for event in events:
        assert event["action_name"] == "click" and event["application"] == "test-sim"
        assert event["event_attributes"]["position"]["ordinal"] == 0
        assert event["event_attributes"]["object"]["object_id"].startswith("doc-")
    es_direct.indices.delete(index=events_index)


@pytest.fixture(scope="module")
def measure(sim: ModuleType) -> Iterator[ModuleType]:
    sys.path.insert(0, str(SCRIPTS))
    try:
        import click_measurement

        yield click_measurement
    finally:
        sys.path.remove(str(SCRIPTS))


def searched(n: int, arm: str, clicked: str | None, teams: tuple[str, ...] = ()) -> SearchClicks:
    record = SearchRecord(
        query_id=f"{arm}-{n}",
        user_query="q",
        application="sim",
        timestamp=float(n),
        arm=arm,
        outcome="applied",
        page_from=0,
        hit_ids=("a", "b"),
        teams=teams,
    )
    ranks = () if clicked is None else (record.hit_ids.index(clicked) + 1,)
    clicked_ids = () if clicked is None else (clicked,)
    return SearchClicks(search=record, ranks=ranks, clicked_ids=clicked_ids, seconds_to_first_click=None)


def interleaved(outcomes: str) -> list[SearchClicks]:
    """W: a click on the reranker's pick, L: on Elasticsearch's, -: no click."""
    clicked = {"W": "a", "L": "b", "-": None}
    return [searched(n, "interleave", clicked[o], ("rerank", "es")) for n, o in enumerate(outcomes)]


@pytest.mark.parametrize(
    ("outcomes", "expected"),
    [
        ("WWWWWW", 6),  # p = 2/64 after six wins; five give 2/32
        ("WW-WWWW", 7),  # a search without a click does not count
        ("WWWWWWL", None),  # 6 - 1 gives p = 0.125: significance lost again, so not shown yet
        ("LLLLLLLL", None),  # Elasticsearch significantly ahead is not the reranker's win
        ("", None),
    ],
)
def test_searches_to_significance_is_where_the_reranker_wins_for_good(
    measure: ModuleType, outcomes: str, expected: int | None
) -> None:
    assert measure.searches_to_significance(interleaved(outcomes)) == expected


def test_ab_difference_uses_the_first_searches_in_time(measure: ModuleType) -> None:
    # first 4 searches: rerank clicks result 1 twice, off clicks result 2 twice; later ones reverse it
    rows = [
        searched(0, "rerank", "a"),
        searched(1, "off", "b"),
        searched(2, "rerank", "a"),
        searched(3, "off", "b"),
    ]
    rows += [searched(n, "rerank", "b") for n in range(4, 20)]
    treated, control, estimate = measure.ab_difference_after(rows, 4, resamples=50)
    assert (treated, control, estimate.value) == (2, 2, 1.0)


def test_simulated_canary_reads_back_per_arm_through_online_report(
    sim: ModuleType,
    reranking_proxy: Callable[..., AbstractContextManager[RunningProxy]],
    es_direct: Elasticsearch,
    es_url: str,
    tmp_path: Path,
) -> None:
    # The whole loop: simulated users through a recording proxy (A/B for 10.1/16, interleaving for
    # 10.2/16), their clicks through it, then the report reads each arm back from the UBI indices.
    names = ("ubi_queries-sim-e2e", "ubi_events-sim-e2e")
    for name in names:
        if es_direct.indices.exists(index=name):
            es_direct.indices.delete(index=name)
    canary = {
        "default": "off",
        "percent": 50,
        "rules": [{"name": "interleavers", "cidr": [sim.INTERLEAVE_NETWORK], "mode": "interleave"}],
    }
    ubi = {"queries_index": names[0], "events_index": names[1], "flush_s": 0.1}
    qrels = {"q1": {f"doc-{n}": 1 for n in range(0, 400, 3)}}
    rng = random.Random(5)
    populations = {
        "sim-ab": sim.simulated_clients(20, sim.AB_NETWORK, rng),
        "sim-interleave": sim.simulated_clients(20, sim.INTERLEAVE_NETWORK, rng),
    }
    sent = {}
    with reranking_proxy(weights={"rerank": 1.0}, canary=canary, ubi=ubi) as proxy:
        for application, clients in populations.items():
            sent[application] = asyncio.run(
                sim.simulate(
                    proxy.url,
                    queries={"q1": conftest.QUERY["match"]["abstract"]},
                    qrels=qrels,
                    searches=12,
                    user=sim.CascadeUser(position_bias=0.0, click_irrelevant=0.2),
                    application=application,
                    clients=clients,
                    seed=3,
                    index=conftest.INDEX,
                    events_index=names[1],
                    page_size=5,
                )
            )
        for _ in range(200):  # the proxy writes its records in the background
            es_direct.indices.refresh(index=names[0], ignore_unavailable=True)
            if es_direct.options(ignore_status=404).count(index=names[0]).get("count") == 24:
                break
            time.sleep(0.05)
    out = tmp_path / "report.json"
    args = ["--es", es_url, "--queries-index", names[0], "--events-index", names[1], "--json", str(out)]
    assert main(["online-report", *args]) == 0
    report = orjson.loads(out.read_bytes())
    arms = {arm: values["searches"] for arm, values in report["arms"].items()}
    assert arms.get("interleave") == 12 and arms.get("off", 0) + arms.get("rerank", 0) == 12
    assert report["interleave"]["searches"] == 12  # every interleaved page recorded its teams
    verdict = report["interleave"]
    assert verdict["wins"] + verdict["ties"] + verdict["losses"] + verdict["no_clicks"] == 12
    # every simulated click was joined to its search: clicks over results shown, per arm, add up
    joined = sum(v["metrics"]["ctr"]["value"] * v["searches"] * 5 for v in report["arms"].values())
    assert joined == pytest.approx(sent["sim-ab"].clicks + sent["sim-interleave"].clicks)


def test_interleaving_credits_the_better_order_with_the_win(sim: ModuleType) -> None:
    # Known ground truth: the reranker lifts the one relevant document from rank 3 to rank 1. Cascade
    # users on team-draft pages must make the reranker win, and significantly within 100 searches.
    es_order = [f"d{i}" for i in range(20)]
    better = ["d2", *[doc for doc in es_order if doc != "d2"]]
    rng = random.Random(1)
    rows = []
    for n in range(100):
        page = team_draft(es_order, better, f"id:{n}")[:10]
        ids = tuple(doc for doc, _ in page)
        clicks = sim.cascade_clicks(ids, {"d2": 1}, sim.CascadeUser(), rng)
        record = SearchRecord(
            query_id=str(n),
            user_query="q",
            application="sim",
            timestamp=float(n),
            arm="interleave",
            outcome="applied",
            page_from=0,
            hit_ids=ids,
            teams=tuple(team for _, team in page),
        )
        rows.append(
            SearchClicks(
                search=record,
                ranks=tuple(c + 1 for c in clicks),
                clicked_ids=tuple(ids[c] for c in clicks),
                seconds_to_first_click=1.0 if clicks else None,
            )
        )
    verdict = interleave_verdict(rows)
    assert verdict.wins > 5 * verdict.losses
    assert verdict.p_value is not None and verdict.p_value < 0.05
