"""Chunking aligned to tar entries, with FastCDC inside large files.

Small entries (header blocks plus padded content) are grouped into one chunk.
A group ends after an entry when the group has reached the minimum size and a
hash of the entry's path, taken modulo `target - min`, is below the entry's
size in bytes. So each byte of an entry ends the group with probability about
1 / (target - min), groups average roughly the target size, and inserting or
changing a file moves only the boundaries next to it. An entry larger than the
target always starts a new chunk and is cut inside by FastCDC.

The parser follows ustar, GNU (long names `L`, long links `K`, old sparse
headers, base-256 sizes) and PAX (`x`, `g`, the `size` and `path` keywords).
Like Python's tarfile and Go's archive/tar (`isHeaderOnlyType`), it reads no
content after headers of links, devices, directories and FIFOs, whatever
their size field contains.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import xxhash
from pyfastcdc.cy import FastCDC

from apparate.chunker import MalformedTar
from apparate.chunker.fastcdc import FastCdcChunker

BLOCK_SIZE = 512
ZERO_BLOCK = bytes(BLOCK_SIZE)
# PAX and GNU long-name records are read into memory, so the extension
# headers before one entry may hold at most this many bytes in total.
MAX_EXTENSION_SIZE = 1 << 20
EXTENSION_TYPES = frozenset(b"xgXLK")
HEADER_ONLY_TYPES = frozenset(b"123456")
GNU_SPARSE = ord("S")


@dataclass(frozen=True)
class TarEntry:
    """One tar member: its header blocks and the size of the content after them.

    `header` includes any PAX or GNU extension records that precede the main
    header. The end-of-archive marker is an entry whose `data_size` is None,
    because everything after it up to the end of the stream belongs to it.
    """

    offset: int
    header: bytes
    path: bytes
    data_size: int | None


class TarAlignedChunker:
    """A chunker that groups small tar entries and cuts large ones with FastCDC."""

    name = "tar-aligned"

    def __init__(self, target_size: int = 65536) -> None:
        self._target = target_size
        self._min_group = target_size // 4
        self._max_group = target_size * 4
        self._cutter = FastCDC(
            avg_size=target_size,
            normalized_chunking=FastCdcChunker.NORMALIZATION,
            seed=FastCdcChunker.SEED,
        )

    def chunks(self, stream: BinaryIO) -> Iterator[bytes]:
        """Yield the chunks of a tar stream.

        Raises ValueError naming the offset when the stream is not a valid tar,
        possibly after some chunks were yielded. A stream that ends cleanly
        between entries without the end-of-archive blocks is accepted.
        """
        parser = TarParser(stream)
        group = bytearray()
        for entry in parser:
            if entry.data_size is None or self._is_large(entry):
                if group:
                    yield bytes(group)
                    group.clear()
                yield from self._cut_inside(parser, entry)
                continue

            size = len(entry.header) + entry.data_size
            if group and len(group) + size > self._max_group:
                yield bytes(group)
                group.clear()
            group += entry.header
            group += parser.read_data(entry)
            if len(group) >= self._min_group and self._ends_group(entry.path, size):
                yield bytes(group)
                group.clear()
        if group:
            yield bytes(group)

    def parameters(self) -> dict[str, int | str]:
        return {
            "algorithm": self.name,
            "target": self._target,
            "group_min": self._min_group,
            "group_max": self._max_group,
            "group_end": "xxh3_64(path) % (target - group_min) < entry_size",
            "large_entry": f"> {self._target}",
            "inner": "fastcdc",
            "min": self._cutter.min_size,
            "avg": self._cutter.avg_size,
            "max": self._cutter.max_size,
            "normalization": FastCdcChunker.NORMALIZATION,
            "seed": FastCdcChunker.SEED,
        }

    def _is_large(self, entry: TarEntry) -> bool:
        assert entry.data_size is not None
        return len(entry.header) + entry.data_size > self._target

    def _ends_group(self, path: bytes, entry_size: int) -> bool:
        spacing = self._target - self._min_group
        return xxhash.xxh3_64_intdigest(path) % spacing < entry_size

    def _cut_inside(self, parser: TarParser, entry: TarEntry) -> Iterator[bytes]:
        for chunk in self._cutter.cut_stream(parser.entry_reader(entry)):
            yield bytes(chunk.data)


class TarParser:
    """A reader of a tar stream, entry by entry.

    The caller reads each entry's content with `read_data` or `entry_reader`
    before it requests the next entry.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.offset = 0
        self._global_pax: dict[bytes, bytes] = {}
        self._ended = False

    def __iter__(self) -> Iterator[TarEntry]:
        while not self._ended:
            entry = self._read_entry()
            if entry is None:
                return
            if entry.data_size is None:
                self._ended = True
            yield entry

    def read_data(self, entry: TarEntry) -> bytes:
        """Read the padded content of `entry` into memory."""
        assert entry.data_size is not None
        return self.read_exact(entry.data_size, entry.offset)

    def entry_reader(self, entry: TarEntry) -> EntryReader:
        """Return a reader of the entry's header and content, for streaming."""
        return EntryReader(self, entry)

    def read_exact(self, size: int, entry_offset: int) -> bytes:
        """Read `size` bytes, raising MalformedTar if the stream ends first."""
        data = self.read_some(size)
        if len(data) < size:
            raise MalformedTar(
                f"tar stream truncated at offset {self.offset}: the entry at "
                f"offset {entry_offset} needs {size - len(data)} more bytes"
            )
        return data

    def read_some(self, size: int) -> bytes:
        """Read `size` bytes, or fewer only at the end of the stream.

        Decompressing readers (python-zstandard's among them) may return
        fewer bytes than asked before the end, so reads are repeated.
        """
        parts = []
        remaining = size
        while remaining > 0:
            piece = self._stream.read(remaining)
            if not piece:
                break
            parts.append(piece)
            remaining -= len(piece)
        data = b"".join(parts)
        self.offset += len(data)
        return data

    def _read_entry(self) -> TarEntry | None:
        start = self.offset
        header = bytearray()
        local_pax: dict[bytes, bytes] = {}
        long_name: bytes | None = None
        while True:
            block_offset = self.offset
            block = self.read_some(BLOCK_SIZE)
            if not block and not header:
                return None
            if len(block) < BLOCK_SIZE:
                raise MalformedTar(
                    f"tar stream truncated at offset {self.offset}: incomplete "
                    f"header block at offset {block_offset}"
                )
            if block == ZERO_BLOCK and not header:
                return TarEntry(start, block, b"", None)

            verify_checksum(block, block_offset)
            header += block
            typeflag = block[156]
            size = parse_number(block[124:136], block_offset)
            if typeflag not in EXTENSION_TYPES:
                break

            payload = self._read_extension(size, len(header), block_offset)
            header += payload
            payload = payload[:size]
            if typeflag == ord("L"):
                long_name = payload.split(b"\0", 1)[0]
            elif typeflag == ord("g"):
                self._global_pax.update(parse_pax(payload, block_offset))
            elif typeflag in b"xX":
                local_pax.update(parse_pax(payload, block_offset))

        pax = {**self._global_pax, **local_pax}
        path = pax.get(b"path") or long_name or ustar_path(block)
        if b"size" in pax:
            size = parse_pax_size(pax[b"size"], block_offset)
        if typeflag == GNU_SPARSE:
            header += self._read_sparse_extensions(block, block_offset)
        data_size = 0 if typeflag in HEADER_ONLY_TYPES else padded(size)
        return TarEntry(start, bytes(header), path, data_size)

    def _read_extension(self, size: int, header_size: int, block_offset: int) -> bytes:
        if header_size + size > MAX_EXTENSION_SIZE:
            raise MalformedTar(
                f"tar extended headers up to offset {block_offset} exceed "
                f"{MAX_EXTENSION_SIZE} bytes, more than this parser reads; "
                "chunk the layer with plain FastCDC"
            )
        return self.read_exact(padded(size), block_offset)

    def _read_sparse_extensions(self, block: bytes, block_offset: int) -> bytes:
        """Read the old GNU sparse map blocks that follow a sparse file's header."""
        extensions = bytearray()
        is_extended = block[482]
        while is_extended:
            if len(extensions) + BLOCK_SIZE > MAX_EXTENSION_SIZE:
                raise MalformedTar(
                    f"the sparse map after the header at offset {block_offset} "
                    f"exceeds {MAX_EXTENSION_SIZE} bytes"
                )
            extension = self.read_exact(BLOCK_SIZE, block_offset)
            extensions += extension
            is_extended = extension[504]
        return bytes(extensions)


class EntryReader:
    """A file-like view of one entry: its header blocks, then its content.

    For the end-of-archive entry the content is the rest of the stream.
    Raises ValueError if the stream ends before the entry's content does.
    """

    def __init__(self, parser: TarParser, entry: TarEntry) -> None:
        self._parser = parser
        self._entry = entry
        self._prefix = memoryview(entry.header)
        self._remaining = entry.data_size

    def readinto(self, buffer: memoryview) -> int:
        if self._prefix:
            count = min(len(buffer), len(self._prefix))
            buffer[:count] = self._prefix[:count]
            self._prefix = self._prefix[count:]
            return count

        if self._remaining is None:
            data = self._parser.read_some(len(buffer))
        else:
            count = min(len(buffer), self._remaining)
            data = self._parser.read_exact(count, self._entry.offset)
            self._remaining -= count
        buffer[: len(data)] = data
        return len(data)


def padded(size: int) -> int:
    """Round a content size up to whole 512-byte blocks."""
    return -(-size // BLOCK_SIZE) * BLOCK_SIZE


def parse_number(field: bytes, block_offset: int) -> int:
    """Parse a numeric header field: octal text, or GNU base-256 binary.

    Base-256 fields start with 0x80 (positive) or 0xff (negative) and hold a
    big-endian two's complement number in the remaining bytes.
    """
    if field[0] in (0x80, 0xFF):
        value = int.from_bytes(field[1:], "big")
        if field[0] == 0xFF:
            value -= 1 << (8 * (len(field) - 1))
    else:
        text = field.split(b"\0", 1)[0].strip()
        try:
            value = int(text or b"0", 8)
        except ValueError:
            raise MalformedTar(
                f"invalid number {field!r} in the tar header at offset {block_offset}"
            ) from None
    if value < 0:
        raise MalformedTar(
            f"negative number in the tar header at offset {block_offset}"
        )
    return value


_HIGH_BYTES = bytes(range(0x80, 0x100))


def verify_checksum(block: bytes, block_offset: int) -> None:
    """Raise ValueError unless the header block's checksum field matches.

    The checksum counts the field itself as eight spaces. Some old writers
    summed signed bytes, so both sums are accepted, as tarfile does.
    """
    stored = parse_number(block[148:156], block_offset)
    rest = block[:148] + b" " * 8 + block[156:]
    unsigned = sum(rest)
    if stored == unsigned:
        return
    high_bytes = len(rest) - len(rest.translate(None, _HIGH_BYTES))
    if stored != unsigned - 256 * high_bytes:
        raise MalformedTar(
            f"invalid tar header checksum at offset {block_offset}: "
            f"stored {stored}, computed {unsigned}"
        )


def ustar_path(block: bytes) -> bytes:
    """Return the path in a ustar header, joining the prefix field if set."""
    name = block[0:100].split(b"\0", 1)[0]
    # GNU headers ("ustar  \0") use the prefix field's bytes for other data.
    if block[257:263] != b"ustar\0":
        return name
    prefix = block[345:500].split(b"\0", 1)[0]
    return prefix + b"/" + name if prefix else name


def parse_pax(payload: bytes, block_offset: int) -> dict[bytes, bytes]:
    """Parse PAX records, each `<length> <key>=<value>\\n`, into a dict."""
    records: dict[bytes, bytes] = {}
    position = 0
    while position < len(payload) and payload[position] != 0:
        space = payload.find(b" ", position)
        try:
            length = int(payload[position:space])
        except ValueError:
            length = 0
        end = position + length
        if space < 0 or length <= 0 or end > len(payload) or payload[end - 1] != 10:
            raise MalformedTar(
                f"invalid PAX record at offset {position} of the extended header "
                f"at offset {block_offset}"
            )
        key, _, value = payload[space + 1 : end - 1].partition(b"=")
        records[key] = value
        position = end
    return records


def parse_pax_size(value: bytes, block_offset: int) -> int:
    if not value.isdigit():
        raise MalformedTar(
            f"invalid PAX size {value!r} in the extended header at offset "
            f"{block_offset}"
        )
    return int(value)
