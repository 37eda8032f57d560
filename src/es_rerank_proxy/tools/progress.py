"""The progress bar of every long command (loading, warming, evaluating)."""

from __future__ import annotations

from typing import TextIO


class ProgressBar:
    """`label [#####---------] 120/400  30%`, redrawn in place on a terminal.

    Off a terminal (a CI log, a pipe) it writes one line per tenth, or nothing at all with `quiet`, for
    commands whose output is meant to be parsed.
    """

    def __init__(self, stream: TextIO, *, label: str = "", width: int = 30, quiet: bool = False) -> None:
        self._stream = stream
        self._prefix = f"{label:<14} " if label else ""
        self._width = width
        self._tty = stream.isatty()
        self._silent = quiet and not self._tty
        self._last_tenth = -1
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        """Show `done` of `total`."""
        if self._silent:
            return
        fraction = min(1.0, done / total) if total > 0 else 1.0
        if not self._tty:
            tenth = int(fraction * 10)
            if tenth == self._last_tenth:
                return
            self._last_tenth = tenth
        filled = int(fraction * self._width)
        line = f"{self._prefix}[{'#' * filled}{'-' * (self._width - filled)}] {done}/{total} {fraction:4.0%}"
        self._stream.write(("\r" + line) if self._tty else line + "\n")
        self._stream.flush()
        self._drawn = True

    def finish(self) -> None:
        """End the line redrawn in place."""
        if self._tty and self._drawn:
            self._stream.write("\n")
            self._stream.flush()
        self._drawn = False
