"""Smoke test of scripts/bench.py: tiny settings, every phase runs, the JSON report has every section."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "--docs", "300", "--recall-docs", "120", "--duration", "1", "--concurrency", "1,16",
    "--rerank-seconds", "1", "--rate", "40", "--cache-queries", "20",
    "--memory-searches", "150", "--soak-minutes", "0.05", "--wire-searches", "10",
    # A model budget no load reaches: "applied" then tests the rerank path, not this machine's speed.
    "--model-budget-ms", "60000",
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_bench_runs_every_phase_and_saves_the_report(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench.py"), *TINY, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=380,  # about 20 s alone; a shared, loaded machine may take several times that
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report) >= {"passthrough", "rerank", "cache_hit", "memory", "targets", "settings", "command"}
    for op in ("doc", "search"):
        for target in ("direct", "proxy"):
            for conc in ("1", "16"):
                cell = report["passthrough"][op][target][conc]
                assert cell["rps"] > 0 and cell["errors"] == 0, cell
    assert report["rerank"]["errors"] == 0
    assert report["rerank"]["applied_share"] > 0.9, report["rerank"]
    assert report["cache_hit"]["client"]["p50_ms"] > 0
    assert report["memory"]["rss_after_searches_mb"] > 0
    assert report["memory"]["searches"] >= 150
    # Between packets where tcpdump can capture (root), else skipped with the reason.
    wire = report["wire"]
    assert wire.get("skipped") or (wire["searches"] > 0 and wire["wire"]["own"]["p50_ms"] > 0), wire
    assert "Rerank path on the wire" in result.stdout
    assert "Targets" in result.stdout and "Reproduce with" in result.stdout
