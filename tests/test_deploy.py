"""Deployment files (Dockerfile, docker-compose.yml, its overlay) checked against each other and the config.

No Docker engine is needed: the files are parsed and compared. `docker compose config` runs only where the
compose plugin exists, and is skipped otherwise.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.requirements import Requirement

from es_rerank_proxy.config import ENV_PREFIX, Config, load_config

from .fakes.certificates import TestCA

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
SECURITY_OVERLAY = ROOT / "deploy" / "compose.security.yml"
DOCKERFILE = ROOT / "Dockerfile"
REFERENCE = ROOT.parent / "shared" / "reference" / "vllm-rerank.md"

# From the vLLM reference: without exactly these, vLLM refuses the rerank API or scores wrongly.
EXPECTED_HF_OVERRIDES = {
    "architectures": ["Qwen3ForSequenceClassification"],
    "classifier_from_token": ["no", "yes"],
    "is_original_qwen3_reranker": True,
}
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


# --- helpers ------------------------------------------------------------------------------------------


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), path
    return data


def _services(path: Path = COMPOSE) -> dict[str, dict[str, Any]]:
    services = _load(path)["services"]
    assert isinstance(services, dict)
    return services


def _interpolate(text: str) -> str:
    """Compose interpolation with an empty environment: `${VAR:-default}` gives the default, `$$` a `$`."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return match.group("default") or ""

    return re.sub(r"\$\$|\$\{(?P<name>\w+)(?::?-(?P<default>[^}]*))?\}", replace, text)


def _environment(service: dict[str, Any]) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) if "=" in item else (item, None) for item in env)
        return {key: value for key, value in pairs}
    return {key: None if value is None else str(value) for key, value in env.items()}


def _ports(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host_ip, published, target) of each short-syntax port, defaults interpolated."""
    out = []
    for spec in service.get("ports", []):
        text = _interpolate(str(spec)).split("/")[0]
        parts = text.rsplit(":", 2)
        assert len(parts) == 3, f"publish ports with an explicit host address: {spec!r}"
        host_ip, published, target = parts
        out.append((host_ip, int(published), int(target)))
    return out


def _volume_mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Container path -> (source, read-only) for short-syntax volumes."""
    out = {}
    for spec in service.get("volumes", []):
        source, target, *mode = str(spec).split(":")
        out[target] = (source, "ro" in mode)
    return out


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    out = []
    for line in lines:
        instruction, _, args = line.partition(" ")
        out.append((instruction.upper(), args.strip()))
    return out


def _instructions(name: str) -> list[str]:
    return [args for instruction, args in _dockerfile() if instruction == name]


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def _image_config() -> Config:
    """The config the image runs with by default: the repo's config.yaml, copied into the image."""
    return load_config(ROOT / "config.yaml", environ={})


def _mounted_config_source() -> Path:
    config_path = _dockerfile_config_path()
    source, _ = _volume_mounts(_services()["proxy"])[config_path]
    return (ROOT / source).resolve()


def _compose_config(*files: Path) -> Config:
    """What the proxy container loads: the mounted file with the compose environment applied on top."""
    env: dict[str, str] = {}
    for file in files:
        env.update({k: v for k, v in _environment(_services(file)["proxy"]).items() if v is not None})
    return load_config(_mounted_config_source(), environ=env)


def _dockerfile_config_path() -> str:
    copies = [args.split() for args in _instructions("COPY")]
    targets = [parts[-1] for parts in copies if parts[0] == "config.yaml"]
    assert len(targets) == 1, "the Dockerfile copies config.yaml to one place"
    return targets[0]


def _vllm_args() -> list[str]:
    vllm = _services()["vllm"]
    assert vllm["entrypoint"] == ["vllm", "serve"]
    args = vllm["command"]
    assert isinstance(args, list) and all(isinstance(a, str) for a in args), "command in list form"
    return args


def _flag(args: list[str], name: str) -> str:
    spellings = {name, name.replace("_", "-")}
    for i, arg in enumerate(args):
        if arg in spellings:
            return args[i + 1]
        key, eq, value = arg.partition("=")
        if eq and key in spellings:
            return value
    raise AssertionError(f"{name} not in {args}")


def _version(tag: str) -> tuple[int, ...]:
    match = re.fullmatch(r"v?(\d+(?:\.\d+){2,3})", tag)
    assert match, f"tag {tag!r} is not a pinned version"
    return tuple(int(part) for part in match.group(1).split("."))


def _image_tag(image: str) -> tuple[str, str]:
    name, _, tag = image.rpartition(":")
    assert name and "/" not in tag, f"image {image!r} has no tag"
    return name, tag


# --- compose: services, profiles, URLs ------------------------------------------------------------------


def test_compose_has_elasticsearch_vllm_redis_proxy_front_and_monitoring() -> None:
    assert set(_services()) == {"elasticsearch", "vllm", "redis", "proxy", "front", "prometheus", "grafana"}


def test_replicas_share_the_compose_redis_which_keeps_nothing_on_disk() -> None:
    redis = _services()["redis"]
    name, tag = _image_tag(redis["image"])
    assert (name, tag.split(".")[0]) == ("redis", "7")
    command = redis["command"]
    assert command[command.index("--save") + 1] == "" and command[command.index("--appendonly") + 1] == "no"
    assert "ports" not in redis and "profiles" not in redis
    cache = load_config(_mounted_config_source(), environ={}).reranker.cache
    assert cache.backend == "redis"
    url = urlsplit(cache.redis_url)
    assert (url.scheme, url.hostname, url.port) == ("redis", "redis", 6379)
    assert "redis" in _services()["proxy"]["depends_on"]


def test_front_serves_the_shipped_conf_and_the_proxy_trusts_its_address() -> None:
    front = _services()["front"]
    source, read_only = _volume_mounts(front)["/etc/nginx/conf.d/default.conf"]
    assert (ROOT / source).resolve() == ROOT / "deploy" / "nginx" / "es-rerank-proxy.conf"
    assert read_only
    address = ipaddress.ip_address(front["networks"]["default"]["ipv4_address"])
    subnets = [
        ipaddress.ip_network(c["subnet"]) for c in _load(COMPOSE)["networks"]["default"]["ipam"]["config"]
    ]
    assert any(address in subnet for subnet in subnets)
    trusted = load_config(ROOT / "deploy" / "config.compose.yaml").canary.trusted_proxies
    assert any(address in ipaddress.ip_network(cidr) for cidr in trusted)
    assert set(front["depends_on"]) == {"elasticsearch", "proxy"}


def test_plain_up_runs_elasticsearch_and_proxy_and_gpu_profile_adds_vllm() -> None:
    services = _services()
    assert "profiles" not in services["elasticsearch"]
    assert "profiles" not in services["proxy"]
    assert services["vllm"]["profiles"] == ["gpu"]
    assert services["prometheus"]["profiles"] == services["grafana"]["profiles"] == ["monitoring"]


# --- compose: the monitoring profile ------------------------------------------------------------------


def test_prometheus_scrapes_the_proxys_admin_metrics_and_loads_the_alerts() -> None:
    prometheus = _services()["prometheus"]
    source, read_only = _volume_mounts(prometheus)["/etc/prometheus"]
    assert read_only and (ROOT / source).resolve() == ROOT / "deploy" / "prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    scrape = _load(ROOT / "deploy" / "prometheus" / "prometheus.yml")
    assert [(ROOT / "deploy" / "prometheus" / name).is_file() for name in scrape["rule_files"]] == [True]
    (job,) = scrape["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    admin_port = _compose_config(COMPOSE).admin.port
    assert job["static_configs"][0]["targets"] == [f"proxy:{admin_port}"]


def test_grafana_is_provisioned_with_the_prometheus_datasource_and_the_dashboard() -> None:
    grafana = _services()["grafana"]
    mounts = _volume_mounts(grafana)
    provisioning, _ = mounts["/etc/grafana/provisioning"]
    provisioning_dir = (ROOT / provisioning).resolve()
    (datasource,) = _load(provisioning_dir / "datasources" / "prometheus.yml")["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == f"http://prometheus:{_ports(_services()['prometheus'])[0][2]}"
    (provider,) = _load(provisioning_dir / "dashboards" / "es-rerank-proxy.yml")["providers"]
    dashboards = {target: source for target, (source, _) in mounts.items()}
    mounted = [target for target in dashboards if target.startswith(provider["options"]["path"] + "/")]
    assert [(ROOT / dashboards[target]).resolve() for target in mounted] == [
        ROOT / "deploy" / "grafana" / "es-rerank-proxy.json"
    ]
    assert grafana["depends_on"] == {"prometheus": {"condition": "service_healthy"}}


def test_monitoring_is_published_on_host_loopback_only() -> None:
    assert _ports(_services()["prometheus"]) == [("127.0.0.1", 9090, 9090)]
    assert _ports(_services()["grafana"]) == [("127.0.0.1", 3000, 3000)]


@pytest.mark.parametrize(
    ("section", "service", "env_name"),
    [
        ("elasticsearch", "elasticsearch", "ES_RERANK_PROXY_ELASTICSEARCH_URL"),
        ("reranker", "vllm", "ES_RERANK_PROXY_RERANKER_URL"),
    ],
)
def test_proxy_urls_name_the_service_and_its_container_port(
    section: str, service: str, env_name: str
) -> None:
    env_url = _environment(_services()["proxy"])[env_name]
    file_urls = getattr(load_config(_mounted_config_source(), environ={}), section).url
    assert env_url is not None
    assert file_urls == (env_url,), "the mounted file and the compose environment agree"
    url = urlsplit(env_url)
    assert url.hostname == service
    assert url.port == _container_port(service)


def _container_port(service: str) -> int:
    if service == "vllm":
        return int(_flag(_vllm_args(), "--port"))
    targets = {target for _, _, target in _ports(_services()[service])}
    assert len(targets) == 1
    return targets.pop()


def test_compose_config_keeps_the_reranker_model_of_the_vllm_service() -> None:
    assert _vllm_args()[0] == _compose_config(COMPOSE).reranker.model == "Qwen/Qwen3-Reranker-0.6B"


@pytest.mark.parametrize("overlay", [(), (SECURITY_OVERLAY,)], ids=["base", "security"])
def test_every_proxy_variable_names_a_config_key(overlay: tuple[Path, ...]) -> None:
    """`load_config` ignores unknown variables, so a misspelt one would silently change nothing."""
    known = set()

    def add(node: Any, path: tuple[str, ...]) -> None:
        for key in dataclasses.fields(node):
            value = getattr(node, key.name)
            if dataclasses.is_dataclass(value):
                add(value, (*path, key.name))  # nested sections: SERVER_TLS_CERT_FILE
            elif path:
                known.add(f"{ENV_PREFIX}{'_'.join((*path, key.name))}".upper())

    add(Config(), ())
    for file in (COMPOSE, *overlay):
        names = {name for name in _environment(_services(file)["proxy"]) if name.startswith(ENV_PREFIX)}
        assert names, file
        assert names <= known, names - known


# --- compose: ports -----------------------------------------------------------------------------------


def test_published_proxy_ports_agree_with_the_config() -> None:
    config = _compose_config(COMPOSE)
    ports = {target: (host_ip, published) for host_ip, published, target in _ports(_services()["proxy"])}
    assert ports[config.server.port][1] == config.server.port == 9201
    assert ports[config.admin.port] == ("127.0.0.1", config.admin.port)
    assert set(ports) == {config.server.port, config.admin.port}


def test_search_port_defaults_to_host_loopback_while_security_is_off() -> None:
    (spec,) = [p for p in _services()["proxy"]["ports"] if str(p).endswith(":9201")]
    assert _interpolate(spec).startswith("127.0.0.1:")
    assert "${PROXY_PUBLISH_IP" in spec, "an operator can publish it wider on purpose"


def test_admin_listener_is_reachable_only_through_a_loopback_publication() -> None:
    """admin.host is 0.0.0.0 inside the container (a container-loopback port cannot be published)."""
    config = _compose_config(COMPOSE)
    assert config.admin.host in {"0.0.0.0", "127.0.0.1"}
    admin = [host_ip for host_ip, _, target in _ports(_services()["proxy"]) if target == config.admin.port]
    assert admin and set(admin) <= LOOPBACK
    assert _image_config().admin.host == "127.0.0.1", "the image itself keeps admin on loopback"


def test_elasticsearch_is_published_on_host_loopback_only() -> None:
    assert _ports(_services()["elasticsearch"]) == [("127.0.0.1", 9200, 9200)]


def test_vllm_and_overlay_services_publish_nothing() -> None:
    assert "ports" not in _services()["vllm"]
    for name, service in _services(SECURITY_OVERLAY).items():
        assert "ports" not in service, name


# --- compose: config mount ----------------------------------------------------------------------------


def test_mounted_config_path_is_the_dockerfile_config_path_and_cmd() -> None:
    path = _dockerfile_config_path()
    (cmd,) = _instructions("CMD")
    assert _exec_form(cmd) == ["serve", "--config", path]
    source, read_only = _volume_mounts(_services()["proxy"])[path]
    assert source == "./deploy/config.compose.yaml"
    assert read_only


def test_mounted_config_exists_and_is_valid() -> None:
    source = _mounted_config_source()
    assert source.is_file()
    config = load_config(source, environ={})
    assert (config.server.host, config.server.port) == ("0.0.0.0", 9201)
    assert config.admin.port == 9202
    assert config.reranker.api == "vllm"
    assert config.reranker.prompt_format == "qwen3", "plain vllm serve does not apply the template"


def test_proxy_stop_grace_period_exceeds_the_drain_timeout() -> None:
    grace = _services()["proxy"]["stop_grace_period"]
    match = re.fullmatch(r"(\d+)s", str(grace))
    assert match, grace
    assert int(match.group(1)) > _compose_config(COMPOSE).server.shutdown_timeout_s


def test_proxy_builds_from_this_repo_and_runs_under_an_init() -> None:
    proxy = _services()["proxy"]
    assert proxy["build"] == "."
    assert proxy["init"] is True


# --- compose: health and dependencies -----------------------------------------------------------------


@pytest.mark.parametrize("file", [COMPOSE, SECURITY_OVERLAY], ids=["base", "security"])
def test_every_long_running_service_has_a_healthcheck(file: Path) -> None:
    dockerfile_healthcheck = bool(_instructions("HEALTHCHECK"))
    base = _services()
    for name, service in _services(file).items():
        if service.get("restart") == "no":
            continue  # one-shot setup job
        merged = {**base.get(name, {}), **service}
        has_own = "test" in (merged.get("healthcheck") or {})
        assert has_own or ("build" in merged and dockerfile_healthcheck), name


def test_vllm_healthcheck_probes_health_after_a_long_start_period() -> None:
    check = _services()["vllm"]["healthcheck"]
    assert any("/health" in part for part in check["test"])
    assert ":8000/" in " ".join(check["test"])
    seconds = int(str(check["start_period"]).removesuffix("s"))
    assert seconds >= 300


def test_elasticsearch_healthcheck_asks_for_cluster_health() -> None:
    test = " ".join(_services()["elasticsearch"]["healthcheck"]["test"])
    assert "curl" in test and "/_cluster/health" in test and "localhost:9200" in test


@pytest.mark.parametrize("files", [(COMPOSE,), (COMPOSE, SECURITY_OVERLAY)], ids=["base", "security"])
def test_depends_on_waits_for_health_and_never_requires_an_inactive_profile(files: tuple[Path, ...]) -> None:
    services: dict[str, dict[str, Any]] = {}
    for file in files:
        for name, service in _services(file).items():
            services[name] = {**services.get(name, {}), **service}
    for name, service in services.items():
        for dependency, rule in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} -> {dependency}"
            target = services[dependency]
            one_shot = target.get("restart") == "no"
            expected = "service_completed_successfully" if one_shot else "service_healthy"
            assert rule["condition"] == expected, f"{name} -> {dependency}"
            own, theirs = set(service.get("profiles", [])), set(target.get("profiles", []))
            always_active_with_it = not theirs or (own and own <= theirs)
            if not always_active_with_it:
                assert rule.get("required") is False, f"{name} -> {dependency} breaks `up` without {theirs}"


def test_proxy_waits_for_elasticsearch_and_for_vllm_when_present() -> None:
    depends = _services()["proxy"]["depends_on"]
    assert depends["elasticsearch"] == {"condition": "service_healthy"}
    assert depends["vllm"] == {"condition": "service_healthy", "required": False}


# --- compose: vLLM ------------------------------------------------------------------------------------


def test_vllm_serves_qwen3_reranker_with_the_reference_hf_overrides() -> None:
    args = _vllm_args()
    assert json.loads(_flag(args, "--hf_overrides")) == EXPECTED_HF_OVERRIDES
    assert int(_flag(args, "--max-model-len")) > 0
    assert _flag(args, "--host") == "0.0.0.0"


def test_expected_hf_overrides_are_the_references() -> None:
    if not REFERENCE.is_file():
        pytest.skip(f"{REFERENCE} is not beside this checkout")
    match = re.search(r"--hf_overrides '(\{.*?\})'", REFERENCE.read_text(encoding="utf-8"))
    assert match
    assert json.loads(match.group(1)) == EXPECTED_HF_OVERRIDES


def test_vllm_gets_host_ipc_and_the_hugging_face_cache() -> None:
    vllm = _services()["vllm"]
    assert vllm["ipc"] == "host"
    assert "/root/.cache/huggingface" in _volume_mounts(vllm)
    assert "HF_TOKEN" in _environment(vllm)
    assert _environment(vllm)["HF_TOKEN"] is None, "passed through from the shell, never written here"


def test_gpu_is_reserved_for_vllm_only() -> None:
    expected = [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    for name, service in _services().items():
        devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
        assert devices == (expected if name == "vllm" else None), name


# --- images pinned --------------------------------------------------------------------------------------


def test_vllm_image_is_pinned_to_a_release_that_needs_no_task_flag() -> None:
    name, tag = _image_tag(_services()["vllm"]["image"])
    assert name == "vllm/vllm-openai"
    assert tag != "latest"
    assert _version(tag) >= (0, 10, 1)


def test_elasticsearch_image_is_a_pinned_8x_release_shared_by_the_overlay() -> None:
    image = _services()["elasticsearch"]["image"]
    name, tag = _image_tag(image)
    assert name == "docker.elastic.co/elasticsearch/elasticsearch"
    assert (8, 15) <= _version(tag)[:2] < (9, 0)
    assert _services(SECURITY_OVERLAY)["certs"]["image"] == image


def test_dockerfile_base_image_is_a_pinned_python_311_slim() -> None:
    args = {k: v for k, _, v in (a.partition("=") for a in _instructions("ARG"))}
    for spec in _instructions("FROM"):
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], spec.split()[0])
        name, tag = _image_tag(image)
        assert name == "python"
        assert re.fullmatch(r"3\.11\.\d+-slim(-\w+)?", tag), tag


# --- Dockerfile -----------------------------------------------------------------------------------------


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = _instructions("USER")
    assert users, "no USER instruction"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}


def test_dockerfile_healthcheck_targets_the_admin_health_endpoint() -> None:
    (check,) = _instructions("HEALTHCHECK")
    config = _image_config()
    command = " ".join(_exec_form(check.split(" CMD ", 1)[1]))
    assert "http://127.0.0.1:" in command and "/_rerank/health" in command
    assert f"'ES_RERANK_PROXY_ADMIN_PORT', '{config.admin.port}'" in command
    assert "curl" not in command, "slim images have no curl"
    sources = (path.read_text(encoding="utf-8") for path in (ROOT / "src" / "es_rerank_proxy").rglob("*.py"))
    assert any('"/_rerank/health"' in source for source in sources), "the route the healthcheck calls exists"


def test_dockerfile_exposes_the_public_and_admin_ports() -> None:
    config = _image_config()
    exposed = {int(port) for args in _instructions("EXPOSE") for port in args.split()}
    assert exposed == {config.server.port, config.admin.port}


def test_dockerfile_entrypoint_signals_and_environment() -> None:
    (entrypoint,) = _instructions("ENTRYPOINT")
    assert _exec_form(entrypoint) == ["es-rerank-proxy"]
    assert _instructions("STOPSIGNAL") == ["SIGTERM"]
    env = " ".join(_instructions("ENV"))
    assert "PYTHONUNBUFFERED=1" in env and "PYTHONDONTWRITEBYTECODE=1" in env


def test_dockerfile_installs_the_bare_package_and_no_dev_extras() -> None:
    runs = " ".join(_instructions("RUN"))
    assert re.search(r"pip wheel --wheel-dir /wheels \.(\s|$)", runs), "the package, no extras"
    assert re.search(r"--find-links /wheels es-rerank-proxy(\s|$)", runs), (
        "installed bare: uvloop comes along"
    )
    for extra in ("test", "demo"):
        assert not re.search(rf"\[[^\]]*\b{extra}\b", runs), extra


def _dependencies() -> list[Requirement]:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.M | re.S)
    assert block is not None
    return [Requirement(item) for item in re.findall(r'^\s*"([^"]+)",', block.group(1), re.M)]


@pytest.mark.parametrize(
    ("platform", "implementation", "gets_uvloop"),
    [
        ("linux", "CPython", True),
        ("darwin", "CPython", True),
        ("win32", "CPython", False),  # uvloop has no Windows build
        ("linux", "PyPy", False),  # nor a PyPy one
    ],
)
def test_a_bare_install_brings_uvloop_where_it_exists(
    platform: str, implementation: str, gets_uvloop: bool
) -> None:
    (uvloop,) = [req for req in _dependencies() if req.name == "uvloop"]
    assert uvloop.marker is not None
    env = {"sys_platform": platform, "platform_python_implementation": implementation}
    assert uvloop.marker.evaluate(env) is gets_uvloop


def test_dockerignore_admits_only_what_the_build_copies() -> None:
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*"
    admitted = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    sources = {
        source.rstrip("/")
        for parts in (args.split() for args in _instructions("COPY"))
        for source in parts[:-1]
        if not source.startswith("--")
    }
    assert sources == {"pyproject.toml", "setup.py", "README.md", "src", "config.yaml"}
    assert sources <= admitted
    assert not admitted & {".venv", ".git", "tests", ".noida-db"}


# --- security overlay -----------------------------------------------------------------------------------


def test_security_overlay_serves_https_with_a_certificate_for_the_service_name() -> None:
    overlay = _services(SECURITY_OVERLAY)
    env = _environment(overlay["elasticsearch"])
    assert env["xpack.security.enabled"] == "true"
    assert env["xpack.security.http.ssl.enabled"] == "true"
    assert env["ELASTIC_PASSWORD"] is not None and ":?" in env["ELASTIC_PASSWORD"], (
        "refuse to start without one"
    )
    script = overlay["certs"]["command"][-1]
    assert re.search(r"dns:'.*'      - elasticsearch'", script, re.S)
    assert "https://localhost:9200" in " ".join(overlay["elasticsearch"]["healthcheck"]["test"])


def test_security_overlay_gives_the_proxy_the_ca_and_not_the_keys(tmp_path: Path) -> None:
    env = {k: v for k, v in _environment(_services(SECURITY_OVERLAY)["proxy"]).items() if v is not None}
    url = urlsplit(env["ES_RERANK_PROXY_ELASTICSEARCH_URL"])
    assert (url.scheme, url.hostname, url.port) == ("https", "elasticsearch", 9200)
    ca_path = env["ES_RERANK_PROXY_ELASTICSEARCH_CA_CERTS"]
    mounts = _volume_mounts(_services(SECURITY_OVERLAY)["proxy"])
    ca_mount = [target for target in mounts if ca_path.startswith(target + "/")]
    assert len(ca_mount) == 1
    source, read_only = mounts[ca_mount[0]]
    assert read_only and source == "es-ca"
    assert "es-certs" not in {source for source, _ in mounts.values()}, "private keys stay with Elasticsearch"
    assert {"es-certs", "es-ca", "proxy-tls"} <= set(_load(SECURITY_OVERLAY)["volumes"])
    # The files exist only in the volumes, and load_config checks them: stand local files in for them.
    stand_in = tmp_path / "ca.crt"
    stand_in.write_text("-----BEGIN CERTIFICATE-----\n")
    issued = TestCA(tmp_path).issue("proxy")
    config = load_config(
        _mounted_config_source(),
        environ={
            **env,
            "ES_RERANK_PROXY_ELASTICSEARCH_CA_CERTS": str(stand_in),
            "ES_RERANK_PROXY_SERVER_TLS_CERT_FILE": str(issued.cert_file),
            "ES_RERANK_PROXY_SERVER_TLS_KEY_FILE": str(issued.key_file),
        },
    )
    assert config.elasticsearch.url == (env["ES_RERANK_PROXY_ELASTICSEARCH_URL"],)
    assert config.server.tls.cert_file == str(issued.cert_file)


def test_security_overlay_serves_the_proxy_over_https_from_its_own_volume() -> None:
    overlay = _services(SECURITY_OVERLAY)
    env = _environment(overlay["proxy"])
    mounts = _volume_mounts(overlay["proxy"])
    for key in ("CERT_FILE", "KEY_FILE"):
        path = env[f"ES_RERANK_PROXY_SERVER_TLS_{key}"]
        assert path is not None
        [target] = [target for target in mounts if path.startswith(target + "/")]
        assert mounts[target] == ("proxy-tls", True)
    script = overlay["certs"]["command"][-1]
    assert re.search(r"name: proxy'.*dns:'.*'      - proxy'", script, re.S)
    assert "chmod 600 /proxy-tls/proxy.key" in script


# --- docker compose itself, where it exists ------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["-f", "docker-compose.yml"],
        ["-f", "docker-compose.yml", "--profile", "gpu"],
        ["-f", "docker-compose.yml", "-f", "deploy/compose.security.yml", "--profile", "gpu"],
        ["-f", "docker-compose.yml", "--profile", "gpu", "--profile", "monitoring"],
    ],
    ids=["cpu", "gpu", "gpu-security", "gpu-monitoring"],
)
def test_docker_compose_accepts_the_files(args: list[str]) -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"no docker compose plugin: {(probe.stderr or probe.stdout).strip()[:200]}")
    env = {**os.environ, "ELASTIC_PASSWORD": "changeme-in-tests"}
    result = subprocess.run(
        [docker, "compose", *args, "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    if result.returncode != 0 and re.search(r"daemon|docker\.sock|connect", result.stderr, re.I):
        pytest.skip(f"docker compose needs an engine here: {result.stderr.strip()[:200]}")
    assert result.returncode == 0, result.stderr
