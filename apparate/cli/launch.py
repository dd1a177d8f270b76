"""The ``apparate`` command's entry point: load the command line, then run it.

Loading takes about 0.1 s, longer on a busy machine. Ctrl-C meanwhile gets
the same one-line error as later, instead of Python's traceback.
"""

import os
import sys


def run() -> None:
    """Import the command line and run it; Ctrl-C while importing exits 130."""
    try:
        from apparate.cli.main import run as run_command
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        os._exit(130)
    run_command()
