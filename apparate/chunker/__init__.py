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
        """The settings a reader needs to cut exactly where this chunker cuts."""
        ...
