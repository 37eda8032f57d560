"""The `warm` command as a user runs it: errors say what happened, an interrupted command leaves the proxy
warming, vectors go to a file and back."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import requests
from aiohttp import web

from es_rerank_proxy.tools.local_elasticsearch import free_port
from es_rerank_proxy.tools.warm_client import add_warm_parser, run_warm

from ..admin.test_warm import client_of, proxy_config
from ..fakes.fake_scroll import FastEmbeddings, ScrollElasticsearch, fast_embeddings, scroll_elasticsearch
from ..fakes.proxy_server import RunningProxy, make_config, proxy_in_thread
from ..fakes.threaded import in_thread


def warm(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_warm_parser(parser.add_subparsers(dest="command"))
    return run_warm(parser.parse_args(["warm", *argv]))


@contextlib.contextmanager
def stack(count: int) -> Iterator[tuple[ScrollElasticsearch, FastEmbeddings, RunningProxy]]:
    with (
        in_thread(lambda: scroll_elasticsearch(count), name="fake-es") as es,
        in_thread(fast_embeddings, name="fake-embeddings") as model,
        proxy_in_thread(proxy_config(es, model)) as proxy,
    ):
        yield es, model, proxy


@contextlib.asynccontextmanager
async def misbehaving_admin(behaviour: str) -> AsyncIterator[str]:
    """An admin listener that stays silent after its headers, or hangs up mid-stream."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        await response.write(b'{"done": 1, "total": 10}\n')
        if behaviour == "silent":
            await asyncio.sleep(30)
        else:
            assert request.transport is not None
            request.transport.close()
        return response

    app = web.Application()
    app.router.add_post("/_rerank/warm", handler)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [
        ("silent", "sent nothing within the read timeout (0.5 s, --read-timeout)"),
        ("hang_up", "closed the connection"),
    ],
)
def test_a_silent_or_vanished_proxy_is_named_in_the_error(
    behaviour: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with in_thread(lambda: misbehaving_admin(behaviour)) as admin:
        assert warm("--index", "papers", "--admin", admin, "--read-timeout", "0.5") == 1
    err = capsys.readouterr().err
    assert expected in err


def test_a_refused_connection_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    assert warm("--index", "papers", "--admin", f"http://127.0.0.1:{port}") == 1
    err = capsys.readouterr().err
    assert f"cannot connect to the proxy's admin listener at 127.0.0.1:{port}: connection refused" in err


def test_an_http_error_names_the_status_and_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    never = tmp_path / "never-written.ndjson"
    with (
        in_thread(lambda: scroll_elasticsearch(1), name="fake-es") as es,
        proxy_in_thread(make_config(es.url)) as proxy,
    ):
        assert warm("--index", "x", "--admin", proxy.admin_url) == 1
        assert warm("--index", "x", "--admin", proxy.admin_url, "--export", str(never)) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert (
        lines[0]
        == "warm: the proxy answered HTTP 409: reranker.api is 'vllm': only 'embeddings' has vectors to warm"
    )
    assert lines[1].startswith("warm: the proxy answered HTTP 409: reranker.api is 'vllm'")
    assert not never.exists()
    assert not list(tmp_path.iterdir()), "no partial file left behind"


def test_warming_goes_on_when_the_command_is_interrupted(tmp_path: Path) -> None:
    with stack(400) as (es, model, proxy):
        model.hold(True)
        command = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "es_rerank_proxy",
                "warm",
                "--index",
                es.index,
                "--admin",
                proxy.admin_url,
            ],
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 30
            while requests.get(f"{proxy.admin_url}/_rerank/warm", timeout=5).json()["indices"] == {}:
                assert time.monotonic() < deadline, "the command did not start a warm-up"
                time.sleep(0.05)
            command.send_signal(signal.SIGINT)
            _, err = command.communicate(timeout=30)
        finally:
            if command.poll() is None:
                os.kill(command.pid, signal.SIGKILL)
        assert command.returncode == 130
        assert b"interrupted; the proxy goes on warming papers" in err
        model.hold(False)
        job = {}
        deadline = time.monotonic() + 30
        while job.get("state") != "done":
            assert time.monotonic() < deadline, f"the warm-up did not finish: {job}"
            job = requests.get(f"{proxy.admin_url}/_rerank/warm", timeout=5).json()["indices"][es.index]
            time.sleep(0.05)
        assert (job["done"], job["total"], job["embedded"]) == (400, 400, 400)
        assert client_of(proxy).cached_vectors() == 400


def test_export_then_import_through_the_command_with_gzip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "vectors.ndjson.gz"
    with stack(60) as (es, model, proxy):
        assert warm("--index", es.index, "--admin", proxy.admin_url) == 0
        assert warm("--index", es.index, "--admin", proxy.admin_url, "--export", str(path), "--float16") == 0
        assert warm("--status", "--admin", proxy.admin_url) == 0
    assert path.stat().st_size > 0
    with stack(60) as (es, model, proxy):
        assert warm("--index", es.index, "--admin", proxy.admin_url, "--import", str(path)) == 0
        assert client_of(proxy).cached_vectors() == 60
        assert model.texts == 0, "nothing embedded: the vectors came from the file"
    out, err = capsys.readouterr()
    assert "embedded 60 documents" in err
    assert f"exported 60 vectors to {path} (0 documents had none cached)" in err
    assert '"state": "done"' in out
    assert "imported 60 vectors (none ignored)" in err
