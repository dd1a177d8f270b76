"""Time an update pull (v1 held, v2 wanted) with apparate and with skopeo.

The sample images are converted once into a test-bed registry on 127.0.0.1.
apparate pulls converted v2 into a store that contains converted v1, and skopeo
copies the original v2 into an empty OCI layout (a full pull) and into a
layout that contains v1 (reusing layers, as docker does). Bytes are what
crossed the network: apparate's own count, and for skopeo the layer blobs
it wrote that were not in the layout before. Run it through ``scripts/bench``.
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

from apparate.convert import ConvertOptions, convert
from tests.testbed.registry import start_registry

APPARATE = str(Path(sys.executable).with_name("apparate"))


def apparate_pull(reference: str, store: Path) -> int:
    output = subprocess.run(
        [APPARATE, "pull", "--json", "--store", str(store), reference],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return int(json.loads(output)["bytes_fetched"])


def skopeo_copy(reference: str, layout: Path) -> int:
    """Copy into ``layout`` and return the bytes of blobs it did not hold."""
    before = blob_names(layout)
    subprocess.run(
        ["skopeo", "copy", "--quiet", "--src-tls-verify=false",
         f"docker://{reference}", f"oci:{layout}:{reference}"],
        check=True, capture_output=True,
    )  # fmt: skip
    added = blob_names(layout) - before
    return sum((layout / "blobs" / "sha256" / name).stat().st_size for name in added)


def blob_names(layout: Path) -> set[str]:
    folder = layout / "blobs" / "sha256"
    return {path.name for path in folder.iterdir()} if folder.is_dir() else set()


def timed(prepare: Callable[[], None], run: Callable[[], int]) -> tuple[float, int]:
    prepare()
    started = time.perf_counter()
    fetched = run()
    return time.perf_counter() - started, fetched


def scenarios(
    host: str, scratch: Path
) -> dict[str, tuple[Callable[[], None], Callable[[], int]]]:
    """Return each scenario: how to set up its destination, and the timed pull."""
    store, layout = scratch / "store", scratch / "layout"
    original, converted = f"{host}/samples/base", f"{host}/converted/base"

    def fresh(
        path: Path, seed: Callable[[], object] | None = None
    ) -> Callable[[], None]:
        def prepare() -> None:
            shutil.rmtree(path, ignore_errors=True)
            if seed:
                seed()

        return prepare

    return {
        "apparate v1 -> v2": (
            fresh(store, lambda: apparate_pull(f"{converted}:v1", store)),
            lambda: apparate_pull(f"{converted}:v2", store),
        ),
        "skopeo v2, empty layout": (
            fresh(layout), lambda: skopeo_copy(f"{original}:v2", layout)
        ),
        "skopeo v2, v1 in layout": (
            fresh(layout, lambda: skopeo_copy(f"{original}:v1", layout)),
            lambda: skopeo_copy(f"{original}:v2", layout),
        ),
        "apparate cold, converted": (
            fresh(store), lambda: apparate_pull(f"{converted}:v2", store)
        ),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="pulls per scenario")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="apparate-delta-") as temporary:
        scratch = Path(temporary)
        registry = start_registry("plain", scratch / "registry")
        try:
            for tag in ("v1", "v2"):
                convert(f"{registry.host}/samples/base:{tag}",
                        f"{registry.host}/converted/base:{tag}",
                        ConvertOptions(store=scratch / "convert"))  # fmt: skip
            report(registry.host, scratch, args.rounds)
        finally:
            registry.stop()
    return 0


def report(host: str, scratch: Path, rounds: int) -> None:
    print(f"update pull on loopback ({host}), median of {rounds} rounds")
    print(f"{'scenario':<26} {'seconds':>8} {'MB fetched':>11}")
    results = {}
    for name, (prepare, run) in scenarios(host, scratch).items():
        samples = [timed(prepare, run) for _ in range(rounds)]
        seconds = statistics.median(s for s, _ in samples)
        fetched = samples[-1][1]
        results[name] = (seconds, fetched)
        print(f"{name:<26} {seconds:>8.3f} {fetched / 1e6:>11.2f}")
    ours = results["apparate v1 -> v2"]
    for name in ("skopeo v2, empty layout", "skopeo v2, v1 in layout"):
        theirs = results[name]
        print(
            f"{name} / apparate v1 -> v2: {theirs[0] / ours[0]:.2f}x time, "
            f"{theirs[1] / ours[1]:.2f}x bytes"
        )


if __name__ == "__main__":
    sys.exit(main())
