"""`online-report` and `judgments --from-ubi` against UBI documents stored in noida-db."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from es_rerank_proxy.cli import main
from es_rerank_proxy.tools.click_judgments import query_key
from es_rerank_proxy.tools.datasets import parse_qrels, parse_queries, read_lines

NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
ABC = ["a", "b", "c"]


def iso(moment: dt.datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def query(
    query_id: str,
    arm: str,
    *,
    text: str = "vitamin d",
    age: dt.timedelta = dt.timedelta(hours=1),
    **attrs: Any,
) -> dict[str, Any]:
    return {
        "query_id": query_id,
        "client_id": "c-" + query_id,
        "user_query": text,
        "timestamp": iso(NOW - age),
        "application": attrs.pop("application", "library"),
        "object_id_field": "_id",
        "query_response_hit_ids": attrs.pop("hits", ABC),
        "query_attributes": {"arm": arm, "outcome": "applied", "page_from": 0, "page_size": 3, **attrs},
    }


def click(query_id: str, object_id: str, ordinal: int, seconds: int = 5) -> dict[str, Any]:
    return {
        "action_name": "click",
        "query_id": query_id,
        "client_id": "c-" + query_id,
        "timestamp": iso(NOW - dt.timedelta(hours=1) + dt.timedelta(seconds=seconds)),
        "event_attributes": {
            "object": {"object_id": object_id, "object_id_field": "_id"},
            "position": {"ordinal": ordinal},
        },
    }


def canary_week() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """off: 25 searches, 5 first clicks on result 1, 10 on result 2, 10 none.
    rerank: 25 searches, 20 first clicks on result 1, 5 none.
    interleave: 8 searches whose one click lands on the reranker's pick (8 wins, p = 2 / 2**8).
    Outside the report: one search 30 days old, one of another application."""
    queries: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for n in range(25):
        queries.append(query(f"off-{n}", "off"))
        if n < 5:
            events.append(click(f"off-{n}", "a", 0, seconds=4))
        elif n < 15:
            events.append(click(f"off-{n}", "b", 1, seconds=8))
        queries.append(query(f"rr-{n}", "rerank"))
        if n < 20:
            events.append(click(f"rr-{n}", "a", 0, seconds=2))
    for n in range(8):
        queries.append(query(f"il-{n}", "interleave", teams=["rerank", "es", "rerank"]))
        events.append(click(f"il-{n}", "c", 2))
    queries.append(query("old", "off", age=dt.timedelta(days=30)))
    queries.append(query("other-app", "off", application="catalogue"))
    return queries, events


def report_args(es_url: str, names: tuple[str, str], *extra: str) -> list[str]:
    return ["--es", es_url, "--queries-index", names[0], "--events-index", names[1], *extra]


def test_online_report_prints_each_arm_and_the_difference(
    es_url: str,
    ubi_indices: Callable[..., tuple[str, str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    names = ubi_indices(*canary_week())
    out = tmp_path / "report.json"
    plot = tmp_path / "report.png"
    args = report_args(es_url, names, "--application", "library", "--json", str(out), "--plot", str(plot))
    assert main(["online-report", *args]) == 0
    report = orjson.loads(out.read_bytes())
    off, rerank = report["arms"]["off"], report["arms"]["rerank"]
    assert (off["searches"], rerank["searches"]) == (25, 25)  # the old search and the other app are out
    assert off["metrics"]["first_click_rate"]["value"] == pytest.approx(5 / 15)
    assert rerank["metrics"]["first_click_rate"]["value"] == pytest.approx(1.0)
    assert off["metrics"]["abandonment"]["value"] == pytest.approx(10 / 25)
    assert rerank["metrics"]["abandonment"]["value"] == pytest.approx(5 / 25)
    assert off["metrics"]["mrr"]["value"] == pytest.approx((5 * 1 + 10 * 0.5) / 15)
    assert off["metrics"]["seconds_to_first_click"]["value"] == pytest.approx(8.0)
    difference = report["difference"]["first_click_rate"]
    assert difference["value"] == pytest.approx(1 - 5 / 15)
    assert 0 < difference["low"] <= difference["value"] <= difference["high"]
    assert report["interleave"]["wins"] == 8 and report["interleave"]["losses"] == 0
    assert report["interleave"]["p_value"] == pytest.approx(2 / 2**8)
    printed = capsys.readouterr().out
    assert "first click on result 1" in printed and "rerank - off" in printed
    assert "reranker wins 8, ties 0, losses 0" in printed and "significant at 0.05" in printed
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_online_report_says_when_there_is_too_little_data(
    es_url: str, ubi_indices: Callable[..., tuple[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    names = ubi_indices([query("q1", "off"), query("q2", "rerank")], [click("q1", "a", 0)])
    assert main(["online-report", *report_args(es_url, names)]) == 0
    printed = capsys.readouterr().out
    assert "too little data for intervals in off, rerank" in printed
    assert "rerank - off needs both arms" in printed


def test_online_report_without_any_record_names_the_likely_cause(
    es_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--queries-index", "ubi_queries-none-here", "--events-index", "ubi_events-none-here"]
    assert main(["online-report", "--es", es_url, *args]) == 0
    assert "No recorded searches" in capsys.readouterr().out


def test_unreachable_elasticsearch_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["online-report", "--es", "http://127.0.0.1:9"]) == 1
    assert "online-report: cannot read http://127.0.0.1:9" in capsys.readouterr().err


def test_since_must_be_a_count_and_a_unit(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["online-report", "--es", "http://x", "--since", "last week"])
    assert exit_.value.code == 2
    assert "expected a count and m, h, d or w" in capsys.readouterr().err


def test_judgments_from_ubi_write_beir_files_eval_reads(
    es_url: str, ubi_indices: Callable[..., tuple[str, str]], tmp_path: Path
) -> None:
    # Users searching "vitamin d" click b wherever it is shown and never a or c: b earns the top grade.
    queries, events = [], []
    for n in range(12):
        hits = ["a", "b", "c"] if n % 2 else ["b", "a", "c"]
        queries.append(query(f"q{n}", "off", text="Vitamin D", hits=hits))
        events.append(click(f"q{n}", "b", hits.index("b")))
    names = ubi_indices(queries, events)
    qrels_path, queries_path = tmp_path / "qrels.tsv", tmp_path / "queries.jsonl"
    args = report_args(es_url, names, "--out", str(qrels_path), "--queries-out", str(queries_path))
    assert main(["judgments", "--from-ubi", *args]) == 0
    qid = query_key("vitamin d")
    # CTR rank 1 = 6/12, rank 2 = 6/12, rank 3 = 0: b expected 6 clicks, got 12 -> COEC 2 -> grade 2;
    # a expected 6, got 0 -> 0. c was only ever shown where nobody clicks: no evidence either way, unjudged.
    assert parse_qrels(read_lines(qrels_path)) == {qid: {"a": 0, "b": 2}}
    assert parse_queries(read_lines(queries_path)) == {qid: "Vitamin D"}


def test_judgments_with_nothing_to_judge_exit_1(
    es_url: str,
    ubi_indices: Callable[..., tuple[str, str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    names = ubi_indices([query("q1", "off")], [])
    args = report_args(es_url, names, "--out", str(tmp_path / "qrels.tsv"))
    assert main(["judgments", "--from-ubi", *args]) == 1
    assert "nothing to judge in 1 searches" in capsys.readouterr().err
    assert not (tmp_path / "qrels.tsv").exists()
