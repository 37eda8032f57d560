"""The progress bar shared by load, warm, eval and the demo."""

from __future__ import annotations

import io

import pytest

from es_rerank_proxy.tools.progress import ProgressBar


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def draw(stream: io.StringIO, total: int, **options: object) -> str:
    bar = ProgressBar(stream, width=8, **options)  # type: ignore[arg-type]
    for done in range(1, total + 1):
        bar(done, total)
    bar.finish()
    return stream.getvalue()


def test_on_a_terminal_the_line_is_redrawn_in_place_and_ended_once() -> None:
    shown = draw(FakeTerminal(), 4, label="proxy")
    assert shown.count("\r") == 4 and shown.count("\n") == 1
    assert "\rproxy          [##------] 1/4  25%" in shown
    assert shown.endswith("\rproxy          [########] 4/4 100%\n")


@pytest.mark.parametrize("quiet", [False, True])
def test_quiet_changes_nothing_on_a_terminal(quiet: bool) -> None:
    assert draw(FakeTerminal(), 3, quiet=quiet).count("\r") == 3


def test_off_a_terminal_one_line_per_tenth() -> None:
    lines = draw(io.StringIO(), 200).splitlines()
    assert len(lines) == 11  # 0 %, 10 %, ... 100 %
    assert lines[-1] == "[########] 200/200 100%"
    assert "\r" not in "".join(lines)


def test_quiet_off_a_terminal_writes_nothing() -> None:
    assert draw(io.StringIO(), 50, quiet=True) == ""


def test_done_beyond_total_and_zero_total_stay_full() -> None:
    stream = FakeTerminal()
    bar = ProgressBar(stream, width=4)
    bar(5, 4)
    bar(0, 0)
    assert stream.getvalue() == "\r[####] 5/4 100%\r[####] 0/0 100%"
