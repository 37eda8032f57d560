"""TLS on the listeners: certificate checks at load, https and mutual TLS end to end, SIGHUP reloads."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from elasticsearch import Elasticsearch
from hypothesis import given
from hypothesis import strategies as st

from es_rerank_proxy.cli import main
from es_rerank_proxy.edge.tls import (
    certificate_validity,
    check_tls_files,
    pairing_problem,
    validity_problem,
)
from es_rerank_proxy.errors import ConfigError

from ..fakes.certificates import TestCA
from ..fakes.proxy_server import make_config, proxy_in_thread, proxy_process

NOW = datetime(2026, 6, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Files:
    cert_file: str = ""
    key_file: str = ""
    client_ca_file: str = ""


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path)


# --- pure checks ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        (Files(), None),
        (Files(cert_file="c", key_file="k"), None),
        (Files(cert_file="c", key_file="k", client_ca_file="ca"), None),
        (Files(cert_file="c"), "server.tls.key_file: required when server.tls.cert_file is set"),
        (Files(key_file="k"), "server.tls.cert_file: required when server.tls.key_file is set"),
        (Files(client_ca_file="ca"), "server.tls.cert_file: required when server.tls.client_ca_file is set"),
    ],
)
def test_pairing_problem_names_the_missing_key(files: Files, problem: str | None) -> None:
    found = pairing_problem("server.tls", files)
    assert found == problem or (problem is not None and found is not None and found.startswith(problem))


@pytest.mark.parametrize(
    ("now", "problem"),
    [
        (datetime(2026, 1, 1, tzinfo=UTC), None),
        (datetime(2027, 1, 2, tzinfo=UTC), "certificate expired on 2027-01-01 00:00:00 UTC"),
        (datetime(2025, 12, 1, tzinfo=UTC), "certificate is not valid before 2025-12-31 00:00:00 UTC"),
    ],
)
def test_validity_problem(now: datetime, problem: str | None) -> None:
    assert (
        validity_problem(datetime(2025, 12, 31, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC), now) == problem
    )


def test_certificate_validity_reads_the_dates_openssl_wrote(ca: TestCA) -> None:
    issued = ca.issue("server", not_after=datetime(2051, 3, 4, 5, 6, 7, tzinfo=UTC))
    certificate = x509.load_pem_x509_certificate(issued.cert_file.read_bytes())
    der = ssl.PEM_cert_to_DER_cert(issued.cert_file.read_text())
    assert certificate_validity(der) == (certificate.not_valid_before_utc, certificate.not_valid_after_utc)


def _validity_or_value_error(data: bytes) -> None:
    try:
        not_before, not_after = certificate_validity(data)
    except ValueError:
        return
    assert not_before.tzinfo is UTC and not_after.tzinfo is UTC


@given(st.binary(max_size=300))
def test_certificate_validity_rejects_garbage_with_value_error_only(data: bytes) -> None:
    _validity_or_value_error(data)


@pytest.fixture(scope="module")
def certificate_der(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    issued = TestCA(tmp_path_factory.mktemp("der")).issue("server")
    return ssl.PEM_cert_to_DER_cert(issued.cert_file.read_text())


@given(st.data())
def test_certificate_validity_of_a_damaged_certificate_is_dates_or_value_error(
    certificate_der: bytes, data: st.DataObject
) -> None:
    damaged = bytearray(certificate_der)
    for _ in range(data.draw(st.integers(1, 4))):
        damaged[data.draw(st.integers(0, len(damaged) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(damaged)))
    _validity_or_value_error(bytes(damaged[:cut]))


# --- files: what check-config and load reject --------------------------------------------------------


def test_missing_certificate_file_names_the_key(tmp_path: Path) -> None:
    files = Files(cert_file=str(tmp_path / "gone.crt"), key_file=str(tmp_path / "gone.key"))
    with pytest.raises(ConfigError, match=r"^server\.tls\.cert_file: no such file: .*gone\.crt"):
        check_tls_files("server.tls", files, datetime.now(UTC))


def test_key_of_another_certificate_is_rejected(ca: TestCA) -> None:
    one, other = ca.issue("one"), ca.issue("other")
    files = Files(cert_file=str(one.cert_file), key_file=str(other.key_file))
    with pytest.raises(ConfigError, match=r"^admin\.tls\.key_file: the private key does not match"):
        check_tls_files("admin.tls", files, datetime.now(UTC))


def test_expired_certificate_is_rejected(ca: TestCA) -> None:
    now = datetime.now(UTC)
    old = ca.issue("old", not_before=now - timedelta(days=100), not_after=now - timedelta(days=10))
    files = Files(cert_file=str(old.cert_file), key_file=str(old.key_file))
    with pytest.raises(ConfigError, match=r"^server\.tls\.cert_file: certificate expired on "):
        check_tls_files("server.tls", files, now)


def test_client_ca_file_without_a_certificate_is_rejected(ca: TestCA, tmp_path: Path) -> None:
    server = ca.issue("server")
    not_a_ca = tmp_path / "ca.pem"
    not_a_ca.write_text("not a certificate")
    files = Files(
        cert_file=str(server.cert_file), key_file=str(server.key_file), client_ca_file=str(not_a_ca)
    )
    with pytest.raises(ConfigError, match=r"^server\.tls\.client_ca_file: no usable CA certificate"):
        check_tls_files("server.tls", files, datetime.now(UTC))


def test_encrypted_key_is_refused_without_a_prompt(ca: TestCA) -> None:
    locked = ca.issue("locked", passphrase=b"secret")
    files = Files(cert_file=str(locked.cert_file), key_file=str(locked.key_file))
    with pytest.raises(ConfigError, match=r"^server\.tls\.key_file: the private key is encrypted"):
        check_tls_files("server.tls", files, datetime.now(UTC))


@pytest.mark.parametrize("problem", ["missing", "mismatched", "expired"])
def test_check_config_rejects_unusable_listener_certificates(
    ca: TestCA, tmp_path: Path, capsys: pytest.CaptureFixture[str], problem: str
) -> None:
    now = datetime.now(UTC)
    good, other = ca.issue("good"), ca.issue("other")
    expired = ca.issue("expired", not_before=now - timedelta(days=9), not_after=now - timedelta(days=1))
    cert, key, expected = {
        "missing": (tmp_path / "nope.crt", good.key_file, "server.tls.cert_file: no such file"),
        "mismatched": (good.cert_file, other.key_file, "server.tls.key_file: the private key does not match"),
        "expired": (expired.cert_file, expired.key_file, "server.tls.cert_file: certificate expired"),
    }[problem]
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps({"server": {"tls": {"cert_file": str(cert), "key_file": str(key)}}}))
    with pytest.raises(SystemExit) as exited:
        main(["check-config", str(path)])
    assert exited.value.code == 1
    assert f"ConfigError: {expected}" in capsys.readouterr().err


# --- end to end ---------------------------------------------------------------------------------------


def _curl(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "20", *args, url], capture_output=True, text=True, check=False
    )


def test_curl_and_official_client_reach_elasticsearch_over_tls(ca: TestCA, es_url: str) -> None:
    server = ca.issue("proxy")
    tls = {"cert_file": str(server.cert_file), "key_file": str(server.key_file)}
    with proxy_in_thread(make_config(es_url, server={"tls": tls}, admin={"tls": tls})) as proxy:
        assert proxy.url.startswith("https://") and proxy.admin_url.startswith("https://")
        health = _curl(proxy.admin_url + "/_rerank/health", "--cacert", str(ca.cert_file), "-f")
        assert health.returncode == 0, health.stderr
        answer = _curl(proxy.url + "/", "--cacert", str(ca.cert_file), "-w", "\n%{http_code}")
        body, _, status = answer.stdout.rpartition("\n")
        assert status == "200", answer.stderr
        direct = Elasticsearch(es_url, request_timeout=30)
        assert json.loads(body) == direct.info().body
        client = Elasticsearch(proxy.url, ca_certs=str(ca.cert_file), request_timeout=30)
        try:
            assert client.info().body == direct.info().body
            assert "hits" in client.search(index="*", query={"match_all": {}}, size=1).body
        finally:
            client.close()
            direct.close()
        refused = _curl(proxy.url + "/")  # the system store does not know the test CA
        assert refused.returncode != 0


def test_mutual_tls_refuses_a_client_without_a_certificate(ca: TestCA, es_url: str) -> None:
    server, client = ca.issue("proxy"), ca.issue("client", client=True)
    tls = {
        "cert_file": str(server.cert_file),
        "key_file": str(server.key_file),
        "client_ca_file": str(ca.cert_file),
    }
    with proxy_in_thread(make_config(es_url, server={"tls": tls})) as proxy:
        without = _curl(proxy.url + "/", "--cacert", str(ca.cert_file))
        assert without.returncode != 0
        with_cert = _curl(
            proxy.url + "/",
            "--cacert",
            str(ca.cert_file),
            "--cert",
            str(client.cert_file),
            "--key",
            str(client.key_file),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        )
        assert with_cert.stdout == "200", with_cert.stderr


def _served_serial(url: str) -> int:
    host, port = url.removeprefix("https://").rsplit(":", 1)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, int(port)), timeout=10) as raw, context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _wait_for_serial(url: str, serial: int, timeout_s: float = 20) -> int:
    deadline = time.monotonic() + timeout_s
    seen = _served_serial(url)
    while seen != serial and time.monotonic() < deadline:
        time.sleep(0.1)
        seen = _served_serial(url)
    return seen


def test_sighup_serves_a_renewed_certificate_and_keeps_it_when_the_next_is_unreadable(
    ca: TestCA, es_url: str, tmp_path: Path
) -> None:
    first = ca.issue("proxy")
    tls = {"cert_file": str(first.cert_file), "key_file": str(first.key_file)}
    with proxy_process(make_config(es_url, server={"tls": tls}), tmp_path) as proxy:
        assert proxy.process is not None
        assert _served_serial(proxy.url) == first.serial
        renewed = ca.issue("proxy")  # the same paths, as certbot or cert-manager renew them
        proxy.process.send_signal(signal.SIGHUP)
        assert _wait_for_serial(proxy.url, renewed.serial) == renewed.serial
        Path(tls["cert_file"]).write_text("-----BEGIN CERTIFICATE-----\nbroken\n")
        proxy.process.send_signal(signal.SIGHUP)
        log = tmp_path / "proxy.log"
        deadline = time.monotonic() + 20
        while "certificate not reloaded" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "server.tls: certificate not reloaded" in log.read_text()
        assert _served_serial(proxy.url) == renewed.serial


def test_environment_sets_nested_tls_keys_and_load_checks_them(tmp_path: Path) -> None:
    from es_rerank_proxy.config import load_config

    environ = {
        "ES_RERANK_PROXY_SERVER_TLS_CERT_FILE": str(tmp_path / "absent.crt"),
        "ES_RERANK_PROXY_SERVER_TLS_KEY_FILE": str(tmp_path / "absent.key"),
    }
    with pytest.raises(ConfigError, match=r"^server\.tls\.cert_file: no such file"):
        load_config(None, environ=environ)
