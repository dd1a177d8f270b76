"""How a pull reports progress: bars on a terminal, lines elsewhere."""

from __future__ import annotations

import io
import logging
import sys

import pytest
from rich.console import Console

from apparate.cli import main
from apparate.cli.bars import BarObserver
from apparate.cli.text import LineObserver
from apparate.digest import Digest


class Terminal(io.StringIO):
    """Standard output that claims to be a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    "term, kind",
    [
        ("xterm-256color", BarObserver),
        ("dumb", LineObserver),
        ("unknown", LineObserver),
    ],
)
def test_observer_follows_term(monkeypatch, term, kind):
    monkeypatch.setattr(sys, "stdout", Terminal())
    monkeypatch.setenv("TERM", term)

    with main._observer(quiet=False) as observer:
        assert isinstance(observer, kind)


def log_during_bars(
    monkeypatch, stderr: io.StringIO, message: str = "mirror dropped", width: int = 80
) -> str:
    """Log ``message`` as a warning while bars are drawn; return the terminal's output."""
    monkeypatch.setattr(sys, "stderr", stderr)
    output = io.StringIO()
    console = Console(file=output, width=width, force_terminal=True)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    main._configure_logging(debug=False, verbose=False)
    layer = Digest.of(b"layer")

    try:
        with BarObserver(console) as bars:
            bars.layer_planned(layer, 1000, stored=False)
            bars.layer_progress(layer, 500)
            logging.getLogger("apparate.test").warning(message)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)

    return output.getvalue()


def test_log_record_printed_above_bars(monkeypatch):
    """A warning while bars are drawn goes above them, not into the last row."""
    stderr = Terminal()

    screen = log_during_bars(monkeypatch, stderr)

    assert stderr.getvalue() == ""
    assert "warning: mirror dropped\n" in screen


def test_log_record_stays_in_redirected_stderr(monkeypatch):
    stderr = io.StringIO()

    screen = log_during_bars(monkeypatch, stderr)

    assert stderr.getvalue() == "warning: mirror dropped\n"
    assert "mirror dropped" not in screen


def test_long_log_record_left_whole(monkeypatch):
    """A record longer than the terminal keeps its digest on one line.

    The terminal wraps it, because a newline inside the digest would break copying it.
    """
    digest = Digest.of(b"damaged")
    terminal = Terminal()

    screen = log_during_bars(
        monkeypatch, terminal, f"blob {digest} is damaged", width=40
    )

    assert f"warning: blob {digest} is damaged\n" in screen
    assert sys.stderr is terminal
