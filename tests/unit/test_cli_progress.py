"""How a pull reports progress: bars on a terminal, lines elsewhere."""

from __future__ import annotations

import io
import sys

import pytest

from apparate.cli import main
from apparate.cli.bars import BarObserver
from apparate.cli.text import LineObserver


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
