"""Chunk a plain layer as it streams in, so its content seeds later pulls.

The uncompressed tar of a layer that was not converted is cut with the same
chunking a converter uses. Its frames are written as a local pack, a chunked
blob of its own (frames, table, footer) in the store, and recorded in the
chunk index. The
pack is committed only after the layer it came from was verified.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
from collections.abc import Callable

from apparate.chunked.reuse import StoredFrames
from apparate.chunked.writer import ConvertedLayer, Encoder, write_chunked_layer
from apparate.chunker import default_chunker
from apparate.digest import Digest
from apparate.errors import ApparateError
from apparate.store.chunk_index import PACK, ChunkIndex
from apparate.store.gc import binary_size
from apparate.store.layout import BlobWriter, Store
from apparate.store.packs import record_pack

log = logging.getLogger(__name__)

# Packs trade ratio for speed, since they are written during every pull of
# a plain layer; a frame's level does not matter to a reader.
PACK_LEVEL = 1
PIPE_DEPTH = 16
_POLL_SECONDS = 0.1
# Free space kept on the store's disk beyond what the pull's layers need. A
# pack only speeds up later pulls, so it gives way to the image and index.
SPARE_BYTES = 16 * 1024 * 1024
# Pack bytes written between two checks of the free space.
_ROOM_CHECK_BYTES = 1024 * 1024


class PackAborted(Exception):
    """The layer failed, so its pack is not written."""


class NoRoomForPack(Exception):
    """The disk has too little space left for the pack beside the pull's layers."""


class _Pipe:
    """A file-like reader over pieces that another thread puts in a queue."""

    def __init__(self) -> None:
        self._queue: queue.Queue[bytes | None] = queue.Queue(PIPE_DEPTH)
        self._pending = memoryview(b"")
        self._ended = False
        self.aborted = False

    def put(self, piece: bytes | None) -> None:
        while not self.aborted:
            try:
                self._queue.put(piece, timeout=_POLL_SECONDS)
                return
            except queue.Full:
                continue

    def readinto(self, buffer: memoryview) -> int:
        if not self._next_piece():
            return 0
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count

    def read(self, size: int = -1) -> bytes:
        """Return up to ``size`` bytes (all that remain for -1), b"" at the end."""
        parts = []
        wanted = size if size >= 0 else 1 << 62
        while wanted > 0 and self._next_piece():
            count = min(wanted, len(self._pending))
            parts.append(self._pending[:count])
            self._pending = self._pending[count:]
            wanted -= count
        # Slices of the pieces, copied once.
        return b"".join(parts)

    def _next_piece(self) -> bool:
        """Wait until bytes are pending; return False at the end of the stream."""
        while not self._pending and not self._ended:
            if self.aborted:
                raise PackAborted()
            try:
                piece = self._queue.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                continue
            if piece is None:
                self._ended = True
            else:
                self._pending = memoryview(piece)
        return bool(self._pending)

    def drain(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return


class LocalPacker:
    """Write the frames of one plain layer's tar into a pack, on its own thread."""

    def __init__(
        self,
        store: Store,
        index: ChunkIndex,
        subject: str,
        room_needed: Callable[[], int] = lambda: 0,
    ) -> None:
        """``room_needed()`` returns the bytes the pull's downloads may still write."""
        self._store = store
        self._index = index
        self._subject = subject
        self._room_needed = room_needed
        self._unchecked = _ROOM_CHECK_BYTES
        self._pipe = _Pipe()
        self._blob = BlobWriter(store, Digest("sha256", "0" * 64), "the local pack")
        self._result: ConvertedLayer | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="pack", daemon=True)
        self._thread.start()

    def feed(self, piece: bytes) -> None:
        """Take the next piece of the uncompressed tar."""
        self._pipe.put(piece)

    def finish(self, diff_id: Digest) -> Digest | None:
        """Commit the pack of a verified layer and index it; return its digest.

        The caller checked that the tar it fed has ``diff_id``, so the
        packer does not hash the tar again. A pack is an optimisation: when
        it cannot be written the pull goes on, so failures are logged, not
        raised.
        """
        self._pipe.put(None)
        self._thread.join()
        result = self._result
        if self._error is not None or result is None:
            log.warning(
                "%s: no local pack written, so later delta pulls reuse none of "
                "this layer: %s", self._subject, self._error,
            )  # fmt: skip
            self._blob.discard()
            return None
        try:
            self._blob.commit(result.digest)
            self._index.add_table(result.digest, result.table, PACK)
        except ApparateError as error:
            log.warning("%s: no local pack written: %s", self._subject, error)
            return None
        try:
            record_pack(self._store.root, result.digest, diff_id)
        except ApparateError as error:
            # gc learns it by decompressing the pack once.
            log.info("%s: the pack's layer is not recorded: %s", self._subject, error)
        log.info("%s: packed %d chunks", self._subject, len(result.table.entries))
        return result.digest

    def abort(self) -> None:
        """Stop without writing anything, as after a failed download."""
        if self._thread.is_alive():
            self._pipe.aborted = True
            self._pipe.drain()
            self._thread.join()
        self._blob.discard()

    def _run(self) -> None:
        try:
            self._result = write_chunked_layer(
                self._pipe,  # type: ignore[arg-type]
                self._write,
                default_chunker(),  # packs cut where converters cut
                Encoder(PACK_LEVEL),
                StoredFrames(self._store, self._index),
                workers=1,
                hash_tar=False,
            )
        except BaseException as error:  # noqa: BLE001 - reported by finish()
            self._error = error
            self._pipe.aborted = True
            self._pipe.drain()

    def _write(self, data: bytes) -> None:
        self._unchecked += len(data)
        if self._unchecked >= _ROOM_CHECK_BYTES:
            self._unchecked = 0
            self._check_room()
        self._blob.write(data)

    def _check_room(self) -> None:
        """Raise NoRoomForPack when the pull's layers need the space left."""
        try:
            free = shutil.disk_usage(self._store.ingest_dir).free
        except OSError:
            return
        needed = self._room_needed() + SPARE_BYTES
        if free < needed:
            raise NoRoomForPack(
                f"{binary_size(free)} free on the store's disk, and the pull may "
                f"still need {binary_size(needed)} for the image"
            )
