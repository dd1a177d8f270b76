"""Decompress layer blobs as they stream and check the tar against its diff_id."""

from __future__ import annotations

import zlib
from typing import Protocol

import zstandard

from apparate.digest import Digest, DigestVerifier
from apparate.errors import DiffIDMismatch, DigestMismatch, VerificationError
from apparate.manifest import GZIP_LAYERS, PLAIN_LAYERS, ZSTD_LAYERS


class Decompressor(Protocol):
    def decompress(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


class GzipMembers:
    """Decompress gzip data made of one or more concatenated members.

    zlib's decompressor stops at the end of the first member, so a new one is
    started on whatever follows, as ``gzip -d`` does.
    """

    def __init__(self) -> None:
        self._current = zlib.decompressobj(wbits=31)
        self._member_started = False

    def decompress(self, data: bytes) -> bytes:
        output = []
        while data:
            self._member_started = True
            output.append(self._current.decompress(data))
            if not self._current.eof:
                break
            data = self._current.unused_data
            self._current = zlib.decompressobj(wbits=31)
            self._member_started = False
        return b"".join(output)

    def finish(self) -> bytes:
        if self._member_started:
            raise ValueError("gzip stream ends in the middle of a member")
        return b""


class ZstdFrames:
    """Decompress every frame of a zstd stream, not only the first."""

    def __init__(self) -> None:
        self._inner = zstandard.ZstdDecompressor().decompressobj(
            read_across_frames=True
        )

    def decompress(self, data: bytes) -> bytes:
        try:
            return self._inner.decompress(data)
        except zstandard.ZstdError as error:
            raise ValueError(f"zstd stream is corrupt: {error}") from None

    def finish(self) -> bytes:
        return self._inner.flush()


class Uncompressed:
    def decompress(self, data: bytes) -> bytes:
        return data

    def finish(self) -> bytes:
        return b""


def decompressor_for(media_type: str) -> Decompressor:
    """Return a decompressor for a layer media type, raising for unknown ones."""
    if media_type in GZIP_LAYERS:
        return GzipMembers()
    if media_type in ZSTD_LAYERS:
        return ZstdFrames()
    if media_type in PLAIN_LAYERS:
        return Uncompressed()
    raise VerificationError(
        f"layer media type {media_type!r} is not supported",
        hint="apparate reads tar layers that are plain, gzip or zstd compressed",
    )


class DiffIDVerifier:
    """Feed compressed layer bytes; check the uncompressed tar's sha256 at the end.

    ``uncompressed_size`` counts the tar's bytes, which the docker importer
    needs to stream archives without a temporary copy.
    """

    def __init__(self, media_type: str, diff_id: Digest, subject: str) -> None:
        self._decompressor = decompressor_for(media_type)
        self._verifier = DigestVerifier(diff_id, f"uncompressed {subject}", "layer")
        self._subject = subject

    @property
    def uncompressed_size(self) -> int:
        return self._verifier.bytes_read

    def update(self, data: bytes) -> None:
        try:
            self._verifier.update(self._decompressor.decompress(data))
        except (ValueError, zlib.error) as error:
            raise VerificationError(f"{self._subject} cannot be decompressed: {error}")

    def verify(self) -> None:
        try:
            self._verifier.update(self._decompressor.finish())
        except (ValueError, zlib.error) as error:
            raise VerificationError(f"{self._subject} cannot be decompressed: {error}")
        try:
            self._verifier.verify()
        except DigestMismatch as error:
            raise DiffIDMismatch(error.message) from None
