"""Write a layer tar as a chunked layer: one zstd frame per chunk, table, footer.

The output is deterministic: the same tar, chunker and encoder give the same
bytes. Chunks are compressed on a pool of threads (python-zstandard releases
the GIL), in a bounded window so memory stays flat whatever the layer size.
"""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

import xxhash
import zstandard

from apparate.chunked.format import (
    FORMAT_VERSION,
    ChunkEntry,
    ChunkTable,
    Footer,
    chunk_identity,
    encode_footer,
    encode_table,
)
from apparate.chunker import Chunker
from apparate.digest import Digest

DEFAULT_LEVEL = 3
# libzstd 1.5's ZSTD_minCLevel(); python-zstandard 0.25 exposes only the
# maximum, and clamps lower levels to this one.
MIN_LEVEL = -(1 << 17)
MAX_LEVEL = zstandard.MAX_COMPRESSION_LEVEL
WINDOW_PER_WORKER = 8


@dataclass(frozen=True)
class Encoder:
    """The zstd settings every frame is written with, recorded in the table."""

    level: int = DEFAULT_LEVEL

    def record(self) -> dict[str, Any]:
        """Return the encoder record; frames are reproducible only under equal records."""
        return {
            "library": "libzstd",
            "version": ".".join(str(part) for part in zstandard.ZSTD_VERSION),
            "level": self.level,
            "content_size": True,
            "checksum": False,
        }

    def compressor(self) -> zstandard.ZstdCompressor:
        return zstandard.ZstdCompressor(
            level=self.level, write_content_size=True, write_checksum=False
        )


class FrameSource(Protocol):
    """Frames of earlier converted layers, to reuse for unchanged chunks."""

    def frame_for(self, identity: bytes, length: int) -> bytes | None:
        """Return a verified frame that decompresses to the chunk, or None."""
        ...


@dataclass(frozen=True)
class ConvertedLayer:
    """The writer's output: the blob's digest and size, and its table.

    ``diff_id`` is None when ``hash_tar`` was false.
    """

    digest: Digest
    size: int
    diff_id: Digest | None
    footer: Footer
    table: ChunkTable
    frames_reused: int = 0


@dataclass
class _Frame:
    identity: bytes
    length: int
    data: bytes
    reused: bool


@dataclass
class _Totals:
    blob: Any = field(default_factory=hashlib.sha256)
    tar: Any = field(default_factory=hashlib.sha256)
    size: int = 0
    entries: list[ChunkEntry] = field(default_factory=list)
    reused: int = 0


def write_chunked_layer(
    tar: BinaryIO,
    sink: Callable[[bytes], None],
    chunker: Chunker,
    encoder: Encoder,
    reuse: FrameSource | None = None,
    workers: int = 2,
    hash_tar: bool = True,
) -> ConvertedLayer:
    """Convert the tar read from ``tar`` and hand the blob's bytes to ``sink``.

    Without ``hash_tar`` the tar's sha256 is left to a caller that checks it
    already.
    """
    totals = _Totals()

    def emit(data: bytes) -> None:
        sink(data)
        totals.blob.update(data)
        totals.size += len(data)

    chunks = chunker.chunks(tar)
    if hash_tar:
        chunks = _hashed(chunks, totals)
    for frame in _frames(chunks, encoder, reuse, workers):
        entry = ChunkEntry(
            frame.identity, frame.length, len(frame.data),
            xxhash.xxh3_64_intdigest(frame.data), totals.size,
        )  # fmt: skip
        totals.entries.append(entry)
        totals.reused += frame.reused
        emit(frame.data)

    table = ChunkTable(
        FORMAT_VERSION, encoder.record(), chunker.parameters(), totals.entries
    )
    table_frame = encode_table(table)
    footer = Footer(totals.size, len(table_frame), Digest.of(table_frame))
    emit(table_frame)
    emit(encode_footer(footer))
    return ConvertedLayer(
        digest=Digest("sha256", totals.blob.hexdigest()),
        size=totals.size,
        diff_id=Digest("sha256", totals.tar.hexdigest()) if hash_tar else None,
        footer=footer,
        table=table,
        frames_reused=totals.reused,
    )


def _hashed(chunks: Iterator[bytes], totals: _Totals) -> Iterator[bytes]:
    for chunk in chunks:
        totals.tar.update(chunk)
        yield chunk


def _frames(
    chunks: Iterator[bytes],
    encoder: Encoder,
    reuse: FrameSource | None,
    workers: int,
) -> Iterator[_Frame]:
    """Compress chunks on ``workers`` threads, yielding frames in chunk order."""
    local = threading.local()

    def compress(chunk: bytes) -> _Frame:
        identity = chunk_identity(chunk)
        reused = reuse.frame_for(identity, len(chunk)) if reuse else None
        if reused is not None:
            return _Frame(identity, len(chunk), reused, True)
        if not hasattr(local, "compressor"):
            local.compressor = encoder.compressor()
        return _Frame(identity, len(chunk), local.compressor.compress(chunk), False)

    pending: deque[Future[_Frame]] = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="compress") as pool:
        for chunk in chunks:
            pending.append(pool.submit(compress, chunk))
            if len(pending) >= workers * WINDOW_PER_WORKER:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
