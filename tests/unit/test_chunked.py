"""The chunked layer format: round trip, determinism, reuse and tampering."""

import ast
import dataclasses
import hashlib
import io
import random
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest
import xxhash
import zstandard

import apparate
from apparate.chunked.format import (
    ENTRY,
    FOOTER_SIZE,
    FORMAT_VERSION,
    TABLE_HEADER,
    TABLE_MAGIC,
    TABLE_SIGNATURE,
    ChunkEntry,
    ChunkTable,
    Footer,
    decode_table,
    encode_footer,
    encode_table,
    footer_from_annotations,
    skippable_frame,
    table_annotations,
)
from apparate.chunked.reader import (
    decompress_frame,
    file_range_reader,
    iter_chunks,
    read_footer,
    read_table,
)
from apparate.chunked.writer import ConvertedLayer, Encoder, write_chunked_layer
from apparate.chunker.fastcdc import FastCdcChunker
from apparate.delta.assembler import can_recompress
from apparate.digest import Digest
from apparate.errors import ChunkCorrupt, ChunkTableCorrupt, UnsupportedChunkFormat
from apparate.layers import ZstdFrames

CHUNKER = FastCdcChunker(16 * 1024)
DEFAULT_ENCODER = Encoder()


def make_tar(seed: int, files: int = 40, changed: int | None = None) -> bytes:
    """A tar of pseudo-random files; ``changed`` rewrites one file's content."""
    generator = random.Random(seed)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for number in range(files):
            size = generator.randint(1, 60_000)
            content = generator.randbytes(size // 2) + bytes(size - size // 2)
            if number == changed:
                content = b"changed" + content[7:]
            info = tarfile.TarInfo(f"usr/share/data/file-{number:03d}.bin")
            info.size = len(content)
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def convert(
    tar: bytes, encoder: Encoder = DEFAULT_ENCODER, reuse=None
) -> tuple[bytes, ConvertedLayer]:
    output = io.BytesIO()
    layer = write_chunked_layer(io.BytesIO(tar), output.write, CHUNKER, encoder, reuse)
    return output.getvalue(), layer


def read_back(blob: bytes) -> tuple[Footer, ChunkTable]:
    read_range = file_range_reader(io.BytesIO(blob))
    footer = read_footer(read_range, len(blob), "layer x")
    return footer, read_table(read_range, footer, "layer x")


TAR = make_tar(1)


def test_round_trip_gives_original_tar():
    blob, layer = convert(TAR)

    footer, table = read_back(blob)
    chunks = list(iter_chunks(io.BytesIO(blob), table, "layer x"))

    assert b"".join(chunks) == TAR
    assert footer == layer.footer
    assert layer.digest == Digest.of(blob)
    assert layer.size == len(blob)
    assert layer.diff_id == Digest.of(TAR)
    assert len(table.entries) > 10
    assert table.chunking == CHUNKER.parameters()
    assert table.encoder["level"] == 3


def test_zstd_tool_decompresses_to_tar(tmp_path: Path):
    blob, _ = convert(TAR)
    (tmp_path / "layer.zst").write_bytes(blob)

    output = subprocess.run(
        ["zstd", "-dc", str(tmp_path / "layer.zst")], capture_output=True, check=True
    ).stdout

    assert output == TAR


def test_streaming_decompressor_reads_every_frame():
    blob, _ = convert(TAR)
    pieces: list[bytes] = []

    decompressor = ZstdFrames(pieces.append)
    decompressor.write(blob)
    decompressor.finish()

    assert b"".join(pieces) == TAR


def test_conversion_is_deterministic():
    first, _ = convert(TAR)
    second, _ = convert(TAR)

    assert hashlib.sha256(first).digest() == hashlib.sha256(second).digest()


class FramesOf:
    """Reuse the frames of an earlier converted blob, by chunk identity."""

    def __init__(self, blob: bytes) -> None:
        _, table = read_back(blob)
        self.frames = {
            entry.identity: blob[
                entry.frame_offset : entry.frame_offset + entry.frame_length
            ]
            for entry in table.entries
        }

    def frame_for(self, identity: bytes, length: int) -> bytes | None:
        return self.frames.get(identity)


def test_frames_reused_across_levels():
    v1_blob, _ = convert(TAR, Encoder(level=1))
    v2_tar = make_tar(1, changed=20)

    v2_blob, v2 = convert(v2_tar, Encoder(level=9), FramesOf(v1_blob))

    v1_frames = FramesOf(v1_blob).frames
    _, v2_table = read_back(v2_blob)
    kept = [e for e in v2_table.entries if e.identity in v1_frames]
    assert v2.frames_reused == len(kept)
    assert len(kept) >= len(v2_table.entries) - 4
    for entry in kept:
        frame = v2_blob[entry.frame_offset : entry.frame_offset + entry.frame_length]
        assert frame == v1_frames[entry.identity]
    assert b"".join(iter_chunks(io.BytesIO(v2_blob), v2_table, "v2")) == v2_tar


def test_empty_tar_converts():
    blob, layer = convert(b"")

    _, table = read_back(blob)

    assert table.entries == []
    assert layer.diff_id == Digest.of(b"")


def replace_tail(blob: bytes, footer: Footer, table: ChunkTable) -> bytes:
    """Rebuild table and footer after the data frames, as a forger would."""
    frames = blob[: footer.table_offset]
    table_frame = encode_table(table)
    new_footer = Footer(len(frames), len(table_frame), Digest.of(table_frame))
    return frames + table_frame + encode_footer(new_footer)


def test_truncated_blob_is_rejected():
    blob, _ = convert(TAR)

    with pytest.raises(ChunkTableCorrupt, match="footer"):
        read_back(blob[:-10])


def test_table_digest_mismatch_is_rejected():
    blob, _ = convert(TAR)
    footer, _table = read_back(blob)
    damaged = bytearray(blob)
    damaged[footer.table_offset + 40] ^= 0x01

    with pytest.raises(ChunkTableCorrupt, match="sha256"):
        read_back(bytes(damaged))


def test_annotation_digest_mismatch_is_rejected():
    blob, layer = convert(TAR)
    annotations = table_annotations(layer.footer)
    annotations["dev.apparate.chunked.table-digest"] = str(Digest.of(b"other"))
    footer = footer_from_annotations(annotations)

    with pytest.raises(ChunkTableCorrupt, match="sha256"):
        read_table(file_range_reader(io.BytesIO(blob)), footer, "layer x")


def table_frame(encoder: bytes, chunking: bytes, entries: list[tuple]) -> bytes:
    """Encode a table frame from raw records, which encode_table would not write."""
    header = TABLE_HEADER.pack(
        TABLE_SIGNATURE, FORMAT_VERSION, 0, len(entries), len(encoder), len(chunking)
    )
    packed = b"".join(ENTRY.pack(*entry) for entry in entries)
    return skippable_frame(TABLE_MAGIC, header + encoder + chunking + packed)


ONE_CHUNK = (bytes(16), 100, 50, 0)
MALFORMED_TABLES = {
    "encoder not an object": (b"[1]", b"{}", [ONE_CHUNK], "encoder record"),
    "chunking not an object": (b"{}", b'"fastcdc"', [ONE_CHUNK], "chunking record"),
    "deeply nested record": (b"[" * 100_000 + b"]" * 100_000, b"{}", [], "recursion"),
    "huge chunk": (b"{}", b"{}", [(bytes(16), 1 << 30, 50, 0)], "over the limit"),
    "huge frame": (b"{}", b"{}", [(bytes(16), 100, 1 << 31, 0)], "over the limit"),
}


@pytest.mark.parametrize(
    "encoder, chunking, entries, words",
    MALFORMED_TABLES.values(),
    ids=MALFORMED_TABLES,
)
def test_malformed_table_is_corrupt(encoder, chunking, entries, words):
    frame = table_frame(encoder, chunking, entries)

    with pytest.raises(ChunkTableCorrupt, match=words):
        decode_table(frame, Digest.of(frame), "layer x")


def test_unknown_version_is_rejected():
    blob, _ = convert(TAR)
    footer, table = read_back(blob)
    forged = replace_tail(blob, footer, dataclasses.replace(table, version=2))

    with pytest.raises(UnsupportedChunkFormat, match="version 2"):
        read_back(forged)


def test_footer_outside_blob_is_rejected():
    blob, _ = convert(TAR)
    footer, _ = read_back(blob)
    outside = Footer(len(blob), footer.table_length, footer.table_digest)
    forged = blob[:-FOOTER_SIZE] + encode_footer(outside)

    with pytest.raises(ChunkTableCorrupt, match="not at the table"):
        read_back(forged)


def test_frame_with_wrong_chunk_is_rejected():
    blob, _ = convert(TAR)
    footer, table = read_back(blob)
    first = table.entries[0]
    forged_entry = dataclasses.replace(first, identity=bytes(16))
    forged_table = dataclasses.replace(
        table, entries=[forged_entry, *table.entries[1:]]
    )
    forged = replace_tail(blob, footer, forged_table)
    _, reread = read_back(forged)

    with pytest.raises(ChunkCorrupt, match="not the one the table names"):
        list(iter_chunks(io.BytesIO(forged), reread, "layer x"))


def test_damaged_frame_is_rejected():
    blob, _ = convert(TAR)
    _, table = read_back(blob)
    damaged = bytearray(blob)
    damaged[table.entries[3].frame_offset + 10] ^= 0xFF

    with pytest.raises(ChunkCorrupt, match="frame hash"):
        list(iter_chunks(io.BytesIO(bytes(damaged)), table, "layer x"))


def test_version_in_annotations_is_checked():
    with pytest.raises(UnsupportedChunkFormat):
        footer_from_annotations(
            {
                "dev.apparate.chunked.version": "7",
                "dev.apparate.chunked.table-offset": "0",
                "dev.apparate.chunked.table-length": "0",
                "dev.apparate.chunked.table-digest": str(Digest.of(b"")),
            }
        )


def one_shot_zstd_calls(source: str) -> list[int]:
    """Lines that call ``decompress`` on a ``ZstdDecompressor`` itself.

    That one-shot call stops after the first frame of a multi-frame blob.
    """
    tree = ast.parse(source)
    decompressors = {
        target.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and _makes_decompressor(node.value)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    lines = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value
        called_on_decompressor = _makes_decompressor(owner) or (
            isinstance(owner, ast.Name) and owner.id in decompressors
        )
        if node.func.attr == "decompress" and called_on_decompressor:
            lines.append(node.lineno)
    return lines


def _makes_decompressor(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute | ast.Name)
        and getattr(node.func, "attr", getattr(node.func, "id", ""))
        == "ZstdDecompressor"
    )


def test_one_shot_check_finds_the_call():
    source = "import zstandard\nd = zstandard.ZstdDecompressor()\nd.decompress(b'')\n"

    assert one_shot_zstd_calls(source) == [3]


def test_package_never_decompresses_zstd_one_shot():
    package = Path(apparate.__file__).parent

    offenders = {
        str(path.relative_to(package)): one_shot_zstd_calls(path.read_text())
        for path in package.rglob("*.py")
    }

    assert {path: lines for path, lines in offenders.items() if lines} == {}


def test_entry_layout_is_32_bytes():
    # Every chunk costs this much in each delta, so a change is deliberate.
    assert struct.calcsize("<16sIIQ") == 32


def test_frame_inflating_past_its_entry_is_rejected():
    bomb = zstandard.ZstdCompressor().compress(bytes(50_000_000))
    entry = ChunkEntry(bytes(16), 10, len(bomb), xxhash.xxh3_64_intdigest(bomb), 0)

    with pytest.raises(ChunkCorrupt, match="declares 50000000 bytes, not 10"):
        decompress_frame(entry, bomb, "layer x")


@pytest.mark.parametrize(
    "offset, length", [("-10", "100"), ("0", "0"), ("0", str(1 << 40))]
)
def test_annotations_out_of_range_are_rejected(offset, length):
    with pytest.raises(ChunkTableCorrupt, match="invalid chunked-layer annotations"):
        footer_from_annotations(
            {
                "dev.apparate.chunked.version": "1",
                "dev.apparate.chunked.table-offset": offset,
                "dev.apparate.chunked.table-length": length,
                "dev.apparate.chunked.table-digest": str(Digest.of(b"")),
            }
        )


@pytest.mark.parametrize("level", [100, -(1 << 40), True, "3"])
def test_odd_encoder_level_cannot_recompress(level):
    record = {**DEFAULT_ENCODER.record(), "level": level}
    table = ChunkTable(1, record, {}, [])

    assert not can_recompress(table)


def test_own_encoder_level_can_recompress():
    table = ChunkTable(1, DEFAULT_ENCODER.record(), {}, [])

    assert can_recompress(table)
