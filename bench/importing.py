"""Time apparate's streaming import against each daemon loading a file.

The sample images are pulled once into a store. Then, for docker and for
containerd, each round removes the image from the daemon, and times:

- apparate: ``apparate import REF --into docker`` (or ``containerd``), which
  streams the archive from the store, decompressing layers for docker;
- the daemon alone: ``docker load -i FILE`` or ``ctr images import FILE`` of
  the same archive, written to disk beforehand (not timed).

Both daemons are started for the benchmark (dockerd with vfs, containerd
with the native snapshotter), each in a temporary folder. The layer sizes
that docker-archives need are counted once before the first round, as a
pull records them.

Then the same for an update of the top layer alone (``base:app-update``,
``base:v1``'s root filesystem under ``base:v2``'s app layer) into daemons
that have ``base:v1``: apparate leaves out the layers the daemon has,
while the daemon's own load reads the whole archive file.

In the first table both ways give the daemon the same archive, so they
differ by what runs before the first byte reaches it. A last table times
that part alone: ``apparate import --into oci`` (start, find the image in
the store, send nothing) against ``docker --version`` and ``ctr --version``,
with the floor of any Python program and of one that loads httpx, which
apparate's docker client is built on.

Run it through ``scripts/bench import``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from tests.testbed.app_update import push_app_update
from tests.testbed.containerd import ContainerdHandle, ctr, start_containerd
from tests.testbed.dockerd import DockerdHandle, docker, start_dockerd
from tests.testbed.registry import start_registry
from tests.testbed.samples import ensure_samples

APPARATE = str(Path(sys.executable).with_name("apparate"))
NAMESPACE = "bench"
DEFAULT_TAGS = ("base:v1", "base:v1-zstd")
# Start-up takes a tenth of a second, so it is timed more often than imports.
STARTUP_RUNS = 11


def run(argv: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stderr}")
    return done.stdout


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


class Bench:
    """The store, both daemons and the commands that each round runs."""

    def __init__(
        self, store: Path, dockerd: DockerdHandle, containerd: ContainerdHandle
    ) -> None:
        self.store = store
        self.dockerd = dockerd
        self.containerd = containerd
        self.env = {
            **os.environ,
            "DOCKER_HOST": dockerd.host,
            "CONTAINERD_ADDRESS": containerd.address,
            "CONTAINERD_NAMESPACE": NAMESPACE,
            "CONTAINERD_SNAPSHOTTER": containerd.snapshotter,
        }

    def apparate_import(self, reference: str, target: str) -> dict:
        output = run(
            [APPARATE, "import", "--json", "--store", str(self.store),
             "--into", target, reference],
            self.env,
        )  # fmt: skip
        return json.loads(output)

    def pull(self, reference: str) -> None:
        run([APPARATE, "pull", "-q", "--store", str(self.store), "--into", "oci",
             reference], self.env)  # fmt: skip

    def forget_docker(self, reference: str) -> None:
        docker(self.dockerd, "image", "rm", "--force", reference)

    def forget_containerd(self, reference: str) -> None:
        ctr(self.containerd, "images", "rm", "--sync", reference, namespace=NAMESPACE)

    def docker_load(self, path: Path) -> None:
        done = docker(self.dockerd, "load", "-q", "-i", str(path))
        if done.returncode != 0:
            raise RuntimeError(f"docker load -i {path} failed:\n{done.stderr}")

    def ctr_import(self, path: Path) -> None:
        done = ctr(self.containerd, "images", "import", str(path), namespace=NAMESPACE)
        if done.returncode != 0:
            raise RuntimeError(f"ctr images import {path} failed:\n{done.stderr}")


def measure(
    bench: Bench, reference: str, scratch: Path, rounds: int, held: str | None = None
) -> list[list]:
    """Return one row per daemon: archive size and the median seconds of both ways.

    The two ways alternate, and which goes first swaps each round, so a
    change of machine load hits both alike. Before each run the image is
    removed and the removal's writes are flushed (``sync``), so no run pays
    for the one before it. ``held``, an image sharing layers with
    ``reference``, is imported into each daemon first and kept there.
    """
    docker_file, oci_file = scratch / "docker.tar", scratch / "oci.tar"
    bench.apparate_import(reference, f"docker-archive:{docker_file}")
    bench.apparate_import(reference, f"oci-archive:{oci_file}")
    cases = [
        ("docker", bench.forget_docker, docker_file, bench.docker_load),
        ("containerd", bench.forget_containerd, oci_file, bench.ctr_import),
    ]
    rows = []
    for target, forget, path, load in cases:
        if held is not None:
            bench.apparate_import(held, target)
        streamed: list[float] = []
        from_file: list[float] = []
        ways = [
            (streamed, partial(bench.apparate_import, reference, target)),
            (from_file, partial(load, path)),
        ]
        for round_number in range(rounds):
            for seconds, action in ways[:: 1 if round_number % 2 == 0 else -1]:
                forget(reference)
                os.sync()
                seconds.append(timed(action))
        forget(reference)
        rows.append([
            reference.split("/", 1)[1], target, path.stat().st_size,
            statistics.median(streamed), statistics.median(from_file),
        ])  # fmt: skip
    return rows


def startup(bench: Bench, reference: str, rounds: int) -> list[tuple[str, float]]:
    """Return the median seconds of each command that starts an import."""
    commands = {
        "apparate import --into oci": [
            APPARATE, "import", "-q", "--store", str(bench.store), "--into", "oci",
            reference,
        ],
        "python -c pass": [sys.executable, "-c", "pass"],
        "python -c 'import httpx'": [sys.executable, "-c", "import httpx"],
        "docker --version": ["docker", "--version"],
        "ctr --version": ["ctr", "--version"],
    }  # fmt: skip
    rows = []
    for label, argv in commands.items():
        seconds = [timed(partial(run, argv, bench.env)) for _ in range(rounds)]
        rows.append((label, statistics.median(seconds)))
    return rows


def print_startup(rows: list[tuple[str, float]], rounds: int) -> None:
    print(f"start-up: median of {rounds} runs, no daemon contacted")
    width = max(len(command) for command, _ in rows)
    for command, seconds in rows:
        print(f"{command.ljust(width)}  {seconds:.3f} s")


def print_rows(rows: list[list], rounds: int, title: str) -> None:
    print(f"{title}: median of {rounds} rounds")
    header = ["IMAGE", "DAEMON", "ARCHIVE", "APPARATE S", "FROM FILE S", "RATIO"]
    table = [
        [image, target, f"{size / 1e6:.1f} MB", f"{streamed:.2f}",
         f"{from_file:.2f}", f"{streamed / from_file:.2f}"]
        for image, target, size, streamed, from_file in rows
    ]  # fmt: skip
    widths = [max(len(str(row[n])) for row in [header, *table]) for n in range(6)]
    for row in [header, *table]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)))
    print(
        "RATIO is apparate's streamed import over the daemon loading the same "
        "archive from disk (docker load -i, ctr images import FILE); below 1 is faster."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tag", action="append", help="sample tag (repeatable)")
    args = parser.parse_args(argv)
    tags = args.tag or list(DEFAULT_TAGS)

    scratch = Path(tempfile.mkdtemp(prefix="apparate-bench-", dir="/tmp"))
    registry = start_registry("plain", scratch / "registry")
    containerd = start_containerd(scratch / "ctd")
    dockerd = start_dockerd(scratch / "dk", containerd=containerd.address)
    try:
        bench = Bench(scratch / "store", dockerd, containerd)
        rows = []
        for tag in tags:
            reference = f"{registry.host}/samples/{tag}"
            bench.pull(reference)
            rows += measure(bench, reference, scratch, args.rounds)
        print_rows(rows, args.rounds, "import, each daemon starts without the image")
        print()
        base = f"{registry.host}/samples/base:v1"
        update = push_app_update(ensure_samples(), registry.host, scratch)
        bench.pull(base)
        bench.pull(update)
        rows = measure(bench, update, scratch, args.rounds, held=base)
        print_rows(rows, args.rounds, "update import, each daemon has base:v1")
        print()
        startup_runs = max(args.rounds, STARTUP_RUNS)
        print_startup(startup(bench, reference, startup_runs), startup_runs)
    finally:
        dockerd.stop()
        containerd.stop()
        registry.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
