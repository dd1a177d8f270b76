"""Time ``apparate pull`` against ``skopeo copy`` on one local registry.

Both tools pull the same sample images from the same test-bed registry on
127.0.0.1 into empty OCI layouts, alternating, several rounds each; the
median of each is printed with the ratio. Run it through ``scripts/bench``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from apparate.store.layout import REF_NAME
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
) -> tuple[float, float]:
    """Time one pull, then the shell's diff_id check of what it stored."""
    destination = scratch / "dest"
    shutil.rmtree(destination, ignore_errors=True)
    seconds = time_once(build(reference, destination))
    check_seconds = time_diff_id_check(destination, reference)
    shutil.rmtree(destination)
    return seconds, check_seconds


def time_diff_id_check(layout: Path, reference: str) -> float:
    """Time decompressing and hashing each layer with gzip or zstd and sha256sum.

    This is the check apparate makes during its pull and skopeo does not, so
    skopeo's time plus this one compares equal work.
    """
    index = json.loads((layout / "index.json").read_text())
    entry = next(
        item
        for item in index["manifests"]
        if item.get("annotations", {}).get(REF_NAME) == reference
    )
    manifest = json.loads(blob(layout, entry["digest"]).read_text())
    started = time.perf_counter()
    for layer in manifest["layers"]:
        tool = "zstd -dc" if "zstd" in layer["mediaType"] else "gzip -dc"
        command = f"{tool} < {blob(layout, layer['digest'])} | sha256sum"
        subprocess.run(command, shell=True, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def blob(layout: Path, digest: str) -> Path:
    algorithm, _, hex_digest = digest.partition(":")
    return layout / "blobs" / algorithm / hex_digest


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
        "into an empty OCI layout;\n'+check' adds gzip/zstd -dc | sha256sum of "
        "each stored layer, the diff_id check apparate makes while pulling"
    )
    header = (
        f"{'image':<24} {'MB':>6} {'apparate':>9} {'skopeo':>7} "
        f"{'skopeo+check':>13} {'skopeo/apparate':>16} {'(+check)/apparate':>18}"
    )
    print(header)
    totals = [0.0, 0.0, 0.0]
    for image in IMAGES:
        reference = f"{host}/{image}"
        size = stored_bytes(reference, scratch)
        ours, theirs, checked = [], [], []
        for _ in range(rounds):
            ours.append(time_tool(apparate_pull, reference, scratch)[0])
            skopeo_seconds, check_seconds = time_tool(skopeo_copy, reference, scratch)
            theirs.append(skopeo_seconds)
            checked.append(skopeo_seconds + check_seconds)
        row = [statistics.median(values) for values in (ours, theirs, checked)]
        totals = [total + value for total, value in zip(totals, row, strict=True)]
        print_row(image, f"{size / 1e6:.1f}", row)
    print_row("all images", "", totals)


def print_row(name: str, size: str, seconds: list[float]) -> None:
    ours, theirs, checked = seconds
    print(
        f"{name:<24} {size:>6} {ours:>9.3f} {theirs:>7.3f} {checked:>13.3f} "
        f"{theirs / ours:>16.2f} {checked / ours:>18.2f}"
    )


if __name__ == "__main__":
    sys.exit(main())
