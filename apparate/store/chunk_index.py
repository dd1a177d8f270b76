"""The local chunk index: where the frame of each known chunk lives.

An SQLite database beside the OCI layout maps a chunk's identity to the
stored blob that contains its zstd frame, with the frame's offset, length and
xxh3, and the chunk's uncompressed length. Only chunks of blobs that were
verified and stored are recorded. Writes are transactions, and SQLite's
locking lets several apparate processes share one store.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from apparate.chunked.format import ChunkTable
from apparate.digest import Digest
from apparate.errors import StoreError
from apparate.store.history import connect_read_only

log = logging.getLogger(__name__)
# `kind` separates the layers of converted images ("layer"), whose frames a
# converter may copy, from local packs of plain layers ("pack"), whose frames
# are written fast at a low level and stay on this machine.
SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    identity BLOB NOT NULL,
    length INTEGER NOT NULL,
    blob TEXT NOT NULL,
    frame_offset INTEGER NOT NULL,
    frame_length INTEGER NOT NULL,
    frame_xxh3 INTEGER NOT NULL,
    kind TEXT NOT NULL,
    PRIMARY KEY (identity, blob, frame_offset)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS chunks_by_blob ON chunks (blob);
"""
# The index caches facts read from the store's blobs, so an index of another
# schema version is dropped and refilled as blobs are pulled again.
SCHEMA_VERSION = 2
LAYER = "layer"
PACK = "pack"
# The store's SQLite database, holding the chunk index and the pull history.
INDEX_FILE = "apparate.db"
BUSY_TIMEOUT_MS = 30_000
# Chunks looked up per query, below SQLite's old limit of 999 parameters.
_LOOKUP_BATCH = 900
_SIGNED = 1 << 63


@dataclass(frozen=True)
class FrameLocation:
    """A frame of a known chunk inside a stored blob."""

    blob: Digest
    frame_offset: int
    frame_length: int
    frame_xxh3: int
    length: int


class ChunkIndex:
    """The chunk index of one store; open it per process, close it when done.

    A ``read_only`` index, as a dry run opens, changes nothing on disk, also
    on a read-only mount. A missing database or one of another schema
    version then reads as empty.
    """

    def __init__(self, path: Path, read_only: bool = False) -> None:
        self.path = path
        # Reentrant: Ctrl-C can leave a query's context open in the thread
        # that then closes the index.
        self._lock = threading.RLock()
        # Blob values that are not digests, warned about once per process.
        self._invalid_blobs: set[str] = set()
        self._read_only = read_only
        try:
            if read_only:
                self._db = _open_read_only(path)
            else:
                self._db = _open_writable(path)
                self._migrate()
        except sqlite3.Error as error:
            raise StoreError(f"cannot open the chunk index {path}: {error}") from None

    def _migrate(self) -> None:
        with self._db:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version != SCHEMA_VERSION:
                self._db.execute("DROP TABLE IF EXISTS chunks")
            self._db.executescript(SCHEMA)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        # After Ctrl-C, layer threads may still be in a query. Closing the
        # connection under them crashes the interpreter, so close waits.
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def add_table(self, blob: Digest, table: ChunkTable, kind: str = LAYER) -> None:
        """Record every chunk of a verified, stored blob, in one transaction."""
        rows = [
            (
                entry.identity,
                entry.length,
                str(blob),
                entry.frame_offset,
                entry.frame_length,
                _to_signed(entry.frame_xxh3),
                kind,
            )
            for entry in table.entries
        ]
        with self._writing():
            self._db.executemany(
                "INSERT OR IGNORE INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?)", rows
            )

    def locate(
        self, identity: bytes, kinds: tuple[str, ...] = (LAYER, PACK)
    ) -> list[FrameLocation]:
        """Return every stored frame of the chunk, in blobs of ``kinds``."""
        return self.locate_all([identity], kinds).get(identity, [])

    def locate_all(
        self, identities: Iterable[bytes], kinds: tuple[str, ...] = (LAYER, PACK)
    ) -> dict[bytes, list[FrameLocation]]:
        """Return the stored frames of each chunk found, in blobs of ``kinds``.

        One query looks up many chunks. A query per chunk took 29 ms for the
        2,800 chunks of a layer with a 91 MB tar.
        """
        unique = list(dict.fromkeys(identities))
        kind_marks = ", ".join("?" for _ in kinds)
        rows = []
        with self._reading():
            for start in range(0, len(unique), _LOOKUP_BATCH):
                batch = unique[start : start + _LOOKUP_BATCH]
                marks = ", ".join("?" for _ in batch)
                rows += self._db.execute(
                    "SELECT identity, blob, frame_offset, frame_length, frame_xxh3, "
                    f"length FROM chunks WHERE identity IN ({marks}) "
                    f"AND kind IN ({kind_marks}) ORDER BY identity, blob, frame_offset",
                    (*batch, *kinds),
                ).fetchall()
        digests: dict[str, Digest | None] = {}
        found: dict[bytes, list[FrameLocation]] = {}
        for identity, blob, offset, frame_length, h, n in rows:
            if blob not in digests:
                digests[blob] = self._blob_digest(blob)
            digest = digests[blob]
            if digest is not None:
                found.setdefault(identity, []).append(
                    FrameLocation(digest, offset, frame_length, _to_unsigned(h), n)
                )
        return found

    def _blob_digest(self, blob: object) -> Digest | None:
        """Parse a row's blob; forget the rows of a value that is not a digest."""
        digest = Digest.parse_or_none(blob)
        if digest is None:
            self._forget_invalid(blob)
        return digest

    def has_blob(self, blob: Digest) -> bool:
        with self._reading():
            row = self._db.execute(
                "SELECT 1 FROM chunks WHERE blob = ? LIMIT 1", (str(blob),)
            ).fetchone()
        return row is not None

    def _forget_invalid(self, blob: object) -> None:
        """Drop the rows of a blob value that is not a digest, such as a damaged row.

        The chunks are fetched again instead, so a failed delete is only logged.
        """
        if str(blob) in self._invalid_blobs:
            return
        self._invalid_blobs.add(str(blob))
        log.warning(
            "%s: chunk rows name %r, which is not a blob digest; they are forgotten",
            self.path, blob,
        )  # fmt: skip
        if self._read_only:
            return
        try:
            with self._writing():
                self._db.execute("DELETE FROM chunks WHERE blob = ?", (blob,))
        except StoreError as error:
            log.warning("%s", error)

    @contextmanager
    def _reading(self) -> Iterator[None]:
        try:
            with self._lock:
                yield
        except sqlite3.Error as error:
            raise StoreError(
                f"cannot read the chunk index {self.path}: {error}"
            ) from None

    @contextmanager
    def _writing(self) -> Iterator[None]:
        if self._read_only:
            raise StoreError(f"the chunk index {self.path} was opened read-only")
        try:
            with self._lock, self._db:
                yield
        except sqlite3.Error as error:
            raise StoreError(
                f"cannot write the chunk index {self.path}: {error}"
            ) from None


def _open_writable(path: Path) -> sqlite3.Connection:
    # Compression threads look frames up, so the connection is shared across
    # threads and every use is serialised by the lock.
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
    db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    db.execute("PRAGMA journal_mode = WAL")
    return db


def _open_read_only(path: Path) -> sqlite3.Connection:
    """Open the index for reading; a missing one or one of another version reads as empty."""
    if path.exists():
        db = connect_read_only(path, check_same_thread=False)
        if db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return db
        db.close()
    empty = sqlite3.connect(":memory:", check_same_thread=False)
    empty.executescript(SCHEMA)
    return empty


def _to_signed(value: int) -> int:
    """Fit an unsigned 64-bit hash into SQLite's signed INTEGER."""
    return value - (1 << 64) if value >= _SIGNED else value


def _to_unsigned(value: int) -> int:
    return value + (1 << 64) if value < 0 else value
