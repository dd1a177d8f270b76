"""What a layer fetch leaves in the store when it is killed, falls back or meets a full disk.

The source is a stand-in that serves one converted layer, by range and whole;
the store and chunk index are real.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import threading
import time
from pathlib import Path

import pytest

from apparate import pulling
from apparate.chunked.format import FOOTER_SIZE, ZSTD_LAYER_TYPES, table_annotations
from apparate.chunked.writer import write_chunked_layer
from apparate.delta import assembler
from apparate.delta.assembler import member_runs
from apparate.delta.image_plan import ImagePlans
from apparate.delta.planner import Source
from apparate.delta.prefetch import TablePrefetch
from apparate.digest import Digest
from apparate.errors import (
    ApparateError,
    StoreError,
    TransferFailed,
    TransferTimedOut,
)
from apparate.manifest import Descriptor
from apparate.progress import PullObserver
from apparate.pulling import _LayerFetcher
from apparate.registry.client import RangeFetchStopped, RangesUnsupported
from apparate.store import layout
from apparate.store.chunk_index import INDEX_FILE, LAYER, ChunkIndex
from apparate.store.layout import DELTA_PARTIAL, Store
from tests.unit.test_chunked import CHUNKER, DEFAULT_ENCODER, make_tar


class ConvertedLayer:
    """A converted layer of a pseudo-random tar: descriptor, blob, diff_id, table."""

    def __init__(self, changed: int | None = None) -> None:
        tar = make_tar(3, changed=changed)
        out = io.BytesIO()
        converted = write_chunked_layer(
            io.BytesIO(tar), out.write, CHUNKER, DEFAULT_ENCODER
        )
        self.blob = out.getvalue()
        self.table = converted.table
        self.descriptor = Descriptor(
            ZSTD_LAYER_TYPES[0], Digest.of(self.blob), len(self.blob),
            annotations=table_annotations(converted.footer),
        )  # fmt: skip
        self.diff_id = Digest("sha256", hashlib.sha256(tar).hexdigest())


class StandInPool:
    """Serves one blob; ``frames_by_range`` False refuses ranges of its frames."""

    host = "stand-in"

    def __init__(self, layer: ConvertedLayer, frames_by_range: bool = True) -> None:
        self._blob = layer.blob
        self._frames_end = layer.table.frames_length
        self._frames_by_range = frames_by_range
        self.range_bytes = 0
        self.whole_bytes = 0
        self.range_starts: list[int] = []
        # Mirrors that serve whole blobs with wrong bytes until dropped.
        self.corrupt_mirrors = 0

    def fetch_range(self, layer, start, end, write, subject, stopped=None):
        if not self._frames_by_range and start < self._frames_end:
            raise RangesUnsupported(f"{subject}: responded 200 to a range")
        self.range_bytes += end - start
        self.range_starts.append(start)
        write(start, self._blob[start:end])
        return []

    def fetch_blob(self, layer, write, subject, verifier, stopped=None):
        data = self._blob[verifier.bytes_read :]
        if self.corrupt_mirrors:
            data = bytes(byte ^ 1 for byte in data)
        self.whole_bytes += len(data)
        verifier.update(data)
        write(data)
        verifier.verify()

    def blame(self, digest, error):
        """Drop a corrupt mirror, if one is left, as the real pool does."""
        if not self.corrupt_mirrors:
            return False
        self.corrupt_mirrors -= 1
        return True


class Killed(BaseException):
    """Stands for a SIGKILL: nothing after it runs."""


def fetcher(store_path: Path, layer: ConvertedLayer, pool: StandInPool):
    store = Store(store_path)
    index = ChunkIndex(store.root / INDEX_FILE)
    cancelled = threading.Event()
    tables = TablePrefetch(pool, store, "image", cancelled)
    plans = ImagePlans(index, tables, [layer.descriptor])
    fetch = _LayerFetcher(
        pool, store, index, "image", PullObserver(), cancelled, plans,
        [layer.descriptor],
    )  # fmt: skip
    return fetch, store, index


def store_v1(store: Store, index: ChunkIndex) -> None:
    v1 = ConvertedLayer()
    store.put_blob(v1.blob, v1.descriptor.digest)
    index.add_table(v1.descriptor.digest, v1.table, LAYER)


def update_fetcher(tmp_path: Path, pool: StandInPool, v2: ConvertedLayer):
    """Return a fetcher of ``v2`` through ``pool``, with v1 stored and indexed."""
    fetch, store, index = fetcher(tmp_path, v2, pool)
    store_v1(store, index)
    return fetch, store


@pytest.mark.parametrize(
    "frames_by_range", [True, False], ids=["rebuilt from ranges", "fetched whole"]
)
def test_layer_indexed_before_commit(tmp_path, monkeypatch, frames_by_range):
    layer = ConvertedLayer()
    pool = StandInPool(layer, frames_by_range)
    fetch, store, index = fetcher(tmp_path, layer, pool)
    commit = layout.BlobWriter.commit

    def commit_then_die(self, digest=None):
        commit(self, digest)
        raise Killed()

    monkeypatch.setattr(layout.BlobWriter, "commit", commit_then_die)

    with pytest.raises(Killed):
        fetch.fetch(layer.descriptor, layer.diff_id)

    assert store.has_blob(layer.descriptor.digest)
    assert index.has_blob(layer.descriptor.digest)


def test_stale_journal_is_ignored(tmp_path):
    v2 = ConvertedLayer(changed=5)
    pool = StandInPool(v2)
    fetch, store = update_fetcher(tmp_path, pool, v2)
    # A journal left by a killed pull whose partial file is gone: it names
    # every range this pull needs.
    _, plan = fetch._plans.plan_for(v2.descriptor)
    partial = store.partial_path(v2.descriptor.digest, DELTA_PARTIAL)
    runs = [run for wanted in plan.ranges for run in member_runs(v2.table, wanted)]
    journal = partial.with_name(partial.name + ".ranges")
    journal.write_text("".join(f"{start}-{end}\n" for start, end in runs))

    fetch.fetch(v2.descriptor, v2.diff_id)

    assert store.has_blob(v2.descriptor.digest, v2.descriptor.size)
    assert pool.whole_bytes == 0
    assert 0 < pool.range_bytes < v2.descriptor.size / 4
    assert not journal.exists()


def test_whole_fallback_leaves_no_partial(tmp_path):
    v2 = ConvertedLayer(changed=5)
    pool = StandInPool(v2, frames_by_range=False)
    fetch, store = update_fetcher(tmp_path, pool, v2)

    fetch.fetch(v2.descriptor, v2.diff_id)

    assert store.has_blob(v2.descriptor.digest, v2.descriptor.size)
    assert pool.whole_bytes == v2.descriptor.size
    assert list(store.ingest_dir.iterdir()) == []


class FailingRangesPool(StandInPool):
    """A pool that fails every range of one part of the layer with ``error``.

    ``part`` is ``"frames"`` (the chunk table is served) or ``"table"``.
    """

    def __init__(
        self, layer: ConvertedLayer, error: type[TransferFailed], part: str = "frames"
    ) -> None:
        super().__init__(layer)
        self._error = error
        self._part = part

    def fetch_range(self, layer, start, end, write, subject, stopped=None):
        in_frames = start < self._frames_end
        if in_frames == (self._part == "frames"):
            raise self._error(f"{subject} from stand-in: the transfer failed")
        return super().fetch_range(layer, start, end, write, subject, stopped)


@pytest.mark.parametrize("error", [TransferTimedOut, TransferFailed])
def test_failed_rebuild_not_fetched_whole(tmp_path, error):
    # The whole layer would come over the same silent or dropping link, at
    # many times the bytes: the pull fails instead, and the next one resumes
    # the rebuild.
    v2 = ConvertedLayer(changed=5)
    pool = FailingRangesPool(v2, error)
    fetch, store = update_fetcher(tmp_path, pool, v2)

    with pytest.raises(error) as caught:
        fetch.fetch(v2.descriptor, v2.diff_id)

    assert caught.value.exit_code == 6
    assert "run again resumes" in str(caught.value)
    assert pool.whole_bytes == 0
    assert store.partial_path(v2.descriptor.digest, DELTA_PARTIAL).exists()
    assert not store.has_blob(v2.descriptor.digest)


def test_unwritable_journal_does_not_fail_the_pull(tmp_path, monkeypatch, caplog):
    layer = ConvertedLayer()
    fetch, store, _ = fetcher(tmp_path, layer, StandInPool(layer))

    def full_disk_open(path, mode="r", *args, **kwargs):
        if str(path).endswith(".ranges") and "a" in mode:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(assembler, "open", full_disk_open, raising=False)

    fetch.fetch(layer.descriptor, layer.diff_id)

    assert store.has_blob(layer.descriptor.digest, layer.descriptor.size)
    assert "No space left on device" in caplog.text


def test_bytes_of_a_failed_attempt_are_counted(tmp_path):
    layer = ConvertedLayer()
    pool = StandInPool(layer, frames_by_range=False)
    pool.corrupt_mirrors = 1
    fetch, store, _ = fetcher(tmp_path, layer, pool)

    downloaded = fetch.fetch(layer.descriptor, layer.diff_id)

    assert store.has_blob(layer.descriptor.digest, layer.descriptor.size)
    assert downloaded == pool.whole_bytes + pool.range_bytes
    assert pool.whole_bytes == 2 * layer.descriptor.size


def test_damaged_stored_frame_fetched_alone(tmp_path):
    v2 = ConvertedLayer(changed=5)
    pool = StandInPool(v2)
    fetch, store = update_fetcher(tmp_path, pool, v2)
    _, plan = fetch._plans.plan_for(v2.descriptor)
    # A frame in the middle of a run of stored frames that are copied together.
    stored = [
        p for p, source in enumerate(plan.sources) if source is Source.LOCAL_FRAME
    ]
    damaged = next(p for p in stored[1:] if p - 1 in stored and p + 1 in stored)
    frame = plan.local[damaged]
    blob = store.blob_path(frame.blob)
    data = bytearray(blob.read_bytes())
    data[frame.offset + frame.length // 2] ^= 0xFF
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))

    fetch.fetch(v2.descriptor, v2.diff_id)

    assert store.has_blob(v2.descriptor.digest, v2.descriptor.size)
    assert pool.whole_bytes == 0
    # The table and footer, the planned ranges, and the damaged frame alone.
    tail = v2.descriptor.size - v2.table.frames_length
    entry = v2.table.entries[damaged]
    assert pool.range_bytes == tail + plan.bytes_to_fetch + entry.frame_length


class StoppablePool(StandInPool):
    """A pool that holds each range of frames until the rebuild stops, for up to 5 s."""

    def fetch_range(self, layer, start, end, write, subject, stopped=None):
        if start < self._frames_end:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                if stopped is not None and stopped():
                    raise RangeFetchStopped()
                time.sleep(0.01)
        return super().fetch_range(layer, start, end, write, subject, stopped)


def test_failed_copy_stops_the_fetch(tmp_path, monkeypatch):
    v2 = ConvertedLayer(changed=5)
    pool = StoppablePool(v2)
    fetch, store = update_fetcher(tmp_path, pool, v2)
    remote, plan = fetch._plans.plan_for(v2.descriptor)

    def full_disk(self, *args):
        raise StoreError("cannot write blob: No space left on device")

    monkeypatch.setattr(assembler.Assembler, "_copy_run", full_disk)
    rebuild = assembler.Assembler(pool, store, v2.descriptor, "layer", lambda n: None)
    with store.resumable(
        v2.descriptor.digest, v2.descriptor.size, DELTA_PARTIAL
    ) as writer:
        journal = assembler.RangeJournal(writer.path, True)
        with pytest.raises(StoreError, match="No space left"):
            rebuild.assemble(remote, plan, v2.diff_id, writer, journal)
        writer.discard()

    assert plan.ranges
    assert pool.range_bytes == v2.descriptor.size - v2.table.frames_length


class UnreadableBlob(io.BytesIO):
    """A stored blob whose every read fails, as on a failing disk."""

    name = "unreadable"

    def read(self, size=-1):
        raise OSError(errno.EIO, "Input/output error")


def test_unreadable_stored_blob_fetched(tmp_path, monkeypatch):
    v2 = ConvertedLayer(changed=5)
    pool = StandInPool(v2)
    fetch, store = update_fetcher(tmp_path, pool, v2)
    monkeypatch.setattr(
        assembler.Assembler, "_open", lambda self, blob, files: UnreadableBlob()
    )

    fetch.fetch(v2.descriptor, v2.diff_id)

    assert store.has_blob(v2.descriptor.digest, v2.descriptor.size)


class StoppingPool(StandInPool):
    """Stops every whole-blob fetch, as the pool does once the pull is cancelled."""

    def fetch_blob(self, layer, write, subject, verifier, stopped=None):
        raise RangeFetchStopped()


def test_stopped_whole_fetch_is_cancelled_error(tmp_path):
    layer = ConvertedLayer()
    fetch, _, _ = fetcher(tmp_path, layer, StoppingPool(layer, frames_by_range=False))

    with pytest.raises(ApparateError, match="stopped because another layer failed"):
        fetch.fetch(layer.descriptor, layer.diff_id)


class DyingPool(StandInPool):
    """Serves ranges in small pieces and stands for a SIGKILL after ``budget`` bytes.

    With ``flipped`` it serves the frames with every bit flipped, as a bad
    mirror would.
    """

    def __init__(self, layer: ConvertedLayer, budget: int, flipped=False) -> None:
        super().__init__(layer)
        self._budget = budget
        self._flipped = flipped
        self._lock = threading.Lock()

    def fetch_range(self, layer, start, end, write, subject, stopped=None):
        if self._flipped and start >= self._frames_end:
            return super().fetch_range(layer, start, end, write, subject, stopped)
        for offset in range(start, end, 8192):
            with self._lock:
                if self._budget <= 0:
                    raise Killed()
                self._budget -= 8192
            piece = self._blob[offset : min(offset + 8192, end)]
            if self._flipped:
                piece = bytes(byte ^ 0xFF for byte in piece)
            write(offset, piece)
        return []


def rerun_after_kill(
    tmp_path: Path, layer: ConvertedLayer, dying: DyingPool
) -> tuple[StandInPool, Store]:
    """Fetch the layer until ``dying`` stands for a SIGKILL, then again from a good pool."""
    fetch, _, _ = fetcher(tmp_path, layer, dying)
    with pytest.raises(Killed):
        fetch.fetch(layer.descriptor, layer.diff_id)
    pool = StandInPool(layer)
    fetch, store, _ = fetcher(tmp_path, layer, pool)
    fetch.fetch(layer.descriptor, layer.diff_id)
    return pool, store


def test_killed_rebuild_resumes_mid_range(tmp_path, monkeypatch):
    monkeypatch.setattr(assembler, "_JOURNAL_STEP", 16 * 1024)
    layer = ConvertedLayer()

    pool, store = rerun_after_kill(tmp_path, layer, DyingPool(layer, budget=300_000))

    assert store.has_blob(layer.descriptor.digest, layer.descriptor.size)
    # The frames written before the kill, less one journal step per range.
    assert pool.range_bytes < layer.descriptor.size - 200_000
    assert pool.whole_bytes == 0
    # The chunk table was read back from the partial rebuild.
    assert layer.table.frames_length not in pool.range_starts


def test_killed_rebuild_counts_resumed_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(assembler, "_JOURNAL_STEP", 16 * 1024)
    layer = ConvertedLayer()
    fetch, _, _ = fetcher(tmp_path, layer, DyingPool(layer, budget=300_000))
    with pytest.raises(Killed):
        fetch.fetch(layer.descriptor, layer.diff_id)
    fetch, store, index = fetcher(tmp_path, layer, StandInPool(layer))
    tables = TablePrefetch(StandInPool(layer), store, "image", threading.Event())
    plans = ImagePlans(index, tables, [layer.descriptor])
    planned = pulling._planned_bytes(store, layer.descriptor, plans)

    fetched = fetch.fetch(layer.descriptor, layer.diff_id)

    resumed = fetch.resumed[layer.descriptor.digest]
    # Nothing was stored before: the kept table and ranges are all that
    # did not cross the network in this pull, and none of it is reused.
    assert resumed > 200_000
    assert fetch.reused[layer.descriptor.digest] == 0
    assert fetched + resumed == layer.descriptor.size
    assert planned == (fetched, 0, resumed)


def test_kept_whole_download_counts_as_resumed(tmp_path):
    layer = ConvertedLayer()
    pool = StandInPool(layer, frames_by_range=False)
    fetch, store, _ = fetcher(tmp_path, layer, pool)
    # Left by an earlier pull that was killed while fetching the layer whole.
    store.partial_path(layer.descriptor.digest).write_bytes(layer.blob[:100_000])

    fetched = fetch.fetch(layer.descriptor, layer.diff_id)

    assert pool.whole_bytes == layer.descriptor.size - 100_000
    assert fetch.resumed[layer.descriptor.digest] == 100_000
    assert fetch.reused[layer.descriptor.digest] == 0
    assert fetched == pool.range_bytes + pool.whole_bytes


def test_wrong_frames_not_journalled(tmp_path, monkeypatch):
    monkeypatch.setattr(assembler, "_JOURNAL_STEP", 16 * 1024)
    layer = ConvertedLayer()
    dying = DyingPool(layer, budget=300_000, flipped=True)

    pool, store = rerun_after_kill(tmp_path, layer, dying)

    assert store.has_blob(layer.descriptor.digest, layer.descriptor.size)
    # Had the wrong frames been journalled, the rebuild would fail its
    # check and the whole layer would be fetched.
    assert pool.whole_bytes == 0
    assert pool.range_bytes >= layer.descriptor.size - 100_000


@pytest.mark.parametrize(
    ("journalled", "span", "covered"),
    [
        ([(0, 10)], (2, 8), True),
        ([(0, 10)], (0, 10), True),
        ([(0, 10)], (5, 11), False),
        ([(0, 5), (5, 10)], (3, 8), True),  # adjacent entries join
        ([(0, 6), (4, 10)], (3, 8), True),  # overlapping entries join
        ([(0, 4), (6, 10)], (3, 8), False),  # a gap between them
        ([(20, 30), (0, 10)], (22, 25), True),  # out of order
        ([(0, 10)], (10, 12), False),
        ([], (0, 1), False),
    ],
)
def test_journal_spans_cover(journalled, span, covered):
    assert assembler._Spans(journalled).cover(*span) is covered


def test_rebuild_removes_kept_whole_download(tmp_path):
    layer = ConvertedLayer()
    fetch, store, _ = fetcher(tmp_path, layer, StandInPool(layer))
    # Left by an earlier pull that fell back to the whole layer.
    whole = store.partial_path(layer.descriptor.digest)
    whole.write_bytes(layer.blob[:1000])

    fetch.fetch(layer.descriptor, layer.diff_id)

    assert store.has_blob(layer.descriptor.digest, layer.descriptor.size)
    assert not whole.exists()


def test_room_needed_shrinks_as_layer_is_written(tmp_path):
    layer = ConvertedLayer()
    fetch, _, _ = fetcher(tmp_path, layer, StandInPool(layer))
    before = fetch._room_needed()

    fetch.fetch(layer.descriptor, layer.diff_id)

    assert before == layer.descriptor.size
    assert fetch._room_needed() == 0


class MirrorSource:
    role = "mirror"
    name = "mirror.example"


class HalfBadMirrorPool(StandInPool):
    """Serves its first range with the second half flipped, as a bad mirror."""

    def __init__(self, layer: ConvertedLayer) -> None:
        super().__init__(layer)
        self.dropped: list[str] = []
        self._served_bad = False

    def fetch_range(self, layer, start, end, write, subject, stopped=None):
        if self._served_bad or start >= self._frames_end:
            return super().fetch_range(layer, start, end, write, subject, stopped)
        self._served_bad = True
        self.range_starts.append(start)
        middle = (start + end) // 2
        for offset in range(start, end, 8192):
            piece = self._blob[offset : min(offset + 8192, end)]
            if offset >= middle:
                piece = bytes(byte ^ 0xFF for byte in piece)
            write(offset, piece)
        return [MirrorSource()]

    def drop(self, source, reason):
        self.dropped.append(reason)


def test_retry_after_bad_mirror_skips_checked_frames(tmp_path, monkeypatch):
    monkeypatch.setattr(assembler, "_JOURNAL_STEP", 16 * 1024)
    layer = ConvertedLayer()
    pool = HalfBadMirrorPool(layer)
    fetch, store, _ = fetcher(tmp_path, layer, pool)

    fetch.fetch(layer.descriptor, layer.diff_id)

    assert store.has_blob(layer.descriptor.digest, layer.descriptor.size)
    assert len(pool.dropped) == 1
    frames_end = layer.table.frames_length
    first, retried = [start for start in pool.range_starts if start < frames_end]
    # The frames of the first half were checked, so the retry starts after them.
    assert retried > first + 100_000
    assert pool.whole_bytes == 0


def test_whole_layer_warning_names_layer_once(tmp_path, caplog):
    layer = ConvertedLayer()
    pool = StandInPool(layer, frames_by_range=False)
    fetch, _, _ = fetcher(tmp_path, layer, pool)

    fetch.fetch(layer.descriptor, layer.diff_id)

    (warning,) = [
        r.getMessage() for r in caplog.records if "whole layer" in r.getMessage()
    ]
    assert warning.count(str(layer.descriptor.digest)) == 1
    assert warning.endswith("fetching the whole layer: responded 200 to a range")


def test_rows_of_missing_blob_not_planned(tmp_path):
    layer = ConvertedLayer()
    with ChunkIndex(tmp_path / INDEX_FILE) as index:
        index.add_table(layer.descriptor.digest, layer.table, LAYER)

        present = assembler.known_frames(index, layer.table, lambda blob: True)
        missing = assembler.known_frames(index, layer.table, lambda blob: False)

    assert all(present.values())
    assert not any(missing.values())


class BadTableMirrorPool(StandInPool):
    """Serves the chunk table with a flipped byte from a mirror, once."""

    def __init__(self, layer: ConvertedLayer) -> None:
        super().__init__(layer)
        self.dropped: list[str] = []

    def fetch_range(self, layer, start, end, write, subject, stopped=None):
        if self.dropped or start < self._frames_end:
            return super().fetch_range(layer, start, end, write, subject, stopped)
        self.range_starts.append(start)
        write(start, bytes([self._blob[start] ^ 0xFF]) + self._blob[start + 1 : end])
        return [MirrorSource()]

    def drop(self, source, reason):
        self.dropped.append(reason)


def test_bad_mirror_table_drops_mirror(tmp_path):
    layer = ConvertedLayer()
    pool = BadTableMirrorPool(layer)
    fetch, store, _ = fetcher(tmp_path, layer, pool)

    fetch.fetch(layer.descriptor, layer.diff_id)

    assert store.has_blob(layer.descriptor.digest, layer.descriptor.size)
    [reason] = pool.dropped
    assert "chunk table" in reason
    assert "failed verification" in reason
    # The table came again from the next source, so no whole blob was fetched.
    assert pool.whole_bytes == 0


def test_reused_bytes_not_lowered_by_a_bad_mirror(tmp_path):
    v2 = ConvertedLayer(changed=1)
    clean_fetch, _ = update_fetcher(tmp_path / "clean", StandInPool(v2), v2)
    clean_fetched = clean_fetch.fetch(v2.descriptor, v2.diff_id)
    bad_pool = HalfBadMirrorPool(v2)
    bad_fetch, _ = update_fetcher(tmp_path / "bad", bad_pool, v2)

    bad_fetched = bad_fetch.fetch(v2.descriptor, v2.diff_id)

    reused = clean_fetch.reused[v2.descriptor.digest]
    assert 0 < reused == v2.descriptor.size - clean_fetched
    # The bad mirror's range was fetched again, and the same frames were copied.
    assert bad_pool.dropped
    assert bad_fetched > clean_fetched
    assert bad_fetch.reused[v2.descriptor.digest] == reused


def test_not_indexed_warning_names_layer_once(tmp_path, caplog):
    layer = ConvertedLayer()
    fetch, _, _ = fetcher(tmp_path, layer, StandInPool(layer))
    blob = tmp_path / "damaged"
    # The last byte of the table, just before the footer.
    end = len(layer.blob) - FOOTER_SIZE
    blob.write_bytes(layer.blob[: end - 1] + b"\0" + layer.blob[end:])

    fetch._index_chunked(layer.descriptor, "layer x of image", blob)

    [record] = caplog.records
    assert record.getMessage().startswith("layer x of image: chunks not indexed")
    assert record.getMessage().count("layer x") == 1


def test_dry_run_reuse_matches_pull_after_bad_table(tmp_path):
    layer = ConvertedLayer()
    planning_pool = BadTableMirrorPool(layer)
    store = Store(tmp_path / "planned")
    index = ChunkIndex(store.root / INDEX_FILE)
    tables = TablePrefetch(planning_pool, store, "image", threading.Event())
    plans = ImagePlans(index, tables, [layer.descriptor])
    fetch, _, _ = fetcher(tmp_path / "pulled", layer, BadTableMirrorPool(layer))

    planned_fetch, planned_reuse, planned_resume = pulling._planned_bytes(
        store, layer.descriptor, plans
    )
    fetched = fetch.fetch(layer.descriptor, layer.diff_id)

    assert planned_fetch == fetched
    assert planned_reuse == fetch.reused[layer.descriptor.digest]
    assert planned_resume == fetch.resumed[layer.descriptor.digest] == 0


def test_timed_out_table_promises_no_resume(tmp_path):
    # No range was fetched, so nothing is kept that a rerun could resume.
    v2 = ConvertedLayer(changed=5)
    pool = FailingRangesPool(v2, TransferTimedOut, part="table")
    fetch, store = update_fetcher(tmp_path, pool, v2)

    with pytest.raises(TransferTimedOut) as caught:
        fetch.fetch(v2.descriptor, v2.diff_id)

    assert caught.value.exit_code == 6
    assert pool.whole_bytes == 0
    assert not store.partial_path(v2.descriptor.digest, DELTA_PARTIAL).exists()
    assert "resumes" not in str(caught.value)


def test_dropped_table_fetches_layer_whole(tmp_path):
    # A proxy that drops every range request of a blob still serves it whole.
    v2 = ConvertedLayer(changed=5)
    pool = FailingRangesPool(v2, TransferFailed, part="table")
    fetch, store = update_fetcher(tmp_path, pool, v2)
    tables = TablePrefetch(pool, store, "image", threading.Event())
    plans = ImagePlans(ChunkIndex(store.root / INDEX_FILE), tables, [v2.descriptor])

    planned = pulling._planned_bytes(store, v2.descriptor, plans)
    fetch.fetch(v2.descriptor, v2.diff_id)

    assert planned == (v2.descriptor.size, 0, 0)
    assert pool.whole_bytes == v2.descriptor.size
    assert store.has_blob(v2.descriptor.digest, v2.descriptor.size)
