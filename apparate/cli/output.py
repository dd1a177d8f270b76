"""Standard output whose write errors end a command with one ``error:`` line.

A summary redirected to a file on a full disk, or to a closed descriptor,
fails when it is written or flushed. Python would show a traceback then,
and a script would find the file empty or cut short with no word why.
"""

from __future__ import annotations

from typing import Any, TextIO

from apparate.errors import ApparateError


class OutputUnwritable(ApparateError):
    """Error raised when standard output rejects what the command printed."""

    exit_code = 1


class CheckedOutput:
    """Text stream wrapper that raises OutputUnwritable on a failed write or flush."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as error:
            raise _unwritable(error) from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as error:
            raise _unwritable(error) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _unwritable(error: OSError) -> OutputUnwritable:
    reason = error.strerror or str(error)
    return OutputUnwritable(f"cannot write to standard output: {reason}")
