import io
import logging
import sqlite3

from apparate.chunked.format import FOOTER_SIZE, ChunkTable
from apparate.chunked.packer import LocalPacker, _Pipe
from apparate.chunked.reader import (
    file_range_reader,
    iter_chunks,
    read_footer,
    read_table,
)
from apparate.chunked.reuse import StoredFrames
from apparate.digest import Digest
from apparate.store.chunk_index import ChunkIndex
from apparate.store.layout import Store
from tests.unit.test_chunked import make_tar

TAR = make_tar(7)


def feed_all(packer: LocalPacker, data: bytes, piece: int = 100_000) -> None:
    for start in range(0, len(data), piece):
        packer.feed(data[start : start + piece])


def pack_of_tar(store: Store, index: ChunkIndex) -> Digest:
    """Pack TAR into ``store`` and return the pack's digest."""
    packer = LocalPacker(store, index, "layer x")
    feed_all(packer, TAR)
    pack = packer.finish(Digest.of(TAR))
    assert pack is not None
    return pack


def table_of(blob: bytes) -> ChunkTable:
    """Return the chunk table of a pack's bytes."""
    read_range = file_range_reader(io.BytesIO(blob))
    return read_table(read_range, read_footer(read_range, len(blob), "pack"), "pack")


def read_pack(store: Store, digest: Digest) -> bytes:
    blob = store.read_blob(digest)
    return b"".join(iter_chunks(io.BytesIO(blob), table_of(blob), "pack"))


def test_pack_of_verified_layer_is_stored_and_indexed(tmp_path):
    store = Store(tmp_path)
    with ChunkIndex(tmp_path / "chunks.db") as index:
        packer = LocalPacker(store, index, "layer x")
        feed_all(packer, TAR)

        digest = packer.finish(Digest.of(TAR))

        assert digest is not None
        assert index.has_blob(digest)
    assert read_pack(store, digest) == TAR
    assert list(store.ingest_dir.iterdir()) == []


def test_pack_records_the_layer_it_was_cut_from(tmp_path):
    store = Store(tmp_path)
    with ChunkIndex(tmp_path / "apparate.db") as index:
        packer = LocalPacker(store, index, "layer x")
        feed_all(packer, TAR)

        digest = packer.finish(Digest.of(TAR))

    # Recorded at once, so gc need not decompress the pack to learn it.
    with sqlite3.connect(tmp_path / "apparate.db") as db:
        rows = db.execute("SELECT pack, diff_id FROM pack_sources").fetchall()
    assert rows == [(str(digest), str(Digest.of(TAR)))]


def test_aborted_pack_leaves_nothing(tmp_path):
    store = Store(tmp_path)
    with ChunkIndex(tmp_path / "chunks.db") as index:
        packer = LocalPacker(store, index, "layer x")
        feed_all(packer, TAR[: len(TAR) // 2])

        packer.abort()

    assert list(store.ingest_dir.iterdir()) == []
    assert list((tmp_path / "blobs" / "sha256").iterdir()) == []


def test_pack_of_changed_layer_round_trips(tmp_path):
    store = Store(tmp_path)
    with ChunkIndex(tmp_path / "chunks.db") as index:
        first = LocalPacker(store, index, "layer 1")
        feed_all(first, TAR)
        first_digest = first.finish(Digest.of(TAR))
        changed = make_tar(7, changed=3)
        second = LocalPacker(store, index, "layer 2")
        feed_all(second, changed)

        second_digest = second.finish(Digest.of(changed))

    assert first_digest is not None
    assert second_digest is not None
    assert first_digest != second_digest
    assert read_pack(store, second_digest) == changed
    assert store.blob_path(second_digest).stat().st_size > FOOTER_SIZE


def test_pack_missing_from_store_is_written_again(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="apparate")
    store = Store(tmp_path)
    with ChunkIndex(tmp_path / "apparate.db") as index:
        first = LocalPacker(store, index, "layer x")
        feed_all(first, TAR)
        removed = first.finish(Digest.of(TAR))
        store.blob_path(removed).unlink()

        second = LocalPacker(store, index, "layer x")
        feed_all(second, TAR)
        again = second.finish(Digest.of(TAR))

    # The same tar gives the same pack, written again in full.
    assert again == removed
    assert read_pack(store, again) == TAR
    missing = [r for r in caplog.records if "not in the store" in r.message]
    assert len(missing) == 1


def test_pipe_reads_across_pieces():
    pipe = _Pipe()
    for piece in (b"abc", b"defg", b"h", None):
        pipe.put(piece)
    buffer = bytearray(2)

    assert pipe.read(5) == b"abcde"
    assert pipe.readinto(memoryview(buffer)) == 2
    assert bytes(buffer) == b"fg"
    assert pipe.read() == b"h"
    assert pipe.read(3) == b""


def test_pack_gives_way_to_the_pull(tmp_path, caplog):
    store = Store(tmp_path)
    with ChunkIndex(tmp_path / "chunks.db") as index:
        # Layers being pulled that need more room than any disk has.
        packer = LocalPacker(store, index, "layer x", room_needed=lambda: 1 << 60)
        feed_all(packer, TAR)

        digest = packer.finish(Digest.of(TAR))

    assert digest is None
    assert "free on the store's disk" in caplog.text
    assert list(store.ingest_dir.iterdir()) == []


def test_rows_of_blob_on_its_way_kept(tmp_path):
    # Another pull indexes a layer before it commits the blob.
    store = Store(tmp_path)
    with ChunkIndex(tmp_path / "apparate.db") as index:
        pack = pack_of_tar(store, index)
        moved = store.blob_path(pack).rename(tmp_path / "on its way")
        entry = table_of(moved.read_bytes()).entries[0]

        frame = StoredFrames(store, index).frame_for(entry.identity, entry.length)

        assert frame is None
        assert index.has_blob(pack)
