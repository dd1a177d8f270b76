"""Start the real dockerd (Debian's docker.io 20.10 package) for tests.

The daemon runs as root with its data root, exec root, socket, pidfile,
config and log inside a folder that the caller owns, so it leaves the
system's /var/lib/docker and /var/run/docker.sock alone. It never reaches
the network on its own: it gets no bridge, sets no iptables rules, and
tests only load images and run them with `--network none`. Layers are
stored with the `vfs` driver, which copies folders and needs no overlay
mounts. Containers run through a containerd that the caller starts (the
`containerd` fixture), or dockerd's own when none is given.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .procs import ServerProcess

log = logging.getLogger(__name__)

DOCKERD_BINARY = "dockerd"
# The docker.io package's own client, which speaks the daemon's API version.
DOCKER_CLI = "/usr/bin/docker"
# sun_path in struct sockaddr_un is 108 bytes long, including the final NUL.
MAX_SOCKET_PATH = 107
DOCKER_TIMEOUT = 300.0


class DockerdUnavailable(RuntimeError):
    """The dockerd binary is not installed."""


@dataclass
class DockerdHandle:
    """A running dockerd and the paths that tests need to use it."""

    socket: str
    workdir: Path
    data_root: Path
    exec_root: Path
    pidfile: Path
    log_path: Path
    _process: ServerProcess | None = field(default=None, repr=False)

    @property
    def host(self) -> str:
        """The daemon's address as DOCKER_HOST and `docker -H` take it."""
        return f"unix://{self.socket}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def log_tail(self) -> str:
        return self._process.log_tail() if self._process else ""

    def stop(self) -> None:
        """Stop the daemon by its pid; it stops its containers first."""
        if self._process is None:
            return
        self._process.stop(timeout=30.0)
        self._process = None


def dockerd_binary() -> str | None:
    return shutil.which(DOCKERD_BINARY)


def start_dockerd(
    workdir: Path, *, containerd: str | None = None, timeout: float = 60.0
) -> DockerdHandle:
    """Start dockerd with everything under `workdir`.

    `containerd` is the socket of a running containerd; without it dockerd
    starts its own. Raises DockerdUnavailable if dockerd is not installed,
    and RuntimeError with the end of its log if it exits or does not respond
    to `GET /_ping` within `timeout` seconds.
    """
    binary = dockerd_binary()
    if binary is None:
        raise DockerdUnavailable(
            "dockerd is not installed; install the Debian package docker.io"
        )
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    socket = str(workdir / "docker.sock")
    if len(socket) > MAX_SOCKET_PATH:
        raise ValueError(
            f"socket path {socket} is longer than {MAX_SOCKET_PATH} bytes, "
            "the limit of a unix socket address; use a shorter workdir"
        )
    handle = DockerdHandle(
        socket=socket,
        workdir=workdir,
        data_root=workdir / "data",
        exec_root=workdir / "exec",
        pidfile=workdir / "docker.pid",
        log_path=workdir / "dockerd.log",
    )
    config = workdir / "daemon.json"
    # An empty config keeps /etc/docker/daemon.json out of the test.
    config.write_text(json.dumps({}))
    argv = [
        binary,
        "--config-file", str(config),
        "--data-root", str(handle.data_root),
        "--exec-root", str(handle.exec_root),
        "--pidfile", str(handle.pidfile),
        "-H", handle.host,
        "--storage-driver=vfs",
        "--iptables=false",
        "--ip6tables=false",
        "--ip-forward=false",
        "--ip-masq=false",
        "--bridge=none",
        "--log-level", "info",
    ]  # fmt: skip
    if containerd:
        argv += ["--containerd", containerd]
    handle._process = ServerProcess("dockerd", argv, handle.log_path)
    try:
        _wait_until_ready(handle, handle._process, timeout)
    except BaseException:
        handle.stop()
        raise
    log.info("dockerd pid %d listens on %s", handle._process.pid, socket)
    return handle


def docker(
    handle: DockerdHandle, *args: str, timeout: float = DOCKER_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run `docker -H unix://SOCKET ARGS` and return its output; the code is not checked."""
    return subprocess.run(
        [DOCKER_CLI, "-H", handle.host, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _wait_until_ready(
    handle: DockerdHandle, process: ServerProcess, timeout: float
) -> None:
    """Poll `GET /_ping` on the daemon's socket until it returns OK."""
    deadline = time.monotonic() + timeout
    transport = httpx.HTTPTransport(uds=handle.socket)
    with httpx.Client(transport=transport, base_url="http://docker") as client:
        while True:
            if not process.running():
                raise RuntimeError(
                    f"dockerd exited with code {process.popen.returncode} before "
                    f"it served {handle.socket}; log {process.log_path}:\n"
                    f"{process.log_tail()}"
                )
            # httpx leaves its socket unclosed when the path does not exist yet.
            exists = Path(handle.socket).exists()
            try:
                if exists and client.get("/_ping", timeout=2.0).text == "OK":
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"dockerd did not answer /_ping on {handle.socket} within "
                    f"{timeout} s; log {process.log_path}:\n{process.log_tail()}"
                )
            time.sleep(0.1)
