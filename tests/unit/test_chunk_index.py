import sqlite3
import threading

import pytest

from apparate.chunked.format import ChunkEntry, ChunkTable
from apparate.digest import Digest
from apparate.errors import StoreError
from apparate.store.chunk_index import INDEX_FILE, LAYER, PACK, ChunkIndex

BLOB = Digest.of(b"layer blob")
PACK_BLOB = Digest.of(b"pack blob")


def table(*identities: bytes) -> ChunkTable:
    entries = [
        ChunkEntry(identity, 100 + n, 50, (1 << 64) - 1 - n, 50 * n)
        for n, identity in enumerate(identities)
    ]
    return ChunkTable(1, {}, {}, entries)


def test_locate_returns_frames_of_every_blob(tmp_path):
    with ChunkIndex(tmp_path / "chunks.db") as index:
        index.add_table(BLOB, table(b"a" * 16, b"b" * 16))
        index.add_table(PACK_BLOB, table(b"b" * 16), PACK)

        found = index.locate(b"b" * 16)

    assert [(location.blob, location.frame_offset) for location in found] == sorted(
        [(BLOB, 50), (PACK_BLOB, 0)]
    )
    assert found[0].frame_xxh3 in ((1 << 64) - 1, (1 << 64) - 2)


def test_locate_filters_by_kind(tmp_path):
    with ChunkIndex(tmp_path / "chunks.db") as index:
        index.add_table(PACK_BLOB, table(b"c" * 16), PACK)

        assert index.locate(b"c" * 16, (LAYER,)) == []
        assert len(index.locate(b"c" * 16, (PACK,))) == 1


def test_locate_all_beyond_one_query(tmp_path):
    identities = [n.to_bytes(16, "big") for n in range(2000)]
    with ChunkIndex(tmp_path / "chunks.db") as index:
        index.add_table(BLOB, table(*identities[::2]))

        found = index.locate_all([*identities, identities[0]])

    assert sorted(found) == identities[::2]
    assert found[identities[1998]][0].frame_offset == 50 * 999


def test_index_of_old_schema_is_replaced(tmp_path):
    path = tmp_path / "chunks.db"
    with sqlite3.connect(path) as database:
        database.execute("CREATE TABLE chunks (identity BLOB, blob TEXT)")

    with ChunkIndex(path) as index:
        index.add_table(BLOB, table(b"a" * 16))

        assert index.has_blob(BLOB)


def test_concurrent_writers_lose_no_chunk(tmp_path):
    path = tmp_path / "chunks.db"
    ChunkIndex(path).close()

    def write(number: int) -> None:
        with ChunkIndex(path) as index:
            for round_number in range(20):
                blob = Digest.of(f"{number}-{round_number}".encode())
                index.add_table(blob, table(bytes([number]) * 16))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    with ChunkIndex(path) as index:
        assert all(len(index.locate(bytes([n]) * 16)) == 20 for n in range(4))


def test_locate_skips_and_forgets_invalid_blob(tmp_path, caplog):
    path = tmp_path / "chunks.db"
    with ChunkIndex(path) as index:
        index.add_table(BLOB, table(b"a" * 16))
        index.add_table(PACK_BLOB, table(b"a" * 16), PACK)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE chunks SET blob = 'garbage' WHERE kind = ?", (PACK,))

    with ChunkIndex(path) as index:
        found = index.locate(b"a" * 16)
        again = index.locate(b"a" * 16)

    assert [location.blob for location in found] == [BLOB]
    assert [location.blob for location in again] == [BLOB]
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "garbage" in warnings[0].getMessage()
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT COUNT(*) FROM chunks WHERE blob = 'garbage'")
        assert rows.fetchone() == (0,)


def test_read_only_index_reads_without_writing(tmp_path):
    path = tmp_path / "chunks.db"
    with ChunkIndex(path) as index:
        index.add_table(BLOB, table(b"a" * 16))

    with ChunkIndex(path, read_only=True) as index:
        assert index.has_blob(BLOB)
        with pytest.raises(StoreError, match="read-only"):
            index.add_table(Digest.of(b"another blob"), table(b"b" * 16))

    with ChunkIndex(path) as index:
        assert index.has_blob(BLOB)


def test_read_only_index_missing_reads_empty(tmp_path):
    path = tmp_path / "chunks.db"

    with ChunkIndex(path, read_only=True) as index:
        assert index.locate(b"a" * 16) == []

    assert not path.exists()


def test_read_only_index_of_old_schema_reads_empty(tmp_path):
    path = tmp_path / "chunks.db"
    with sqlite3.connect(path) as database:
        database.execute("CREATE TABLE chunks (identity BLOB, blob TEXT)")

    with ChunkIndex(path, read_only=True) as index:
        assert not index.has_blob(BLOB)


def test_close_waits_for_running_query(tmp_path):
    index = ChunkIndex(tmp_path / INDEX_FILE)
    closer = threading.Thread(target=index.close)

    with index._reading():  # a layer thread's query, as after Ctrl-C
        closer.start()
        closer.join(0.2)
        assert closer.is_alive()
    closer.join(5)

    assert not closer.is_alive()
    with pytest.raises(StoreError, match="cannot read the chunk index"):
        index.has_blob(Digest.of(b"layer"))


def test_close_inside_own_query(tmp_path):
    # Ctrl-C can leave a query's context open in the thread that closes.
    index = ChunkIndex(tmp_path / INDEX_FILE)
    reading = index._reading()
    reading.__enter__()

    index.close()

    with pytest.raises(StoreError):
        index.has_blob(Digest.of(b"layer"))
