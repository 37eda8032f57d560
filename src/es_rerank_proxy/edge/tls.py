"""TLS for the proxy's own listeners: checking certificate files, building server contexts, reloading.

A listener's certificate can be renewed on disk and re-read on SIGHUP: new connections get the new
certificate, open ones keep theirs, and a file that cannot be read leaves the old certificate serving.
"""

from __future__ import annotations

import logging
import re
import ssl
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from ..errors import ConfigError

log = logging.getLogger(__name__)

_PEM_CERTIFICATE = re.compile(
    r"-----BEGIN CERTIFICATE-----\s+([A-Za-z0-9+/=\s]+?)-----END CERTIFICATE-----", re.ASCII
)


class TlsFiles(Protocol):
    """The certificate files of one listener (config's `TlsConfig`)."""

    @property
    def cert_file(self) -> str: ...
    @property
    def key_file(self) -> str: ...
    @property
    def client_ca_file(self) -> str: ...


# --- pure checks ------------------------------------------------------------------------------------


def pairing_problem(section: str, files: TlsFiles) -> str | None:
    """Which key is missing or set alone: a certificate needs its key, and a client CA needs both."""
    if files.cert_file and not files.key_file:
        return f"{section}.key_file: required when {section}.cert_file is set"
    if files.key_file and not files.cert_file:
        return f"{section}.cert_file: required when {section}.key_file is set"
    if files.client_ca_file and not files.cert_file:
        return f"{section}.cert_file: required when {section}.client_ca_file is set (mutual TLS)"
    return None


def validity_problem(not_before: datetime, not_after: datetime, now: datetime) -> str | None:
    """Why a certificate valid from `not_before` to `not_after` cannot serve at `now`, or None."""
    if now > not_after:
        return f"certificate expired on {not_after:%Y-%m-%d %H:%M:%S} UTC"
    if now < not_before:
        return f"certificate is not valid before {not_before:%Y-%m-%d %H:%M:%S} UTC"
    return None


def certificate_validity(der: bytes) -> tuple[datetime, datetime]:
    """notBefore and notAfter of a DER X.509 certificate; ValueError when it is not one."""
    try:
        _, start, end = _tlv(der, 0, 0x30)  # Certificate
        _, pos, tbs_end = _tlv(der, start, 0x30)  # TBSCertificate
        if der[pos] == 0xA0:  # [0] version, present from v2 on
            pos = _tlv(der, pos)[2]
        for expected in (0x02, 0x30, 0x30):  # serialNumber, signature, issuer
            pos = _tlv(der, pos, expected)[2]
        _, pos, validity_end = _tlv(der, pos, 0x30)
        tag, value_start, value_end = _tlv(der, pos)
        not_before = _asn1_time(tag, der[value_start:value_end])
        tag, value_start, value_end = _tlv(der, value_end)
        not_after = _asn1_time(tag, der[value_start:value_end])
    except IndexError:
        raise ValueError("truncated certificate") from None
    if not (value_end <= validity_end <= tbs_end <= end):
        raise ValueError("certificate fields overrun their container")
    return not_before, not_after


def _tlv(data: bytes, pos: int, expected: int | None = None) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER element at `pos`."""
    tag = data[pos]
    if expected is not None and tag != expected:
        raise ValueError(f"expected DER tag {expected:#x} at {pos}, got {tag:#x}")
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4 or pos + count > len(data):
            raise ValueError("unsupported DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise ValueError("truncated certificate")
    return tag, pos, pos + length


def _asn1_time(tag: int, value: bytes) -> datetime:
    text = value.decode("ascii", errors="replace")
    if tag == 0x17:  # UTCTime: two-digit year, 1950-2049 (RFC 5280 §4.1.2.5.1)
        parsed = datetime.strptime(text, "%y%m%d%H%M%SZ")
        if parsed.year >= 2050:
            parsed = parsed.replace(year=parsed.year - 100)
    elif tag == 0x18:  # GeneralizedTime
        parsed = datetime.strptime(text, "%Y%m%d%H%M%SZ")
    else:
        raise ValueError(f"expected a certificate time, got DER tag {tag:#x}")
    return parsed.replace(tzinfo=UTC)


# --- files ------------------------------------------------------------------------------------------


def check_tls_files(section: str, files: TlsFiles, now: datetime) -> None:
    """ConfigError naming the key when a listener's TLS files are missing, mismatched or expired."""
    problem = pairing_problem(section, files)
    if problem:
        raise ConfigError(problem)
    if not files.cert_file:
        return
    for key in ("cert_file", "key_file", "client_ca_file"):
        name = getattr(files, key)
        if name and not Path(name).is_file():
            raise ConfigError(f"{section}.{key}: no such file: {name!r}")
    try:
        pem = Path(files.cert_file).read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        raise ConfigError(f"{section}.cert_file: cannot read {files.cert_file!r}: {exc.strerror}") from None
    match = _PEM_CERTIFICATE.search(pem)
    if match is None:
        raise ConfigError(f"{section}.cert_file: no PEM certificate in {files.cert_file!r}")
    try:
        not_before, not_after = certificate_validity(ssl.PEM_cert_to_DER_cert(match.group(0)))
    except ValueError as exc:
        raise ConfigError(f"{section}.cert_file: not a readable certificate: {exc}") from None
    problem = validity_problem(not_before, not_after, now)
    if problem:
        raise ConfigError(f"{section}.cert_file: {problem} ({files.cert_file})")
    try:
        key_text = Path(files.key_file).read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        raise ConfigError(f"{section}.key_file: cannot read {files.key_file!r}: {exc.strerror}") from None
    if "ENCRYPTED" in key_text:  # PKCS#8 "ENCRYPTED PRIVATE KEY" or a legacy "Proc-Type: 4,ENCRYPTED"
        raise ConfigError(
            f"{section}.key_file: the private key is encrypted; give an unencrypted PEM key readable by "
            "the proxy alone"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(files.cert_file, files.key_file, password=_no_passphrase)
    except ssl.SSLError as exc:
        raise ConfigError(f"{section}.key_file: {_describe_ssl_error(exc)}") from None
    except OSError as exc:
        raise ConfigError(f"{section}.cert_file: cannot load {files.cert_file!r}: {exc.strerror}") from None
    if files.client_ca_file:
        try:
            context.load_verify_locations(cafile=files.client_ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"{section}.client_ca_file: no usable CA certificate: {exc}") from None


def _describe_ssl_error(exc: ssl.SSLError) -> str:
    if exc.reason == "KEY_VALUES_MISMATCH":
        return "the private key does not match the certificate in cert_file"
    return f"cannot load: {exc.reason or exc}"


def _no_passphrase() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key's passphrase.
    return b""


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """A server context with TLS 1.2 or newer; with a client CA, a client certificate is required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(files.cert_file, files.key_file, password=_no_passphrase)
    if files.client_ca_file:
        context.load_verify_locations(cafile=files.client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class ListenerTls:
    """The context a listener is bound with, and the freshest certificate it hands to new connections.

    The listening context stays the same object for the socket's life; every handshake switches to the
    newest context in its SNI callback, which OpenSSL calls with or without a server name.
    """

    def __init__(self, section: str, files: TlsFiles) -> None:
        self._section = section
        self._files = files
        self.listening = server_context(files)
        self._current = self.listening
        self.listening.sni_callback = self._choose

    def _choose(
        self, connection: ssl.SSLObject | ssl.SSLSocket, _name: str | None, _: ssl.SSLContext
    ) -> None:
        if self._current is not self.listening:
            connection.context = self._current

    def reload(self, now: datetime | None = None) -> bool:
        """Re-read the certificate files; False (logged, old certificate kept) when they cannot serve."""
        try:
            check_tls_files(self._section, self._files, now or datetime.now(UTC))
            fresh = server_context(self._files)
        except (ConfigError, OSError, ssl.SSLError) as exc:
            log.error("%s: certificate not reloaded, the previous one keeps serving: %s", self._section, exc)
            return False
        self._current = fresh
        log.info("%s: certificate reloaded from %s", self._section, self._files.cert_file)
        return True


def listener_tls(section: str, files: TlsFiles) -> ListenerTls | None:
    """TLS for a listener whose config names a certificate; None for plain HTTP."""
    return ListenerTls(section, files) if files.cert_file else None
