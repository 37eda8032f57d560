"""The passage-vector file format: what one proxy writes, another reads back; what may be used is decided
by model and text hash alone."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from es_rerank_proxy.model.vector_file import (
    VectorFileError,
    VectorFileHeader,
    VectorRecord,
    judge,
    read_header,
    read_record,
    write_record,
)

HASH = "0123456789abcdef0123456789abcdef"
HEAD = b'{"format": "es-rerank-proxy/passage-vectors", "version": 1, "model": "m", "dims": 2'

finite = st.floats(min_value=-1.0, max_value=1.0, allow_nan=False, width=32).filter(lambda v: abs(v) > 1e-3)


@given(st.lists(finite, min_size=1, max_size=64))
def test_a_float32_vector_reads_back_exactly(vector: list[float]) -> None:
    header = VectorFileHeader(model="m", dims=len(vector), encoding="float32", index="papers")
    record = read_record(write_record(header, "d1", "papers", HASH, vector), read_header(header.to_line()))
    assert record.vector == tuple(vector)
    assert (record.doc_id, record.index, record.text_hash, record.model) == ("d1", "papers", HASH, "m")


@given(st.lists(finite, min_size=1, max_size=64))
def test_a_float16_vector_reads_back_within_half_precision(vector: list[float]) -> None:
    header = VectorFileHeader(model="m", dims=len(vector), encoding="float16")
    record = read_record(write_record(header, "d1", "i", HASH, vector), header)
    assert all(
        math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-4) for a, b in zip(record.vector, vector, strict=True)
    )


def test_a_line_may_give_its_vector_as_a_list_and_its_own_model() -> None:
    header = VectorFileHeader(model="m", dims=2, index="papers")
    record = read_record(
        b'{"id": "d", "text_hash": "%s", "vector": [0.6, 0.8], "model": "n"}' % HASH.encode(), header
    )
    assert (record.index, record.model, record.vector) == ("papers", "n", (0.6, 0.8))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"[]", "expected a JSON object"),
        (b"{oops", "not valid JSON"),
        (b'{"format": "csv", "version": 1, "model": "m", "dims": 2}', "expected format"),
        (
            b'{"format": "es-rerank-proxy/passage-vectors", "version": 2, "model": "m", "dims": 2}',
            "version 2",
        ),
        (b'{"format": "es-rerank-proxy/passage-vectors", "version": 1, "dims": 2}', "'model'"),
        (b'{"format": "es-rerank-proxy/passage-vectors", "version": 1, "model": "m", "dims": 0}', "'dims'"),
        (HEAD + b', "encoding": "int4"}', "'encoding'"),
        (HEAD + b', "text_hash": "md5"}', "text_hash"),
    ],
)
def test_a_bad_header_is_refused_with_the_reason(line: bytes, message: str) -> None:
    with pytest.raises(VectorFileError, match=message):
        read_header(line)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"text_hash": "%s", "vector": [1, 0]}' % HASH.encode(), "'id'"),
        (b'{"id": "d", "text_hash": "abc", "vector": [1, 0]}', "text_hash"),
        (b'{"id": "d", "text_hash": "%s", "vector": [1, 0, 0]}' % HASH.encode(), "3 dimensions"),
        (b'{"id": "d", "text_hash": "%s", "vector": [0, 0]}' % HASH.encode(), "zero"),
        (b'{"id": "d", "text_hash": "%s", "vector": "!!"}' % HASH.encode(), "base64"),
        (b'{"id": "d", "text_hash": "%s", "vector": "AAA="}' % HASH.encode(), "whole number"),
        (b'{"id": "d", "text_hash": "%s", "vector": [1, "x"]}' % HASH.encode(), "numbers only"),
        (b'{"id": "d", "text_hash": "%s"}' % HASH.encode(), "'vector'"),
    ],
)
def test_a_bad_line_is_refused_with_the_reason(line: bytes, message: str) -> None:
    with pytest.raises(VectorFileError, match=message):
        read_record(line, VectorFileHeader(model="m", dims=2, encoding="float32"))


def _record(model: str = "e5", text_hash: str = HASH) -> VectorRecord:
    return VectorRecord(doc_id="d", index="i", text_hash=text_hash, model=model, vector=(1.0,))


@pytest.mark.parametrize(
    ("record", "model", "current", "verdict"),
    [
        (_record(), "e5", HASH, "imported"),
        (_record(model="e5-large"), "e5", HASH, "model_differs"),
        (_record(model="e5-large"), "e5", None, "model_differs"),
        (_record(), "e5", "f" * 32, "text_differs"),
        (_record(), "e5", None, "unknown_document"),
    ],
)
def test_only_the_same_model_and_the_same_text_may_be_used(
    record: VectorRecord, model: str, current: str | None, verdict: str
) -> None:
    assert judge(record, model=model, current_hash=current) == verdict
