"""Chunkers: round trip, size bounds, tar alignment, stability, bad tars, and a
known-answer test on a committed input.

Run `python -m tests.unit.test_chunker` to write the known-answer input and
expected chunks again, after a deliberate change to a chunker.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import tarfile
from pathlib import Path

import pytest

from apparate.chunker import Chunker
from apparate.chunker.fastcdc import FastCdcChunker
from apparate.chunker.tar_aligned import (
    TarAlignedChunker,
    TarParser,
    parse_number,
    verify_checksum,
)

KIB = 1024
DATA = Path(__file__).resolve().parent.parent / "data"
KNOWN_INPUT = DATA / "chunker-input.tar"
KNOWN_EXPECTED = DATA / "chunker-expected.json"
MTIME = 1747699200
KNOWN_ANSWER_CHUNKERS: dict[str, Chunker] = {
    "fastcdc-16k": FastCdcChunker(16 * KIB),
    "tar-aligned-16k": TarAlignedChunker(16 * KIB),
}


def tar_of(
    files: list[tuple[str, bytes]],
    tar_format: int = tarfile.PAX_FORMAT,
    pax_headers: dict[str, str] | None = None,
) -> bytes:
    """Build a tar of regular files with fixed metadata, so output is stable."""
    buffer = io.BytesIO()
    with tarfile.open(
        fileobj=buffer, mode="w", format=tar_format, pax_headers=pax_headers or {}
    ) as archive:
        for name, content in files:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mtime = MTIME
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def add_special_entries(archive: tarfile.TarFile) -> None:
    directory = tarfile.TarInfo("usr/share/" + "d" * 120)
    directory.type = tarfile.DIRTYPE
    directory.mtime = MTIME
    archive.addfile(directory)
    link = tarfile.TarInfo("usr/bin/link")
    link.type = tarfile.SYMTYPE
    link.linkname = "../" + "t" * 150
    archive.addfile(link)


def mixed_tar(tar_format: int, seed: int = 7) -> bytes:
    """Build a tar with long names, a directory, a long symlink and big files."""
    rng = random.Random(seed)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tar_format) as archive:
        add_special_entries(archive)
        for number in range(120):
            size = 300 * KIB if number % 40 == 0 else rng.randrange(0, 6000)
            long_part = "x" * 110 if number % 3 == 0 else ""
            info = tarfile.TarInfo(f"usr/lib/{long_part}file-{number}.so")
            info.size = size
            info.mtime = MTIME
            archive.addfile(info, io.BytesIO(rng.randbytes(size)))
    return buffer.getvalue()


def small_files(count: int, seed: int) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    return [
        (f"etc/files/{number:04d}.conf", rng.randbytes(rng.randrange(100, 6000)))
        for number in range(count)
    ]


def cut(chunker: Chunker, data: bytes) -> list[bytes]:
    return list(chunker.chunks(io.BytesIO(data)))


def boundaries(chunks: list[bytes]) -> list[int]:
    """Return the offsets where the second and later chunks start."""
    offsets = []
    position = 0
    for chunk in chunks[:-1]:
        position += len(chunk)
        offsets.append(position)
    return offsets


def chunk_hashes(chunks: list[bytes]) -> set[str]:
    return {hashlib.sha256(chunk).hexdigest() for chunk in chunks}


def known_answer_tar() -> bytes:
    """Build the known-answer input: about 1.6 MB of files from Random(1).

    The committed copy was written by Python 3.11's tarfile. A later tarfile
    may write different bytes, which is why the tests read the committed file.
    """
    rng = random.Random(1)
    files = []
    for number in range(150):
        size = rng.choice([rng.randrange(0, 4000), rng.randrange(4000, 20000)])
        if number % 50 == 25:
            size = 160 * KIB
        name = f"opt/known/{'n' * (number % 130)}{number:03d}.bin"
        files.append((name, rng.randbytes(size)))
    return tar_of(files)


def known_answers(data: bytes) -> dict[str, object]:
    answers: dict[str, object] = {
        "input": KNOWN_INPUT.name,
        "input_sha256": hashlib.sha256(data).hexdigest(),
    }
    for name, chunker in KNOWN_ANSWER_CHUNKERS.items():
        rows = []
        offset = 0
        for chunk in cut(chunker, data):
            rows.append([offset, len(chunk), hashlib.sha256(chunk).hexdigest()[:16]])
            offset += len(chunk)
        answers[name] = {"parameters": chunker.parameters(), "chunks": rows}
    return answers


TARS = {
    "pax": mixed_tar(tarfile.PAX_FORMAT),
    "gnu": mixed_tar(tarfile.GNU_FORMAT),
    "ustar": tar_of(small_files(50, seed=3), tarfile.USTAR_FORMAT),
    "pax-global": tar_of(small_files(20, seed=4), pax_headers={"comment": "g"}),
    "empty": tar_of([]),
}
CHUNKERS = {
    "fastcdc-16k": FastCdcChunker(16 * KIB),
    "tar-16k": TarAlignedChunker(16 * KIB),
    "tar-64k": TarAlignedChunker(64 * KIB),
}


@pytest.mark.parametrize("tar_name", TARS)
@pytest.mark.parametrize("chunker_name", CHUNKERS)
def test_chunks_concatenate_to_input(tar_name: str, chunker_name: str) -> None:
    data = TARS[tar_name]

    chunks = cut(CHUNKERS[chunker_name], data)

    assert b"".join(chunks) == data
    assert all(chunks)


@pytest.mark.parametrize("tar_name", TARS)
@pytest.mark.parametrize("chunker_name", CHUNKERS)
def test_chunk_sizes_bounded(tar_name: str, chunker_name: str) -> None:
    chunker = CHUNKERS[chunker_name]

    chunks = cut(chunker, TARS[tar_name])

    assert max(map(len, chunks), default=0) <= chunker.parameters()["max"]


@pytest.mark.parametrize("tar_name", ["pax", "gnu", "ustar", "pax-global"])
def test_tar_cuts_at_entry_starts(tar_name: str) -> None:
    data = TARS[tar_name]
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        members = archive.getmembers()
    entry_starts = {member.offset for member in members}
    large_spans = [
        (member.offset, member.offset_data + member.size)
        for member in members
        if member.size > 16 * KIB
    ]
    # The end-of-archive blocks start right after the last entry's data.
    entry_starts.add(members[-1].offset_data + -(-members[-1].size // 512) * 512)

    chunks = cut(TarAlignedChunker(16 * KIB), data)

    for offset in boundaries(chunks):
        inside_large = any(start < offset < end for start, end in large_spans)
        assert offset in entry_starts or inside_large, offset


def test_tar_groups_small_entries() -> None:
    data = TARS["ustar"]

    chunks = cut(TarAlignedChunker(16 * KIB), data)

    assert len(chunks) < 50 // 2
    assert all(len(chunk) >= 4 * KIB for chunk in chunks[:-2])


def test_tar_insert_changes_few_chunks() -> None:
    files = small_files(400, seed=5)
    files[200:200] = [("usr/lib/big.so", random.Random(6).randbytes(400 * KIB))]
    inserted = files[:10] + [("etc/files/new.conf", b"new=1\n" * 50)] + files[10:]
    chunker = TarAlignedChunker(16 * KIB)

    before = chunk_hashes(cut(chunker, tar_of(files)))
    after = chunk_hashes(cut(chunker, tar_of(inserted)))

    assert len(before) > 60
    assert len(after - before) <= 2


def test_tar_edit_in_large_file_changes_few_chunks() -> None:
    big = bytearray(random.Random(8).randbytes(600 * KIB))
    files = small_files(30, seed=9) + [("usr/lib/big.so", bytes(big))]
    big[300 * KIB : 300 * KIB + 10] = b"0123456789"
    edited = small_files(30, seed=9) + [("usr/lib/big.so", bytes(big))]
    chunker = TarAlignedChunker(16 * KIB)

    before = chunk_hashes(cut(chunker, tar_of(files)))
    after = chunk_hashes(cut(chunker, tar_of(edited)))

    assert len(before) > 30
    assert len(after - before) <= 2


def test_parse_number_octal_and_base256() -> None:
    nine_gib = 9 << 30

    assert parse_number(b"00000001750\0", 0) == 0o1750
    assert parse_number(b"       1750 ", 0) == 0o1750
    assert parse_number(b"\0" * 12, 0) == 0
    assert parse_number(b"\x80" + nine_gib.to_bytes(11, "big"), 0) == nine_gib


def test_parse_number_rejects_bad_fields() -> None:
    with pytest.raises(ValueError, match="offset 1024"):
        parse_number(b"12x4\0", 1024)
    with pytest.raises(ValueError, match="negative"):
        parse_number(b"\xff" * 12, 0)


def test_parser_reads_base256_size_header() -> None:
    info = tarfile.TarInfo("var/huge.img")
    info.size = 9 << 30
    header = info.tobuf(tarfile.GNU_FORMAT)
    assert header[124] == 0x80

    entries = iter(TarParser(io.BytesIO(header)))
    entry = next(entries)

    assert entry.path == b"var/huge.img"
    assert entry.data_size == 9 << 30
    assert entry.header == header


def test_truncated_huge_entry_raises() -> None:
    info = tarfile.TarInfo("var/huge.img")
    info.size = 9 << 30
    data = info.tobuf(tarfile.GNU_FORMAT) + bytes(100 * KIB)

    with pytest.raises(ValueError, match="entry at offset 0 needs"):
        cut(TarAlignedChunker(16 * KIB), data)


def test_parser_groups_gnu_long_name_with_entry() -> None:
    data = TARS["gnu"]
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        long_member = next(m for m in archive if len(m.name) > 100)

    parser = TarParser(io.BytesIO(data))
    for entry in parser:
        if entry.offset == long_member.offset:
            break
        if entry.data_size:
            parser.read_data(entry)

    # tarfile drops the trailing slash that GNU tar writes on directory names.
    assert entry.path.rstrip(b"/") == long_member.name.encode()
    assert len(entry.header) == long_member.offset_data - long_member.offset


def test_parser_reads_old_gnu_sparse_map() -> None:
    info = tarfile.TarInfo("var/sparse")
    info.type = tarfile.GNUTYPE_SPARSE
    info.size = 700
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    header[482] = 1
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    data = bytes(header) + bytes(512) + bytes(1024) + bytes(1024)

    entry = next(iter(TarParser(io.BytesIO(data))))

    assert len(entry.header) == 1024
    assert entry.data_size == 1024


def test_tar_corrupt_checksum_raises() -> None:
    data = bytearray(TARS["ustar"])
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as archive:
        second = archive.getmembers()[1].offset
    data[second + 10] ^= 0x01

    with pytest.raises(ValueError, match=f"checksum at offset {second}"):
        cut(TarAlignedChunker(16 * KIB), bytes(data))


def test_verify_checksum_accepts_valid_header() -> None:
    header = tarfile.TarInfo("etc/hostname").tobuf(tarfile.USTAR_FORMAT)

    verify_checksum(header, 0)


def test_verify_checksum_accepts_signed_sum() -> None:
    # Old writers summed the header's bytes as signed chars.
    header = bytearray(
        tarfile.TarInfo("etc/h\xe9llo").tobuf(tarfile.USTAR_FORMAT, "latin-1")
    )
    header[148:156] = b" " * 8
    signed = sum(byte - 256 if byte >= 0x80 else byte for byte in header)
    header[148:156] = b"%06o\0 " % signed

    verify_checksum(bytes(header), 0)


def test_verify_checksum_rejects_other_sum() -> None:
    header = bytearray(tarfile.TarInfo("etc/hostname").tobuf(tarfile.USTAR_FORMAT))
    header[148:156] = b"%06o\0 " % 1234

    with pytest.raises(ValueError, match="stored 1234"):
        verify_checksum(bytes(header), 0)


@pytest.mark.parametrize("keep", [700, 1500, 512 + 100])
def test_tar_truncated_raises(keep: int) -> None:
    data = tar_of([("etc/a", b"a" * 2000), ("etc/b", b"b" * 10)])

    with pytest.raises(ValueError, match="truncated at offset"):
        cut(TarAlignedChunker(16 * KIB), data[:keep])


def test_tar_end_without_end_blocks_accepted() -> None:
    data = tar_of([("etc/a", b"a" * 2000)])[: 512 + 2048]

    assert b"".join(cut(TarAlignedChunker(16 * KIB), data)) == data


def test_tar_invalid_pax_record_raises() -> None:
    info = tarfile.TarInfo("./PaxHeaders/x")
    info.type = tarfile.XHDTYPE
    payload = b"99 path=x\n"
    info.size = len(payload)
    data = info.tobuf(tarfile.USTAR_FORMAT) + payload.ljust(512, b"\0")

    with pytest.raises(ValueError, match="PAX record .* at offset 0"):
        cut(TarAlignedChunker(16 * KIB), data + bytes(1024))


def test_tar_oversized_extended_headers_raise() -> None:
    info = tarfile.TarInfo("././@LongLink")
    info.type = tarfile.GNUTYPE_LONGNAME
    info.size = 600 * KIB
    record = info.tobuf(tarfile.GNU_FORMAT) + bytes(info.size)
    data = record + record + bytes(1024)

    with pytest.raises(ValueError, match="exceed"):
        cut(TarAlignedChunker(16 * KIB), data)


def test_tar_not_a_tar_raises() -> None:
    data = random.Random(10).randbytes(4096)

    with pytest.raises(ValueError, match="offset 0"):
        cut(TarAlignedChunker(16 * KIB), data)


def test_tar_parameters_describe_cuts() -> None:
    parameters = TarAlignedChunker(32 * KIB).parameters()

    assert parameters["algorithm"] == "tar-aligned"
    assert parameters["target"] == 32 * KIB
    assert parameters["group_min"] == 8 * KIB
    assert parameters["group_max"] == 128 * KIB
    assert parameters["avg"] == 32 * KIB


@pytest.mark.parametrize("name", KNOWN_ANSWER_CHUNKERS)
def test_known_answer_chunks(name: str) -> None:
    expected = json.loads(KNOWN_EXPECTED.read_text())
    data = KNOWN_INPUT.read_bytes()
    assert hashlib.sha256(data).hexdigest() == expected["input_sha256"]

    actual = known_answers(data)[name]

    assert actual["parameters"] == expected[name]["parameters"]
    assert actual["chunks"] == expected[name]["chunks"]


def write_known_answers() -> None:
    data = known_answer_tar()
    DATA.mkdir(exist_ok=True)
    KNOWN_INPUT.write_bytes(data)
    text = json.dumps(known_answers(data), indent=1)
    # One chunk per line keeps the file short and its diffs readable.
    text = re.sub(r"\[\s+(\d+),\s+(\d+),\s+(\"\w+\")\s+\]", r"[\1, \2, \3]", text)
    KNOWN_EXPECTED.write_text(text + "\n")


if __name__ == "__main__":
    write_known_answers()
