"""Typed, frozen configuration and the one function that builds it: `load_config`.

Every section is a frozen dataclass whose field types drive validation (see `schema`), so an error always
names the key path (`blend.weights.recency: expected a number >= 0, got 'high'`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml

from .edge.tls import check_tls_files
from .errors import ConfigError
from .schema import apply_environment, build, describe, set_path
from .schema import redact_url as redact_url  # re-exported: every part redacts URLs the same way

ENV_PREFIX = "ES_RERANK_PROXY_"

DEFAULT_INSTRUCTION = (
    "Given a library catalogue search query, retrieve the books, articles and other resources "
    "whose title and abstract best match what the searcher is looking for"
)

Mode = Literal["off", "rerank", "shadow", "interleave"]
RerankerApi = Literal["vllm", "tei", "cohere", "embeddings"]
PromptFormat = Literal["qwen3", "none"]
DocumentFormat = Literal["auto", "labelled", "plain"]
CacheBackend = Literal["memory", "redis"]


def _min(value: float) -> dict[str, float]:
    return {"min": value}


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig:
    """A listener's certificate (PEM); a client CA makes client certificates required (mutual TLS)."""

    cert_file: str = ""
    key_file: str = ""
    client_ca_file: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = field(default=9201, metadata={"min": 0, "max": 65535})
    shutdown_timeout_s: float = field(default=10.0, metadata=_min(0))
    max_search_body_bytes: int = field(default=10 * 1024 * 1024, metadata=_min(1024))
    tls: TlsConfig = TlsConfig()
    # aiohttp's request parser limits, set here on purpose rather than inherited.
    max_line_size: int = field(default=8190, metadata=_min(256))
    max_field_size: int = field(default=8190, metadata=_min(256))
    max_headers: int = field(default=128, metadata=_min(8))
    header_read_timeout_s: float = field(default=10.0, metadata={"min": 0.001})
    keepalive_timeout_s: float = field(default=75.0, metadata={"min": 0.001})
    client_write_timeout_s: float = field(default=60.0, metadata={"min": 0.001})
    # Small plain requests, searches among them, skip aiohttp's request/response objects (edge/fast_lane.py).
    fast_lane: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminConfig:
    host: str = "127.0.0.1"
    port: int = field(default=9202, metadata={"min": 0, "max": 65535})
    tls: TlsConfig = TlsConfig()


@dataclass(frozen=True, slots=True, kw_only=True)
class ElasticsearchConfig:
    url: tuple[str, ...] = ("http://127.0.0.1:9200",)
    timeout_s: float = field(default=60.0, metadata={"min": 0.001})
    connect_timeout_s: float = field(default=5.0, metadata={"min": 0.001})
    max_connections: int = field(default=256, metadata=_min(1))
    pool_timeout_s: float = field(default=10.0, metadata={"min": 0.001})
    # TLS: a CA bundle, or the SHA-256 fingerprint of the server certificate (as Elasticsearch 8 prints it).
    ca_certs: str = ""
    ssl_assert_fingerprint: str = ""
    verify_certs: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class RerankConfig:
    indices: tuple[str, ...] = ("*",)
    window: int = field(default=100, metadata=_min(1))
    top_n: int = field(default=20, metadata=_min(1))
    text_fields: tuple[str, ...] = ("title", "abstract")
    max_doc_chars: int = field(default=2000, metadata=_min(1))
    instruction: str = DEFAULT_INSTRUCTION
    query_text_paths: tuple[str, ...] = ()
    # Client-controlled sizes beyond these are forwarded untouched: Elasticsearch answers with its own limits.
    max_query_depth: int = field(default=64, metadata=_min(2))
    max_msearch_searches: int = field(default=100, metadata=_min(1))


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerConfig:
    failures: int = field(default=5, metadata=_min(1))
    window_s: float = field(default=10.0, metadata={"min": 0.001})
    open_s: float = field(default=10.0, metadata={"min": 0.001})


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheConfig:
    max_entries: int = field(default=10_000, metadata=_min(0))
    ttl_s: float = field(default=600.0, metadata=_min(0))
    # redis: a second level shared by every replica, under the in-process one (see model/shared_cache.py).
    backend: CacheBackend = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_password: str = field(default="", metadata={"secret": True})
    key_prefix: str = "errp:"
    redis_timeout_ms: int = field(default=5, metadata=_min(1))
    max_pending_writes: int = field(default=64, metadata=_min(1))
    # Passage vectors (api: embeddings) hold for as long as the text does: far longer than a score.
    vector_ttl_s: float = field(default=30 * 86400.0, metadata={"min": 1})


@dataclass(frozen=True, slots=True, kw_only=True)
class RerankerConfig:
    url: tuple[str, ...] = ("http://127.0.0.1:8000",)
    api: RerankerApi = "vllm"
    model: str = "Qwen/Qwen3-Reranker-0.6B"
    prompt_format: PromptFormat = "qwen3"
    timeout_ms: int = field(default=300, metadata=_min(1))
    retries: int = field(default=1, metadata=_min(0))
    max_concurrency: int = field(default=64, metadata=_min(1))
    api_key: str = field(default="", metadata={"secret": True})
    # Embedding servers (api: embeddings) want role prefixes; these suit the e5 family.
    query_prefix: str = "query: "
    passage_prefix: str = "passage: "
    # labelled: `Title: ...` lines, which an instruction-following reranker reads as structure; plain: the
    # values alone, as embedding models saw passages in training; auto: plain for api: embeddings.
    document_format: DocumentFormat = "auto"
    breaker: BreakerConfig = BreakerConfig()
    cache: CacheConfig = CacheConfig()

    @property
    def labels_documents(self) -> bool:
        """Whether document text is sent as labelled lines (else the field values alone)."""
        if self.document_format == "auto":
            return self.api != "embeddings"
        return self.document_format == "labelled"


@dataclass(frozen=True, slots=True, kw_only=True)
class BlendWeights:
    rerank: float = field(default=0.7, metadata=_min(0))
    bm25: float = field(default=0.1, metadata=_min(0))
    recency: float = field(default=0.1, metadata=_min(0))
    citations: float = field(default=0.1, metadata=_min(0))


@dataclass(frozen=True, slots=True, kw_only=True)
class RecencyConfig:
    field: str = "published"
    half_life_days: float = dataclasses.field(default=1825.0, metadata={"min": 0.001})
    missing: float = dataclasses.field(default=0.0, metadata={"min": 0, "max": 1})


@dataclass(frozen=True, slots=True, kw_only=True)
class CitationsConfig:
    field: str = "citations"
    saturation: float = dataclasses.field(default=1000.0, metadata={"min": 0.001})


@dataclass(frozen=True, slots=True, kw_only=True)
class BlendConfig:
    weights: BlendWeights = BlendWeights()
    recency: RecencyConfig = RecencyConfig()
    citations: CitationsConfig = CitationsConfig()
    # Min-max the model's scores over the reranked hits: for scores that are not calibrated
    # probabilities (embedding cosines); Qwen3-Reranker's probabilities need no such step.
    normalise_rerank: bool = False
    # [low, high]: model scores mapped linearly to [0, 1] and clipped; empty: used as they are. A fixed
    # scale keeps "all candidates about equally relevant" visible, which min-max over them hides.
    rerank_range: tuple[float, ...] = field(default=(), metadata={"min": 0, "max": 1})


@dataclass(frozen=True, slots=True, kw_only=True)
class CanaryRule:
    name: str
    cidr: tuple[str, ...]
    mode: Mode
    indices: tuple[str, ...] = ("*",)


@dataclass(frozen=True, slots=True, kw_only=True)
class CanaryConfig:
    # `rerank` so that a config without a canary section simply reranks; roll out with `off` plus rules.
    default: Mode = "rerank"
    percent: float = field(default=0.0, metadata={"min": 0, "max": 100})
    # What the `percent` share gets: `rerank` for an A/B test against `default`, or `interleave`.
    percent_mode: Mode = "rerank"
    salt: str = "es-rerank-proxy"
    trusted_proxies: tuple[str, ...] = ("127.0.0.1/32", "::1/128")
    override_token: str = field(default="", metadata={"secret": True})
    shadow_max_inflight: int = field(default=16, metadata=_min(0))
    # A shadow starts only while this replica has fewer requests waiting on Elasticsearch (0: no check):
    # its recall is one more search, and live searches must not queue behind it.
    shadow_max_elasticsearch_inflight: int = field(default=4, metadata=_min(0))
    rules: tuple[CanaryRule, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class LogConfig:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    query_text: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class UbiElasticsearchConfig:
    # Empty: the proxy's elasticsearch.url. Records never go out with a client's credentials.
    url: tuple[str, ...] = ()
    api_key: str = field(default="", metadata={"secret": True})
    timeout_s: float = field(default=5.0, metadata={"min": 0.001})


@dataclass(frozen=True, slots=True, kw_only=True)
class UbiConfig:
    record: bool = True  # write a ubi_queries document for each search that carries a UBI query id
    record_all: bool = False  # ... and for every other search too, under a generated id (X-Query-Id)
    queries_index: str = "ubi_queries"
    events_index: str = "ubi_events"
    create_templates: bool = True
    max_pending: int = field(default=10_000, metadata=_min(0))
    flush_s: float = field(default=1.0, metadata={"min": 0.01})
    bulk_size: int = field(default=500, metadata=_min(1))
    elasticsearch: UbiElasticsearchConfig = UbiElasticsearchConfig()


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    server: ServerConfig = ServerConfig()
    admin: AdminConfig = AdminConfig()
    elasticsearch: ElasticsearchConfig = ElasticsearchConfig()
    rerank: RerankConfig = RerankConfig()
    reranker: RerankerConfig = RerankerConfig()
    blend: BlendConfig = BlendConfig()
    canary: CanaryConfig = CanaryConfig()
    log: LogConfig = LogConfig()
    ubi: UbiConfig = UbiConfig()


def load_config(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    reloading: bool = False,
) -> Config:
    """Read YAML at `path` (None: defaults only), apply `ES_RERANK_PROXY_*` variables, validate, freeze.

    `reloading`: an empty file is refused rather than read as "all defaults". A running proxy sees an
    empty file when it is truncated to be rewritten; all defaults would point it at 127.0.0.1.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if loaded is None:
            if reloading:
                raise ConfigError(
                    f"{path}: the file is empty (being rewritten?); a reload needs the whole config"
                )
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"(top level): expected a mapping, got {describe(loaded)}")
        raw = loaded
    for dotted, value in (overrides or {}).items():
        set_path(raw, dotted.split("."), value)
    env = os.environ if environ is None else environ
    if env.get("REDIS_PASSWORD"):
        # The name every Redis client and image knows; ES_RERANK_PROXY_RERANKER_CACHE_REDIS_PASSWORD wins.
        set_path(raw, ["reranker", "cache", "redis_password"], env["REDIS_PASSWORD"])
    apply_environment(raw, env, Config, ENV_PREFIX)
    config: Config = build(Config, raw, "")
    _check_relations(config)
    return config


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Validate an in-memory mapping exactly as `load_config` validates a file (used by tests and tools)."""
    config: Config = build(Config, dict(data), "")
    _check_relations(config)
    return config


def config_to_dict(config: Config, *, mask_secrets: bool = True) -> dict[str, Any]:
    """The effective config as plain data, secrets masked, ready for YAML or JSON."""
    return typing.cast(dict[str, Any], _to_plain(config, mask_secrets))


def _to_plain(value: Any, mask: bool) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if mask and f.metadata.get("secret") and item:
                out[f.name] = "***"
            else:
                out[f.name] = _to_plain(item, mask)
        return out
    if isinstance(value, tuple):
        return [_to_plain(v, mask) for v in value]
    if mask and isinstance(value, str):
        return redact_url(value)
    return value


def _check_relations(config: Config) -> None:
    """Rules that span keys: the ones a type alone cannot express."""
    if config.rerank.window < config.rerank.top_n:
        raise ConfigError(
            f"rerank.window: must be >= rerank.top_n ({config.rerank.top_n}), got {config.rerank.window}"
        )
    weights = config.blend.weights
    if weights.rerank + weights.bm25 + weights.recency + weights.citations <= 0:
        raise ConfigError("blend.weights: at least one weight must be > 0, all are 0")
    scale = config.blend.rerank_range
    if scale and (len(scale) != 2 or scale[0] >= scale[1]):
        raise ConfigError(f"blend.rerank_range: expected [low, high] with low < high, got {list(scale)}")
    if scale and config.blend.normalise_rerank:
        raise ConfigError("blend.rerank_range: cannot be combined with blend.normalise_rerank: true; set one")
    for section, urls in (
        ("elasticsearch.url", config.elasticsearch.url),
        ("reranker.url", config.reranker.url),
        ("ubi.elasticsearch.url", config.ubi.elasticsearch.url),
    ):
        if not urls and section != "ubi.elasticsearch.url":
            raise ConfigError(f"{section}: expected at least one URL, got an empty list")
        for i, url in enumerate(urls):
            shown = redact_url(url)
            if not (url.startswith("http://") or url.startswith("https://")) or len(url) <= len("https://"):
                raise ConfigError(f"{section}[{i}]: expected an http:// or https:// URL, got {shown!r}")
            if section == "elasticsearch.url" and shown != url:
                # The proxy forwards each client's own credentials; ones in the URL would go out for every
                # client that sends none, anonymous users included.
                raise ConfigError(
                    f"{section}[{i}]: {shown!r} carries credentials: the proxy would send them for "
                    "every client that sends none, anonymous users included. Remove them: clients bring "
                    "their own, and UBI records use ubi.elasticsearch.api_key"
                )
    redis_url = config.reranker.cache.redis_url
    if config.reranker.cache.backend == "redis" and not redis_url.startswith(("redis://", "rediss://")):
        raise ConfigError(
            f"reranker.cache.redis_url: expected a redis:// or rediss:// URL, got {redact_url(redis_url)!r}"
        )
    if config.elasticsearch.ca_certs and not Path(config.elasticsearch.ca_certs).is_file():
        raise ConfigError(f"elasticsearch.ca_certs: no such file: {config.elasticsearch.ca_certs!r}")
    fingerprint = config.elasticsearch.ssl_assert_fingerprint.replace(":", "")
    if fingerprint and (
        len(fingerprint) != 64 or any(c not in "0123456789abcdefABCDEF" for c in fingerprint)
    ):
        raise ConfigError(
            "elasticsearch.ssl_assert_fingerprint: expected a SHA-256 fingerprint (64 hex digits), "
            f"got {config.elasticsearch.ssl_assert_fingerprint!r}"
        )
    for section, tls in (("server.tls", config.server.tls), ("admin.tls", config.admin.tls)):
        check_tls_files(section, tls, datetime.now(UTC))
    for name, ranges in (("canary.trusted_proxies", config.canary.trusted_proxies),):
        _check_networks(name, ranges)
    for i, rule in enumerate(config.canary.rules):
        _check_networks(f"canary.rules[{i}].cidr", rule.cidr)
        if not rule.cidr:
            raise ConfigError(f"canary.rules[{i}].cidr: expected at least one address range")
    names = [rule.name for rule in config.canary.rules]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"canary.rules[{i}].name: duplicate rule name {name!r}")


def _check_networks(path: str, ranges: tuple[str, ...]) -> None:
    for i, text in enumerate(ranges):
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ConfigError(
                f"{path}[{i}]: expected an IP address range like 10.0.0.0/8, got {text!r}"
            ) from None
