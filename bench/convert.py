"""Time the chunked-layer writer on the sample layers and on a 1 GB layer.

Each conversion runs in a child process, so its peak RSS is its own. The
1 GB layer is a tar of real files from this machine's /usr, built once and
cached beside the sample images. Run it through ``scripts/bench``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from apparate.chunked.writer import DEFAULT_LEVEL, Encoder, write_chunked_layer
from apparate.chunker import default_chunker
from apparate.layers import open_tar_stream
from tests.testbed.samples import ensure_samples

BIG_LAYER_BYTES = 1 << 30
GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
PLAIN_LAYER = "application/vnd.oci.image.layer.v1.tar"


def convert_one(path: Path, media_type: str, level: int) -> dict[str, float]:
    """Convert one layer file, discarding the output; return the figures."""
    written = 0

    def count(data: bytes) -> None:
        nonlocal written
        written += len(data)

    started = time.perf_counter()
    with open(path, "rb") as blob:
        layer = write_chunked_layer(
            open_tar_stream(blob, media_type),
            count,
            default_chunker(),
            Encoder(level),
        )
    seconds = time.perf_counter() - started
    uncompressed = sum(entry.length for entry in layer.table.entries)
    return {
        "seconds": seconds,
        "uncompressed": uncompressed,
        "converted": written,
        "chunks": len(layer.table.entries),
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def sample_layers() -> list[tuple[str, Path]]:
    samples = ensure_samples()
    layers = []
    for tag in ("base:v1", "base:v2"):
        manifest = json.loads(
            blob_path(samples.layout, samples.images[tag].digest).read_text()
        )
        for number, layer in enumerate(manifest["layers"]):
            layers.append(
                (f"{tag} layer {number}", blob_path(samples.layout, layer["digest"]))
            )
    return layers


def blob_path(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.removeprefix("sha256:")


def big_layer(cache: Path) -> Path:
    """Build (once) a tar of real files from /usr, about 1 GB, repeating if needed."""
    path = cache / "big-layer.tar"
    if path.exists() and path.stat().st_size >= BIG_LAYER_BYTES:
        return path
    files = [
        p for p in sorted(Path("/usr").rglob("*")) if p.is_file() and not p.is_symlink()
    ]
    total = 0
    with tarfile.open(
        path.with_suffix(".partial"), "w", format=tarfile.PAX_FORMAT
    ) as tar:
        for round_number in range(100):
            for file in files:
                try:
                    data = file.read_bytes()
                except OSError:
                    continue
                info = tarfile.TarInfo(f"copy{round_number}{file}")
                info.size = len(data)
                info.mtime = 1_700_000_000
                tar.addfile(info, io.BytesIO(data))
                total += len(data) + 512
                if total >= BIG_LAYER_BYTES:
                    break
            if total >= BIG_LAYER_BYTES:
                break
    path.with_suffix(".partial").rename(path)
    return path


def run_child(path: Path, media_type: str, level: int) -> dict[str, float]:
    command = [sys.executable, "-m", "bench.convert", "--one", str(path),
               "--media-type", media_type, "--level", str(level)]  # fmt: skip
    output = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(output.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--media-type", default=GZIP_LAYER, help=argparse.SUPPRESS)
    parser.add_argument("--level", type=int, default=DEFAULT_LEVEL)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(convert_one(args.one, args.media_type, args.level)))
        return 0

    print(
        f"chunked-layer conversion, zstd level {args.level}, {os.cpu_count()} cores; "
        "MB/s of uncompressed tar, peak RSS of the converting process"
    )
    print(
        f"{'layer':<22} {'tar MB':>8} {'MB/s':>7} {'RSS MB':>7} {'source MB':>10} "
        f"{'converted MB':>13} {'converted/source':>17}"
    )
    rows = [(name, path, GZIP_LAYER) for name, path in sample_layers()]
    rows.append(
        ("1 GB of /usr files", big_layer(ensure_samples().directory), PLAIN_LAYER)
    )
    for name, path, media_type in rows:
        figures = run_child(path, media_type, args.level)
        source = path.stat().st_size
        print(
            f"{name:<22} {figures['uncompressed'] / 1e6:>8.1f} "
            f"{figures['uncompressed'] / 1e6 / figures['seconds']:>7.0f} "
            f"{figures['peak_rss'] / 1e6:>7.0f} {source / 1e6:>10.1f} "
            f"{figures['converted'] / 1e6:>13.1f} {figures['converted'] / source:>17.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
