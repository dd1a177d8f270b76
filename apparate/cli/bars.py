"""Pull progress as rich bars, for terminals (rich is imported only here)."""

from __future__ import annotations

from typing import Self

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from apparate.cli.text import short
from apparate.digest import Digest
from apparate.progress import PullObserver


class BarObserver(PullObserver):
    """A bar per layer and one for the total, drawn by rich."""

    def __init__(self) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(),
            transient=False,
        )
        self._tasks: dict[Digest, TaskID] = {}
        self._total = self._progress.add_task("total", total=0)

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._progress.stop()

    def resolved(self, image: str, digest: Digest, platform: str) -> None:
        self._progress.console.print(f"{image}: {digest} ({platform})")

    def layer_planned(self, digest: Digest, size: int, stored: bool) -> None:
        if stored or digest in self._tasks:
            return
        self._tasks[digest] = self._progress.add_task(short(digest), total=size)
        total = self._progress.tasks[self._total].total or 0
        self._progress.update(self._total, total=total + size)

    def layer_progress(self, digest: Digest, received: int) -> None:
        self._progress.advance(self._tasks[digest], received)
        self._progress.advance(self._total, received)
