"""Smoke test of scripts/bench_replicas.py: tiny settings, both backends run, every search answered."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_bench_replicas_runs_memory_and_redis_without_errors() -> None:
    for tool in ("nginx", "redis-server"):
        places = (Path("/usr/sbin") / tool, Path("/usr/bin") / tool)
        if shutil.which(tool) is None and not any(place.exists() for place in places):
            pytest.skip(f"{tool} is missing (scripts/test installs it)")
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_replicas.py"), "--searches", "12"],
        capture_output=True,
        text=True,
        timeout=380,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.split()}
    assert rows["memory"][1] == rows["redis-5ms"][1] == rows["redis-50ms"][1] == "0", result.stdout
    assert "ratio redis-5ms/memory: model calls" in result.stdout
