"""The shipped nginx front (deploy/nginx/es-rerank-proxy.conf) run on loopback, for tests and the bench."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .local_elasticsearch import free_port, stop_process_group

_TEMP_DIRS = ("body", "proxy", "fastcgi", "uwsgi", "scgi")


def _host_port(url: str) -> str:
    return url.removeprefix("http://").rstrip("/")


def _replace_once(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        raise ValueError(f"expected {old!r} exactly once in the front's conf")
    return text.replace(old, new)


def front_conf(template: str, *, elasticsearch: str, proxies: Sequence[str], port: int) -> str:
    """The shipped conf with its upstreams pointed at these URLs and its listener on 127.0.0.1:`port`."""
    text = _replace_once(template, "server elasticsearch:9200;", f"server {_host_port(elasticsearch)};")
    servers = "\n    ".join(f"server {_host_port(url)};" for url in proxies)
    text = _replace_once(text, "server proxy:9201;", servers)
    return _replace_once(text, "listen 9200;", f"listen 127.0.0.1:{port};")


def main_conf(prefix: Path, include: Path, workers: int = 1) -> str:
    """An nginx.conf that keeps every path under `prefix` and includes the http-level front."""
    temp = "".join(f"    {name}_temp_path {prefix / name};\n" for name in _TEMP_DIRS).replace(
        "body_temp", "client_body_temp"
    )
    return (
        f"worker_processes {workers};\npid {prefix / 'nginx.pid'};\nerror_log {prefix / 'error.log'} warn;\n"
        "events { worker_connections 4096; }\n"
        f"http {{\n    access_log off;\n{temp}    include {include};\n}}\n"
    )


def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited with code {process.returncode}: {log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nginx did not listen on port {port} within {timeout_s} s")


@contextmanager
def run_front(
    conf: Path,
    elasticsearch: str,
    proxies: Sequence[str],
    prefix: Path,
    *,
    nginx: str = "nginx",
    workers: int = 1,
    timeout_s: float = 20.0,
) -> Iterator[str]:
    """nginx in the foreground with the front `conf` on a free loopback port; yields its URL."""
    port = free_port()
    prefix.mkdir(parents=True, exist_ok=True)
    for name in _TEMP_DIRS:
        (prefix / name).mkdir(exist_ok=True)
    include = prefix / "front.conf"
    include.write_text(front_conf(conf.read_text(), elasticsearch=elasticsearch, proxies=proxies, port=port))
    (prefix / "nginx.conf").write_text(main_conf(prefix, include, workers))
    log = prefix / "nginx.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                nginx,
                "-p",
                str(prefix),
                "-e",
                str(prefix / "error.log"),
                "-c",
                str(prefix / "nginx.conf"),
                "-g",
                "daemon off;",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        _wait_listening(port, process, log, timeout_s)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process_group(process, timeout_s=10)
