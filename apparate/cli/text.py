"""Plain-text pull output: one line per milestone, and the summary line."""

from __future__ import annotations

import sys
import threading
from datetime import UTC, datetime
from typing import TextIO

from apparate.digest import Digest
from apparate.progress import PullObserver
from apparate.result import PullResult
from apparate.store.history import PullRecord, Totals


def short(digest: Digest) -> str:
    return digest.hex[:12]


def human_size(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


class LineObserver(PullObserver):
    """One line per milestone, for output that is not a terminal."""

    def __init__(self, stream: TextIO = sys.stdout) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def _say(self, text: str) -> None:
        with self._lock:
            print(text, file=self._stream, flush=True)

    def resolved(self, image: str, digest: Digest, platform: str) -> None:
        self._say(f"{image}: resolved to {digest} ({platform})")

    def layer_planned(self, digest: Digest, size: int, stored: bool) -> None:
        state = "already stored" if stored else "missing, fetching what is needed"
        self._say(f"{short(digest)}: {state} ({human_size(size)})")

    def layer_done(self, digest: Digest) -> None:
        self._say(f"{short(digest)}: verified")


def summary_line(result: PullResult) -> str:
    """Format one sentence stating what the pull fetched and reused."""
    return (
        f"{result.reference}: fetched {human_size(result.bytes_fetched)}, reused "
        f"{human_size(result.bytes_reused)} of stored chunks and layers "
        f"({result.layers_fetched} of {len(result.layers)} layers were missing), "
        f"{result.seconds:.1f} s; digest {result.digest}"
    )


def dry_run_report(result: PullResult) -> str:
    """Format what a pull would fetch and reuse, layer by layer."""
    rows = [
        [
            short(layer.digest),
            human_size(layer.size),
            human_size(layer.bytes_fetched),
            human_size(max(layer.size - layer.bytes_fetched, 0)),
            "stored" if not layer.fetched else "",
        ]
        for layer in result.layers
    ]
    table = format_table(["LAYER", "SIZE", "FETCH", "REUSE", ""], rows)
    total = (
        f"{result.reference}: would fetch {human_size(result.bytes_fetched)}, "
        f"reuse {human_size(result.bytes_reused)}"
    )
    return f"{table}\n{total}"


def stats_report(totals: Totals, records: list[PullRecord]) -> str:
    """Format the pull history: a table of recent pulls and the totals."""
    rows = []
    for record in records:
        when = datetime.fromtimestamp(record.finished, UTC).strftime(
            "%Y-%m-%d %H:%M:%S"
        )
        speed = record.bytes_fetched / record.seconds if record.seconds else 0.0
        rows.append(
            [
                when,
                record.reference,
                human_size(record.bytes_fetched),
                human_size(record.bytes_reused),
                f"{record.seconds:.1f}",
                f"{human_size(speed)}/s",
            ]
        )
    header = ["FINISHED (UTC)", "REFERENCE", "FETCHED", "REUSED", "SECONDS", "SPEED"]
    saved = totals.bytes_saved / totals.layer_bytes if totals.layer_bytes else 0.0
    summary = (
        f"{totals.pulls} pulls: fetched {human_size(totals.bytes_fetched)} of "
        f"{human_size(totals.layer_bytes)} of layers, saved "
        f"{human_size(totals.bytes_saved)} ({saved:.0%}), {totals.seconds:.1f} s"
    )
    return f"{format_table(header, rows)}\n{summary}"


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """Align columns with two spaces between them, as ``docker images`` does."""
    widths = [max(len(row[n]) for row in [header, *rows]) for n in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)
