"""Measured round trips and throughputs of sources, kept in the store's database.

Round trips are probed again once they are older than a time to live.
Throughputs are blended from what pulls observed and kept until replaced.
The scheme each registry last responded on is kept too, so a registry
reached over plain HTTP is not tried with https first on every pull.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from apparate.errors import StoreError
from apparate.sources.ranking import Measure, blend_throughput

SCHEMA = """
CREATE TABLE IF NOT EXISTS sources (
    url TEXT PRIMARY KEY,
    rtt REAL,
    probed REAL,
    throughput REAL,
    timed REAL
);
CREATE TABLE IF NOT EXISTS schemes (
    host TEXT PRIMARY KEY,
    scheme TEXT NOT NULL
);
"""
TABLES = {"sources", "schemes"}
BUSY_TIMEOUT_SECONDS = 30.0
RTT_TTL_SECONDS = 600.0


class SourceStats:
    """The ``sources`` table of a store's database; close it when done."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS)
        except sqlite3.Error as error:
            raise StoreError(
                f"cannot open the source figures in {path}: {error}"
            ) from None
        try:
            # Creating the tables commits, which syncs the file: skip it
            # when they are there, as they are after the first pull.
            if self._tables() != TABLES:
                with self._db:
                    self._db.executescript(SCHEMA)
        except sqlite3.Error as error:
            self._db.close()
            raise StoreError(
                f"cannot open the source figures in {path}: {error}"
            ) from None

    def close(self) -> None:
        self._db.close()

    def _tables(self) -> set[str]:
        rows = self._db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
        ).fetchall()
        return {name for (name,) in rows} & TABLES

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as error:
            raise StoreError(f"source figures in {self.path}: {error}") from None

    def measure(self, url: str, now: float | None = None) -> tuple[Measure, bool]:
        """Return what is known of ``url`` and whether its round trip is fresh."""
        now = time.time() if now is None else now
        with self._errors():
            row = self._db.execute(
                "SELECT rtt, probed, throughput FROM sources WHERE url = ?", (url,)
            ).fetchone()
        if row is None:
            return Measure(), False
        rtt, probed, throughput = row
        fresh = probed is not None and now - probed < RTT_TTL_SECONDS
        return Measure(rtt if fresh else None, throughput), fresh

    def save_rtt(self, url: str, rtt: float | None, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._errors(), self._db:
            self._db.execute(
                "INSERT INTO sources (url, rtt, probed) VALUES (?, ?, ?) "
                "ON CONFLICT(url) DO UPDATE SET rtt = excluded.rtt, "
                "probed = excluded.probed",
                (url, rtt, now),
            )

    def save_throughput(
        self, url: str, observed: float, now: float | None = None
    ) -> None:
        """Blend a throughput a pull observed into the one kept."""
        now = time.time() if now is None else now
        known, _ = self.measure(url, now)
        blended = blend_throughput(known.throughput, observed)
        with self._errors(), self._db:
            self._db.execute(
                "INSERT INTO sources (url, throughput, timed) VALUES (?, ?, ?) "
                "ON CONFLICT(url) DO UPDATE SET throughput = excluded.throughput, "
                "timed = excluded.timed",
                (url, blended, now),
            )

    def scheme(self, host: str) -> str | None:
        """Return the scheme ``host`` last responded on, if one was kept."""
        with self._errors():
            row = self._db.execute(
                "SELECT scheme FROM schemes WHERE host = ?", (host,)
            ).fetchone()
        return row[0] if row else None

    def save_scheme(self, host: str, scheme: str) -> None:
        with self._errors(), self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO schemes (host, scheme) VALUES (?, ?)",
                (host, scheme),
            )
