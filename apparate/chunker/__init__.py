"""Content-defined chunking of uncompressed layer tars.

A chunker turns a byte stream into consecutive chunks whose boundaries
depend only on nearby content, so unchanged bytes give the same chunks in
every version of a layer. Chunkers are pure: bytes in, chunks out.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO, Protocol


class Chunker(Protocol):
    """Cuts a stream into chunks; the same bytes always give the same cuts."""

    name: str

    def chunks(self, stream: BinaryIO) -> Iterator[bytes]:
        """Yield consecutive chunks that together are the whole stream."""
        ...

    def parameters(self) -> dict[str, int | str]:
        """Return the settings a reader needs to cut exactly where this chunker cuts."""
        ...


class MalformedTar(ValueError):
    """The stream is not a valid tar; the message names the offset."""


# The chunking converters use, chosen by measurement on the sample images
# (docs/chunking-study.md): tar-aligned groups of about 32 KiB. Layers whose
# tar cannot be parsed fall back to plain FastCDC at the same average.
DEFAULT_TARGET_SIZE = 32 * 1024


def default_chunker() -> Chunker:
    from apparate.chunker.tar_aligned import TarAlignedChunker

    return TarAlignedChunker(DEFAULT_TARGET_SIZE)


def fallback_chunker() -> Chunker:
    from apparate.chunker.fastcdc import FastCdcChunker

    return FastCdcChunker(DEFAULT_TARGET_SIZE)
