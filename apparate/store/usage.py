"""When each stored image was last used, kept in the store's SQLite database.

A pull records a use, even when every blob was already stored, and other
commands (an import) call ``mark_used`` to record theirs. gc removes the
least recently used images first. The times live in ``apparate.db`` rather
than in ``index.json``, so tools that rewrite the layout, such as skopeo,
cannot lose them. An image tagged by such a tool has no row, so its
manifest blob's modification time is used.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from apparate.errors import StoreError
from apparate.store.chunk_index import INDEX_FILE
from apparate.store.history import connect_read_only

SCHEMA = """
CREATE TABLE IF NOT EXISTS image_uses (
    reference TEXT PRIMARY KEY,
    used REAL NOT NULL
) WITHOUT ROWID;
"""
BUSY_TIMEOUT_SECONDS = 30.0


def mark_used(store_root: Path, reference: str, now: float | None = None) -> None:
    """Record that the image tagged ``reference`` was used (pulled or imported).

    Callers that must not fail because of it catch StoreError.
    """
    used = time.time() if now is None else now
    with _connection(store_root) as db:
        _write(
            db,
            "INSERT INTO image_uses VALUES (?, ?) ON CONFLICT (reference) "
            "DO UPDATE SET used = MAX(used, excluded.used)",
            [(reference, used)],
        )


def last_used(store_root: Path) -> dict[str, float]:
    """Return the last use of every image that has one, by reference."""
    path = store_root / INDEX_FILE
    if not path.exists():
        return {}
    try:
        db = connect_read_only(path)
    except sqlite3.Error as error:
        raise StoreError(f"cannot open {path}: {error}") from None
    try:
        rows = db.execute("SELECT reference, used FROM image_uses").fetchall()
    except sqlite3.OperationalError as error:
        if "no such table" in str(error):
            return {}
        raise StoreError(f"cannot read the image uses in {path}: {error}") from None
    except sqlite3.Error as error:
        raise StoreError(f"cannot read the image uses in {path}: {error}") from None
    finally:
        db.close()
    return dict(rows)


def forget_uses(db: sqlite3.Connection, references: Iterable[str]) -> None:
    """Delete the rows of untagged images, inside the caller's transaction."""
    db.execute(SCHEMA)
    db.executemany(
        "DELETE FROM image_uses WHERE reference = ?", [(ref,) for ref in references]
    )


@contextmanager
def _connection(store_root: Path) -> Iterator[sqlite3.Connection]:
    """Open the store's database read-write, with the table made."""
    path = store_root / INDEX_FILE
    try:
        db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS)
    except sqlite3.Error as error:
        raise StoreError(f"cannot open {path}: {error}") from None
    try:
        _write(db, SCHEMA, None)
        yield db
    finally:
        db.close()


def _write(
    db: sqlite3.Connection, sql: str, rows: list[tuple[object, ...]] | None
) -> None:
    try:
        if rows is None:
            db.executescript(sql)
            return
        with db:
            db.executemany(sql, rows)
    except sqlite3.Error as error:
        raise StoreError(f"cannot record an image use: {error}") from None
