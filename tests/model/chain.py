"""The error a proxy exception wraps, whichever build raised it."""

from __future__ import annotations


def wrapped_error(exc: BaseException) -> BaseException | None:
    """`raise ... from exc` sets `__cause__`; mypyc-compiled code drops the `from` (setup.py) and the
    handled error is kept as `__context__` instead. Either way the original error travels with the new
    one, which is what a log's traceback shows."""
    return exc.__cause__ if exc.__cause__ is not None else exc.__context__
