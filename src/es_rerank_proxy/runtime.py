"""The proxy's runtime resources, built from the config and rebuilt where a reload needs it.

Sessions, the model client, the scorer (cache, breakers), the shadow runner and the metrics live here,
opened in `start` and closed in `close`; nothing is opened at import time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Coroutine
from pathlib import Path

import aiohttp
from prometheus_client import CollectorRegistry

from . import http1
from .config import Config, RerankerConfig, load_config
from .edge.upstream import Elasticsearch, build_ssl, create_session
from .errors import ConfigError
from .model.model_server import ModelSession
from .model.reranker import RerankerClient
from .model.scoring import ScoreClient, Scorer
from .model.selftest import SelfTestResult, check_reranker
from .model.shared_cache import SharedCache, connect
from .observe import deferred
from .observe.deferred import DeferredObserver
from .observe.metrics import Metrics
from .observe.record import SearchRecord
from .observe.search_log import SEARCH_LOGGER, log_search
from .observe.ubi_recorder import UbiRecorder
from .rollout.shadow import ShadowLimits, ShadowRunner
from .search.pipeline import SearchPipeline
from .search.settings import Settings

log = logging.getLogger(__name__)

# Sections whose resources (listeners, the Elasticsearch pool) are built once: changing them needs a restart.
RESTART_SECTIONS = ("server", "admin", "elasticsearch", "ubi")


class Runtime:
    """Everything the listeners share; one per process: replicas share only the optional Redis score cache."""

    def __init__(
        self,
        config: Config,
        *,
        config_path: str | None = None,
        registry: CollectorRegistry | None = None,
        self_test: bool = True,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = Settings.from_config(config)
        self.config_path = config_path
        self.loaded_at = wall_clock()
        self.last_reload_error: str | None = None
        self.metrics = Metrics(registry or CollectorRegistry())
        self.self_test_results: dict[str, SelfTestResult] = {}
        # Set while no self-test is under way: warming waits for it (see demo.warm_candidates).
        self.self_test_finished = asyncio.Event()
        self._wall_clock = wall_clock
        self._run_self_test = self_test
        self._search_log = logging.getLogger(SEARCH_LOGGER)
        self.observations = DeferredObserver(self._observe, deferred.OBSERVE_DELAY_S)
        self._background: set[asyncio.Task[None]] = set()
        self._file = SettledFile(_signature(config_path))

    @property
    def config(self) -> Config:
        return self.settings.config

    # --- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        config = self.config
        self._es_session = create_session(config.elasticsearch)
        self.es = Elasticsearch(
            self._es_session,
            config.elasticsearch,
            client_write_timeout_s=config.server.client_write_timeout_s,
        )
        # Model calls ride the lean pools too: aiohttp's client was most of a model call's own CPU.
        self._model_session = http1.Client(limit=config.reranker.max_concurrency + 8)
        self.shared_cache = self._build_shared_cache(config)
        self.client, self.scorer = self._build_scorer(config)
        self.shadow = ShadowRunner(
            load=lambda: (self.scorer.in_flight, self.es.in_flight),
            limits=lambda: ShadowLimits(
                max_shadows=self.config.canary.shadow_max_inflight,
                max_model_calls=self.config.reranker.max_concurrency,
                max_elasticsearch_requests=self.config.canary.shadow_max_elasticsearch_inflight,
            ),
        )
        self.pipeline = SearchPipeline(
            es=self.es,
            scorer=self.scorer,
            settings=lambda: self.settings,
            observe=self.observations,
            start_shadow=self.shadow.start,
            record_query=self._start_ubi_recorder(config),
        )
        self.metrics.track_scorer(lambda: self.scorer.in_flight, lambda: self.scorer.breaker_states())
        self.metrics.track_elasticsearch(lambda: self.es.in_flight)
        self._start_self_test()

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.shadow.aclose()
        self.observations.close()  # the last searches' log lines and metrics, before the loop goes
        await self.ubi_recorder.aclose()
        await self._ubi_session.close()
        await self.scorer.aclose()
        await _close_client(self.client)
        if self.shared_cache is not None:
            await self.shared_cache.aclose()
        self._model_session.close()
        await self.es.aclose()

    def _start_ubi_recorder(self, config: Config) -> Callable[[dict[str, object]], None]:
        # Its own small pool: the records go out with the proxy's key, never over a client's connection.
        self._ubi_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=4, ssl=build_ssl(config.elasticsearch)),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        urls = config.ubi.elasticsearch.url or config.elasticsearch.url
        self.ubi_recorder = UbiRecorder(self._ubi_session, config.ubi, urls, self.metrics.count_ubi_records)
        return self.ubi_recorder.submit

    def _spawn(self, coroutine: Coroutine[object, object, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- the model ----------------------------------------------------------------------------------

    def _build_scorer(self, config: Config) -> tuple[ScoreClient, Scorer]:
        client = _model_client(
            self._model_session, config.reranker, config.rerank.instruction, self.shared_cache, self.metrics
        )
        scorer = Scorer(
            client,
            config.reranker,
            model_key=Settings.from_config(config).model_key,
            on_breaker_change=_log_breaker,
            shared=self.shared_cache,
        )
        return client, scorer

    def _build_shared_cache(self, config: Config) -> SharedCache | None:
        """The Redis level of the score and vector caches (backend: redis), built once: its keys need a
        restart."""
        cache = config.reranker.cache
        if cache.backend != "redis":
            return None
        shared = SharedCache(
            connect(cache),
            cache,
            config.reranker.breaker,
            on_error=self.metrics.count_shared_cache_error,
        )
        self.metrics.track_shared_cache(lambda: shared.breaker_state)
        self._spawn(shared.open_connection())
        return shared

    def shared_cache_state(self) -> dict[str, object]:
        """What `/_rerank/ready` shows of the score cache's shared level."""
        if self.shared_cache is None:
            return {"backend": "memory"}
        return dict(self.shared_cache.state())

    def _start_self_test(self) -> None:
        if not self._run_self_test:
            self.self_test_finished.set()
            return
        self.self_test_finished.clear()
        self._spawn(self._self_test())

    async def _self_test(self) -> None:
        try:
            self.self_test_results = await check_reranker(self.client, self.config.reranker)
        finally:
            self.self_test_finished.set()

    # --- observing searches ---------------------------------------------------------------------------

    def _observe(self, record: SearchRecord) -> None:
        self.metrics.observe_search(record, self.config.rerank.indices)
        log_search(self._search_log, record, include_query_text=self.config.log.query_text)

    # --- reload ---------------------------------------------------------------------------------------

    def reload(self) -> bool:
        """Re-read and validate the config file; apply it if valid, else keep the last good one."""
        if self.config_path is None:
            return False
        try:
            config = load_config(self.config_path, reloading=True)
        except ConfigError as exc:
            self.last_reload_error = str(exc)
            self.metrics.config_reloads.labels("rejected").inc()
            log.error("config reload rejected, the last good config keeps serving: %s", exc)
            return False
        self.apply(config)
        return True

    def apply(self, config: Config) -> None:
        """Make `config` the one new requests see; sections that need a restart keep their old values."""
        old = self.config
        kept = {
            name: getattr(old, name)
            for name in RESTART_SECTIONS
            if getattr(old, name) != getattr(config, name)
        }
        if kept:
            log.warning("config: changes to %s take effect after a restart", ", ".join(kept))
            config = dataclasses.replace(config, **kept)
        if config.reranker != old.reranker or config.rerank.instruction != old.rerank.instruction:
            self._swap_scorer(config)
        self.settings = Settings.from_config(config)
        self.loaded_at = self._wall_clock()
        self.last_reload_error = None
        self.metrics.config_reloads.labels("applied").inc()
        log.info("config reloaded from %s", self.config_path)

    def _swap_scorer(self, config: Config) -> None:
        old_client, old_scorer = self.client, self.scorer
        self.client, self.scorer = self._build_scorer(config)
        self.pipeline.scorer = self.scorer
        self._start_self_test()
        # Searches already under way finish with the old scorer; close it once they must have.
        grace = 2 * self.config.reranker.timeout_ms / 1000 + 1.0

        async def retire() -> None:
            try:
                await asyncio.sleep(grace)
            finally:
                await old_scorer.aclose()
                await _close_client(old_client)

        self._spawn(retire())

    async def watch(self, interval_s: float = 1.0) -> None:
        """Reload once a change to the config file has settled (polling: works on every filesystem)."""
        while True:
            await asyncio.sleep(interval_s)
            if self._file.settled_change(_signature(self.config_path)):
                self.reload()

    def start_watching(self, interval_s: float = 1.0) -> None:
        if self.config_path is not None:
            self._spawn(self.watch(interval_s))


def _model_client(
    session: ModelSession,
    cfg: RerankerConfig,
    instruction: str,
    shared: SharedCache | None,
    metrics: Metrics,
) -> ScoreClient:
    if cfg.api == "embeddings":
        from .model.embeddings import EmbeddingsClient

        # Passage vectors share the scores' Redis: a corpus embedded by one replica is warm for all.
        return EmbeddingsClient(session, cfg, shared=shared, on_lookup=metrics.count_vector_lookup)
    return RerankerClient(session, cfg, instruction)


async def _close_client(client: ScoreClient) -> None:
    close = getattr(client, "aclose", None)
    if close is not None:
        await close()


FileSignature = tuple[int, int, int] | None


class SettledFile:
    """Tells a finished edit from one in progress: a change counts once it has held for a whole poll.

    An editor that truncates and then writes leaves the file empty or half-written for a moment; a poll
    landing there would otherwise apply that (often still valid) content as the new config.
    """

    def __init__(self, signature: FileSignature) -> None:
        self._applied = signature
        self._seen = signature

    def settled_change(self, signature: FileSignature) -> bool:
        """Feed one poll's signature; True when it differs from the last applied one and has settled."""
        settled = signature == self._seen
        self._seen = signature
        if signature == self._applied or not settled:
            return False
        self._applied = signature
        return True


def _signature(path: str | None) -> FileSignature:
    """What changes when a file is rewritten, replaced or touched."""
    if path is None:
        return None
    try:
        stat = os.stat(Path(path))
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


def _log_breaker(name: str, old: str, new: str) -> None:
    level = logging.WARNING if new == "open" else logging.INFO
    log.log(level, "reranker circuit breaker for %s: %s -> %s", name, old, new)
