"""Read chunked layers: locate and verify the table, then frames one by one.

Every frame is checked against the table before its chunk is used: first
the xxh3 of the compressed bytes, then the identity of what it decompresses
to. The table itself is trusted only after its sha256 matched.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import xxhash
import zstandard

from apparate.chunked.format import (
    FOOTER_SIZE,
    MAX_CHUNK_BYTES,
    ChunkEntry,
    ChunkTable,
    Footer,
    check_table_location,
    chunk_identity,
    decode_footer,
    decode_table,
    footer_from_annotations,
)
from apparate.errors import ChunkCorrupt, ChunkTableCorrupt

ReadRange = Callable[[int, int], bytes]
# zstd sets a frame's window to its content size when that is known, and
# chunks are at most a few hundred kB; a larger window is refused.
MAX_WINDOW_SIZE = 1 << 23
_thread_state = threading.local()


def read_footer(read_range: ReadRange, blob_size: int, subject: str) -> Footer:
    """Read and check the footer, the last ``FOOTER_SIZE`` bytes of the blob."""
    if blob_size < FOOTER_SIZE:
        raise ChunkTableCorrupt(f"{subject}: {blob_size} bytes is too short")
    tail = read_range(blob_size - FOOTER_SIZE, FOOTER_SIZE)
    return decode_footer(tail, blob_size, subject)


def read_table(read_range: ReadRange, footer: Footer, subject: str) -> ChunkTable:
    """Fetch the table the footer (or the layer's annotations) points at."""
    frame = read_range(footer.table_offset, footer.table_length)
    table = decode_table(frame, footer.table_digest, subject)
    if table.frames_length != footer.table_offset:
        raise ChunkTableCorrupt(
            f"{subject}: the table's frames take {table.frames_length} bytes, "
            f"but the table starts at byte {footer.table_offset}"
        )
    return table


def decompress_frame(
    entry: ChunkEntry, frame: bytes | memoryview, subject: str
) -> bytes:
    """Return the chunk inside ``frame``, after checking it against ``entry``."""
    chunk = decompress_trusted_frame(entry, frame, subject)
    if chunk_identity(chunk) != entry.identity:
        raise ChunkCorrupt(
            f"{subject}: the chunk at byte {entry.frame_offset} is not the one "
            "the table names"
        )
    return chunk


def decompress_trusted_frame(
    entry: ChunkEntry, frame: bytes | memoryview, subject: str
) -> bytes:
    """Return the chunk inside ``frame``, checking its frame hash and length only.

    For frames copied from the store, whose chunk identity was checked when
    they were indexed: the identity's sha256 is not computed again.
    """
    if len(frame) != entry.frame_length or (
        xxhash.xxh3_64_intdigest(frame) != entry.frame_xxh3
    ):
        raise ChunkCorrupt(
            f"{subject}: the frame at byte {entry.frame_offset} does not match "
            "the table's frame hash"
        )
    chunk = _single_frame(frame, entry, subject)
    if len(chunk) != entry.length:
        raise ChunkCorrupt(
            f"{subject}: the chunk at byte {entry.frame_offset} has the wrong length"
        )
    return chunk


def _single_frame(frame: bytes | memoryview, entry: ChunkEntry, subject: str) -> bytes:
    """Decompress exactly one frame of the size the table names, no more.

    The frame's declared content size must equal the entry's length (capped
    at ``MAX_CHUNK_BYTES``) before anything is inflated, and zstd refuses to
    produce more than a frame declares, so a small frame that would inflate
    to gigabytes cannot exhaust memory.
    """
    where = f"{subject}: the frame at byte {entry.frame_offset}"
    if entry.length > MAX_CHUNK_BYTES:
        raise ChunkCorrupt(f"{where} claims {entry.length} bytes, over the limit")
    try:
        declared = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as error:
        raise ChunkCorrupt(f"{where} is corrupt: {error}") from None
    if declared != entry.length:
        raise ChunkCorrupt(f"{where} declares {declared} bytes, not {entry.length}")
    decompressor = _decompressor().decompressobj()
    try:
        chunk = decompressor.decompress(frame)
    except zstandard.ZstdError as error:
        raise ChunkCorrupt(f"{where} is corrupt: {error}") from None
    if not decompressor.eof or decompressor.unused_data:
        raise ChunkCorrupt(f"{where} is not one whole frame")
    return chunk


def _decompressor() -> zstandard.ZstdDecompressor:
    """This thread's decompressor; creating one per frame costs more than the frame."""
    shared = getattr(_thread_state, "decompressor", None)
    if shared is None:
        shared = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_SIZE)
        _thread_state.decompressor = shared
    return shared


def iter_chunks(blob: BinaryIO, table: ChunkTable, subject: str) -> Iterator[bytes]:
    """Yield each verified chunk of a chunked blob read from its start."""
    for entry in table.entries:
        frame = blob.read(entry.frame_length)
        yield decompress_frame(entry, frame, subject)


def file_range_reader(blob: BinaryIO) -> ReadRange:
    """Return a ``ReadRange`` over a seekable file."""

    def read_range(offset: int, length: int) -> bytes:
        blob.seek(offset)
        data = blob.read(length)
        if len(data) != length:
            raise ChunkTableCorrupt(
                f"wanted {length} bytes at {offset}, the blob has {len(data)}"
            )
        return data

    return read_range


def read_stored_table(
    path: Path, annotations: dict[str, str], subject: str
) -> ChunkTable:
    """Read the table of a chunked blob on disk, located by its annotations."""
    footer = footer_from_annotations(annotations)
    if footer is None:
        raise ChunkTableCorrupt(f"{subject}: the layer has no chunk table annotations")
    try:
        with open(path, "rb") as blob:
            check_table_location(footer, os.fstat(blob.fileno()).st_size, subject)
            return read_table(file_range_reader(blob), footer, subject)
    except OSError as error:
        raise ChunkTableCorrupt(f"{subject}: cannot read the blob: {error}") from None


def verify_blob_chunks(path: Path, table: ChunkTable, subject: str) -> None:
    """Check every frame of a stored chunked blob against its table entry.

    Run before a table enters the chunk index, so the index never points
    at a frame that does not hold the chunk it names.
    """
    try:
        with open(path, "rb") as blob:
            for _ in iter_chunks(blob, table, subject):
                pass
    except OSError as error:
        raise ChunkTableCorrupt(f"{subject}: cannot read the blob: {error}") from None
