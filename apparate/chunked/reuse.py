"""Frames already in the local store, offered to the writer for reuse."""

from __future__ import annotations

import logging

from apparate.chunked.format import ChunkEntry
from apparate.chunked.reader import decompress_frame
from apparate.digest import Digest
from apparate.errors import ChunkCorrupt
from apparate.store.chunk_index import LAYER, PACK, ChunkIndex, FrameLocation
from apparate.store.layout import Store

log = logging.getLogger(__name__)


class StoredFrames:
    """Look chunks up in the chunk index and read their frames from the store.

    A frame is handed out only after it decompressed to the chunk with the
    identity asked for, so a damaged store cannot slip into a new layer.
    ``kinds`` and ``blobs`` limit the blobs searched: a converter copies
    frames only from the converted layers named for reuse.
    """

    def __init__(
        self,
        store: Store,
        index: ChunkIndex,
        kinds: tuple[str, ...] = (LAYER, PACK),
        blobs: set[Digest] | None = None,
    ) -> None:
        self._store = store
        self._index = index
        self._kinds = kinds
        self._blobs = blobs
        self._missing: set[Digest] = set()

    def frame_for(self, identity: bytes, length: int) -> bytes | None:
        for location in self._index.locate(identity, self._kinds):
            if location.length != length or location.blob in self._missing:
                continue
            if self._blobs is not None and location.blob not in self._blobs:
                continue
            frame = self._read(location)
            if frame is None:
                continue
            entry = ChunkEntry(
                identity, length, location.frame_length, location.frame_xxh3,
                location.frame_offset,
            )  # fmt: skip
            try:
                decompress_frame(entry, frame, f"blob {location.blob} in the store")
            except ChunkCorrupt as error:
                log.warning("not reusing a stored frame: %s", error)
                continue
            return frame
        return None

    def _read(self, location: FrameLocation) -> bytes | None:
        try:
            with open(self._store.blob_path(location.blob), "rb") as blob:
                blob.seek(location.frame_offset)
                return blob.read(location.frame_length)
        except FileNotFoundError:
            self._forget(location.blob)
            return None
        except OSError:
            return b""

    def _forget(self, blob: Digest) -> None:
        """Stop offering the frames of a blob that is not in the store.

        Its rows stay: another pull indexes a layer before it commits the
        blob, so the blob may be on its way. gc deletes the rows of blobs
        that are gone, under its exclusive lock.
        """
        self._missing.add(blob)
        log.info(
            "blob %s is indexed but not in the store; its frames are not used", blob
        )
