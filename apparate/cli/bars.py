"""Pull progress as rich bars, for terminals (rich is imported only here)."""

from __future__ import annotations

import io
import sys
import threading
from collections.abc import Iterable
from typing import Any, Self, TextIO

from rich.console import (
    Console,
    ConsoleOptions,
    JustifyMethod,
    RenderableType,
    RenderResult,
)
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Column, Table
from rich.text import Text

from apparate.cli.text import short
from apparate.digest import Digest
from apparate.progress import PullObserver

# Columns left free at the end of each bar row. The terminal echoes Ctrl-C
# as "^C" at the cursor, which rich leaves at the end of the last row: on a
# full row, the echo wraps, and the last redraw starts a line too low.
MARGIN = 2
# The narrowest a bar gets before a column is dropped, and the widest.
BAR_MIN, BAR_MAX = 10, 40


class BarObserver(PullObserver):
    """A bar per layer and one for the total, drawn by rich."""

    def __init__(self, console: Console | None = None) -> None:
        self._progress = _FittedProgress(console=console or Console())
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

    def layer_needs(self, digest: Digest, to_fetch: int) -> None:
        # A rebuilt layer's bar counts the bytes it fetches, not its size, so
        # that the time left is that of the fetch.
        task_id = self._tasks.get(digest)
        if task_id is None:
            return
        with self._lock:
            task = self._task(task_id)
            before = task.total or 0
            after = task.completed + to_fetch
            self._shrink(task_id, after)
            whole = self._task(self._total)
            self._shrink(self._total, (whole.total or 0) - before + after)

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


class _FittedProgress(Progress):
    """Bars drawn narrower than the terminal, so that each row fits on one line.

    On a narrow terminal, the time left goes first, then the speed, then
    the bar itself, so that each layer keeps one row with its byte counts.
    NOTE: rows drawn before the terminal shrinks are wrapped by the terminal,
    and rich's next redraw then leaves stray lines above the bars.
    """

    def __init__(self, console: Console) -> None:
        self._name = TextColumn("{task.description}", table_column=_fixed())
        self._bar = BarColumn(bar_width=None, table_column=Column(max_width=BAR_MAX))
        self._bytes = DownloadColumn(table_column=_fixed(justify="right"))
        self._speed = TransferSpeedColumn(table_column=_fixed(justify="right"))
        self._left = TimeRemainingColumn(table_column=_fixed())
        columns = (self._name, self._bar, self._bytes, self._speed, self._left)
        # Standard error is sent above the bars by start, not by rich.
        super().__init__(
            *columns, console=console, transient=False, redirect_stderr=False
        )
        self._stderr: _LinesAbove | None = None

    def start(self) -> None:
        """Draw the bars, and print lines written to standard error above them.

        Log records go to standard error. When it is a terminal too, written
        at the cursor they would land in the last bar. Redirected elsewhere,
        they stay there.
        """
        stream = sys.stderr
        above = stream is not None and stream.isatty() and self.console.is_terminal
        if above and self._stderr is None:
            self._stderr = _LinesAbove(self.console, stream)
            sys.stderr = self._stderr
        try:
            super().start()
        except BaseException:
            self._restore_stderr()
            raise

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self._restore_stderr()

    def _restore_stderr(self) -> None:
        if self._stderr is None:
            return
        self._stderr.flush()
        if sys.stderr is self._stderr:
            sys.stderr = self._stderr.proxied
        self._stderr = None

    def get_renderables(self) -> Iterable[RenderableType]:
        yield _Rows(self)

    def fitted_table(self, width: int) -> Table:
        """Return the rows of the visible bars with the columns that fit ``width``."""
        tasks = [task for task in self.tasks if task.visible]
        layouts = (
            [self._name, self._bar, self._bytes, self._speed, self._left],
            [self._name, self._bar, self._bytes, self._speed],
            [self._name, self._bar, self._bytes],
            [self._name, self._bytes],
        )
        for columns in layouts:
            cells = [[column(task) for column in columns] for task in tasks]
            if _least_width(columns, cells) <= width:
                break
        table_columns = (column.get_table_column().copy() for column in columns)
        table = Table.grid(*table_columns, padding=(0, 1))
        for row in cells:
            table.add_row(*row)
        return table


class _LinesAbove(io.TextIOBase):
    """Standard error while bars are drawn: each line is printed above them.

    rich's own redirection cuts lines at the terminal's width, which puts a
    newline inside a long digest or URL. These lines are left whole, for the
    terminal to wrap.
    """

    def __init__(self, console: Console, stream: TextIO) -> None:
        self.proxied = stream
        self._console = console
        self._partial = ""
        # Records come from several threads, so each line is printed whole under a lock.
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            *lines, self._partial = (self._partial + text).split("\n")
            if lines:
                self._print("\n".join(lines))
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if self._partial:
                self._print(self._partial)
            self._partial = ""

    def isatty(self) -> bool:
        return self.proxied.isatty()

    def fileno(self) -> int:
        return self.proxied.fileno()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.proxied, name)

    def _print(self, text: str) -> None:
        self._console.print(Text.from_ansi(text), soft_wrap=True)


class _Rows:
    """The bars as rich renders them, narrower than the terminal by MARGIN."""

    def __init__(self, progress: _FittedProgress) -> None:
        self._progress = progress

    def __rich_console__(
        self, console: Console, options: ConsoleOptions
    ) -> RenderResult:
        if not any(task.visible for task in self._progress.tasks):
            return
        width = max(options.max_width - MARGIN, 1)
        yield from console.render(
            self._progress.fitted_table(width), options.update_width(width)
        )


def _fixed(justify: JustifyMethod = "left") -> Column:
    return Column(no_wrap=True, justify=justify)


def _least_width(
    columns: list[ProgressColumn], cells: list[list[RenderableType]]
) -> int:
    """Return the width of rows of ``cells`` whose bars are at their narrowest."""
    gaps = len(columns) - 1
    widths = [
        BAR_MIN
        if isinstance(column, BarColumn)
        else max((_text_width(row[n]) for row in cells), default=0)
        for n, column in enumerate(columns)
    ]
    return sum(widths) + gaps


def _text_width(cell: RenderableType) -> int:
    return cell.cell_len if isinstance(cell, Text) else len(str(cell))
