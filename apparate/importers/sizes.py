"""Uncompressed sizes of stored layers, which a streamed tar needs up front.

A tar header carries its entry's size, so a docker-archive can stream a
decompressed layer only when the size of the decompressed tar is known
before the first byte. Sizes are kept in the store's database by layer
digest. A size that is missing is read from the chunk table of a chunked
layer, or counted by decompressing the layer once. A pull records the size
of each layer it verified whole, since its diff_id check counted it.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from apparate.chunked.format import is_chunked_layer
from apparate.chunked.reader import read_stored_table
from apparate.errors import ChunkedLayerError, StoreError
from apparate.layers import open_tar_stream
from apparate.manifest import PLAIN_LAYERS, Descriptor
from apparate.store.chunk_index import INDEX_FILE
from apparate.store.layout import Store

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS uncompressed_sizes (
    blob TEXT PRIMARY KEY,
    size INTEGER NOT NULL
) WITHOUT ROWID;
"""
READ_SIZE = 1 << 20
BUSY_TIMEOUT_SECONDS = 30.0


class LayerSizes:
    """The uncompressed sizes of a store's layers; close it when done."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._path = store.root / INDEX_FILE
        try:
            self._db = self._open(str(self._path))
        except sqlite3.Error as error:
            # An import from a store whose database this user cannot write
            # still works, and the sizes are counted again next time.
            log.warning(
                "sizes of layers not kept: cannot open %s: %s", self._path, error
            )
            self._db = self._open(":memory:")

    @staticmethod
    def _open(path: str) -> sqlite3.Connection:
        connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS)
        try:
            with connection:
                connection.executescript(SCHEMA)
        except sqlite3.Error:
            connection.close()
            raise
        return connection

    def close(self) -> None:
        self._db.close()

    def size_of(self, layer: Descriptor, subject: str) -> int:
        """Return the uncompressed size of a stored layer, counting it if needed."""
        if layer.media_type in PLAIN_LAYERS:
            return layer.size
        known = self._lookup(layer)
        if known is not None:
            return known
        size = self._measure(layer, subject)
        self.record(layer, size)
        return size

    def record(self, layer: Descriptor, size: int) -> None:
        """Remember a size; a failure to write only costs a later recount."""
        try:
            with self._db:
                self._db.execute(
                    "INSERT OR REPLACE INTO uncompressed_sizes VALUES (?, ?)",
                    (str(layer.digest), size),
                )
        except sqlite3.Error as error:
            log.warning("cannot record the size of layer %s: %s", layer.digest, error)

    def _lookup(self, layer: Descriptor) -> int | None:
        try:
            row = self._db.execute(
                "SELECT size FROM uncompressed_sizes WHERE blob = ?",
                (str(layer.digest),),
            ).fetchone()
        except sqlite3.Error as error:
            raise StoreError(f"cannot read {self._path}: {error}") from None
        return int(row[0]) if row else None

    def _measure(self, layer: Descriptor, subject: str) -> int:
        path = self._store.blob_path(layer.digest)
        if is_chunked_layer(layer.media_type, layer.annotations):
            try:
                return read_stored_table(
                    path, layer.annotations, subject
                ).uncompressed_length
            except ChunkedLayerError as error:
                log.warning("%s: counting the layer instead: %s", subject, error)
        log.info("%s: decompressing once to learn its tar size", subject)
        return count_tar_bytes(path, layer.media_type, subject)


def count_tar_bytes(path: Path, media_type: str, subject: str) -> int:
    """Decompress a stored layer blob and return its tar's size."""
    total = 0
    try:
        with open(path, "rb") as blob:
            tar = open_tar_stream(blob, media_type)
            while piece := tar.read(READ_SIZE):
                total += len(piece)
    except OSError as error:
        raise StoreError(f"cannot read {subject} from the store: {error}") from None
    return total
