"""Start the real containerd (Debian's 1.6 package) for tests.

The daemon runs as root with its root, state, sockets, config and log all
inside a folder that the caller owns. It uses neither the system's
/var/lib/containerd nor the default socket /run/containerd/containerd.sock,
and the shim sockets in the NOTE below are the only files it creates elsewhere.
Tests reach it with `ctr`, always through the handle's own socket.

Images are unpacked with the `native` snapshotter, which copies layers into
plain folders and needs no overlay mounts, so it also works where overlayfs
cannot be mounted.

NOTE: containerd 1.6 puts the sockets of its runc shims in the fixed folder
/run/containerd/s regardless of `--state`, so running a container creates that
folder. Each socket is named by the sha256 of the daemon's address, namespace
and container id (`SocketAddress` in runtime/v2/shim/util_unix.go), so it does
not collide with the shims of a system containerd.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .procs import ServerProcess

log = logging.getLogger(__name__)

CONTAINERD_BINARY = "containerd"
CTR_BINARY = "ctr"
SNAPSHOTTER = "native"
# sun_path in struct sockaddr_un is 108 bytes long, including the final NUL.
MAX_SOCKET_PATH = 107
CTR_TIMEOUT = 300.0

# Plugins that fail or are of no use in a sandbox. The CRI plugin is the
# Kubernetes CRI server, which needs CNI and a pause image. The aufs, btrfs and
# zfs snapshotters need their filesystems or kernel modules, and devmapper needs
# a configured thin pool and logs a warning at every start without one.
DISABLED_PLUGINS = (
    "io.containerd.grpc.v1.cri",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
)

CONFIG_TEMPLATE = """\
version = 2
disabled_plugins = [{disabled}]

[grpc]
  address = "{address}"

[ttrpc]
  address = "{address}.ttrpc"

# The default is /opt/containerd, outside the test's folder.
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"""


class ContainerdUnavailable(RuntimeError):
    """The containerd binary is not installed."""


@dataclass
class ContainerdHandle:
    """A running containerd and the paths that `ctr` needs to use it.

    `fifo_dir` and `runc_root` keep the task I/O pipes and runc's state of
    `ctr run` inside `workdir`, and `run_options()` passes them to `ctr run`.
    """

    address: str
    workdir: Path
    root: Path
    state: Path
    config_path: Path
    log_path: Path
    fifo_dir: Path
    runc_root: Path
    snapshotter: str = SNAPSHOTTER
    _process: ServerProcess | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def run_options(self) -> list[str]:
        """Return the `ctr run` options that keep the container's files here."""
        return [
            "--snapshotter", self.snapshotter,
            "--fifo-dir", str(self.fifo_dir),
            "--runc-root", str(self.runc_root),
        ]  # fmt: skip

    def log_tail(self) -> str:
        return self._process.log_tail() if self._process else ""

    def stop(self) -> None:
        """Kill the tasks left in every namespace, then stop the daemon.

        runc shims detach from containerd and outlive it, so a container that a
        failed test left running is killed through containerd first.
        """
        if self._process is None:
            return
        try:
            if self._process.running():
                _kill_tasks(self)
        finally:
            self._process.stop()
        self._process = None


def containerd_binary() -> str | None:
    return shutil.which(CONTAINERD_BINARY)


def start_containerd(workdir: Path, *, timeout: float = 30.0) -> ContainerdHandle:
    """Start containerd with its root, state and socket under `workdir`.

    Raises ContainerdUnavailable if containerd or ctr is not installed, and
    RuntimeError with the end of the daemon's log if it exits or `ctr version`
    does not succeed within `timeout` seconds.
    """
    binary = containerd_binary()
    if binary is None or shutil.which(CTR_BINARY) is None:
        raise ContainerdUnavailable(
            "containerd or ctr is not installed; install the Debian package containerd"
        )
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    address = str(workdir / "containerd.sock")
    if len(address) > MAX_SOCKET_PATH:
        raise ValueError(
            f"socket path {address} is longer than {MAX_SOCKET_PATH} bytes, "
            "the limit of a unix socket address; use a shorter workdir"
        )
    handle = ContainerdHandle(
        address=address,
        workdir=workdir,
        root=workdir / "root",
        state=workdir / "state",
        config_path=workdir / "config.toml",
        log_path=workdir / "containerd.log",
        fifo_dir=workdir / "fifo",
        runc_root=workdir / "runc",
    )
    handle.config_path.write_text(
        CONFIG_TEMPLATE.format(
            disabled=", ".join(f'"{name}"' for name in DISABLED_PLUGINS),
            address=address,
            opt=workdir / "opt",
        )
    )
    argv = [
        binary,
        "--config", str(handle.config_path),
        "--root", str(handle.root),
        "--state", str(handle.state),
        "--address", address,
        "--log-level", "info",
    ]  # fmt: skip
    handle._process = ServerProcess("containerd", argv, handle.log_path)
    try:
        _wait_until_ready(handle, handle._process, timeout)
    except BaseException:
        handle.stop()
        raise
    log.info("containerd pid %d listens on %s", handle._process.pid, address)
    return handle


def ctr(
    handle: ContainerdHandle,
    *args: str,
    namespace: str = "default",
    input: bytes | str | None = None,
    timeout: float = CTR_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run `ctr -a ADDRESS -n NAMESPACE ARGS` and return its decoded output.

    `input` goes to standard input as bytes (a str is UTF-8 encoded), so an
    image archive can be fed to `images import -`. The exit code is not
    checked. CONTAINERD_SNAPSHOTTER makes the native snapshotter the default
    of every subcommand that unpacks (pull, import, run).
    """
    argv = [CTR_BINARY, "-a", handle.address, "-n", namespace, *args]
    data = input.encode() if isinstance(input, str) else input
    result = subprocess.run(
        argv,
        input=data,
        capture_output=True,
        timeout=timeout,
        check=False,
        env=_ctr_environment(handle),
    )
    return subprocess.CompletedProcess(
        argv,
        result.returncode,
        result.stdout.decode("utf-8", errors="replace"),
        result.stderr.decode("utf-8", errors="replace"),
    )


def _ctr_environment(handle: ContainerdHandle) -> dict[str, str]:
    # ctr 1.6 takes the default of its --snapshotter options from this variable.
    return {**os.environ, "CONTAINERD_SNAPSHOTTER": handle.snapshotter}


def _wait_until_ready(
    handle: ContainerdHandle, process: ServerProcess, timeout: float
) -> None:
    """Poll `ctr version`, which succeeds once the gRPC API is served."""
    deadline = time.monotonic() + timeout
    while True:
        if not process.running():
            raise RuntimeError(
                f"containerd exited with code {process.popen.returncode} before "
                f"it served {handle.address}; log {process.log_path}:\n"
                f"{process.log_tail()}"
            )
        if Path(handle.address).exists():
            try:
                if ctr(handle, "version", timeout=5).returncode == 0:
                    return
            except subprocess.TimeoutExpired:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"`ctr version` on {handle.address} timed out: containerd was not "
                f"ready within {timeout} s; log {process.log_path}:\n{process.log_tail()}"
            )
        time.sleep(0.1)


def _kill_tasks(handle: ContainerdHandle) -> None:
    """SIGKILL and delete every task this daemon still runs, in all namespaces."""
    namespaces = ctr(handle, "namespaces", "ls", "-q", timeout=30)
    for namespace in namespaces.stdout.split():
        tasks = ctr(handle, "tasks", "ls", "-q", namespace=namespace, timeout=30)
        for task in tasks.stdout.split():
            log.warning("killing task %s left in namespace %s", task, namespace)
            ctr(handle, "tasks", "kill", "-a", "-s", "SIGKILL", task,
                namespace=namespace, timeout=30)  # fmt: skip
            deleted = ctr(
                handle, "tasks", "delete", "--force", task,
                namespace=namespace, timeout=30,
            )  # fmt: skip
            if deleted.returncode != 0:
                log.error(
                    "failed to delete task %s in namespace %s: %s",
                    task, namespace, deleted.stderr.strip(),
                )  # fmt: skip
