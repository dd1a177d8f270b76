import dataclasses
import sqlite3
from pathlib import Path

import pytest

from apparate.digest import Digest
from apparate.errors import StoreError
from apparate.result import LayerResult, PullResult
from apparate.store.history import PullHistory, Totals


def result(reference: str, fetched: int) -> PullResult:
    layers = [
        LayerResult(
            Digest.of(reference.encode()), "t", 1000, True, fetched, 1000 - fetched
        )
    ]
    return PullResult(
        reference, Digest.of(b"m"), "linux/amd64", "/s", None, layers, fetched, 2.0
    )


def test_history_records_and_sums(tmp_path):
    history = PullHistory(tmp_path / "apparate.db")
    try:
        history.record(result("example.com/app:v1", 1000), now=100.0)
        history.record(result("example.com/app:v2", 200), now=200.0)

        recent = history.recent(10)
        totals = history.totals()
    finally:
        history.close()

    assert [record.reference for record in recent] == [
        "example.com/app:v2",
        "example.com/app:v1",
    ]
    assert totals.pulls == 2
    assert totals.layer_bytes == 2000
    assert totals.bytes_fetched == 1200
    assert totals.bytes_saved == 800
    assert totals.seconds == 4.0


def test_huge_limit_lists_all(tmp_path):
    history = PullHistory(tmp_path / "apparate.db")
    try:
        history.record(result("example.com/app:v1", 1000), now=100.0)

        recent = history.recent(10**20)
    finally:
        history.close()

    assert [record.reference for record in recent] == ["example.com/app:v1"]


def test_empty_history_sums_to_zero(tmp_path):
    history = PullHistory(tmp_path / "apparate.db")
    try:
        totals = history.totals()
    finally:
        history.close()

    assert totals.pulls == 0
    assert totals.bytes_saved == 0


def stored_result(reference: str) -> PullResult:
    """A pull of an image whose layers were all stored already."""
    layers = [LayerResult(Digest.of(reference.encode()), "t", 1000, False, 0, 1000)]
    return PullResult(
        reference, Digest.of(b"m"), "linux/amd64", "/s", None, layers, 0, 0.1
    )


SAVED_CASES = {
    "already stored": [stored_result("example.com/app:v1")],
    "fetched whole": [result("example.com/app:v1", 1000)],
    "delta": [result("example.com/app:v2", 200)],
    # A retried range can fetch more than the layer; that pull saved nothing,
    # and it takes nothing from what another pull saved.
    "fetched twice, then stored": [
        result("example.com/app:v1", 1500),
        stored_result("example.com/app:v1"),
    ],
}


@pytest.mark.parametrize("results", SAVED_CASES.values(), ids=SAVED_CASES)
def test_totals_saved_sums_pull_saved(tmp_path, results):
    history = PullHistory(tmp_path / "apparate.db")
    try:
        for pulled in results:
            history.record(pulled)
        totals = history.totals()
        records = history.recent(10)
    finally:
        history.close()

    assert totals.bytes_saved == sum(pulled.bytes_saved for pulled in results)
    assert sorted(r.bytes_saved for r in records) == sorted(
        pulled.bytes_saved for pulled in results
    )


def test_pull_of_stored_image_saves_every_layer():
    pulled = stored_result("example.com/app:v1")

    assert pulled.bytes_saved == 1000
    assert pulled.to_dict()["bytes_saved"] == 1000


def test_up_to_date_pull_saves_nothing(tmp_path):
    pulled = dataclasses.replace(stored_result("example.com/app:v1"), up_to_date=True)
    history = PullHistory(tmp_path / "apparate.db")
    try:
        history.record(pulled)
        totals = history.totals()
    finally:
        history.close()

    assert pulled.bytes_saved == 0
    assert pulled.bytes_reused == 0
    assert pulled.to_dict()["bytes_saved"] == 0
    assert (totals.pulls, totals.layer_bytes, totals.bytes_saved) == (1, 0, 0)
    assert totals.bytes_reused == 0


def resumed_result(reference: str, fetched: int, resumed: int) -> PullResult:
    """A pull that kept ``resumed`` bytes of an interrupted pull's partial download."""
    layers = [
        LayerResult(Digest.of(reference.encode()), "t", 1000, True, fetched, 0, resumed)
    ]
    return PullResult(
        reference, Digest.of(b"m"), "linux/amd64", "/s", None, layers, fetched, 2.0
    )


def test_resumed_bytes_are_neither_reused_nor_saved():
    pulled = resumed_result("example.com/app:v1", 600, 400)

    figures = pulled.to_dict()

    assert pulled.bytes_resumed == 400
    assert pulled.bytes_reused == pulled.bytes_saved == 0
    assert (figures["bytes_resumed"], figures["bytes_saved"]) == (400, 0)
    assert figures["layers"][0]["bytes_resumed"] == 400
    assert figures["layers"][0]["bytes_reused"] == 0


def test_up_to_date_pull_resumes_nothing():
    pulled = dataclasses.replace(
        resumed_result("example.com/app:v1", 0, 1000), up_to_date=True
    )

    assert pulled.bytes_resumed == 0
    assert pulled.to_dict()["bytes_resumed"] == 0


def test_history_keeps_resumed_bytes(tmp_path):
    history = PullHistory(tmp_path / "apparate.db")
    try:
        history.record(resumed_result("example.com/app:v1", 600, 400), now=100.0)
        history.record(result("example.com/app:v2", 200), now=200.0)

        recent = history.recent(10)
        totals = history.totals()
    finally:
        history.close()

    assert [record.bytes_resumed for record in recent] == [0, 400]
    assert [record.bytes_saved for record in recent] == [800, 0]
    assert (totals.bytes_resumed, totals.bytes_saved) == (400, 800)


# The pulls table as apparate created it before it recorded resumed bytes.
OLD_SCHEMA = """
CREATE TABLE pulls (
    finished REAL NOT NULL,
    reference TEXT NOT NULL,
    digest TEXT NOT NULL,
    layer_bytes INTEGER NOT NULL,
    bytes_fetched INTEGER NOT NULL,
    bytes_reused INTEGER NOT NULL,
    seconds REAL NOT NULL
);
INSERT INTO pulls VALUES (100.0, 'example.com/app:v1', 'sha256:m', 1000, 200, 800, 2.0);
"""


def old_database(path: Path) -> Path:
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    db.close()
    return path


OLD_COLUMNS = [
    "finished", "reference", "digest", "layer_bytes", "bytes_fetched",
    "bytes_reused", "seconds",
]  # fmt: skip


def new_database(path: Path) -> Path:
    old_database(path)
    history = PullHistory(path)
    try:
        history.record(resumed_result("example.com/app:v2", 600, 400), now=200.0)
    finally:
        history.close()
    return path


def schema(path: Path) -> tuple[list[str], list[str]]:
    """Return the columns of the pulls table and the names of all tables."""
    db = sqlite3.connect(path)
    columns = [row[1] for row in db.execute("PRAGMA table_info(pulls)")]
    tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master")]
    db.close()
    return columns, tables


def record_as_older_apparate(path: Path, now: float) -> list[tuple]:
    """Record a pull and read the table back as apparate did before resumed bytes."""
    db = sqlite3.connect(path)
    with db:
        db.execute(
            "INSERT INTO pulls VALUES (?, ?, ?, ?, ?, ?, ?)",
            (now, "example.com/app:old", "sha256:m", 1000, 1000, 0, 2.0),
        )
    rows = db.execute("SELECT * FROM pulls").fetchall()
    db.close()
    return rows


def read_history(path: Path, read_only: bool) -> tuple[list[tuple], Totals]:
    history = PullHistory(path, read_only=read_only)
    try:
        recent = history.recent(10)
        totals = history.totals()
    finally:
        history.close()
    return [(r.reference, r.bytes_resumed, r.bytes_saved) for r in recent], totals


SHAPES = {
    "old": (old_database, [("example.com/app:v1", 0, 800)]),
    "new": (
        new_database,
        [("example.com/app:v2", 400, 0), ("example.com/app:v1", 0, 800)],
    ),
}


@pytest.mark.parametrize("read_only", [True, False], ids=["read-only", "writable"])
@pytest.mark.parametrize(("make", "expected"), SHAPES.values(), ids=SHAPES)
def test_history_reads_every_shape(tmp_path, make, expected, read_only):
    path = make(tmp_path / "apparate.db")
    before = path.read_bytes()

    recent, totals = read_history(path, read_only)

    assert recent == expected
    assert totals.pulls == len(expected)
    assert totals.bytes_resumed == sum(resumed for _, resumed, _ in expected)
    assert totals.bytes_saved == sum(saved for _, _, saved in expected)
    if read_only:
        assert path.read_bytes() == before


def test_new_history_keeps_old_pulls_table(tmp_path):
    path = new_database(tmp_path / "apparate.db")

    columns, tables = schema(path)
    older_rows = record_as_older_apparate(path, now=300.0)
    recent, totals = read_history(path, read_only=False)

    assert columns == OLD_COLUMNS
    assert "pull_resumed" in tables
    assert [len(row) for row in older_rows] == [7, 7, 7]
    assert [(reference, resumed) for reference, resumed, _ in recent] == [
        ("example.com/app:old", 0),
        ("example.com/app:v2", 400),
        ("example.com/app:v1", 0),
    ]
    assert totals.pulls == 3
    assert totals.bytes_resumed == 400


def test_old_history_is_upgraded_in_place(tmp_path):
    path = old_database(tmp_path / "apparate.db")

    history = PullHistory(path)
    try:
        history.record(resumed_result("example.com/app:v2", 600, 400), now=200.0)
        recent = history.recent(10)
        totals = history.totals()
    finally:
        history.close()

    assert [(r.reference, r.bytes_resumed) for r in recent] == [
        ("example.com/app:v2", 400),
        ("example.com/app:v1", 0),
    ]
    assert (totals.pulls, totals.bytes_resumed, totals.bytes_saved) == (2, 400, 800)
    assert schema(path)[0] == OLD_COLUMNS


def test_old_history_reads_without_upgrade(tmp_path):
    path = old_database(tmp_path / "apparate.db")

    history = PullHistory(path, read_only=True)
    try:
        [record] = history.recent(10)
        totals = history.totals()
    finally:
        history.close()

    assert record.bytes_resumed == 0
    assert record.bytes_reused == record.bytes_saved == 800
    assert (totals.pulls, totals.bytes_resumed, totals.bytes_saved) == (1, 0, 800)
    assert schema(path) == (OLD_COLUMNS, ["pulls"])


def test_both_rows_commit_together(tmp_path):
    path = tmp_path / "apparate.db"
    PullHistory(path).close()
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TRIGGER fail BEFORE INSERT ON pull_resumed "
        "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
    )
    db.close()

    history = PullHistory(path)
    try:
        with pytest.raises(StoreError, match="disk full"):
            history.record(resumed_result("example.com/app:v1", 600, 400))
    finally:
        history.close()

    assert read_history(path, read_only=True) == ([], Totals(0, 0, 0, 0, 0, 0, 0))
