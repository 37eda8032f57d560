"""The floor for the rerank path: the proxy's own search decisions with the least plumbing around them.

    .venv/bin/python scripts/bench_floor.py --port 9290 --config proxy.yaml

A baseline for bench.py's wire phase, never a product: one asyncio protocol per socket, llhttp
(httptools) for the framing, one kept-alive connection to the window and one to the model, searches
taken one at a time. Per search it calls the same pure functions the proxy's search runs, with the
proxy's own config: `plan_search`, `page.feature_columns`, `blend.prior_from_columns`, `page.model_text`,
`reranker.build_request`/`parse_scores`, `blend.rank`, `page.build_page`. What it leaves out is what the
proxy does around them: the fast lane's checks, canary, UBI, the scorer (cache, shared flight, budget,
retries, breakers), pools, the search record, log line and metrics, headers beyond the framing, gzip,
and every error path. The proxy's own time on the wire divided by this one's is what that plumbing costs.
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import datetime, timezone
from typing import cast

import httptools
import orjson
import uvloop

from es_rerank_proxy.config import Config, load_config
from es_rerank_proxy.model import reranker
from es_rerank_proxy.search import blend, page
from es_rerank_proxy.search.endpoint import classify_endpoint
from es_rerank_proxy.search.plan import Bypass, plan_search
from es_rerank_proxy.search.settings import Settings

ANSWER_HEAD = (
    b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nX-Elastic-Product: Elasticsearch\r\n"
    b"Content-Length: %d\r\n\r\n"
)


class Upstream(asyncio.Protocol):
    """One kept-alive connection; one exchange at a time, its whole answer body returned."""

    def __init__(self, host: str) -> None:
        self._host = host.encode()
        self._parser = httptools.HttpResponseParser(self)
        self._chunks: list[bytes] = []
        self._waiter: asyncio.Future[bytes] | None = None
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        body, self._chunks = b"".join(self._chunks), []
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(body)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError("upstream closed the connection"))

    async def post(self, path: bytes, body: bytes) -> bytes:
        assert self._transport is not None and self._waiter is None
        self._waiter = asyncio.get_running_loop().create_future()
        head = b"POST %b HTTP/1.1\r\nHost: %b\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        self._transport.write(head % (path, self._host, len(body)) + body)
        return await self._waiter


class Floor:
    def __init__(self, config: Config, window: Upstream, model: Upstream) -> None:
        self.settings = Settings.from_config(config)
        self.window = window
        self.model = model

    async def answer(self, method: str, target: str, body: bytes) -> tuple[int, bytes]:
        if target == "/":
            return 200, b'{"tagline":"the floor of the rerank path"}'  # for the bench's readiness probe
        path, _, query = target.partition("?")
        endpoint = classify_endpoint(method, path)
        if endpoint is None or endpoint.kind != "search" or query:
            return 400, b'{"error":"the floor takes plain _search requests only"}'
        config = self.settings.config
        plan = plan_search(body, {}, endpoint.indices, config.rerank, self.settings.needed, None)
        if isinstance(plan, Bypass):
            return 400, orjson.dumps({"error": f"the floor does not bypass: {plan.reason}"})
        es_response = orjson.loads(await self.window.post(path.encode(), plan.recall_body))
        hits = es_response["hits"]["hits"]
        features = page.feature_columns(hits, self.settings.features)
        prior = blend.prior_from_columns(
            *features, config.blend, config.rerank.top_n, datetime.now(timezone.utc)
        )
        texts = [page.model_text(hits[i], self.settings.texts, config) for i in prior.candidates]
        cfg = config.reranker
        model_path, payload = reranker.build_request(cfg, config.rerank.instruction, plan.query_text, texts)
        answer = await self.model.post(model_path.encode(), orjson.dumps(payload))
        scores = reranker.parse_scores(cfg.api, answer, len(texts))
        ranking = blend.rank(prior, dict(zip(prior.candidates, scores, strict=True)), config.blend)
        return 200, orjson.dumps(page.build_page(es_response, ranking.order, ranking.scores, plan, None))


class Client(asyncio.Protocol):
    def __init__(self, floor: Floor) -> None:
        self._floor = floor
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._body: list[bytes] = []
        self._tasks: set[asyncio.Future[None]] = set()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self._url = url

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        method = self._parser.get_method().decode()
        body, self._body = b"".join(self._body), []
        task = asyncio.ensure_future(self._respond(method, self._url.decode(), body))
        self._tasks.add(task)  # held until done: the loop keeps only a weak reference
        task.add_done_callback(self._tasks.discard)

    async def _respond(self, method: str, target: str, body: bytes) -> None:
        status, payload = await self._floor.answer(method, target, body)
        assert self._transport is not None
        reason = b"OK" if status == 200 else b"Bad Request"
        self._transport.write(ANSWER_HEAD % (status, reason, len(payload)) + payload)


async def serve(port: int, config: Config) -> None:
    loop = asyncio.get_running_loop()
    endpoints = []
    for url in (config.elasticsearch.url[0], config.reranker.url[0]):
        host_port = url.split("://", 1)[1].rstrip("/")
        host, _, number = host_port.rpartition(":")
        _, protocol = await loop.create_connection(lambda h=host_port: Upstream(h), host, int(number))
        endpoints.append(protocol)
    floor = Floor(config, *endpoints)
    server = await loop.create_server(lambda: Client(floor), "127.0.0.1", port)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--config", required=True, help="the proxy's config: its window, model, blend")
    args = parser.parse_args()
    uvloop.run(serve(args.port, load_config(args.config)))


if __name__ == "__main__":
    main()
