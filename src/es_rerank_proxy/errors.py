"""The project's exception types: each I/O edge maps transport failures to one of these."""

from __future__ import annotations


class ProxyError(Exception):
    """Base class for the proxy's own errors."""


class ConfigError(ProxyError):
    """An invalid configuration; the message starts with the key path."""


class EvalError(ProxyError):
    """An `eval` input or option is unusable (exit code 2)."""


class UpstreamError(ProxyError):
    """Elasticsearch could not be reached or did not answer in time."""

    def __init__(self, reason: str, *, timed_out: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.timed_out = timed_out


class RerankerError(ProxyError):
    """The reranking step failed; `reason` is the X-Rerank-Reason the client sees."""

    reason = "unavailable"


class RerankerUnavailable(RerankerError):
    """Connection refused or dropped, or a 5xx answer."""

    reason = "unavailable"


class RerankerTimeout(RerankerError):
    """The reranking budget ran out."""

    reason = "timeout"


class RerankerBadResponse(RerankerError):
    """The model server answered, but not with one finite score per document sent."""

    reason = "bad_response"


class CircuitOpen(RerankerError):
    """The breaker is open: the model server is not called at all."""

    reason = "circuit_open"


class Overloaded(RerankerError):
    """Too many model calls in flight already: degrade at once instead of queueing past the budget."""

    reason = "overloaded"
