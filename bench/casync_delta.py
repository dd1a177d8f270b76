"""Count the bytes ``casync extract --seed`` fetches to go from v1 to v2.

This is the reference for apparate's update pull. Each layer of
``samples/base`` is decompressed to its tar. ``casync make``, with its
default chunk sizes and zstd, indexes each v2 tar into one chunk store.
Then ``casync extract`` rebuilds each v2 tar from an HTTP server on
127.0.0.1, with every v1 tar as a seed. The server counts the body bytes it
sends: the ``.caibx`` indexes, and the chunks casync did not find in the
seeds. Each rebuilt tar is compared with the original.
"""

from __future__ import annotations

import filecmp
import gzip
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO

from tests.testbed.samples import ensure_samples

COPY_SIZE = 1 << 20


@dataclass(frozen=True)
class CasyncDelta:
    """Bytes casync fetched to rebuild the v2 tars from the v1 tars."""

    index_bytes: int
    chunk_bytes: int
    chunks_fetched: int
    tar_bytes: int

    @property
    def total(self) -> int:
        return self.index_bytes + self.chunk_bytes


class CountingServer(ThreadingHTTPServer):
    """Serves one folder and adds up the body bytes of every file it sends."""

    def __init__(self, folder: Path) -> None:
        handler = partial(CountingHandler, directory=str(folder))
        super().__init__(("127.0.0.1", 0), handler)
        self.lock = threading.Lock()
        self.sent: dict[str, int] = {"index": 0, "chunks": 0, "chunk_count": 0}

    def count(self, path: str, size: int) -> None:
        with self.lock:
            if path.endswith(".cacnk"):
                self.sent["chunks"] += size
                self.sent["chunk_count"] += 1
            else:
                self.sent["index"] += size


class CountingHandler(SimpleHTTPRequestHandler):
    server: CountingServer

    def copyfile(self, source: Any, outputfile: BinaryIO) -> None:
        size = 0
        while data := source.read(COPY_SIZE):
            outputfile.write(data)
            size += len(data)
        self.server.count(self.path, size)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serving(folder: Path) -> Iterator[CountingServer]:
    server = CountingServer(folder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def layer_tars(scratch: Path, tag: str) -> list[Path]:
    """Decompress each gzip layer of ``samples/base:TAG`` into ``scratch``."""
    samples = ensure_samples()
    blobs = samples.layout / "blobs" / "sha256"
    manifest = json.loads(
        (blobs / samples.images[tag].digest.removeprefix("sha256:")).read_bytes()
    )
    tars = []
    for number, layer in enumerate(manifest["layers"]):
        path = scratch / f"{tag.replace(':', '-')}-{number}.tar"
        source = blobs / layer["digest"].removeprefix("sha256:")
        with gzip.open(source, "rb") as compressed, open(path, "wb") as tar:
            shutil.copyfileobj(compressed, tar, COPY_SIZE)
        tars.append(path)
    return tars


def measure(scratch: Path) -> CasyncDelta:
    """Index v2 with ``casync make``, then count what ``extract --seed`` fetches."""
    scratch.mkdir(parents=True)
    old, new = layer_tars(scratch, "base:v1"), layer_tars(scratch, "base:v2")
    served = scratch / "served"
    served.mkdir()
    for tar in new:
        casync("make", "--store", str(served / "store"),
               str(served / f"{tar.stem}.caibx"), str(tar))  # fmt: skip

    seeds = [f"--seed={tar}" for tar in old]
    with serving(served) as server:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        for tar in new:
            rebuilt = scratch / f"rebuilt-{tar.name}"
            casync("extract", *seeds, f"--store={url}/store/",
                   f"{url}/{tar.stem}.caibx", str(rebuilt))  # fmt: skip
            if not filecmp.cmp(rebuilt, tar, shallow=False):
                raise RuntimeError(
                    f"casync rebuilt {rebuilt}, which differs from {tar}"
                )
        sent = dict(server.sent)
    return CasyncDelta(
        index_bytes=sent["index"],
        chunk_bytes=sent["chunks"],
        chunks_fetched=sent["chunk_count"],
        tar_bytes=sum(tar.stat().st_size for tar in new),
    )


def casync(*argv: str) -> None:
    result = subprocess.run(
        ["casync", *argv], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"casync {' '.join(argv)} failed with code {result.returncode}:\n"
            f"{result.stderr}"
        )
