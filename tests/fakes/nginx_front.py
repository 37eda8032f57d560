"""The shipped nginx front on free loopback ports (skipped where nginx is not installed)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from es_rerank_proxy.tools.local_front import run_front

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


@contextmanager
def nginx_front(es_url: str, proxy_url: str, prefix: Path) -> Iterator[str]:
    """The shipped conf with its upstreams pointed at `es_url` / `proxy_url`; yields the front's URL."""
    with run_front(FRONT_CONF, es_url, [proxy_url], prefix / "nginx", nginx=_nginx()) as url:
        yield url
