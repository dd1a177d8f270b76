"""The record of past pulls, kept in the store's SQLite database."""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from apparate.errors import StoreError
from apparate.result import PullResult, saved_bytes

# A column added later goes last, where ALTER TABLE adds it to the table
# of an older store.
SCHEMA = """
CREATE TABLE IF NOT EXISTS pulls (
    finished REAL NOT NULL,
    reference TEXT NOT NULL,
    digest TEXT NOT NULL,
    layer_bytes INTEGER NOT NULL,
    bytes_fetched INTEGER NOT NULL,
    bytes_reused INTEGER NOT NULL,
    seconds REAL NOT NULL,
    bytes_resumed INTEGER NOT NULL DEFAULT 0
);
"""
# The column that the tables of older stores lack. Their pulls read as
# having resumed nothing, because apparate then counted such bytes as reused.
# NOTE: an apparate from before this column reads a table that has it with
# ``SELECT *``, so its ``stats`` fails, and its pulls are not recorded.
# Keeping the figure in a table of its own would spare those versions.
_RESUMED = "bytes_resumed INTEGER NOT NULL DEFAULT 0"
# The columns of a PullRecord, in field order.
_COLUMNS = (
    "finished, reference, digest, layer_bytes, bytes_fetched, bytes_reused, "
    "seconds, {resumed}"
)
BUSY_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class PullRecord:
    """One finished pull: what it cost and what it saved."""

    finished: float
    reference: str
    digest: str
    layer_bytes: int
    bytes_fetched: int
    bytes_reused: int
    seconds: float
    bytes_resumed: int = 0

    @property
    def bytes_saved(self) -> int:
        """Layer bytes neither fetched nor resumed; see saved_bytes."""
        return saved_bytes(self.layer_bytes, self.bytes_fetched, self.bytes_resumed)


@dataclass(frozen=True)
class Totals:
    """Sums over every recorded pull.

    ``bytes_saved`` is the sum of each pull's ``saved_bytes``, so a pull that
    fetched more than its layers, after retries, takes nothing from the others.
    """

    pulls: int
    layer_bytes: int
    bytes_fetched: int
    bytes_reused: int
    seconds: float
    bytes_saved: int = 0
    bytes_resumed: int = 0


class PullHistory:
    """The ``pulls`` table of a store's database; close it when done.

    Opened to write, it adds the columns an older apparate's table lacks.
    Opened read-only, it reads such a table as it is, a missing column as 0.
    """

    def __init__(self, path: Path, read_only: bool = False) -> None:
        """Open the history; read-only, it writes nothing, not even the table."""
        self.path = path
        try:
            if read_only:
                self._db = connect_read_only(path)
            else:
                self._db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS)
                self._create_table()
            self._resumed = "bytes_resumed" if self._has_resumed() else "0"
        except sqlite3.Error as error:
            raise StoreError(f"cannot open the pull history {path}: {error}") from None

    def _create_table(self) -> None:
        try:
            with self._db:
                self._db.executescript(SCHEMA)
            if not self._has_resumed():
                self._add_resumed()
        except sqlite3.Error:
            self._db.close()
            raise

    def _add_resumed(self) -> None:
        try:
            with self._db:
                self._db.execute(f"ALTER TABLE pulls ADD COLUMN {_RESUMED}")
        except sqlite3.OperationalError as error:
            # Another process opening the store added it meanwhile.
            if "duplicate column name" not in str(error):
                raise

    def _has_resumed(self) -> bool:
        rows = self._db.execute("PRAGMA table_info(pulls)").fetchall()
        return any(row[1] == "bytes_resumed" for row in rows)

    def close(self) -> None:
        self._db.close()

    def record(self, result: PullResult, now: float | None = None) -> None:
        """Add one finished pull."""
        row = (
            time.time() if now is None else now,
            result.reference,
            str(result.digest),
            result.layer_bytes,
            result.bytes_fetched,
            result.bytes_reused,
            result.seconds,
            result.bytes_resumed,
        )
        columns = _COLUMNS.format(resumed="bytes_resumed")
        try:
            with self._db:
                self._db.execute(
                    f"INSERT INTO pulls ({columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    row,
                )
        except sqlite3.Error as error:
            raise StoreError(
                f"cannot record the pull in {self.path}: {error}"
            ) from None

    def recent(self, limit: int) -> list[PullRecord]:
        """Return the last ``limit`` pulls, newest first."""
        # SQLite's integers are 64-bit, and a larger limit means all rows.
        limit = min(limit, 2**63 - 1)
        columns = _COLUMNS.format(resumed=self._resumed)
        rows = self._query(
            f"SELECT {columns} FROM pulls ORDER BY finished DESC LIMIT ?", limit
        )
        return [PullRecord(*row) for row in rows]

    def totals(self) -> Totals:
        resumed = self._resumed
        rows = self._query(
            "SELECT COUNT(*), COALESCE(SUM(layer_bytes), 0), "
            "COALESCE(SUM(bytes_fetched), 0), COALESCE(SUM(bytes_reused), 0), "
            "COALESCE(SUM(seconds), 0), "
            f"COALESCE(SUM(MAX(layer_bytes - bytes_fetched - {resumed}, 0)), 0), "
            f"COALESCE(SUM({resumed}), 0) FROM pulls"
        )
        return Totals(*rows[0]) if rows else Totals(0, 0, 0, 0, 0.0)

    def _query(self, sql: str, *parameters: object) -> list[tuple]:
        try:
            return self._db.execute(sql, parameters).fetchall()
        except sqlite3.OperationalError as error:
            if "no such table" in str(error):
                return []
            raise StoreError(
                f"cannot read the pull history {self.path}: {error}"
            ) from None
        except sqlite3.Error as error:
            raise StoreError(
                f"cannot read the pull history {self.path}: {error}"
            ) from None


def connect_read_only(path: Path, check_same_thread: bool = True) -> sqlite3.Connection:
    """Open a store's database for reading only, also on a read-only file system.

    The database is in WAL mode, and SQLite reads such a database only where
    it can create the ``-shm`` file beside it. Where this process cannot
    write that directory (a read-only mount, a store of another user), the
    database is opened as immutable instead. SQLite then takes no locks, so
    a write by another process meanwhile can make a read fail or miss it.
    Nor does it read the ``-wal`` file: writes a killed process left there,
    not yet checkpointed, are not seen.
    Raises sqlite3.Error.
    """
    db = _connect_uri(path, "mode=ro", check_same_thread)
    try:
        # SQLite opens the file at the first statement, not at connect.
        db.execute("PRAGMA schema_version").fetchone()
    except sqlite3.OperationalError:
        db.close()
        if os.access(path.parent, os.W_OK):
            raise
        return _connect_uri(path, "mode=ro&immutable=1", check_same_thread)
    return db


def _connect_uri(
    path: Path, options: str, check_same_thread: bool
) -> sqlite3.Connection:
    uri = f"file:{quote(str(path))}?{options}"
    return sqlite3.connect(
        uri, uri=True, timeout=BUSY_TIMEOUT_SECONDS,
        check_same_thread=check_same_thread,
    )  # fmt: skip
