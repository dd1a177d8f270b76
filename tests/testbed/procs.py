"""Start, watch and stop the server processes of the test bed.

Every process is tracked by its own pid through `subprocess.Popen`, so a
teardown never touches processes that the test bed did not start.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import httpx

LOG_TAIL_BYTES = 4000


class ServerProcess:
    """A child process whose stdout and stderr go to one log file."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        # The log stays open for the life of the process, so no `with` here.
        self._log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115
        try:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
            )
        except OSError:
            self._log.close()
            raise

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self) -> str:
        """Return the end of the log, for error messages about this process."""
        data = self.log_path.read_bytes()[-LOG_TAIL_BYTES:]
        return data.decode("utf-8", errors="replace")

    def stop(self, timeout: float = 10.0) -> None:
        """Send SIGTERM to this pid, then SIGKILL if it outlives `timeout`."""
        if self.running():
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)
        self._log.close()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_http(
    url: str,
    process: ServerProcess,
    *,
    verify: ssl.SSLContext | bool = True,
    timeout: float = 30.0,
) -> None:
    """Poll `url` until any HTTP response arrives.

    A 401 counts as ready because an auth-protected registry returns 401
    for `/v2/`. Raises RuntimeError with the log tail if the process exits or
    the timeout passes.
    """
    deadline = time.monotonic() + timeout
    with httpx.Client(verify=verify, timeout=2.0) as client:
        while True:
            if not process.running():
                raise RuntimeError(
                    f"{process.name} exited with code {process.popen.returncode} "
                    f"before {url} answered; log {process.log_path}:\n"
                    f"{process.log_tail()}"
                )
            try:
                client.get(url)
                return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{process.name} did not answer {url} within {timeout} s; "
                    f"log {process.log_path}:\n{process.log_tail()}"
                )
            time.sleep(0.05)
