"""Decompress layer blobs as they stream and check the tar against its diff_id.

Decompression and hashing run on threads of their own, so they overlap the
download. Output is handed on in pieces of at most ``OUTPUT_PIECE`` bytes, so
memory stays flat whatever the compression ratio.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import BinaryIO, Protocol, cast

import zstandard

from apparate.digest import Digest, DigestVerifier
from apparate.errors import DiffIDMismatch, DigestMismatch, VerificationError
from apparate.manifest import (
    GZIP_LAYERS,
    LAYER_TYPES,
    PLAIN_LAYERS,
    ZSTD_LAYERS,
    unsupported_layer_type,
)
from apparate.pipeline import Stage

try:
    # ISA-L inflates about twice as fast as zlib (measured on the sample
    # layers), with the same API; zlib is the fallback where no wheel exists.
    from isal import igzip as gzip_module
    from isal import isal_zlib as inflate_module
except ImportError:  # pragma: no cover - depends on the platform's wheels
    import gzip as gzip_module  # type: ignore[no-redef]

    inflate_module = zlib  # type: ignore[assignment]

OUTPUT_PIECE = 1 << 20
INPUT_BATCH = 1 << 20
_DECODE_ERRORS = (ValueError, zlib.error, inflate_module.error, zstandard.ZstdError)

Sink = Callable[[bytes], None]


class Decompressor(Protocol):
    def write(self, data: bytes) -> None: ...

    def finish(self) -> None: ...


class GzipMembers:
    """Decompress gzip data made of one or more concatenated members.

    A decompressor stops at the end of the first member, so a new one is
    started on whatever follows, as ``gzip -d`` does.
    """

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._current = inflate_module.decompressobj(wbits=31)
        self._member_started = False

    def write(self, data: bytes) -> None:
        while data:
            self._member_started = True
            output = self._current.decompress(data, OUTPUT_PIECE)
            if output:
                self._sink(output)
            if self._current.eof:
                data = self._current.unused_data
                self._current = inflate_module.decompressobj(wbits=31)
                self._member_started = False
            else:
                data = self._current.unconsumed_tail

    def finish(self) -> None:
        if self._member_started:
            raise ValueError("gzip stream ends in the middle of a member")


class ZstdFrames:
    """Decompress every frame of a zstd stream, not only the first.

    python-zstandard's one-shot ``decompress()`` stops after the first frame;
    a stream writer reads across frames.
    """

    def __init__(self, sink: Sink) -> None:
        self._writer = zstandard.ZstdDecompressor().stream_writer(
            _SinkFile(sink), write_size=OUTPUT_PIECE, closefd=False
        )

    def write(self, data: bytes) -> None:
        self._writer.write(data)

    def finish(self) -> None:
        self._writer.flush()


class Uncompressed:
    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    def write(self, data: bytes) -> None:
        self._sink(data)

    def finish(self) -> None:
        pass


class _SinkFile:
    """The file-like object python-zstandard's stream writer writes into."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    def write(self, data: bytes) -> int:
        self._sink(bytes(data))
        return len(data)


def open_tar_stream(blob: BinaryIO, media_type: str) -> BinaryIO:
    """Return a reader of the uncompressed tar inside a stored layer blob."""
    if media_type in GZIP_LAYERS:
        return gzip_module.GzipFile(fileobj=blob, mode="rb")  # reads every member
    if media_type in ZSTD_LAYERS:
        reader = zstandard.ZstdDecompressor().stream_reader(
            blob, read_across_frames=True, closefd=False
        )
        return cast(BinaryIO, reader)
    if media_type in PLAIN_LAYERS:
        return blob
    raise unsupported_layer_type(media_type, "a layer")


def decompressor_for(media_type: str, sink: Sink) -> Decompressor:
    """Return a decompressor for a layer media type, raising for unknown ones."""
    if media_type in GZIP_LAYERS:
        return GzipMembers(sink)
    if media_type in ZSTD_LAYERS:
        return ZstdFrames(sink)
    if media_type in PLAIN_LAYERS:
        return Uncompressed(sink)
    raise unsupported_layer_type(media_type, "a layer")


class DiffIDVerifier:
    """Feed compressed layer bytes; check the uncompressed tar's sha256 at the end.

    Decompression and hashing each run on a thread of their own: ``update``
    only queues, and ``verify`` waits for both and raises what they found.
    ``tar_sink``, if given, receives the uncompressed tar piece by piece.
    ``uncompressed_size`` counts the tar's bytes, which the docker importer
    needs to stream archives.
    """

    def __init__(
        self,
        media_type: str,
        diff_id: Digest,
        subject: str,
        tar_sink: Sink | None = None,
    ) -> None:
        # Checked before the stages below start their threads.
        if media_type not in LAYER_TYPES:
            raise unsupported_layer_type(media_type, subject)
        self._verifier = DigestVerifier(diff_id, f"uncompressed {subject}", "layer")
        self._subject = subject
        self._batch = bytearray()
        self._closed = False
        self._tar_sink = tar_sink
        self._hasher = Stage("diff-id-hash", self._hash)
        self._decompressor = decompressor_for(media_type, self._hasher.put)
        self._inflater = Stage(
            "diff-id-inflate", self._decompressor.write, self._end_of_stream
        )

    @property
    def uncompressed_size(self) -> int:
        return self._verifier.bytes_read

    def update(self, data: bytes) -> None:
        if self._closed:
            raise VerificationError(f"{self._subject}: the check was stopped")
        self._batch += data
        if len(self._batch) >= INPUT_BATCH:
            self._send_batch()

    def verify(self) -> None:
        """Wait for the tar's digest and raise unless it equals the diff_id."""
        try:
            self._send_batch()
            self._inflater.end()
            self._verifier.verify()
        except DigestMismatch as error:
            raise DiffIDMismatch(error.message) from None
        except _DECODE_ERRORS as error:
            message = f"{self._subject} cannot be decompressed: {error}"
            raise VerificationError(message) from None
        finally:
            self.close()

    def close(self) -> None:
        """Stop both threads; after a failed download nothing is verified."""
        self._closed = True
        self._inflater.abort()
        self._hasher.abort()

    def _send_batch(self) -> None:
        try:
            self._inflater.put(bytes(self._batch))
        except _DECODE_ERRORS as error:
            message = f"{self._subject} cannot be decompressed: {error}"
            raise VerificationError(message) from None
        self._batch.clear()

    def _hash(self, piece: bytes) -> None:
        self._verifier.update(piece)
        if self._tar_sink:
            self._tar_sink(piece)

    def _end_of_stream(self) -> None:
        self._decompressor.finish()
        self._hasher.end()
