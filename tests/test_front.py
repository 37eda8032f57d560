"""The nginx front (deploy/nginx/es-rerank-proxy.conf): searches reach the proxy, the rest goes on."""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from elasticsearch import Elasticsearch, helpers
from hypothesis import given
from hypothesis import strategies as st

from es_rerank_proxy.search.endpoint import classify_endpoint
from es_rerank_proxy.tools.local_elasticsearch import free_port

from .conftest import INDEX, QUERY
from .fakes.nginx_front import nginx_front, routing_expression
from .fakes.proxy_server import RunningProxy, make_config, proxy_in_thread

ROUTE = re.compile(routing_expression())


def _to_proxy(method: str, target: str) -> bool:
    return ROUTE.search(f"{method} {target}") is not None


@pytest.mark.parametrize(
    ("method", "target", "to_proxy"),
    [
        ("GET", "/_search", True),
        ("POST", "/_search?typed_keys=true", True),
        ("POST", "/library/_search", True),
        ("GET", "/library/_search/", True),
        ("POST", "/library-*,journals/_search?q=x", True),
        ("POST", "/%E5%9B%BE%E4%B9%A6/_search", True),
        ("POST", "/_all/_search", True),
        ("POST", "/_msearch", True),
        ("POST", "/library/_msearch?max_concurrent_searches=2", True),
        ("PUT", "/library/_search", False),
        ("DELETE", "/library/_search", False),
        ("HEAD", "/library/_search", False),
        ("POST", "/library/_bulk", False),
        ("POST", "/_bulk", False),
        ("GET", "/library/_doc/1", False),
        ("GET", "/library/_doc/_search", False),
        ("POST", "/library/_count", False),
        ("POST", "/_search/scroll", False),
        ("POST", "/library/_search/template", False),
        ("POST", "/_msearch/template", False),
        ("GET", "/library/_searchable", False),
        ("GET", "/_cat/indices?q=_search", False),
        ("GET", "//_search", False),
    ],
)
def test_front_routes_searches_to_the_proxy_and_the_rest_to_elasticsearch(
    method: str, target: str, to_proxy: bool
) -> None:
    path = target.split("?", 1)[0]
    assert _to_proxy(method, target) is to_proxy
    if classify_endpoint(method, path) is not None:
        assert to_proxy


_SEGMENT = st.text(alphabet="abc_-*,%2CE5/._", min_size=0, max_size=8)


@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD"]),
    segments=st.lists(st.one_of(_SEGMENT, st.sampled_from(["_search", "_msearch", "_all"])), max_size=4),
    slash=st.booleans(),
    query=st.sampled_from(["", "?q=a", "?typed_keys&x=/_search"]),
)
def test_every_search_the_proxy_classifies_reaches_it(
    method: str, segments: list[str], slash: bool, query: str
) -> None:
    path = "/" + "/".join(segments) + ("/" if slash else "")
    if classify_endpoint(method, path) is not None:
        assert _to_proxy(method, path + query), path + query


# --- the shipped conf run by nginx, in front of noida-db and a proxy -----------------------------------


@pytest.fixture
def front_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def fronted(
    reranking_proxy: Callable[..., AbstractContextManager[RunningProxy]], es_url: str, front_dir: Path
) -> Iterator[str]:
    with reranking_proxy() as proxy, nginx_front(es_url, proxy.url, front_dir) as front:
        yield front


def test_official_client_lifecycle_through_front_matches_elasticsearch(
    fronted: str, es_direct: Elasticsearch
) -> None:
    client = Elasticsearch(fronted, request_timeout=30)
    index = "front-lifecycle"
    client.options(ignore_status=404).indices.delete(index=index)
    assert client.indices.create(index=index, mappings={"properties": {"title": {"type": "text"}}})[
        "acknowledged"
    ]
    client.index(index=index, id="a", document={"title": "图书馆 neural search", "n": 1}, refresh=True)
    docs = [{"_index": index, "_id": str(i), "title": f"library item {i}", "n": i} for i in range(500)]
    ok, errors = helpers.bulk(client, docs, refresh=True)
    assert ok == 500 and not errors
    assert client.get(index=index, id="a").body == es_direct.get(index=index, id="a").body
    client.update(index=index, id="7", doc={"n": 7000}, refresh=True)
    assert client.get(index=index, id="7").body == es_direct.get(index=index, id="7").body
    assert client.count(index=index).body == es_direct.count(index=index).body
    assert client.indices.get_mapping(index=index).body == es_direct.indices.get_mapping(index=index).body
    assert client.exists(index=index, id="a").body is True
    client.delete(index=index, id="a", refresh=True)
    assert client.options(ignore_status=404).get(index=index, id="a").body == (
        es_direct.options(ignore_status=404).get(index=index, id="a").body
    )
    scanned = {hit["_id"] for hit in helpers.scan(client, index=index, query={"query": {"match_all": {}}})}
    assert len(scanned) == 500
    client.indices.delete(index=index)
    assert not es_direct.indices.exists(index=index)
    client.close()


def test_search_through_front_is_reranked(fronted: str) -> None:
    client = Elasticsearch(fronted, request_timeout=30)
    response = client.search(index=INDEX, query=QUERY, size=10)
    assert response.meta.headers["X-Rerank"] == "applied"
    assert len(response["hits"]["hits"]) == 10
    multi = client.msearch(searches=[{"index": INDEX}, {"query": QUERY, "size": 5}])
    assert multi.meta.headers["X-Rerank"] == "applied"
    client.close()


def _search_from(front: str, source: str) -> http.client.HTTPResponse:
    host, port = front.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30, source_address=(source, 0))
    body = json.dumps({"query": QUERY, "size": 10})
    connection.request("POST", f"/{INDEX}/_search", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def test_canary_rule_by_address_matches_the_client_behind_the_front(
    reranking_proxy: Callable[..., AbstractContextManager[RunningProxy]], es_url: str, front_dir: Path
) -> None:
    # Loopback aliases stand in for two clients; the front itself reaches the proxy from 127.0.0.1.
    rules = [{"name": "staff", "cidr": ["127.0.0.2/32"], "mode": "rerank"}]
    canary = {"default": "off", "trusted_proxies": ["127.0.0.1/32"], "rules": rules}
    with reranking_proxy(canary=canary) as proxy, nginx_front(es_url, proxy.url, front_dir) as front:
        assert _search_from(front, "127.0.0.2").headers["X-Rerank"] == "applied"
        other = _search_from(front, "127.0.0.3")
    assert other.headers["X-Rerank"] == "skipped"
    assert other.headers["X-Rerank-Reason"] == "canary_off"


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/_cluster/health"), ("POST", "/library/_search"), ("POST", "/_bulk")]
)
def test_elasticsearch_down_gives_elasticsearch_shaped_502_through_front(
    front_dir: Path, method: str, path: str
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with proxy_in_thread(make_config(dead)) as proxy, nginx_front(dead, proxy.url, front_dir) as front:
        host, port = front.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        body = b'{"query":{"match_all":{}}}\n' if method == "POST" else None
        connection.request(method, path, body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        error = json.loads(response.read())
        connection.close()
    assert response.status == 502
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["X-Elastic-Product"] == "Elasticsearch"
    assert error["status"] == 502
    assert error["error"]["type"] and error["error"]["reason"]
    assert error["error"]["root_cause"][0]["type"] == error["error"]["type"]
