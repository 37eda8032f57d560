"""scripts/tune_blend.py picks the blend on train queries alone and scores it with the proxy's own blend."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from es_rerank_proxy.search.blend import HitFeatures
from es_rerank_proxy.tools.datasets import load_collection, parse_qrels, parse_queries, read_lines
from es_rerank_proxy.tools.demo import describe_blend

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture(scope="module")
def tune() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tune_blend", SCRIPTS / "tune_blend.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["tune_blend"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def judged(tune: ModuleType, model_scores: list[float], relevant: str) -> object:
    """Three hits in BM25 order d0, d1, d2 (scores 10, 9, 1), all reranked, one of them relevant."""
    return tune.Judged(
        ids=("d0", "d1", "d2"),
        features=tuple(HitFeatures(es_score=s, date=None, citations=None) for s in (10.0, 9.0, 1.0)),
        model_scores=dict(enumerate(model_scores)),
        qrels={relevant: 1},
    )


def test_the_pick_follows_the_train_queries_even_where_the_test_queries_disagree(tune: ModuleType) -> None:
    # Train: the model is right (it finds d2, which BM25 ranks last); test: the model is wrong.
    train = [judged(tune, [0.88, 0.89, 0.97], relevant="d2")]
    test = [judged(tune, [0.88, 0.89, 0.97], relevant="d0")]
    result = tune.choose(train, test, top_n=3)
    assert result["bm25"] == {"train": pytest.approx(0.5), "test": pytest.approx(1.0)}
    assert result["pick"]["train"] == pytest.approx(1.0)
    assert result["pick"]["train"] == max(result["train"].values())
    assert result["pick"]["test"] < 1.0, "scored on test only after the pick, not chosen for it"


def test_every_candidate_blend_is_scored_on_train(tune: ModuleType) -> None:
    blends = tune.candidate_blends()
    assert len({describe_blend(b) for b in blends}) == len(blends)
    assert any(b.normalise_rerank for b in blends) and any(b.rerank_range for b in blends)
    assert all(b.weights.rerank + b.weights.bm25 == pytest.approx(1.0) for b in blends)
    result = tune.choose([judged(tune, [0.9, 0.9, 0.9], "d0")], [judged(tune, [0.9, 0.9, 0.9], "d0")], 3)
    assert set(result["train"]) == {describe_blend(b) for b in blends}
    assert result["best_min_max"]["blend"].split(" e5 ")[1].startswith("(min-max)")


def test_the_train_split_is_disjoint_from_the_shipped_test_split() -> None:
    data = SCRIPTS / "data"
    queries = parse_queries(read_lines(data / "scifact-train-queries.jsonl.gz"))
    qrels = parse_qrels(read_lines(data / "scifact-train-qrels.tsv.gz"))
    assert len(qrels) == 809 and set(qrels) <= set(queries)
    assert not set(qrels) & set(load_collection("scifact").qrels)
