"""Config: defaults, YAML, environment overrides, and errors that name the key path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from es_rerank_proxy.config import ConfigError, config_from_dict, config_to_dict, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_example_config_is_valid_and_documents_every_key() -> None:
    example = yaml.safe_load((ROOT / "config.yaml").read_text())
    effective = config_to_dict(load_config(ROOT / "config.yaml", environ={}), mask_secrets=False)

    def keys(data: dict[str, Any], prefix: str = "") -> set[str]:
        out = set()
        for key, value in data.items():
            path = f"{prefix}{key}"
            out.add(path)
            if isinstance(value, dict):
                out |= keys(value, path + ".")
        return out

    assert keys(effective) - {"canary.rules"} <= keys(example) | {"canary.rules"}


def test_defaults_without_a_file() -> None:
    config = load_config(None, environ={})
    assert config.server.port == 9201
    assert config.admin.host == "127.0.0.1"
    assert config.elasticsearch.url == ("http://127.0.0.1:9200",)
    assert (config.rerank.window, config.rerank.top_n) == (100, 20)
    assert config.reranker.timeout_ms == 300


@pytest.mark.parametrize(
    ("api", "document_format", "labelled"),
    [
        ("vllm", "auto", True),
        ("tei", "auto", True),
        ("cohere", "auto", True),
        ("embeddings", "auto", False),
        ("embeddings", "labelled", True),
        ("vllm", "plain", False),
    ],
)
def test_document_format_auto_is_plain_only_for_embeddings(
    api: str, document_format: str, labelled: bool
) -> None:
    config = config_from_dict({"reranker": {"api": api, "document_format": document_format}})
    assert config.reranker.labels_documents is labelled


def test_environment_overrides_urls_and_ports(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("elasticsearch: {url: http://file:9200}\n")
    environ = {
        "ES_RERANK_PROXY_ELASTICSEARCH_URL": "https://es1:9200, https://es2:9200",
        "ES_RERANK_PROXY_SERVER_PORT": "9300",
        "ES_RERANK_PROXY_RERANKER_URL": "http://vllm:8000",
        "ES_RERANK_PROXY_LOG_QUERY_TEXT": "true",
    }
    config = load_config(path, environ=environ)
    assert config.elasticsearch.url == ("https://es1:9200", "https://es2:9200")
    assert config.server.port == 9300
    assert config.reranker.url == ("http://vllm:8000",)
    assert config.log.query_text is True


def test_url_may_be_a_single_string_or_a_list() -> None:
    assert config_from_dict({"elasticsearch": {"url": "http://a:1"}}).elasticsearch.url == ("http://a:1",)
    assert config_from_dict({"elasticsearch": {"url": ["http://a:1", "http://b:2"]}}).elasticsearch.url == (
        "http://a:1",
        "http://b:2",
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"blend": {"weights": {"recency": "high"}}},
            "blend.weights.recency: expected a number >= 0, got 'high'",
        ),
        ({"blend": {"weights": {"bm25": -1}}}, "blend.weights.bm25: expected a number >= 0, got -1"),
        (
            {"blend": {"weights": {"rerank": 0, "bm25": 0, "recency": 0, "citations": 0}}},
            "blend.weights: at least one weight must be > 0",
        ),
        (
            {"blend": {"rerank_range": [0.9]}},
            "blend.rerank_range: expected [low, high] with low < high, got [0.9]",
        ),
        ({"blend": {"rerank_range": [0.9, 0.8]}}, "blend.rerank_range: expected [low, high] with low < high"),
        (
            {"blend": {"rerank_range": [0.8, 1.5]}},
            "blend.rerank_range[1]: expected a number from 0 to 1, got 1.5",
        ),
        (
            {"blend": {"rerank_range": [0.8, 0.9], "normalise_rerank": True}},
            "blend.rerank_range: cannot be combined with blend.normalise_rerank",
        ),
        ({"rerank": {"window": 10, "top_n": 20}}, "rerank.window: must be >= rerank.top_n (20), got 10"),
        ({"rerank": {"windw": 10}}, "rerank.windw: unknown key"),
        ({"surprise": {}}, "surprise: unknown key"),
        ({"server": {"port": "http"}}, "server.port: expected a whole number from 0 to 65535, got 'http'"),
        ({"server": {"port": 70000}}, "server.port: expected a whole number from 0 to 65535, got 70000"),
        ({"server": []}, "server: expected a mapping, got a list"),
        ({"reranker": {"api": "openai"}}, "reranker.api: expected one of vllm | tei | cohere | embeddings"),
        ({"reranker": {"prompt_format": "chatml"}}, "reranker.prompt_format: expected one of qwen3 | none"),
        (
            {"elasticsearch": {"url": ["es:9200"]}},
            "elasticsearch.url[0]: expected an http:// or https:// URL",
        ),
        ({"elasticsearch": {"url": []}}, "elasticsearch.url: expected at least one URL"),
        ({"elasticsearch": {"ca_certs": "/nonexistent.pem"}}, "elasticsearch.ca_certs: no such file"),
        (
            {"elasticsearch": {"ssl_assert_fingerprint": "abc"}},
            "elasticsearch.ssl_assert_fingerprint: expected",
        ),
        ({"log": {"query_text": "yes"}}, "log.query_text: expected true or false, got 'yes'"),
        (
            {"canary": {"default": "on"}},
            "canary.default: expected one of off | rerank | shadow | interleave, got 'on'",
        ),
        ({"canary": {"percent": 120}}, "canary.percent: expected a number from 0 to 100, got 120"),
        (
            {"canary": {"trusted_proxies": ["10.0.0.0/33"]}},
            "canary.trusted_proxies[0]: expected an IP address range",
        ),
        (
            {"canary": {"rules": [{"name": "cs", "mode": "rerank"}]}},
            "canary.rules[0].cidr: required key is missing",
        ),
        (
            {"canary": {"rules": [{"name": "cs", "cidr": ["10.0.0.0/8"], "mode": "rerank", "color": 1}]}},
            "canary.rules[0].color: unknown key",
        ),
        (
            {"reranker": {"cache": {"backend": "valkey"}}},
            "reranker.cache.backend: expected one of memory | redis, got 'valkey'",
        ),
        (
            {"reranker": {"cache": {"backend": "redis", "redis_url": "http://u:pw@cache:6379"}}},
            "reranker.cache.redis_url: expected a redis:// or rediss:// URL, got 'http://***@cache:6379'",
        ),
        ({"reranker": {"cache": {"redis_timeout_ms": 0}}}, "reranker.cache.redis_timeout_ms: expected"),
        ({"rerank": {"text_fields": "title"}}, None),
    ],
)
def test_invalid_config_names_the_key_and_the_problem(data: dict[str, Any], message: str | None) -> None:
    if message is None:
        assert config_from_dict(data).rerank.text_fields == ("title",)
        return
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    assert str(info.value).startswith(message)


def test_environment_value_with_wrong_type_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^server.port: expected a whole number"):
        load_config(None, environ={"ES_RERANK_PROXY_SERVER_PORT": "nine"})


def test_secrets_are_masked_in_effective_config() -> None:
    config = config_from_dict({"reranker": {"api_key": "s3cret"}, "canary": {"override_token": "t0ken"}})
    shown = config_to_dict(config)
    assert shown["reranker"]["api_key"] == "***"
    assert shown["canary"]["override_token"] == "***"
    assert config_to_dict(config, mask_secrets=False)["reranker"]["api_key"] == "s3cret"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "es_rerank_proxy", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_config_prints_effective_config() -> None:
    result = _cli("check-config", str(ROOT / "config.yaml"))
    assert result.returncode == 0, result.stderr
    effective = yaml.safe_load(result.stdout)
    assert effective["rerank"]["window"] == 100
    assert effective["reranker"]["model"] == "Qwen/Qwen3-Reranker-0.6B"


def test_check_config_rejects_bad_file_with_key_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("blend:\n  weights:\n    recency: high\n")
    result = _cli("check-config", str(bad))
    assert result.returncode == 1
    assert "blend.weights.recency: expected a number >= 0, got 'high'" in result.stderr


def test_check_config_reports_yaml_syntax_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: {port: [\n")
    result = _cli("check-config", str(bad))
    assert result.returncode == 1
    assert "not valid YAML" in result.stderr


def test_help_lists_the_commands() -> None:
    result = _cli("--help")
    assert result.returncode == 0
    for command in ("serve", "check-config"):
        assert command in result.stdout


@pytest.mark.parametrize(
    ("data", "leak"),
    [
        ({"canary": {"override_token": 31337421}}, "31337421"),
        ({"reranker": {"api_key": ["sk-abc123"]}}, "sk-abc123"),
        ({"elasticsearch": {"url": ["http://elastic:hunter22@es:9200"], "timeout_s": "slow"}}, "hunter22"),
        ({"elasticsearch": {"url": [42, "http://elastic:hunter22@es:9200"]}}, "hunter22"),
        ({"elasticsearch": {"url": ["ftp://elastic:hunter22@es:9200"]}}, "hunter22"),
        ({"ubi": {"elasticsearch": {"url": ["es://writer:hunter22@es:9200"]}}}, "hunter22"),
    ],
)
def test_a_rejected_config_never_echoes_a_secret(data: dict[str, Any], leak: str) -> None:
    with pytest.raises(ConfigError) as error:
        config_from_dict(data)
    assert leak not in str(error.value)


@pytest.mark.parametrize("url", ["https://elastic:hunter22@es:9200", "http://token@es:9200/prefix"])
def test_credentials_in_an_elasticsearch_url_are_refused(url: str) -> None:
    """They would go out for every client that sends none: anonymous users would search as that user."""
    with pytest.raises(ConfigError) as error:
        config_from_dict({"elasticsearch": {"url": ["http://es-1:9200", url]}})
    message = str(error.value)
    assert message.startswith("elasticsearch.url[1]: ")
    assert "carries credentials" in message and "anonymous" in message
    assert "hunter22" not in message and "token" not in message


def test_credentials_in_model_server_and_ubi_urls_are_the_proxys_own_and_kept() -> None:
    config = config_from_dict(
        {
            "reranker": {"url": ["http://user:pw@vllm:8000"]},
            "ubi": {"elasticsearch": {"url": ["https://writer:pw@es:9200"]}},
        }
    )
    assert config.reranker.url == ("http://user:pw@vllm:8000",)
    assert config.ubi.elasticsearch.url == ("https://writer:pw@es:9200",)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://es:9200", "http://es:9200"),
        ("https://elastic:pw@es:9200/prefix", "https://***@es:9200/prefix"),
        ("http://token@es", "http://***@es"),
        ("http://es:9200/path@odd", "http://es:9200/path@odd"),
        ("not a url", "not a url"),
    ],
)
def test_redact_url_hides_user_info_only(url: str, shown: str) -> None:
    from es_rerank_proxy.config import redact_url

    assert redact_url(url) == shown


def test_ubi_api_key_comes_from_the_environment_and_is_masked() -> None:
    config = load_config(
        environ={"ES_RERANK_PROXY_UBI_ELASTICSEARCH_API_KEY": "k3y", "ES_RERANK_PROXY_UBI_RECORD_ALL": "true"}
    )
    assert config.ubi.elasticsearch.api_key == "k3y"
    assert config.ubi.record_all is True
    assert config_to_dict(config)["ubi"]["elasticsearch"]["api_key"] == "***"


def test_a_rediss_url_is_accepted_for_the_redis_backend() -> None:
    cache = {"backend": "redis", "redis_url": "rediss://cache:6380/1"}
    assert config_from_dict({"reranker": {"cache": cache}}).reranker.cache.redis_url == cache["redis_url"]


def test_redis_password_comes_from_redis_password_and_is_masked() -> None:
    config = load_config(environ={"REDIS_PASSWORD": "s3cret"})
    assert config.reranker.cache.redis_password == "s3cret"
    assert config_to_dict(config)["reranker"]["cache"]["redis_password"] == "***"
    assert load_config(environ={}).reranker.cache.redis_password == ""


@pytest.mark.parametrize("text", ["", "\n", "# everything commented out\n"])
def test_an_empty_file_is_all_defaults_at_start_but_refused_on_reload(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    assert load_config(path, environ={}) == load_config(None, environ={})
    with pytest.raises(ConfigError, match="the file is empty"):
        load_config(path, environ={}, reloading=True)


async def test_a_running_proxy_keeps_its_config_when_the_file_is_truncated(tmp_path: Path) -> None:
    from es_rerank_proxy.app import RUNTIME

    from .fakes.proxy_server import make_config, running_proxy

    config = make_config("http://127.0.0.1:9", canary={"default": "off"})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(config, mask_secrets=False)))
    async with running_proxy(config, config_path=str(path)) as proxy:
        assert proxy.app is not None
        runtime = proxy.app[RUNTIME]
        path.write_text("")  # what a watcher may see between an editor's truncate and its write
        assert runtime.reload() is False
        assert runtime.config == config
        assert runtime.last_reload_error is not None and "empty" in runtime.last_reload_error
