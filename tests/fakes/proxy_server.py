"""The proxy under test, on free ports in a thread of its own (so sync clients can call it) or a process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from es_rerank_proxy.app import (
    RUNTIME,
    admin_runner,
    create_admin_app,
    create_app,
    listeners_tls,
    public_runner,
)
from es_rerank_proxy.config import Config, config_from_dict
from es_rerank_proxy.edge.listener import tcp_site
from es_rerank_proxy.tools.local_elasticsearch import free_port, stop_process_group, wait_for_http

from .threaded import in_thread


@dataclass
class RunningProxy:
    url: str
    admin_url: str
    config: Config
    app: web.Application | None = None
    admin_app: web.Application | None = None
    process: subprocess.Popen[bytes] | None = None
    loop: asyncio.AbstractEventLoop | None = None


def make_config(es_url: str, reranker_url: str = "http://127.0.0.1:9", **sections: Any) -> Config:
    """A validated config pointing at the test upstreams; `sections` override whole keys by section."""
    data: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, "shutdown_timeout_s": 2},
        "admin": {"host": "127.0.0.1", "port": 0},
        "elasticsearch": {"url": [es_url], "timeout_s": 10},
        "reranker": {"url": [reranker_url]},
    }
    for section, values in sections.items():
        merged = dict(data.get(section, {}))
        merged.update(values)
        data[section] = merged
    return config_from_dict(data)


@asynccontextmanager
async def running_proxy(
    config: Config, *, config_path: str | None = None, self_test: bool = False, watch_s: float | None = None
) -> AsyncIterator[RunningProxy]:
    """The public and admin apps on free loopback ports, configured exactly as `serve` does."""
    public = create_app(config, config_path=config_path, self_test=self_test)
    runner = public_runner(public, config)
    await runner.setup()
    admin_app = create_admin_app(public)
    admin = admin_runner(admin_app, config)
    await admin.setup()
    public_tls, admin_tls = listeners_tls(config)
    try:
        # Port 0: the kernel picks a free port at bind time. A port picked earlier by free_port() can be
        # taken by another process's outgoing connection before the bind (seen on a busy CI machine).
        site = tcp_site(runner, "127.0.0.1", 0, public_tls)
        admin_site = tcp_site(admin, "127.0.0.1", 0, admin_tls)
        await site.start()
        await admin_site.start()
        if watch_s is not None:
            public[RUNTIME].start_watching(watch_s)
        yield RunningProxy(
            url=f"{'https' if public_tls else 'http'}://127.0.0.1:{runner.addresses[0][1]}",
            admin_url=f"{'https' if admin_tls else 'http'}://127.0.0.1:{admin.addresses[0][1]}",
            config=config,
            app=public,
            admin_app=admin_app,
            loop=asyncio.get_running_loop(),
        )
    finally:
        await admin.cleanup()
        await runner.cleanup()


def proxy_in_thread(
    config: Config, *, config_path: str | None = None, self_test: bool = False, watch_s: float | None = None
) -> AbstractContextManager[RunningProxy]:
    """The proxy on an event loop of its own, so sync clients in the test thread can call it."""
    return in_thread(
        lambda: running_proxy(config, config_path=config_path, self_test=self_test, watch_s=watch_s),
        name="proxy-under-test",
    )


@contextmanager
def proxy_process(config: Config, tmp_dir: Path) -> Iterator[RunningProxy]:
    """Run `python -m es_rerank_proxy serve` as its own process (for memory and signal tests)."""
    from es_rerank_proxy.config import config_to_dict

    data = config_to_dict(config, mask_secrets=False)
    data["server"]["port"] = free_port()
    data["admin"]["port"] = free_port()
    path = tmp_dir / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    with (tmp_dir / "proxy.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "es_rerank_proxy", "serve", "--config", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=log,
            env={k: v for k, v in os.environ.items() if not k.startswith("ES_RERANK_PROXY_")},
            start_new_session=True,
        )
    scheme = "https" if config.server.tls.cert_file else "http"
    running = RunningProxy(
        url=f"{scheme}://127.0.0.1:{data['server']['port']}",
        admin_url=f"http://127.0.0.1:{data['admin']['port']}",
        config=config,
        process=process,
    )
    try:
        wait_for_http(running.admin_url + "/_rerank/health", process=process)
        yield running
    finally:
        stop_process_group(process, timeout_s=15)


MetricSamples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape_metrics(proxy: RunningProxy) -> MetricSamples:
    """Every sample of the proxy's `/metrics`, by name and sorted labels."""
    text = requests.get(f"{proxy.admin_url}/metrics", timeout=10).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric_sum(samples: MetricSamples, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and set(labels.items()) <= set(sample_labels)
    )
