"""Progress bars of a pull on a terminal, rendered to an in-memory console."""

from __future__ import annotations

import io
import re

from rich.console import Console

from apparate.cli.bars import BarObserver
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


def test_resolved_digest_not_coloured():
    digest = Digest.of(b"manifest")
    output = io.StringIO()
    console = Console(file=output, width=200, force_terminal=True)

    with BarObserver(console) as bars:
        bars.resolved("registry.example/app:v1", digest, "linux/arm64")

    assert f"registry.example/app:v1: {digest} (linux/arm64)" in output.getvalue()


def test_stored_image_draws_no_bar():
    output = io.StringIO()
    console = Console(file=output, width=80, force_terminal=True)

    with BarObserver(console) as bars:
        bars.layer_planned(Digest.of(b"stored"), 1000, stored=True)

    assert "total" not in output.getvalue()
    assert "0/0" not in output.getvalue()
