"""`es-rerank-proxy eval` end to end against a real Elasticsearch stand-in (noida-db)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web

from es_rerank_proxy.tools.datasets import Doc, index_collection
from es_rerank_proxy.tools.eval_run import default_body, fill_template, main_eval
from es_rerank_proxy.tools.local_elasticsearch import free_port

TOPICS = {
    "solar": "solar panel photovoltaic efficiency sunlight",
    "reef": "coral reef bleaching ocean warming",
    "vaccine": "vaccine immune response antibodies",
    "castle": "medieval castle architecture stone walls",
    "filler": "general notes about assorted unrelated matters",
}
# 30 documents: 4 per topic (s0..s3, r0..r3, v0..v3, c0..c3) and 14 fillers (f0..f13).
DOCS: list[Doc] = [
    {"_id": f"{topic[0]}{i}", "title": f"{TOPICS[topic].split()[i % 3]} study {i}", "text": TOPICS[topic]}
    for topic, count in (("solar", 4), ("reef", 4), ("vaccine", 4), ("castle", 4), ("filler", 14))
    for i in range(count)
]
QUERIES = {
    "q1": "solar panel efficiency",
    "q2": "coral reef bleaching",
    "q3": "vaccine immune response",
    "q4": "medieval castle architecture",
    "q5": "query with no judgments",  # not in the qrels: never sent
}
QRELS = [("q1", "s0", 2), ("q1", "s1", 1), ("q2", "r2", 1), ("q3", "v0", 2), ("q3", "v3", 1)]
QRELS += [("q4", "c1", 2), ("q4", "f0", 0)]
METRICS = ["ndcg@10", "mrr@10", "recall@10", "recall@100"]


@dataclass
class Collection:
    index: str
    queries: Path
    qrels: Path


@pytest.fixture(scope="module")
async def tiny(es_url: str, tmp_path_factory: pytest.TempPathFactory) -> Collection:
    index = f"test-eval-{uuid.uuid4().hex[:8]}"
    async with aiohttp.ClientSession() as session:
        await index_collection(es_url, index, DOCS, session=session, batch=8)
    folder = tmp_path_factory.mktemp("tiny")
    queries = folder / "queries.jsonl"
    queries.write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in QUERIES.items()))
    qrels = folder / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{g}\n" for q, d, g in QRELS))
    return Collection(index, queries, qrels)


async def run_cli(*argv: str) -> int:
    """main_eval in a worker thread: it calls asyncio.run, which must not touch the test's event loop."""
    return await asyncio.to_thread(main_eval, list(argv))


def base_args(tiny: Collection) -> list[str]:
    return ["--queries", str(tiny.queries), "--qrels", str(tiny.qrels), "--index", tiny.index]


async def test_same_backend_on_both_sides_gives_identical_metrics(
    es_url: str, tiny: Collection, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, png = tmp_path / "report.json", tmp_path / "change.png"
    args = [*base_args(tiny), "--es", es_url, "--proxy", es_url, "--json", str(out), "--plot", str(png)]
    assert await run_cli(*args) == 0
    report = json.loads(out.read_text())
    assert report["metrics"] == METRICS
    assert report["n_queries"] == 4
    assert report["index"] == tiny.index
    es, proxy = report["sides"]["elasticsearch"], report["sides"]["proxy"]
    assert es["means"] == proxy["means"]
    assert es["per_query"] == proxy["per_query"]
    assert set(es["per_query"]) == {"q1", "q2", "q3", "q4"}
    assert set(es["per_query"]["q1"]) == set(METRICS)
    assert es["means"]["ndcg@10"] > 0.5  # BM25 finds the topical documents
    assert es["missing"] == []
    assert set(es["latency_ms"]) == {"mean", "p50", "p95"}
    assert proxy["x_rerank"] == {"applied": 0, "skipped": 0, "degraded": 0, "missing": 4}
    for metric in METRICS:
        comparison = report["comparison"][metric]
        assert (comparison["wins"], comparison["ties"], comparison["losses"]) == (0, 4, 0)
        assert comparison["mean_difference"] == 0.0
        assert comparison["per_query"] == dict.fromkeys(["q1", "q2", "q3", "q4"], 0.0)
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert png.stat().st_size > 1000
    stdout = capsys.readouterr().out
    assert all(metric in stdout for metric in METRICS)
    assert "elasticsearch" in stdout and "proxy" in stdout and "wins" in stdout
    assert "X-Rerank (proxy): applied 0, skipped 0, degraded 0, missing 4" in stdout


@pytest.fixture
async def fake_proxy(es_url: str) -> AsyncIterator[str]:
    """Forwards _search to Elasticsearch; X-Rerank: degraded for castle queries, applied otherwise."""
    session = aiohttp.ClientSession()

    async def search(request: web.Request) -> web.Response:
        body = await request.read()
        url = f"{es_url}/{request.match_info['index']}/_search"
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as upstream:
            answer = await upstream.read()
        degraded = b"castle" in body
        headers = (
            {"X-Rerank": "degraded", "X-Rerank-Reason": "timeout"} if degraded else {"X-Rerank": "applied"}
        )
        hits = orjson.loads(answer)
        if not degraded:  # "rerank" by reversing Elasticsearch's order, so the metrics differ
            hits["hits"]["hits"].reverse()
        return web.json_response(body=orjson.dumps(hits), headers=headers)

    app = web.Application()
    app.router.add_post("/{index}/_search", search)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()
    await session.close()


async def test_proxy_outcomes_and_differences_are_reported(
    es_url: str, fake_proxy: str, tiny: Collection, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.json"
    assert await run_cli(*base_args(tiny), "--es", es_url, "--proxy", fake_proxy, "--json", str(out)) == 0
    report = json.loads(out.read_text())
    assert report["sides"]["proxy"]["x_rerank"] == {"applied": 3, "skipped": 0, "degraded": 1}
    assert report["sides"]["proxy"]["x_rerank_reasons"] == {"timeout": 1}
    ndcg = report["comparison"]["ndcg@10"]
    assert ndcg["per_query"]["q4"] == 0.0  # degraded: Elasticsearch's order came back
    assert ndcg["losses"] >= 1 and ndcg["mean_difference"] < 0
    assert report["comparison"]["recall@100"]["ties"] == 4  # same documents, other order
    stdout = capsys.readouterr().out
    assert "X-Rerank (proxy): applied 3, skipped 0, degraded 1 (reasons: timeout 1)" in stdout


async def test_one_side_only_prints_no_comparison(
    es_url: str, tiny: Collection, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.json"
    assert await run_cli(*base_args(tiny), "--es", es_url, "--proxy", "none", "--json", str(out)) == 0
    report = json.loads(out.read_text())
    assert list(report["sides"]) == ["elasticsearch"]
    assert report["comparison"] == {}
    stdout = capsys.readouterr().out
    assert "ndcg@10" in stdout and "proxy" not in stdout and "wins" not in stdout


async def test_table_columns_are_aligned(
    es_url: str, tiny: Collection, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run_cli(*base_args(tiny), "--es", es_url, "--proxy", es_url, "--k", "3") == 0
    lines = capsys.readouterr().out.splitlines()
    table = [
        line for line in lines if line.split()[0] in {"metric", "ndcg@3", "mrr@3", "recall@3", "recall@100"}
    ]
    assert len(table) == 5
    assert len({len(line) for line in table}) == 1  # every row is right-aligned to the same width
    es_end = table[0].index("elasticsearch") + len("elasticsearch")
    for row in table[1:]:  # the Elasticsearch value ends right under its header
        first_value = re.search(r"\d\.\d{4}", row)
        assert first_value is not None and first_value.end() == es_end


async def test_template_replaces_the_default_request(es_url: str, tiny: Collection, tmp_path: Path) -> None:
    template = tmp_path / "template.json"
    template.write_text(json.dumps({"query": {"match": {"text": "{{query}}"}}, "size": 5}))
    out = tmp_path / "report.json"
    args = [
        *base_args(tiny),
        "--es",
        es_url,
        "--proxy",
        "none",
        "--template",
        str(template),
        "--json",
        str(out),
    ]
    assert await run_cli(*args) == 0
    assert json.loads(out.read_text())["sides"]["elasticsearch"]["means"]["mrr@10"] > 0.5


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--proxy", "none", "--plot", "x.png"], "--plot needs both"),
        (["--proxy", "none", "--es", "none"], "nothing to evaluate"),
        (["--proxy", "none", "--concurrency", "0"], "--concurrency must be at least 1"),
        (["--proxy", "none", "--template", "/nonexistent.json"], "--template /nonexistent.json"),
    ],
)
async def test_bad_options_exit_2(
    tiny: Collection, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run_cli(*base_args(tiny), *extra) == 2
    assert message in capsys.readouterr().err


async def test_template_without_placeholder_exits_2(
    tiny: Collection, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = tmp_path / "t.json"
    template.write_text('{"query": {"match_all": {}}}')
    assert await run_cli(*base_args(tiny), "--proxy", "none", "--template", str(template)) == 2
    assert "no {{query}} placeholder" in capsys.readouterr().err


async def test_unreachable_elasticsearch_exits_1(
    tiny: Collection, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    assert await run_cli(*base_args(tiny), "--es", dead, "--proxy", "none") == 1
    assert "error: elasticsearch" in capsys.readouterr().err


async def test_missing_index_exits_1(
    es_url: str, tiny: Collection, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--queries", str(tiny.queries), "--qrels", str(tiny.qrels), "--index", "no-such-index-here"]
    assert await run_cli(*args, "--es", es_url, "--proxy", "none") == 1
    assert "HTTP 404" in capsys.readouterr().err


async def test_shipped_dataset_supplies_queries_and_qrels(
    es_url: str, tiny: Collection, tmp_path: Path
) -> None:
    out = tmp_path / "report.json"
    args = ["--dataset", "scifact", "--limit", "3", "--index", tiny.index, "--proxy", "none"]
    assert await run_cli(*args, "--es", es_url, "--json", str(out)) == 0
    report = json.loads(out.read_text())
    assert report["dataset"] == "scifact" and report["n_queries"] == 3
    assert list(report["sides"]["elasticsearch"]["per_query"]) == ["1", "3", "5"]


def test_runs_as_a_module(es_url: str, tiny: Collection) -> None:
    command = [sys.executable, "-m", "es_rerank_proxy.tools.eval_run", *base_args(tiny), "--es", es_url]
    done = subprocess.run([*command, "--proxy", "none"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "recall@100" in done.stdout
    assert done.stderr == ""  # the progress bar stays quiet when stderr is not a terminal


def test_fill_template_escapes_the_query_as_json() -> None:
    template = {"query": {"bool": {"must": [{"match": {"title": "{{query}}"}}]}}, "size": 10, "x": None}
    query = 'say "hi" \\ {{query}}'
    filled = fill_template(template, query)
    assert orjson.loads(orjson.dumps(filled)) == {
        "query": {"bool": {"must": [{"match": {"title": query}}]}},
        "size": 10,
        "x": None,
    }


def test_default_body_is_what_a_frontend_sends() -> None:
    assert default_body("q", ["title", "text"], 100) == {
        "query": {"multi_match": {"query": "q", "fields": ["title", "text"]}},
        "size": 100,
        "_source": False,
    }
