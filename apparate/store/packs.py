"""The layer each local pack was cut from, so gc can drop packs of removed layers.

A pack contains the frames of one plain layer's tar, so the sha256 of its
decompressed frames is that layer's ``diff_id``. gc keeps a pack while a kept
image has a layer with that ``diff_id``. The link is cached in the store's
database; a pack without a row is decompressed once to learn it.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from pathlib import Path

import zstandard

from apparate.digest import Digest
from apparate.errors import StoreError
from apparate.store.chunk_index import INDEX_FILE, PACK
from apparate.store.history import connect_read_only
from apparate.store.layout import Store

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS pack_sources (
    pack TEXT PRIMARY KEY,
    diff_id TEXT NOT NULL
) WITHOUT ROWID;
"""
BUSY_TIMEOUT_SECONDS = 30.0
_PIECE = 1 << 20


def record_pack(store_root: Path, pack: Digest, diff_id: Digest) -> None:
    """Record the ``diff_id`` of the layer a new pack was cut from."""
    db = _connect(store_root / INDEX_FILE)
    try:
        with db:
            db.execute(
                "INSERT OR REPLACE INTO pack_sources VALUES (?, ?)",
                (str(pack), str(diff_id)),
            )
    except sqlite3.Error as error:
        raise StoreError(f"cannot record pack {pack}: {error}") from None
    finally:
        db.close()


def pack_sources(store: Store, read_only: bool = False) -> dict[Digest, Digest | None]:
    """Return every stored pack with the diff_id of its content (None: unreadable).

    ``read_only``, for a dry run on a store this process cannot write,
    learns the diff_id of packs without one but does not record it.
    """
    path = store.root / INDEX_FILE
    if not path.exists():
        return {}
    db = _connect_read_only(path) if read_only else _connect(path)
    try:
        packs, known = _read(db, path)
        found = {pack: known.get(pack) for pack in packs if store.has_blob(pack)}
        missing = [pack for pack, diff_id in found.items() if diff_id is None]
        for pack in missing:
            found[pack] = _diff_id_of(store, pack)
        if not read_only:
            _remember(db, path, {pack: found[pack] for pack in missing})
    finally:
        db.close()
    return found


def _read(
    db: sqlite3.Connection, path: Path
) -> tuple[list[Digest], dict[Digest, Digest]]:
    try:
        blobs = db.execute(
            "SELECT DISTINCT blob FROM chunks WHERE kind = ?", (PACK,)
        ).fetchall()
        rows = db.execute("SELECT pack, diff_id FROM pack_sources").fetchall()
    except sqlite3.OperationalError as error:
        if "no such table" in str(error):
            return [], {}
        raise StoreError(f"cannot read the packs in {path}: {error}") from None
    except sqlite3.Error as error:
        raise StoreError(f"cannot read the packs in {path}: {error}") from None
    # Rows that name no digest (a damaged database) are left to gc to delete.
    packs = [pack for (value,) in blobs if (pack := Digest.parse_or_none(value))]
    known = {}
    for pack_value, diff_value in rows:
        pack, diff_id = (
            Digest.parse_or_none(pack_value),
            Digest.parse_or_none(diff_value),
        )
        if pack and diff_id:
            known[pack] = diff_id
    return packs, known


def _remember(
    db: sqlite3.Connection, path: Path, learned: dict[Digest, Digest | None]
) -> None:
    rows = [(str(pack), str(diff)) for pack, diff in learned.items() if diff]
    try:
        with db:
            db.executemany("INSERT OR REPLACE INTO pack_sources VALUES (?, ?)", rows)
    except sqlite3.Error as error:
        raise StoreError(f"cannot write the packs in {path}: {error}") from None


def _diff_id_of(store: Store, pack: Digest) -> Digest | None:
    """Hash the decompressed frames of a pack; None if it does not decompress."""
    digest = hashlib.sha256()
    decompressor = zstandard.ZstdDecompressor()
    try:
        with (
            open(store.blob_path(pack), "rb") as blob,
            decompressor.stream_reader(blob, read_across_frames=True) as reader,
        ):
            while piece := reader.read(_PIECE):
                digest.update(piece)
    except (OSError, zstandard.ZstdError) as error:
        log.warning("pack %s in the store is unreadable: %s", pack, error)
        return None
    return Digest("sha256", digest.hexdigest())


def _connect_read_only(path: Path) -> sqlite3.Connection:
    try:
        return connect_read_only(path)
    except sqlite3.Error as error:
        raise StoreError(f"cannot open {path}: {error}") from None


def _connect(path: Path) -> sqlite3.Connection:
    try:
        db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS)
        with db:
            db.executescript(SCHEMA)
    except sqlite3.Error as error:
        raise StoreError(f"cannot open {path}: {error}") from None
    return db
