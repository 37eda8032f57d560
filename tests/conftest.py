"""Shared fixtures: a real Elasticsearch stand-in (noida-db) and the proxy under test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from elasticsearch import Elasticsearch

from es_rerank_proxy.local_elasticsearch import run_noida

from .proxy_server import RunningProxy, make_config, proxy_in_thread


@pytest.fixture(scope="session")
def es_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with run_noida(tmp_path_factory.mktemp("noida")) as url:
        yield url


@pytest.fixture(scope="session")
def es_direct(es_url: str) -> Iterator[Elasticsearch]:
    client = Elasticsearch(es_url, request_timeout=30)
    yield client
    client.close()


@pytest.fixture
def start_proxy(es_url: str) -> Callable[..., AbstractContextManager[RunningProxy]]:
    """`with start_proxy(rerank={...}) as proxy:` a proxy in front of the test Elasticsearch."""

    def start(
        *, es: str | None = None, reranker_url: str = "http://127.0.0.1:9", **sections: Any
    ) -> AbstractContextManager[RunningProxy]:
        return proxy_in_thread(make_config(es or es_url, reranker_url, **sections))

    return start


@pytest.fixture(scope="session")
def passthrough_proxy(es_url: str) -> Iterator[RunningProxy]:
    """A proxy whose reranking is off: for tests of plain pass-through behaviour."""
    with proxy_in_thread(make_config(es_url, canary={"default": "off"})) as proxy:
        yield proxy


@pytest.fixture
def data_dir() -> Path:
    return Path(__file__).parent / "data"
