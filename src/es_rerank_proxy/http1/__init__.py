"""A lean HTTP/1.1 client for Elasticsearch and the model servers: pooled keep-alive connections,
responses parsed by llhttp.

aiohttp's client spends most of a pass-through's CPU on objects the proxy never needs (cookies, redirects,
traces, URL building per request); profiled with py-spy it was two thirds of a forwarded `_doc` GET. Here
a request is one `write` of prebuilt bytes and a response is parsed in C (httptools) into status, headers
and body chunks. The body is handed on as it arrives, with flow control both ways, so a 1 GB `_bulk` or
scroll costs constant memory. `request` is the head as sent, `connection` one connection and its answers,
`pool` keeps them.
"""

from .connection import IDEMPOTENT_METHODS, Connection, Response, wait_at_most
from .pool import Client, Pool
from .request import Endpoint, request_head

__all__ = [
    "IDEMPOTENT_METHODS",
    "Client",
    "Connection",
    "Endpoint",
    "Pool",
    "Response",
    "request_head",
    "wait_at_most",
]
