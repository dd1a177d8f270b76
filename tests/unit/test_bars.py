"""Progress bars of a pull on a terminal, rendered to an in-memory console."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from apparate.cli.bars import MARGIN, BarObserver
from apparate.digest import Digest


def test_layer_done_ends_bars_at_bytes_received():
    rebuilt, whole = Digest.of(b"rebuilt"), Digest.of(b"whole")
    output = io.StringIO()
    console = Console(file=output, width=80, force_terminal=False)

    with BarObserver(console) as bars:
        bars.layer_planned(rebuilt, 8000, stored=False)
        bars.layer_planned(whole, 2000, stored=False)
        bars.layer_progress(rebuilt, 1000)
        bars.layer_progress(whole, 2000)
        bars.layer_done(rebuilt)
        bars.layer_done(whole)

    lines = output.getvalue().splitlines()[-3:]
    assert [line.split()[2] for line in lines] == ["3.0/3.0", "1.0/1.0", "2.0/2.0"]


def test_layer_needs_sets_bars_to_bytes_to_fetch():
    # A rebuilt layer fetches a part of its size: its time left is that part's.
    rebuilt, whole = Digest.of(b"rebuilt"), Digest.of(b"whole")
    output = io.StringIO()
    console = Console(file=output, width=80, force_terminal=False)

    with BarObserver(console) as bars:
        bars.layer_planned(rebuilt, 8000, stored=False)
        bars.layer_planned(whole, 2000, stored=False)
        bars.layer_needs(rebuilt, 1000)
        bars.layer_progress(rebuilt, 500)
        bars.layer_progress(whole, 1000)

    lines = output.getvalue().splitlines()[-3:]
    assert [line.split()[2] for line in lines] == ["1.5/3.0", "0.5/1.0", "1.0/2.0"]


def test_layer_done_keeps_speed():
    layer = Digest.of(b"rebuilt")
    output = io.StringIO()
    console = Console(file=output, width=80, force_terminal=False)

    with BarObserver(console) as bars:
        bars.layer_planned(layer, 8000, stored=False)
        bars.layer_progress(layer, 500)
        bars.layer_progress(layer, 500)
        bars.layer_done(layer)

    # rich resets a bar's speed when its total changes, and then prints "?".
    assert re.search(r"\d (bytes|[kMG]B)/s", output.getvalue().splitlines()[-1])


def draw(width: int, layers: dict[bytes, tuple[int, int]]) -> str:
    """Render bars at ``width`` for layers named by their bytes: (size, received)."""
    output = io.StringIO()
    console = Console(file=output, width=width)

    with BarObserver(console) as bars:
        for name, (size, received) in layers.items():
            bars.layer_planned(Digest.of(name), size, stored=False)
            bars.layer_progress(Digest.of(name), received)

    return output.getvalue()


@pytest.mark.parametrize("width", [30, 40, 50, 60, 80, 200])
def test_each_bar_keeps_one_row(width):
    layers = {b"big": (28_400_000, 11_000_000), b"small": (1_000_000, 1_000_000)}

    lines = draw(width, layers).splitlines()

    assert len(lines) == 3
    assert lines[1].startswith(Digest.of(b"big").hex[:12])
    assert all("MB" in line for line in lines)
    # Ctrl-C echoes "^C" after the last row, which wraps when the row is full.
    assert max(len(line) for line in lines) <= width - MARGIN


def test_narrow_terminal_drops_time_before_speed():
    layers = {b"big": (28_400_000, 11_000_000)}

    wide, narrow = draw(80, layers), draw(40, layers)

    # A single sample gives no speed yet: rich prints "?" for it.
    assert wide.splitlines()[-1].split()[-2:] == ["?", "-:--:--"]
    assert narrow.splitlines()[-1].split()[-2:] == ["MB", "?"]


def test_stored_image_draws_no_bar():
    output = io.StringIO()
    console = Console(file=output, width=80, force_terminal=True)

    with BarObserver(console) as bars:
        bars.layer_planned(Digest.of(b"stored"), 1000, stored=True)

    assert "total" not in output.getvalue()
    assert "0/0" not in output.getvalue()


def test_resolved_digest_not_coloured():
    digest = Digest.of(b"manifest")
    output = io.StringIO()
    console = Console(file=output, width=200, force_terminal=True)

    with BarObserver(console) as bars:
        bars.resolved("registry.example/app:v1", digest, "linux/arm64")

    assert f"registry.example/app:v1: {digest} (linux/arm64)" in output.getvalue()
