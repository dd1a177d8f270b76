"""Emulate a slow link: two network namespaces, a shaped veth pair, a delay.

``shaped_link`` makes a server and a client namespace joined by a veth pair
whose both ends send at most ``rate`` (``tc qdisc ... tbf``), with addresses
from 10.253.x.0/30 that exist only inside those namespaces. ``start_registry``
runs the test bed's ``docker-registry`` on existing storage in the server
namespace, and ``start_delay_proxy`` runs ``bench.delay_proxy`` on 127.0.0.1
in the client namespace, so clients reach the registry through the delay and
the shaped veth pair over loopback, where plain HTTP needs no flag.

Everything is torn down on the way out, also after an error or Ctrl-C: the
processes by their own pids, then the namespaces, which takes the veth pair
with them. Needs root.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tests.testbed.procs import ServerProcess
from tests.testbed.registry import REGISTRY_BINARY

REGISTRY_PORT = 5000
# The burst is as large as one GSO packet (64 KiB). The queue keeps up to
# 50 ms of data, about 600 KB at 100 Mbit/s, before tbf drops packets.
TBF_BURST = "64kb"
TBF_LATENCY = "50ms"


@dataclass(frozen=True)
class Link:
    """The two namespaces and the server's address between them."""

    server: str
    client: str
    server_address: str
    rate: str

    def in_server(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.server, *argv]

    def in_client(self, argv: list[str]) -> list[str]:
        """Return ``argv`` run in the client namespace; ``ip`` execs it, same pid."""
        return ["ip", "netns", "exec", self.client, *argv]


def ip(*argv: str) -> None:
    checked(["ip", *argv])


def checked(argv: list[str]) -> None:
    """Run a set-up command; raise with its error output if it fails."""
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed with code {result.returncode}: "
            f"{result.stderr.strip()} (the shaped link needs root, iproute2 "
            "from scripts/setup and a valid --rate)"
        )


@contextmanager
def shaped_link(rate: str = "100mbit") -> Iterator[Link]:
    """Create the namespaces and the shaped veth pair; delete them on exit."""
    pid = os.getpid()
    subnet = f"10.253.{pid % 256}"
    link = Link(
        server=f"apparate-bench-server-{pid}",
        client=f"apparate-bench-client-{pid}",
        server_address=f"{subnet}.1",
        rate=rate,
    )
    ends = {
        link.server: (f"abs{pid}", f"{subnet}.1"),
        link.client: (f"abc{pid}", f"{subnet}.2"),
    }
    created: list[str] = []
    try:
        for namespace in ends:
            ip("netns", "add", namespace)
            created.append(namespace)
        (server_end, _), (client_end, _) = ends.values()
        ip("link", "add", server_end, "type", "veth", "peer", "name", client_end)
        for namespace, (device, address) in ends.items():
            configure_end(namespace, device, address, rate)
        yield link
    finally:
        for namespace in reversed(created):
            subprocess.run(["ip", "netns", "delete", namespace], check=False)


def configure_end(namespace: str, device: str, address: str, rate: str) -> None:
    """Move one veth end into ``namespace``, address it, shape it, bring it up."""
    ip("link", "set", device, "netns", namespace)
    ip("-n", namespace, "addr", "add", f"{address}/30", "dev", device)
    ip("-n", namespace, "link", "set", device, "up")
    ip("-n", namespace, "link", "set", "lo", "up")
    checked(
        ["ip", "netns", "exec", namespace, "tc", "qdisc", "add", "dev", device,
         "root", "tbf", "rate", rate, "burst", TBF_BURST, "latency", TBF_LATENCY]
    )  # fmt: skip


@contextmanager
def start_registry(link: Link, storage: Path, workdir: Path) -> Iterator[str]:
    """Serve ``storage`` from the server namespace; yield its ``host:port``.

    ``storage`` is a test-bed registry's filesystem storage that already
    contains the images. No other registry may use it while this one runs.
    """
    binary = shutil.which(REGISTRY_BINARY)
    if binary is None:
        raise RuntimeError(f"{REGISTRY_BINARY} is not installed; run scripts/setup")
    host = f"{link.server_address}:{REGISTRY_PORT}"
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "config.yml"
    # JSON is valid YAML.
    config.write_text(json.dumps({
        "version": "0.1",
        "log": {"level": "warn", "formatter": "text"},
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": host, "secret": secrets.token_hex(16)},
    }, indent=2))  # fmt: skip
    process = ServerProcess(
        "docker-registry (shaped link)",
        link.in_server([binary, "serve", str(config)]),
        workdir / "registry.log",
    )
    try:
        yield host
    finally:
        process.stop()


class DelayProxy:
    """A running ``bench.delay_proxy`` in the client namespace."""

    def __init__(self, link: Link, upstream: str, rtt_ms: float) -> None:
        argv = [sys.executable, "-m", "bench.delay_proxy",
                "--upstream", upstream, "--rtt-ms", str(rtt_ms)]  # fmt: skip
        self.popen = subprocess.Popen(
            link.in_client(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        self.host = ""

    def wait_ready(self) -> None:
        """Wait for the proxy to listen, which it does once the upstream is up."""
        self.host = f"127.0.0.1:{self._answer()['port']}"

    def counts(self) -> dict[str, int]:
        """Bytes forwarded so far: ``down`` to clients, ``up`` to the registry."""
        stdin = self._pipe(self.popen.stdin)
        stdin.write("count\n")
        stdin.flush()
        return {key: int(value) for key, value in self._answer().items()}

    def stop(self) -> None:
        """Close its standard input, which ends it; kill this pid if it hangs."""
        if self.popen.stdin:
            self.popen.stdin.close()
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)
        if self.popen.stdout:
            self.popen.stdout.close()

    def _answer(self) -> dict[str, int]:
        line = self._pipe(self.popen.stdout).readline()
        if not line:
            raise RuntimeError(
                f"the delay proxy (pid {self.popen.pid}) exited with code "
                f"{self.popen.wait()} before printing its port; check that the "
                "registry started (its log is registry.log in the work folder)"
            )
        answer: dict[str, int] = json.loads(line)
        return answer

    @staticmethod
    def _pipe(stream: IO[str] | None) -> IO[str]:
        if stream is None:
            raise RuntimeError("the delay proxy was started without pipes")
        return stream


@contextmanager
def start_delay_proxy(link: Link, upstream: str, rtt_ms: float) -> Iterator[DelayProxy]:
    """Run the delay proxy in the client namespace, forwarding to ``upstream``.

    The proxy prints its port only once the upstream accepts connections, so
    this also waits for the registry to start.
    """
    proxy = DelayProxy(link, upstream, rtt_ms)
    try:
        proxy.wait_ready()
        yield proxy
    finally:
        proxy.stop()
