"""The ``apparate`` command's entry point: load the command line, then run it.

Loading takes about 0.1 s, longer on a busy machine. Ctrl-C meanwhile gets
the same one-line error as later, instead of Python's traceback. SIGTERM,
which CI runners and service managers send to stop a job, stops a command
as Ctrl-C does, and exits with 143.
"""

import os
import signal
import sys
from types import FrameType


class Terminated(KeyboardInterrupt):
    """The interrupt SIGTERM raises, which stops a command as Ctrl-C does."""


# Set by SIGTERM, for interrupts that typer turns into exit code 130.
_terminated = False


def run() -> None:
    """Import the command line and run it. Ctrl-C while importing exits 130."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        from apparate.cli.main import run as run_command
    except KeyboardInterrupt as stop:
        print("error: interrupted", file=sys.stderr)
        os._exit(exit_code_of(stop))
    run_command()


def exit_code_of(stop: KeyboardInterrupt | None) -> int:
    """Return the shell's code for a command that a signal stopped.

    ``stop`` None stands for an interrupt whose exception is gone.
    """
    if isinstance(stop, Terminated) or (stop is None and _terminated):
        return 128 + signal.SIGTERM
    return 128 + signal.SIGINT


def _terminate(signum: int, frame: FrameType | None) -> None:
    global _terminated
    _terminated = True
    raise Terminated()
