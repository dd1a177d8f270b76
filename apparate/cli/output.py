"""Standard output whose write errors end a command with one ``error:`` line.

A summary redirected to a file on a full disk, or to a closed descriptor,
fails when it is written or flushed. Python would show a traceback then,
and a script would find the file empty or cut short with no word why.

A reader that exits early, as ``head`` does, ends the process quietly with
the code a shell gives a process that SIGPIPE ended, as Unix tools end.
The signal itself stays ignored: it would also end the process, without a
word, when a registry closes a connection that a request is being written to.
"""

from __future__ import annotations

import os
import signal
from typing import Any, NoReturn, TextIO

from apparate.errors import ApparateError


class OutputUnwritable(ApparateError):
    """Error raised when standard output rejects what the command printed."""

    exit_code = 1


class CheckedOutput:
    """Text stream wrapper that raises OutputUnwritable on a failed write or flush.

    A reader gone ends the process quietly, from whichever thread wrote.
    Without ``report``, as for standard error, other write errors are
    dropped: there is nowhere left to report them.
    """

    def __init__(
        self, stream: TextIO, report: bool = True, name: str = "standard output"
    ) -> None:
        self._stream = stream
        self._report = report
        self._name = name

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            _end_quietly()
        except OSError as error:
            if self._report:
                raise _unwritable(error, self._name) from None
        return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            _end_quietly()
        except OSError as error:
            if self._report:
                raise _unwritable(error, self._name) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _unwritable(error: OSError, name: str) -> OutputUnwritable:
    reason = error.strerror or str(error)
    return OutputUnwritable(f"cannot write to {name}: {reason}")


def _end_quietly() -> NoReturn:
    """End the process as SIGPIPE's default action would, without a word."""
    os._exit(128 + signal.SIGPIPE)
