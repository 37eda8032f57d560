"""The processes a bench run needs, each on free loopback ports, each stopped when its block exits."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from es_rerank_proxy.tools.local_elasticsearch import free_port, run_noida, stop_process_group, wait_for_http
from es_rerank_proxy.tools.local_front import run_front

SCRIPTS = Path(__file__).resolve().parents[1]
INSTALL_HINT = "apt-get install -y nginx-light wrk"


@dataclass(frozen=True, slots=True)
class Proxy:
    url: str
    admin_url: str
    pid: int
    log_path: Path


def missing_tools() -> list[str]:
    """Which of the external load tools are not on PATH."""
    return [tool for tool in ("nginx", "wrk") if shutil.which(tool) is None]


@contextmanager
def process(
    command: list[str], log_path: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `command` with output to `log_path`; SIGTERM on exit, SIGKILL if it lingers."""
    with log_path.open("wb") as log:
        child = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    try:
        yield child
    finally:
        stop_process_group(child)


@contextmanager
def noida(data_dir: Path) -> Iterator[str]:
    """noida-db on a free port (run_noida stops its whole process group on exit)."""
    with run_noida(data_dir) as url:
        yield url


@contextmanager
def fake_reranker(tmp: Path, latency_ms: float, name: str = "fake_reranker") -> Iterator[str]:
    """scripts/bench_fake_reranker.py with a fixed latency; yields its URL."""
    port = free_port()
    command = [sys.executable, str(SCRIPTS / "bench_fake_reranker.py"), "--port", str(port)]
    with process([*command, "--latency-ms", str(latency_ms)], tmp / f"{name}.log") as child:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(url + "/health", process=child)
        yield url


def proxy_config(
    es_url: str,
    reranker_url: str,
    port: int,
    admin_port: int,
    budget_ms: int = 1000,
    cache: dict[str, object] | None = None,
) -> dict[str, object]:
    """Rerank on for every index, a model budget far above the fake's latency, canary default rerank."""
    return {
        "server": {"host": "127.0.0.1", "port": port, "shutdown_timeout_s": 2},
        "admin": {"host": "127.0.0.1", "port": admin_port},
        "elasticsearch": {"url": [es_url]},
        "reranker": {"url": [reranker_url], "timeout_ms": budget_ms, "cache": cache or {}},
        "canary": {"default": "rerank"},
        "log": {"level": "INFO"},
    }


@contextmanager
def static_window(tmp: Path) -> Iterator[str]:
    """scripts/bench_static_window.py: every `_search` answered with the same 100-hit window."""
    port = free_port()
    command = [sys.executable, str(SCRIPTS / "bench_static_window.py"), "--port", str(port)]
    with process(command, tmp / "static_window.log") as child:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(url + "/", process=child)
        yield url


@contextmanager
def proxy(
    tmp: Path,
    es_url: str,
    reranker_url: str,
    budget_ms: int = 1000,
    name: str = "proxy",
    cache: dict[str, object] | None = None,
) -> Iterator[Proxy]:
    """`python -m es_rerank_proxy serve --config tmp/<name>.yaml`; stderr (its log) goes to tmp/<name>.log."""
    port, admin_port = free_port(), free_port()
    config_path = tmp / f"{name}.yaml"
    config = proxy_config(es_url, reranker_url, port, admin_port, budget_ms, cache)
    config_path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ES_RERANK_PROXY_")}
    command = [sys.executable, "-m", "es_rerank_proxy", "serve", "--config", str(config_path)]
    log_path = tmp / f"{name}.log"
    with process(command, log_path, env) as child:
        admin_url = f"http://127.0.0.1:{admin_port}"
        wait_for_http(admin_url + "/_rerank/health", process=child)
        yield Proxy(f"http://127.0.0.1:{port}", admin_url, child.pid, log_path)


@contextmanager
def floor(tmp: Path, es_url: str, reranker_url: str) -> Iterator[str]:
    """scripts/bench_floor.py with the config `proxy` writes: the rerank path's baseline (wire phase)."""
    port = free_port()
    config_path = tmp / "floor.yaml"
    config_path.write_text(yaml.safe_dump(proxy_config(es_url, reranker_url, port, free_port())))
    script = str(SCRIPTS / "bench_floor.py")
    command = [sys.executable, script, "--port", str(port), "--config", str(config_path)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ES_RERANK_PROXY_")}
    with process(command, tmp / "floor.log", env) as child:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(url + "/", process=child)
        yield url


NGINX_CONF = """\
# A plain production-style keep-alive reverse proxy to Elasticsearch, the baseline for the proxy.
# One worker: the proxy is one asyncio process, and the 2 cores are shared with Elasticsearch and the
# load generator; a second worker would only add contention.
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;  # the proxy keeps no access log either
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    client_max_body_size 100m;
    keepalive_requests 100000;
    upstream elasticsearch {{
        server {es_host_port};
        keepalive 64;
        keepalive_requests 100000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://elasticsearch;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;  # nginx's default, what production reverse proxies run
        }}
    }}
}}
"""


@contextmanager
def nginx(tmp: Path, es_url: str) -> Iterator[str]:
    """nginx in the foreground with tmp/nginx.conf; yields its URL."""
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, es_host_port=es_url.removeprefix("http://"), port=port))
    command = [
        "nginx",
        "-p",
        str(tmp),
        "-e",
        str(tmp / "nginx-error.log"),
        "-c",
        str(conf),
        "-g",
        "daemon off;",
    ]
    with process(command, tmp / "nginx.log") as child:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(url + "/", process=child)
        yield url


FRONT_CONF = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "es-rerank-proxy.conf"


@contextmanager
def front(tmp: Path, es_url: str, proxy_urls: list[str]) -> Iterator[str]:
    """The shipped nginx front (deploy/nginx/es-rerank-proxy.conf) before noida and the proxies."""
    with run_front(FRONT_CONF, es_url, proxy_urls, tmp / "front", workers=1) as url:
        yield url


def proxy_build(tmp: Path, pure: bool) -> str:
    """The build every proxy started from here on runs, by name for the report: the source with `pure`,
    else the package as the Dockerfile ships it, compiled with mypyc (about a minute) into `tmp` and put
    first on PYTHONPATH."""
    if pure:
        return "source"
    target = tmp / "compiled-package"
    subprocess.run(
        [str(SCRIPTS / "build_compiled"), str(target)],
        check=True,
        env={**os.environ, "PY": sys.executable},
    )
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, (str(target), os.environ.get("PYTHONPATH"))))
    return "compiled (mypyc)"


@contextmanager
def windowed_proxy(tmp: Path, model_latency_ms: float) -> Iterator[tuple[str, str, Proxy]]:
    """(window URL, model URL, proxy): the static window, the fake reranker with a fixed latency, and a
    proxy recalling from the one and scoring with the other, as in bench.py's rerank phase."""
    with ExitStack() as stack:
        window_url = stack.enter_context(static_window(tmp))
        model_url = stack.enter_context(fake_reranker(tmp, model_latency_ms))
        windowed = stack.enter_context(proxy(tmp, window_url, model_url, name="proxy-window"))
        yield window_url, model_url, windowed
