"""Compare chunking strategies on the sample images' layers, v1 to v2.

Each layer of `base:v1` and `base:v2` is decompressed to a temporary file,
cut by each strategy, and each chunk is compressed as its own zstd frame,
on one thread. For each strategy and zstd level this prints:

- update: the bytes a client holding v1 fetches for v2, which are the frames
  of v2's distinct chunks whose sha256 is not among v1's chunks (any layer),
  plus v2's chunk tables;
- table: each layer's chunk table, at 32 bytes a chunk plus a 64-byte header
  and a 64-byte footer frame;
- cold: all frames and tables of the converted image over the original gzip
  layer bytes;
- MB/s: uncompressed bytes over the time to chunk, hash (sha256) and compress
  both images.

For reference it also prints the gzip layer bytes of a plain pull of v2, and
the size of the v2 files whose content no v1 file has.

Run it through scripts/measure-chunking.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import zstandard

from apparate.chunker import Chunker
from apparate.chunker.fastcdc import FastCdcChunker
from apparate.chunker.tar_aligned import TarAlignedChunker
from tests.testbed.samples import ensure_samples

KIB = 1024
MB = 1_000_000
TABLE_ENTRY_BYTES = 32
TABLE_HEADER_BYTES = 64
FOOTER_FRAME_BYTES = 64
DEFAULT_LEVEL = 3

STRATEGIES: dict[str, Callable[[], Chunker]] = {
    **{
        f"fastcdc-{size}k": (lambda size=size: FastCdcChunker(size * KIB))
        for size in (8, 16, 32, 64, 128)
    },
    **{
        f"tar-{size}k": (lambda size=size: TarAlignedChunker(size * KIB))
        for size in (16, 32, 64)
    },
}


@dataclass(frozen=True)
class LayerFile:
    """One layer: its uncompressed tar on disk and its gzip blob size."""

    tar: Path
    gzip_size: int


@dataclass(frozen=True)
class ChunkRecord:
    identity: bytes
    length: int
    frame_length: int


@dataclass(frozen=True)
class ConvertedLayer:
    chunks: list[ChunkRecord]
    seconds: float

    @property
    def table_bytes(self) -> int:
        return table_bytes(len(self.chunks))

    @property
    def converted_bytes(self) -> int:
        return sum(chunk.frame_length for chunk in self.chunks) + self.table_bytes

    @property
    def input_bytes(self) -> int:
        return sum(chunk.length for chunk in self.chunks)


@dataclass(frozen=True)
class Row:
    """The figures of one strategy at one zstd level."""

    strategy: str
    level: int
    v1: list[ConvertedLayer]
    v2: list[ConvertedLayer]

    @property
    def new_frames(self) -> dict[bytes, int]:
        """Map each distinct v2 chunk missing from v1 to its frame length."""
        v1_identities = {chunk.identity for layer in self.v1 for chunk in layer.chunks}
        return {
            chunk.identity: chunk.frame_length
            for layer in self.v2
            for chunk in layer.chunks
            if chunk.identity not in v1_identities
        }

    @property
    def update_bytes(self) -> int:
        tables = sum(layer.table_bytes for layer in self.v2)
        return sum(self.new_frames.values()) + tables

    @property
    def throughput(self) -> float:
        layers = self.v1 + self.v2
        total = sum(layer.input_bytes for layer in layers)
        return total / MB / sum(layer.seconds for layer in layers)


def table_bytes(chunk_count: int) -> int:
    return TABLE_HEADER_BYTES + TABLE_ENTRY_BYTES * chunk_count + FOOTER_FRAME_BYTES


def convert_layer(tar: Path, chunker: Chunker, level: int) -> ConvertedLayer:
    """Chunk one layer tar and compress each chunk as its own zstd frame."""
    compressor = zstandard.ZstdCompressor(level=level, write_content_size=True)
    records = []
    started = time.perf_counter()
    with open(tar, "rb") as stream:
        for chunk in chunker.chunks(stream):
            identity = hashlib.sha256(chunk).digest()
            frame = compressor.compress(chunk)
            records.append(ChunkRecord(identity, len(chunk), len(frame)))
    converted = ConvertedLayer(records, time.perf_counter() - started)
    if converted.input_bytes != tar.stat().st_size:
        raise RuntimeError(f"{chunker.name} lost or added bytes of {tar}")
    return converted


def measure(strategy: str, level: int, v1: list[LayerFile], v2: list[LayerFile]) -> Row:
    chunker = STRATEGIES[strategy]()
    return Row(
        strategy,
        level,
        [convert_layer(layer.tar, chunker, level) for layer in v1],
        [convert_layer(layer.tar, chunker, level) for layer in v2],
    )


def extract_layers(layout: Path, tag: str, scratch: Path) -> list[LayerFile]:
    """Decompress the gzip layers of the image tagged `tag` into `scratch`."""
    index = json.loads((layout / "index.json").read_text())
    entry = next(
        item
        for item in index["manifests"]
        if item.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    )
    manifest = json.loads(blob_path(layout, entry["digest"]).read_text())
    layers = []
    for number, layer in enumerate(manifest["layers"]):
        tar = scratch / f"{tag.replace(':', '-')}-{number}.tar"
        source_path = blob_path(layout, layer["digest"])
        with gzip.open(source_path) as source, open(tar, "wb") as target:
            shutil.copyfileobj(source, target, 1 << 20)
        layers.append(LayerFile(tar, layer["size"]))
    return layers


def blob_path(layout: Path, digest: str) -> Path:
    algorithm, _, hex_digest = digest.partition(":")
    return layout / "blobs" / algorithm / hex_digest


def file_contents(tar: Path) -> Iterator[bytes]:
    """Yield the content of each regular file in a layer tar."""
    with tarfile.open(tar) as archive:
        for member in archive:
            content = archive.extractfile(member) if member.isreg() else None
            if content is not None:
                yield content.read()


def print_new_files(v1: list[LayerFile], v2: list[LayerFile]) -> None:
    """Print the v2 files whose content is in no v1 file, for reference."""
    v1_files = {
        hashlib.sha256(content).digest()
        for layer in v1
        for content in file_contents(layer.tar)
    }
    compressor = zstandard.ZstdCompressor(level=DEFAULT_LEVEL)
    count = raw = compressed = 0
    for layer in v2:
        for content in file_contents(layer.tar):
            if hashlib.sha256(content).digest() not in v1_files:
                count += 1
                raw += len(content)
                compressed += len(compressor.compress(content))
    print(
        f"v2 regular files with content in no v1 file: {count:,} files, "
        f"{raw:,} B, {compressed:,} B as one zstd-{DEFAULT_LEVEL} frame each"
    )


def print_header(v1: list[LayerFile], v2: list[LayerFile]) -> None:
    for tag, layers in (("v1", v1), ("v2", v2)):
        tar_sizes = " + ".join(f"{layer.tar.stat().st_size:,}" for layer in layers)
        gzip_sizes = " + ".join(f"{layer.gzip_size:,}" for layer in layers)
        print(f"base:{tag} layers: tar {tar_sizes} B, gzip {gzip_sizes} B")
    v2_gzip = sum(layer.gzip_size for layer in v2)
    print(f"a plain pull of base:v2 downloads {v2_gzip:,} B of gzip layers")
    print()
    print(
        f"{'strategy':<12} {'zstd':>4} {'v2 chunks':>9} {'mean KiB':>8} "
        f"{'new':>5} {'update B':>11} {'upd/gzip':>8} {'table B per v2 layer':>21} "
        f"{'v1 cold':>7} {'v2 cold':>7} {'MB/s':>5}"
    )


def print_row(row: Row, v1: list[LayerFile], v2: list[LayerFile]) -> None:
    chunks = sum(len(layer.chunks) for layer in row.v2)
    mean = sum(layer.input_bytes for layer in row.v2) / chunks / KIB
    v2_gzip = sum(layer.gzip_size for layer in v2)
    tables = " + ".join(f"{layer.table_bytes:,}" for layer in row.v2)
    print(
        f"{row.strategy:<12} {row.level:>4} {chunks:>9,} {mean:>8.1f} "
        f"{len(row.new_frames):>5,} {row.update_bytes:>11,} "
        f"{row.update_bytes / v2_gzip:>8.1%} {tables:>21} "
        f"{cold_ratio(row.v1, v1):>7.3f} {cold_ratio(row.v2, v2):>7.3f} "
        f"{row.throughput:>5.0f}",
        flush=True,
    )


def cold_ratio(converted: list[ConvertedLayer], original: list[LayerFile]) -> float:
    return sum(layer.converted_bytes for layer in converted) / sum(
        layer.gzip_size for layer in original
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--more-levels",
        default="9,19",
        help="comma-separated zstd levels to run after level 3 (empty for none)",
    )
    parser.add_argument(
        "--more-strategies",
        default="tar-16k,tar-32k,tar-64k",
        help="comma-separated strategies to run at those levels",
    )
    args = parser.parse_args(argv)
    levels = [int(level) for level in args.more_levels.split(",") if level]
    more = [name for name in args.more_strategies.split(",") if name]
    unknown = sorted(set(more) - set(STRATEGIES))
    if unknown:
        parser.error(f"unknown strategies {unknown}; choose from {list(STRATEGIES)}")
    layout = ensure_samples().layout

    with tempfile.TemporaryDirectory(prefix="apparate-chunking-") as temporary:
        scratch = Path(temporary)
        v1 = extract_layers(layout, "base:v1", scratch)
        v2 = extract_layers(layout, "base:v2", scratch)
        print_new_files(v1, v2)
        print_header(v1, v2)
        for strategy in STRATEGIES:
            print_row(measure(strategy, DEFAULT_LEVEL, v1, v2), v1, v2)
        for level in levels:
            for strategy in more:
                print_row(measure(strategy, level, v1, v2), v1, v2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
