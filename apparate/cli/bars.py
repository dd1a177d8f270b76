"""Pull progress as rich bars, for terminals (rich is imported only here)."""

from __future__ import annotations

import threading
from typing import Self

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    Task,
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

    def __init__(self, console: Console | None = None) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console or Console(),
            transient=False,
        )
        self._tasks: dict[Digest, TaskID] = {}
        # Shown once a layer needs fetching, so an image already stored draws no bar.
        self._total = self._progress.add_task("total", total=0, visible=False)
        # Layers end on several threads; each shrinks the total bar.
        self._lock = threading.Lock()

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._progress.stop()

    def resolved(self, image: str, digest: Digest, platform: str) -> None:
        # rich's highlighter would colour the parts of a digest that look like
        # numbers or addresses.
        self._progress.console.print(f"{image}: {digest} ({platform})", highlight=False)

    def layer_planned(self, digest: Digest, size: int, stored: bool) -> None:
        if stored or digest in self._tasks:
            return
        self._tasks[digest] = self._progress.add_task(short(digest), total=size)
        total = self._progress.tasks[self._total].total or 0
        self._progress.update(self._total, total=total + size, visible=True)

    def layer_progress(self, digest: Digest, received: int) -> None:
        self._progress.advance(self._tasks[digest], received)
        self._progress.advance(self._total, received)

    def layer_done(self, digest: Digest) -> None:
        # A rebuilt or resumed layer receives only the bytes the store lacked.
        # Its bar total drops to the bytes received, so the bar ends complete,
        # and the total bar drops by the bytes that were not fetched.
        task_id = self._tasks.get(digest)
        if task_id is None:
            return
        with self._lock:
            task = self._task(task_id)
            unfetched = (task.total or 0) - task.completed
            self._shrink(task_id, task.completed)
            whole = self._task(self._total)
            self._shrink(self._total, (whole.total or 0) - unfetched)

    def _shrink(self, task_id: TaskID, total: float) -> None:
        """Set a bar's total and keep its speed, which rich resets with the total."""
        task = self._task(task_id)
        speed = task.finished_speed or task.speed
        self._progress.update(task_id, total=total)
        if task.finished:
            task.finished_speed = speed

    def _task(self, task_id: TaskID) -> Task:
        return next(task for task in self._progress.tasks if task.id == task_id)
