"""Byte layout of the chunked layer's table and footer. Pure: bytes in and out.

A chunked layer is a zstd stream: one frame per chunk, then a skippable
frame holding the chunk table, then a fixed-size skippable footer frame that
locates the table. docs/format.md describes every field.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any

from apparate.digest import Digest
from apparate.errors import ChunkTableCorrupt, UnsupportedChunkFormat

FORMAT_VERSION = 1
TABLE_MAGIC = 0x184D2A5A
FOOTER_MAGIC = 0x184D2A5B
TABLE_SIGNATURE = b"APTB"
FOOTER_SIGNATURE = b"APFT"
SKIPPABLE_HEADER = struct.Struct("<II")
TABLE_HEADER = struct.Struct("<4sHHIII")
ENTRY = struct.Struct("<16sIIQ")
FOOTER_PAYLOAD = struct.Struct("<4sHHQQ32s")
FOOTER_SIZE = SKIPPABLE_HEADER.size + FOOTER_PAYLOAD.size
IDENTITY_BYTES = 16
# 32 bytes per chunk: about half a million chunks, a 17 GB layer tar at the
# default 32 KiB average. Planning a pull from a table this large took 250 MB
# here, which bounds what a hostile layer costs. Larger layers are pulled whole.
MAX_TABLE_BYTES = 16 * 1024 * 1024
# Chunkers cut at most a few hundred kB; a table entry claiming more is bad.
MAX_CHUNK_BYTES = 16 * 1024 * 1024
# zstd's compress bound for the largest chunk (ZSTD_COMPRESSBOUND adds 1/256
# of the input) plus room for the frame header and checksum, so a frame
# of a valid chunk is never larger than this.
MAX_FRAME_BYTES = MAX_CHUNK_BYTES + (MAX_CHUNK_BYTES >> 8) + 1024

# Layer descriptor annotations that let a client fetch the table with one
# range request; the table digest is covered by the manifest's digest.
ANNOTATION_VERSION = "dev.apparate.chunked.version"
ANNOTATION_TABLE_OFFSET = "dev.apparate.chunked.table-offset"
ANNOTATION_TABLE_LENGTH = "dev.apparate.chunked.table-length"
ANNOTATION_TABLE_DIGEST = "dev.apparate.chunked.table-digest"


def chunk_identity(data: bytes) -> bytes:
    """Return the first 16 bytes of the chunk's sha256, which identify a chunk."""
    return hashlib.sha256(data).digest()[:IDENTITY_BYTES]


@dataclass(frozen=True, slots=True)
class ChunkEntry:
    """One chunk: its identity, sizes, frame hash, and the frame's offset."""

    identity: bytes
    length: int
    frame_length: int
    frame_xxh3: int
    frame_offset: int


@dataclass(frozen=True)
class ChunkTable:
    """The decoded table: chunk entries plus the records needed to rebuild them."""

    version: int
    encoder: dict[str, Any]
    chunking: dict[str, Any]
    entries: list[ChunkEntry]

    @property
    def frames_length(self) -> int:
        """Bytes of data frames, which is where the table frame starts."""
        return sum(entry.frame_length for entry in self.entries)

    @property
    def uncompressed_length(self) -> int:
        return sum(entry.length for entry in self.entries)


@dataclass(frozen=True)
class Footer:
    """The table frame's offset and length, and the sha256 of its bytes."""

    table_offset: int
    table_length: int
    table_digest: Digest


def skippable_frame(magic: int, payload: bytes) -> bytes:
    return SKIPPABLE_HEADER.pack(magic, len(payload)) + payload


def encode_table(table: ChunkTable) -> bytes:
    """Encode the table as a complete skippable frame."""
    encoder = _canonical_json(table.encoder)
    chunking = _canonical_json(table.chunking)
    header = TABLE_HEADER.pack(
        TABLE_SIGNATURE,
        table.version,
        0,
        len(table.entries),
        len(encoder),
        len(chunking),
    )
    entries = b"".join(
        ENTRY.pack(e.identity, e.length, e.frame_length, e.frame_xxh3)
        for e in table.entries
    )
    return skippable_frame(TABLE_MAGIC, header + encoder + chunking + entries)


def encode_footer(footer: Footer) -> bytes:
    payload = FOOTER_PAYLOAD.pack(
        FOOTER_SIGNATURE,
        FORMAT_VERSION,
        0,
        footer.table_offset,
        footer.table_length,
        bytes.fromhex(footer.table_digest.hex),
    )
    return skippable_frame(FOOTER_MAGIC, payload)


def decode_footer(data: bytes, blob_size: int, subject: str) -> Footer:
    """Decode the last ``FOOTER_SIZE`` bytes of a blob, checking every field."""
    if len(data) != FOOTER_SIZE:
        raise ChunkTableCorrupt(f"{subject}: the footer is {len(data)} bytes")
    magic, size = SKIPPABLE_HEADER.unpack_from(data)
    fields = FOOTER_PAYLOAD.unpack_from(data, SKIPPABLE_HEADER.size)
    signature, version, _, table_offset, table_length, digest = fields
    if (
        magic != FOOTER_MAGIC
        or size != FOOTER_PAYLOAD.size
        or signature != FOOTER_SIGNATURE
    ):
        raise ChunkTableCorrupt(f"{subject}: no chunked-layer footer at the end")
    _check_version(version, subject)
    if table_offset + table_length != blob_size - FOOTER_SIZE:
        raise ChunkTableCorrupt(
            f"{subject}: the footer points at bytes {table_offset}+{table_length}, "
            f"not at the table before it in the {blob_size}-byte blob"
        )
    return Footer(table_offset, table_length, Digest("sha256", digest.hex()))


def decode_table(frame: bytes, expected: Digest, subject: str) -> ChunkTable:
    """Verify the table frame against its digest, then decode it."""
    actual = Digest.of(frame)
    if actual != expected:
        raise ChunkTableCorrupt(
            f"{subject}: the chunk table's sha256 is {actual}, expected {expected}"
        )
    try:
        return _decode_verified_table(frame, subject)
    except (
        struct.error,
        UnicodeDecodeError,
        ValueError,
        TypeError,
        RecursionError,
    ) as error:
        # Deeply nested JSON in a record raises RecursionError.
        raise ChunkTableCorrupt(
            f"{subject}: the chunk table is malformed: {error}"
        ) from None


def _decode_verified_table(frame: bytes, subject: str) -> ChunkTable:
    magic, size = SKIPPABLE_HEADER.unpack_from(frame)
    if magic != TABLE_MAGIC or size != len(frame) - SKIPPABLE_HEADER.size:
        raise ValueError("not a table frame")
    position = SKIPPABLE_HEADER.size
    fields = TABLE_HEADER.unpack_from(frame, position)
    signature, version, flags, count, encoder_length, chunking_length = fields
    if signature != TABLE_SIGNATURE:
        raise ValueError("wrong signature")
    if flags != 0:
        raise ValueError(f"unknown flags {flags:#x}")
    _check_version(version, subject)
    position += TABLE_HEADER.size
    encoder = _json_record(frame[position : position + encoder_length], "encoder")
    position += encoder_length
    chunking = _json_record(frame[position : position + chunking_length], "chunking")
    position += chunking_length
    if len(frame) - position != count * ENTRY.size:
        raise ValueError(f"{count} entries do not fill the table")
    return ChunkTable(version, encoder, chunking, _entries(frame, position, count))


def _json_record(data: bytes, name: str) -> dict[str, Any]:
    record = json.loads(data)
    if not isinstance(record, dict):
        raise TypeError(f"the {name} record is not a JSON object")
    return record


def _entries(frame: bytes, position: int, count: int) -> list[ChunkEntry]:
    entries = []
    offset = 0
    for identity, length, frame_length, xxh3 in ENTRY.iter_unpack(
        frame[position : position + count * ENTRY.size]
    ):
        if length > MAX_CHUNK_BYTES or frame_length > MAX_FRAME_BYTES:
            raise ValueError(
                f"entry {len(entries)} claims a {length}-byte chunk in a "
                f"{frame_length}-byte frame, over the limit"
            )
        entries.append(ChunkEntry(identity, length, frame_length, xxh3, offset))
        offset += frame_length
    return entries


def _check_version(version: int, subject: str) -> None:
    if version != FORMAT_VERSION:
        raise UnsupportedChunkFormat(
            f"{subject}: chunked-layer format version {version} is not supported "
            f"(this apparate reads version {FORMAT_VERSION})"
        )


def _canonical_json(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()


ZSTD_LAYER_TYPES = (
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.zstd",
)


def is_chunked_layer(media_type: str, annotations: dict[str, str]) -> bool:
    """Tell whether a layer descriptor names a chunked layer (of any version)."""
    return media_type in ZSTD_LAYER_TYPES and ANNOTATION_VERSION in annotations


def table_annotations(footer: Footer) -> dict[str, str]:
    """Annotations for the layer descriptor of a chunked layer."""
    return {
        ANNOTATION_VERSION: str(FORMAT_VERSION),
        ANNOTATION_TABLE_OFFSET: str(footer.table_offset),
        ANNOTATION_TABLE_LENGTH: str(footer.table_length),
        ANNOTATION_TABLE_DIGEST: str(footer.table_digest),
    }


def footer_from_annotations(annotations: dict[str, str]) -> Footer | None:
    """Read the table location from layer annotations; None for other layers."""
    if ANNOTATION_VERSION not in annotations:
        return None
    try:
        version = int(annotations[ANNOTATION_VERSION])
    except ValueError:
        raise ChunkTableCorrupt("invalid chunked-layer version annotation") from None
    # The version decides the other keys, so it is checked first.
    _check_version(version, "layer annotations")
    try:
        footer = Footer(
            int(annotations[ANNOTATION_TABLE_OFFSET]),
            int(annotations[ANNOTATION_TABLE_LENGTH]),
            Digest.parse(annotations[ANNOTATION_TABLE_DIGEST]),
        )
    except (KeyError, ValueError) as error:
        raise ChunkTableCorrupt(f"invalid chunked-layer annotations: {error}") from None
    if footer.table_offset < 0 or not 0 < footer.table_length <= MAX_TABLE_BYTES:
        raise ChunkTableCorrupt(
            f"invalid chunked-layer annotations: table at {footer.table_offset}"
            f"+{footer.table_length} (at most {MAX_TABLE_BYTES} bytes)"
        )
    return footer


def check_table_location(footer: Footer, blob_size: int, subject: str) -> None:
    """Raise unless the table ends exactly where the blob's footer begins."""
    if footer.table_offset + footer.table_length + FOOTER_SIZE != blob_size:
        raise ChunkTableCorrupt(
            f"{subject}: the table at {footer.table_offset}+{footer.table_length} "
            f"does not end at the footer of the {blob_size}-byte blob"
        )
