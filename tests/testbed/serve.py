"""Run one test-bed registry from the command line until SIGTERM or SIGINT.

    python -m tests.testbed.serve --kind plain

prints the registry's host (`127.0.0.1:PORT`) on the first line of stdout
once the registry responds, so a shell script can read it. It then serves
until stopped.
`--json` prints the handle's fields as one JSON line instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType

from .registry import KINDS, RegistryHandle, start_registry


def describe(handle: RegistryHandle) -> dict[str, str | None]:
    token_host = handle.token_server.host if handle.token_server else None
    return {
        "kind": handle.kind,
        "host": handle.host,
        "url": handle.url,
        "username": handle.username,
        "password": handle.password,
        "certs_dir": str(handle.certs_dir),
        "ca_file": str(handle.ca_file) if handle.ca_file else None,
        "storage_dir": str(handle.storage_dir),
        "token_server": token_host,
        "redirect_target": handle.redirect_target,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a test-bed registry.")
    parser.add_argument("--kind", choices=KINDS, default="plain")
    parser.add_argument(
        "--empty", action="store_true", help="start without the sample images"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="folder for the registry's storage, config and logs "
        "(default: a temporary folder removed at exit)",
    )
    parser.add_argument(
        "--proxy-of",
        metavar="URL",
        help="for --kind proxy: the registry it caches, such as http://127.0.0.1:5000",
    )
    parser.add_argument("--json", action="store_true", help="print all fields as JSON")
    args = parser.parse_args(argv)
    if (args.kind == "proxy") != (args.proxy_of is not None):
        parser.error("--proxy-of goes with --kind proxy, and only with it")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)

    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    with contextlib.ExitStack() as cleanup:
        workdir = args.workdir
        if workdir is None:
            temporary = tempfile.TemporaryDirectory(prefix="apparate-registry-")
            workdir = Path(cleanup.enter_context(temporary))
        handle = start_registry(
            args.kind, workdir, populated=not args.empty, proxy_of=args.proxy_of
        )
        try:
            if args.json:
                print(json.dumps(describe(handle)), flush=True)
            else:
                print(handle.host, flush=True)
            while not stop.wait(1.0):
                pass
        finally:
            handle.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
