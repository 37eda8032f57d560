"""The `ubi_queries` document: the UBI fields, and the proxy's attributes the online report reads."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from es_rerank_proxy.observe.ubi_queries import (
    ShownPage,
    UbiRequest,
    format_timestamp,
    hit_ids,
    index_templates,
    query_document,
)

MOMENT = datetime(2026, 3, 1, 8, 30, 5, 123456, tzinfo=timezone.utc)


def _answer(*hits: dict[str, object]) -> dict[str, object]:
    return {"hits": {"total": {"value": 9}, "hits": list(hits)}}


@pytest.mark.parametrize(
    ("answer", "field", "expected"),
    [
        (_answer({"_id": "a"}, {"_id": "b"}), None, ("a", "b")),
        (_answer({"_id": "a", "_source": {"isbn": "978-1"}}, {"_id": "b"}), "isbn", ("978-1", "b")),
        (_answer({"_id": "a", "_source": {"ids": {"isbn": 9781}}}), "ids.isbn", ("9781",)),
        (_answer({"_id": "a", "fields": {"isbn": ["978-2"]}}), "isbn", ("978-2",)),
        ({"error": "x"}, None, ()),
        (_answer(), None, ()),
    ],
)
def test_hit_ids_follow_object_id_field_else_id(
    answer: dict[str, object], field: str | None, expected: tuple[str, ...]
) -> None:
    assert hit_ids(answer, field) == expected


def test_query_document_keeps_client_attributes_and_adds_the_proxys() -> None:
    request = UbiRequest(
        query_id="q-1",
        client_id="c-9",
        user_query="neural search",
        object_id_field="isbn",
        application="opac",
        query_attributes={"page": "results", "arm": "client's own"},
    )
    shown = ShownPage(
        arm="interleave",
        outcome="applied",
        reason=None,
        page_from=10,
        page_size=2,
        hit_ids=("x", "y"),
        teams=("rerank", "es"),
    )
    document = query_document("q-1", request, shown, MOMENT, query_response_id="r-1")
    assert document == {
        "query_id": "q-1",
        "client_id": "c-9",
        "user_query": "neural search",
        "timestamp": "2026-03-01T08:30:05.123Z",
        "application": "opac",
        "object_id_field": "isbn",
        "query_response_id": "r-1",
        "query_response_hit_ids": ["x", "y"],
        "query_attributes": {
            "page": "results",
            "arm": "interleave",  # the proxy's key wins over a client's of the same name
            "outcome": "applied",
            "reason": "",
            "page_from": 10,
            "page_size": 2,
            "teams": ["rerank", "es"],
        },
    }


@pytest.mark.parametrize(
    ("outcome", "reason", "expected"),
    [
        ("degraded", "timeout", ("degraded", "timeout")),
        ("shadow", None, ("skipped", "")),
        ("error", "x", ("skipped", "x")),
    ],
)
def test_outcome_is_one_of_three(outcome: str, reason: str | None, expected: tuple[str, str]) -> None:
    shown = ShownPage(arm="off", outcome=outcome, reason=reason, page_from=0, page_size=10, hit_ids=())
    attributes = query_document("g-1", None, shown, MOMENT, query_response_id="r")["query_attributes"]
    assert isinstance(attributes, dict)
    assert (attributes["outcome"], attributes["reason"]) == expected
    assert "teams" not in attributes


def test_missing_user_query_falls_back_to_the_query_text() -> None:
    shown = ShownPage(arm="rerank", outcome="applied", reason=None, page_from=0, page_size=10, hit_ids=())
    document = query_document("g-1", None, shown, MOMENT, query_response_id="r", query_text="neural")
    assert (document["user_query"], document["client_id"], document["object_id_field"]) == (
        "neural",
        None,
        "_id",
    )


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (MOMENT, "2026-03-01T08:30:05.123Z"),
        (MOMENT.astimezone(timezone(timedelta(hours=8))), "2026-03-01T08:30:05.123Z"),
        (datetime(2026, 3, 1), "2026-03-01T00:00:00.000Z"),  # naive: taken as UTC
    ],
)
def test_timestamp_is_strict_date_time_in_utc(moment: datetime, expected: str) -> None:
    assert format_timestamp(moment) == expected


def test_templates_cover_both_indices_with_the_report_keys_typed() -> None:
    templates = index_templates("ubi_queries", "ubi_events")
    assert set(templates) == {"ubi_queries", "ubi_events"}
    mappings = templates["ubi_queries"]["template"]
    assert isinstance(mappings, dict)
    properties = mappings["mappings"]["properties"]
    assert properties["query_response_hit_ids"] == {"type": "keyword"}
    assert properties["query_attributes"]["properties"]["page_from"] == {"type": "integer"}
    assert templates["ubi_events"]["index_patterns"] == ["ubi_events"]
