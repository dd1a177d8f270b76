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

# The pulls table keeps the seven columns it had before apparate counted
# resumed bytes: older versions read it with ``SELECT *`` and write it with
# seven values, and they share a store with newer ones. Figures added later
# go in tables of their own, keyed by the rowid of the pull.
# NOTE: VACUUM may renumber the rowids of pulls, which has no INTEGER PRIMARY
# KEY. Nothing runs it or deletes pulls today, so code that does must keep the
# keys of pull_resumed in step.
SCHEMA = """
CREATE TABLE IF NOT EXISTS pulls (
    finished REAL NOT NULL,
    reference TEXT NOT NULL,
    digest TEXT NOT NULL,
    layer_bytes INTEGER NOT NULL,
    bytes_fetched INTEGER NOT NULL,
    bytes_reused INTEGER NOT NULL,
    seconds REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS pull_resumed (
    pull INTEGER PRIMARY KEY,
    bytes_resumed INTEGER NOT NULL
);
"""
# The columns of a pulls row, in field order.
_COLUMNS = (
    "finished, reference, digest, layer_bytes, bytes_fetched, bytes_reused, seconds"
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
    """The pull history of a store's database; close it when done.

    Opened to write, it creates the tables an older store lacks. Opened
    read-only, it reads a store without pull_resumed as having resumed
    nothing.
    """

    def __init__(self, path: Path, read_only: bool = False) -> None:
        """Open the history; read-only, it writes nothing, not even the table."""
        self.path = path
        try:
            if read_only:
                self._db = connect_read_only(path)
            else:
                self._db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS)
                self._create_tables()
            self._source = self._resumed_source()
        except sqlite3.Error as error:
            raise StoreError(f"cannot open the pull history {path}: {error}") from None

    def _create_tables(self) -> None:
        try:
            with self._db:
                self._db.executescript(SCHEMA)
        except sqlite3.Error:
            self._db.close()
            raise

    def _has_table(self) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
            ("pull_resumed",),
        ).fetchone()
        return row is not None

    def _resumed_source(self) -> tuple[str, str]:
        """Return the SQL for a pull's bytes resumed and the tables it reads."""
        if self._has_table():
            joined = "pulls LEFT JOIN pull_resumed ON pull_resumed.pull = pulls.rowid"
            return "COALESCE(pull_resumed.bytes_resumed, 0)", joined
        return "0", "pulls"

    def close(self) -> None:
        self._db.close()

    def record(self, result: PullResult, now: float | None = None) -> None:
        """Add one finished pull, its row in each table in one transaction."""
        row = (
            time.time() if now is None else now,
            result.reference,
            str(result.digest),
            result.layer_bytes,
            result.bytes_fetched,
            result.bytes_reused,
            result.seconds,
        )
        try:
            with self._db:
                pull = self._db.execute(
                    f"INSERT INTO pulls ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    row,
                ).lastrowid
                self._db.execute(
                    "INSERT OR REPLACE INTO pull_resumed (pull, bytes_resumed) "
                    "VALUES (?, ?)",
                    (pull, result.bytes_resumed),
                )
        except sqlite3.Error as error:
            raise StoreError(
                f"cannot record the pull in {self.path}: {error}"
            ) from None

    def recent(self, limit: int) -> list[PullRecord]:
        """Return the last ``limit`` pulls, newest first."""
        # SQLite's integers are 64-bit, and a larger limit means all rows.
        limit = min(limit, 2**63 - 1)
        rows = self._query(
            f"SELECT {_COLUMNS}, {{resumed}} FROM {{source}} "
            "ORDER BY finished DESC LIMIT ?",
            limit,
        )
        return [PullRecord(*row) for row in rows]

    def totals(self) -> Totals:
        rows = self._query(
            "SELECT COUNT(*), COALESCE(SUM(layer_bytes), 0), "
            "COALESCE(SUM(bytes_fetched), 0), COALESCE(SUM(bytes_reused), 0), "
            "COALESCE(SUM(seconds), 0), "
            "COALESCE(SUM(MAX(layer_bytes - bytes_fetched - {resumed}, 0)), 0), "
            "COALESCE(SUM({resumed}), 0) FROM {source}"
        )
        return Totals(*rows[0]) if rows else Totals(0, 0, 0, 0, 0.0)

    def _query(self, template: str, *parameters: object) -> list[tuple]:
        """Run a query, its ``{resumed}`` and ``{source}`` filled in for this store."""
        resumed, source = self._source
        sql = template.format(resumed=resumed, source=source)
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
