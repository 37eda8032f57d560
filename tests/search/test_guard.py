"""search.guard and the bounded body reader: limits checked before any recursive walk, summaries small."""

from __future__ import annotations

import gzip
import zlib

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from es_rerank_proxy.config import RerankConfig
from es_rerank_proxy.edge.headers import undecodable_header
from es_rerank_proxy.edge.http_io import decompress_bounded, readable_header
from es_rerank_proxy.observe.fault_log import report_due
from es_rerank_proxy.search.guard import deeper_than, header_list, msearch_searches
from es_rerank_proxy.search.plan import Bypass, NeededFields, parse_body, plan_search

NEEDED = NeededFields(text_fields=("title",), date_field="", citations_field="")


def bool_chain(levels: int) -> dict[str, object]:
    """`{"query": {"bool": {"must": ... {"match": ...}}}}` with `levels` bools: 2 * levels + 3 deep."""
    node: dict[str, object] = {"match": {"title": "x"}}
    for _ in range(levels):
        node = {"bool": {"must": node}}
    return {"query": node}


def depth_of(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    return 0


@pytest.mark.parametrize(
    ("value", "limit", "expected"),
    [
        ({}, 1, False),
        ({"a": {}}, 1, True),
        ({"a": {}}, 2, False),
        ([[[]]], 2, True),
        ([[[]]], 3, False),
        ({"a": [1, "x", None]}, 2, False),
        ({"a": [{"b": 1}]}, 2, True),
    ],
)
def test_deeper_than(value: object, limit: int, expected: bool) -> None:
    assert deeper_than(value, limit) is expected


@given(
    st.recursive(st.none() | st.integers(), lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner))
)
def test_deeper_than_agrees_with_a_recursive_depth(value: object) -> None:
    depth = depth_of(value)
    assert not deeper_than(value, max(depth, 1))
    if depth >= 2:
        assert deeper_than(value, depth - 1)


def test_a_body_far_deeper_than_python_recursion_is_checked_without_recursing() -> None:
    body = b'{"q":' * 900 + b"1" + b"}" * 900  # orjson parses it; a recursive walk would overflow
    assert parse_body(body, 64) == Bypass("query_too_deep")


@pytest.mark.parametrize(
    ("levels", "depth", "reason"),
    [(29, 61, None), (30, 63, None), (31, 65, "query_too_deep"), (50, 103, "query_too_deep")],
)
def test_plan_refuses_bodies_deeper_than_the_limit(levels: int, depth: int, reason: str | None) -> None:
    body = bool_chain(levels)
    assert depth_of(body) == depth
    plan = plan_search(orjson.dumps(body), {}, ("library",), RerankConfig(), NEEDED, None)
    assert (plan.reason if isinstance(plan, Bypass) else None) == reason


@pytest.mark.parametrize(
    ("body", "count"),
    [
        (b"", 0),
        (b"{}\n{}\n", 1),
        (b"{}\n{}\n{}\n{}\n", 2),
        (b"{}\n{}", 1),
        (b"{}\n{}\n{}\n{}", 2),
        (b"\n{}\n", 1),
    ],
)
def test_msearch_searches_counts_line_pairs(body: bytes, count: int) -> None:
    assert msearch_searches(body) == count


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["applied", "skipped"], "applied,skipped"),
        (["applied"] * 3 + ["skipped"] * 2, "applied,applied,applied,skipped,skipped"),
        (["applied"] * 200 + ["skipped"] * 100, "applied=200,skipped=100"),
        (["degraded"] + ["applied"] * 200, "degraded=1,applied=200"),
    ],
)
def test_header_list_summarises_long_lists(values: list[str], expected: str) -> None:
    assert header_list(values) == expected
    assert len(header_list(values)) <= 512


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("deep learning", "deep learning"), ("深度学习", "深度学习"), ("a\udcffb", None)],
)
def test_readable_header_ignores_text_that_was_not_utf8(value: str | None, expected: str | None) -> None:
    assert readable_header(value) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (((b"Host", b"x"), (b"X-Title", "深度".encode())), None),
        (((b"Host", b"x"), (b"X-Custom", b"a\xff")), "X-Custom"),
        (((b"X-Rerank-Query", b"\xff\xfe"),), None),  # the proxy's own header: ignored, never forwarded
    ],
)
def test_undecodable_header_names_the_first_unforwardable_one(
    raw: tuple[tuple[bytes, bytes], ...], expected: str | None
) -> None:
    assert undecodable_header(raw) == expected


GZIP, DEFLATE = 16 + zlib.MAX_WBITS, zlib.MAX_WBITS


@pytest.mark.parametrize(
    ("raw", "wbits", "limit", "decoded", "refusal"),
    [
        (gzip.compress(b'{"query":{}}'), GZIP, 100, b'{"query":{}}', None),
        (gzip.compress(b"ab") + gzip.compress(b"cd"), GZIP, 100, b"abcd", None),  # concatenated members
        (zlib.compress(b'{"size":1}'), DEFLATE, 100, b'{"size":1}', None),
        (gzip.compress(b"x" * 101), GZIP, 100, None, "body_too_large"),
        (gzip.compress(b"x" * 100), GZIP, 100, b"x" * 100, None),
        (gzip.compress(b'{"a":1}')[:-6], GZIP, 100, None, "undecodable_body"),  # truncated
        (b"not gzip at all", GZIP, 100, None, "undecodable_body"),
    ],
    ids=["gzip", "members", "deflate", "over", "at-limit", "truncated", "garbage"],
)
def test_decompress_bounded(
    raw: bytes, wbits: int, limit: int, decoded: bytes | None, refusal: str | None
) -> None:
    body = decompress_bounded(raw, wbits, limit)
    assert (body.raw, body.decoded, body.refusal) == (raw, decoded, refusal)


def test_a_bomb_stops_inflating_just_past_the_limit() -> None:
    compressor = zlib.compressobj(9, zlib.DEFLATED, GZIP)
    bomb = b"".join(compressor.compress(bytes(1 << 20)) for _ in range(64)) + compressor.flush()
    assert decompress_bounded(bomb, GZIP, 1 << 20).refusal == "body_too_large"


@pytest.mark.parametrize(
    ("last", "now", "due"), [(None, 0.0, True), (0.0, 59.9, False), (0.0, 60.0, True), (100.0, 161.0, True)]
)
def test_a_fault_type_is_reported_at_most_once_a_minute(last: float | None, now: float, due: bool) -> None:
    assert report_due(last, now) is due
