"""deploy/nginx/es-rerank-proxy.conf run by this machine's nginx on free loopback ports."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from es_rerank_proxy.tools.local_elasticsearch import free_port, stop_process_group

FRONT_CONF = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "es-rerank-proxy.conf"


def routing_expression() -> str:
    """The regular expression the shipped conf sends to the proxy (its `map` entry, without the `~`)."""
    match = re.search(r'^\s*"~(.+)"\s+es_rerank_proxy;', FRONT_CONF.read_text(), re.MULTILINE)
    assert match is not None, "the map entry routing to es_rerank_proxy"
    return match.group(1)


def _nginx() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )
    if found is None:
        pytest.skip("nginx not installed (scripts/test installs nginx-light)")
    return found


def _replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"{old!r} once in {FRONT_CONF.name}"
    return text.replace(old, new)


def _wait_listening(
    port: int, process: subprocess.Popen[bytes], stderr: Path, timeout_s: float = 20.0
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited with code {process.returncode}: {stderr.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nginx did not listen on {port} within {timeout_s} s")


@contextmanager
def nginx_front(es_url: str, proxy_url: str, prefix: Path) -> Iterator[str]:
    """The shipped conf with its upstreams pointed at `es_url` / `proxy_url`; yields the front's URL."""
    binary = _nginx()
    port = free_port()
    conf = FRONT_CONF.read_text()
    conf = _replace_once(conf, "server elasticsearch:9200;", f"server {es_url.removeprefix('http://')};")
    conf = _replace_once(conf, "server proxy:9201;", f"server {proxy_url.removeprefix('http://')};")
    conf = _replace_once(conf, "listen 9200;", f"listen 127.0.0.1:{port};")
    (prefix / "front.conf").write_text(conf)
    temp = {name: prefix / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir(exist_ok=True)
    (prefix / "nginx.conf").write_text(
        f"worker_processes 1;\npid {prefix / 'nginx.pid'};\nerror_log {prefix / 'error.log'} warn;\n"
        "events { worker_connections 1024; }\n"
        "http {\n  access_log off;\n"
        f"  client_body_temp_path {temp['body']};\n  proxy_temp_path {temp['proxy']};\n"
        f"  fastcgi_temp_path {temp['fastcgi']};\n  uwsgi_temp_path {temp['uwsgi']};\n"
        f"  scgi_temp_path {temp['scgi']};\n"
        f"  include {prefix / 'front.conf'};\n}}\n"
    )
    with (prefix / "stderr.log").open("wb") as stderr:
        process = subprocess.Popen(
            [
                binary,
                "-p",
                str(prefix),
                "-e",
                str(prefix / "error.log"),
                "-c",
                str(prefix / "nginx.conf"),
                "-g",
                "daemon off;",
            ],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_listening(port, process, prefix / "stderr.log")
        yield url
    finally:
        stop_process_group(process, timeout_s=10)
