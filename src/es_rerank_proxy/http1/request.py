"""What a request to a node looks like on the wire: where the node is, and the head as sent."""

from __future__ import annotations

import base64
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

from yarl import URL


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where one configured node listens and how to reach it."""

    host: str
    port: int
    tls: ssl.SSLContext | None
    fingerprint: bytes | None  # SHA-256 of the node's certificate, when pinned instead of verified
    host_header: str
    base_path: str  # a configured URL's path prefix, without the trailing slash
    # Basic credentials from the URL's user info, for requests that bring none: the model server's URL
    # may carry the proxy's own; an Elasticsearch URL never does (config refuses it: anonymous clients).
    authorization: str | None

    @classmethod
    def from_url(cls, url: URL, tls: ssl.SSLContext | None, fingerprint: bytes | None = None) -> Endpoint:
        host = url.raw_host or "127.0.0.1"
        port = url.port or (443 if url.scheme == "https" else 80)
        default_port = url.is_default_port()
        shown_host = f"[{host}]" if ":" in host else host
        authorization = None
        if url.user is not None:
            pair = f"{url.user}:{url.password or ''}".encode()
            authorization = "Basic " + base64.b64encode(pair).decode("ascii")
        return cls(
            host=host,
            port=port,
            tls=tls if url.scheme == "https" else None,
            fingerprint=fingerprint if url.scheme == "https" else None,
            host_header=shown_host if default_port else f"{shown_host}:{port}",
            base_path=url.raw_path.rstrip("/"),
            authorization=authorization,
        )


def request_head(
    method: str,
    target: str,
    endpoint: Endpoint,
    headers: Mapping[str, str],
    content_length: int | None,
    *,
    chunked: bool = False,
) -> bytes:
    """The request line and headers as sent: `Host` is the node's, the framing the body's own."""
    lines = [f"{method} {endpoint.base_path}{target} HTTP/1.1", f"Host: {endpoint.host_header}"]
    has_authorization = False
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in ("content-length", "transfer-encoding", "host"):
            continue  # framing is this hop's: set below from the body actually sent
        has_authorization = has_authorization or lowered == "authorization"
        lines.append(f"{name}: {value}")
    if endpoint.authorization is not None and not has_authorization:
        lines.append(f"Authorization: {endpoint.authorization}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    elif content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    lines.append("")
    lines.append("")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape")
