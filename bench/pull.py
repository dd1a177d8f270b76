"""Time ``apparate pull`` against ``skopeo copy`` on one local registry.

Both tools pull the same sample images from the same test-bed registry on
127.0.0.1 into empty OCI layouts, alternating, several rounds each; the
median of each is printed with the ratio. Run it through ``scripts/bench``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.testbed.registry import start_registry

IMAGES = (
    "samples/base:v1",
    "samples/base:v2",
    "samples/multi:v1",
    "samples/base:v1-zstd",
    "samples/base:v1-docker",
)
APPARATE = str(Path(sys.executable).with_name("apparate"))


def apparate_pull(reference: str, destination: Path) -> list[str]:
    return [APPARATE, "pull", "--quiet", "--store", str(destination), reference]


def skopeo_copy(reference: str, destination: Path) -> list[str]:
    return [
        "skopeo", "copy", "--quiet", "--src-tls-verify=false",
        f"docker://{reference}", f"oci:{destination}:{reference}",
    ]  # fmt: skip


def time_once(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def time_tool(
    build: Callable[[str, Path], list[str]], reference: str, scratch: Path
) -> float:
    destination = scratch / "dest"
    shutil.rmtree(destination, ignore_errors=True)
    seconds = time_once(build(reference, destination))
    shutil.rmtree(destination)
    return seconds


def stored_bytes(reference: str, scratch: Path) -> int:
    destination = scratch / "sized"
    subprocess.run(
        apparate_pull(reference, destination), check=True, stdout=subprocess.DEVNULL
    )
    size = sum(
        path.stat().st_size
        for path in (destination / "blobs").rglob("*")
        if path.is_file()
    )
    shutil.rmtree(destination)
    return size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--rounds", type=int, default=5, help="pulls per tool and image"
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="apparate-bench-") as temporary:
        scratch = Path(temporary)
        registry = start_registry("plain", scratch / "registry")
        try:
            run_all(registry.host, scratch, args.rounds)
        finally:
            registry.stop()
    return 0


def run_all(host: str, scratch: Path, rounds: int) -> None:
    print(
        f"registry {host} (loopback), {rounds} rounds, median seconds of a pull "
        "into an empty OCI layout"
    )
    header = (
        f"{'image':<24} {'MB':>7} {'apparate s':>11} {'skopeo s':>9} "
        f"{'skopeo/apparate':>16}"
    )
    print(header)
    totals = [0.0, 0.0]
    for image in IMAGES:
        reference = f"{host}/{image}"
        size = stored_bytes(reference, scratch)
        apparate_times, skopeo_times = [], []
        for _ in range(rounds):
            apparate_times.append(time_tool(apparate_pull, reference, scratch))
            skopeo_times.append(time_tool(skopeo_copy, reference, scratch))
        ours, theirs = (
            statistics.median(apparate_times),
            statistics.median(skopeo_times),
        )
        totals[0] += ours
        totals[1] += theirs
        print(
            f"{image:<24} {size / 1e6:>7.1f} {ours:>11.3f} {theirs:>9.3f} "
            f"{theirs / ours:>16.2f}"
        )
    print(
        f"{'all images':<24} {'':>7} {totals[0]:>11.3f} {totals[1]:>9.3f} "
        f"{totals[1] / totals[0]:>16.2f}"
    )


if __name__ == "__main__":
    sys.exit(main())
