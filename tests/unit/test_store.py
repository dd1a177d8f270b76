import errno
import fcntl
import json
import multiprocessing
import os
import threading
import time
from pathlib import Path

import pytest

from apparate.digest import Digest
from apparate.errors import StoreError
from apparate.manifest import OCI_MANIFEST, Descriptor
from apparate.store.layout import REF_NAME, BlobWriter, Store, StoredElsewhere


def descriptor_of(data: bytes) -> Descriptor:
    return Descriptor(OCI_MANIFEST, Digest.of(data), len(data))


def test_store_creates_oci_layout(tmp_path):
    Store(tmp_path / "store")

    layout = json.loads((tmp_path / "store" / "oci-layout").read_text())
    index = json.loads((tmp_path / "store" / "index.json").read_text())
    assert layout == {"imageLayoutVersion": "1.0.0"}
    assert index["schemaVersion"] == 2
    assert index["manifests"] == []


def test_ingest_without_commit_leaves_nothing(tmp_path):
    store = Store(tmp_path)
    digest = Digest.of(b"blob")

    with pytest.raises(RuntimeError), store.ingest(digest) as writer:
        writer.write(b"bl")
        raise RuntimeError("download failed")

    assert not store.has_blob(digest)
    assert list(store.ingest_dir.iterdir()) == []


def test_ingest_commit_publishes_blob(tmp_path):
    store = Store(tmp_path)
    digest = Digest.of(b"blob")

    with store.ingest(digest) as writer:
        writer.write(b"blob")
        writer.commit()

    assert store.read_blob(digest) == b"blob"
    assert store.has_blob(digest, 4)
    assert not store.has_blob(digest, 5)
    assert list(store.ingest_dir.iterdir()) == []


@pytest.mark.parametrize("kind", ["ingest", "resumable"])
def test_partial_file_reads_back_every_written_byte(tmp_path, kind):
    # A pull indexes a whole chunked layer from this file before committing
    # it, so bytes still buffered would read as a short blob.
    store = Store(tmp_path)
    data = b"small tail"
    digest = Digest.of(data)
    opened = (
        store.ingest(digest) if kind == "ingest" else store.resumable(digest, len(data))
    )

    with opened as writer:
        writer.write(data)
        writer.flush()
        written = writer.path.read_bytes()

    assert written == data


def test_tag_replaces_same_reference(tmp_path):
    store = Store(tmp_path)
    first, second = descriptor_of(b"one"), descriptor_of(b"two")

    store.tag("example.com/app:v1", first)
    store.tag("example.com/app:v2", first)
    store.tag("example.com/app:v1", second)

    images = {image.reference: image.descriptor.digest for image in store.images()}
    assert images == {
        "example.com/app:v1": second.digest,
        "example.com/app:v2": first.digest,
    }


def test_tag_records_source_index(tmp_path):
    store = Store(tmp_path)
    index_digest = Digest.of(b"index")

    store.tag("example.com/app:v1", descriptor_of(b"one"), source_index=index_digest)

    (image,) = store.images()
    assert image.source_index == index_digest
    assert image.descriptor.annotations[REF_NAME] == "example.com/app:v1"


def _tag_many(root: str, worker: int) -> None:
    store = Store(root)
    for number in range(20):
        store.tag(f"example.com/app:w{worker}-{number}", descriptor_of(b"x"))


def test_concurrent_taggers_lose_no_tag(tmp_path):
    Store(tmp_path)
    context = multiprocessing.get_context("fork")
    workers = [
        context.Process(target=_tag_many, args=(str(tmp_path), n)) for n in range(4)
    ]

    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert len(Store(tmp_path).images()) == 80


def test_store_sweeps_abandoned_ingest_files(tmp_path):
    store = Store(tmp_path)
    abandoned = store.ingest_dir / "0123-abandoned"
    abandoned.write_bytes(b"partial")

    with store.ingest(Digest.of(b"blob")) as writer:
        writer.write(b"bl")
        Store(tmp_path)

        assert not abandoned.exists()
        assert len(list(store.ingest_dir.iterdir())) == 1


@pytest.mark.parametrize("layout_written", [False, True])
def test_store_removes_killed_layout_copy(tmp_path, layout_written):
    # A process killed while creating the store leaves its temporary copy
    # of oci-layout, before or after another process wrote the file.
    (tmp_path / "blobs" / "sha256").mkdir(parents=True)
    leftover = tmp_path / ".oci-layout-k1ll3d"
    leftover.write_bytes(b"{")
    if layout_written:
        (tmp_path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')

    Store(tmp_path)

    assert not leftover.exists()
    assert json.loads((tmp_path / "oci-layout").read_text()) == {
        "imageLayoutVersion": "1.0.0"
    }


def test_sweep_removes_killed_commit_leftovers(tmp_path):
    # A pull killed between committing a blob and deleting its partial file
    # or journal leaves them young, and no later pull needs them.
    store = Store(tmp_path)
    blob = b"a blob that was committed"
    store.put_blob(blob, Digest.of(blob))
    hex_digest = Digest.of(blob).hex
    journal = store.ingest_dir / f"partial-delta-{hex_digest}.ranges"
    whole = store.ingest_dir / f"partial-{hex_digest}"
    orphan = store.ingest_dir / f"partial-delta-{'0' * 64}.ranges"
    resumable = store.ingest_dir / f"partial-{'1' * 64}"
    resumable_rebuild = store.ingest_dir / f"partial-delta-{'2' * 64}"
    for path in (journal, whole, orphan, resumable, resumable_rebuild):
        path.write_bytes(b"0-10\n")
    (store.ingest_dir / f"{resumable_rebuild.name}.ranges").write_bytes(b"0-10\n")

    Store(tmp_path)

    assert sorted(path.name for path in store.ingest_dir.iterdir()) == sorted(
        [resumable.name, resumable_rebuild.name, f"{resumable_rebuild.name}.ranges"]
    )


def hold_partial(store: Store, digest: Digest):
    """Lock a partial download of ``digest`` as another pull writing it would."""
    path = store.partial_path(digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    locked = open(path, "wb")  # noqa: SIM115 - closed by the caller
    fcntl.flock(locked, fcntl.LOCK_EX)
    return locked


def test_wait_for_other_writer_takes_its_blob(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr("apparate.store.layout.WAIT_NOTICE_SECONDS", 0.1)
    store = Store(tmp_path / "store")
    blob = b"a blob another pull is writing"
    digest = Digest.of(blob)
    locked = hold_partial(store, digest)

    def finish() -> None:
        time.sleep(0.5)
        store.put_blob(blob, digest)
        locked.close()

    threading.Thread(target=finish).start()
    stored = store.wait_for_other_writers(digest, len(blob), lambda: False)

    assert stored
    assert "is being written by another pull" in caplog.text


def test_wait_for_stalled_writer_gives_up(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr("apparate.store.layout.STALLED_WRITER_SECONDS", 0.3)
    store = Store(tmp_path / "store")
    digest = Digest.of(b"a blob whose writer was suspended")

    with hold_partial(store, digest):
        stored = store.wait_for_other_writers(digest, 10, lambda: False)

    assert not stored
    assert "made no progress" in caplog.text


def test_wait_for_other_writer_ends_when_stopped(tmp_path):
    store = Store(tmp_path / "store")
    digest = Digest.of(b"a blob of a pull that is being cancelled")

    with hold_partial(store, digest):
        stored = store.wait_for_other_writers(digest, 10, lambda: True)

    assert not stored


def test_committed_here_only_in_committing_store(tmp_path):
    store = Store(tmp_path / "store")
    data = b"verified blob"
    digest = Digest.of(data)

    store.put_blob(data, digest)

    assert store.committed_here(digest)
    assert not Store(tmp_path / "store").committed_here(digest)


class FullDiskFile:
    """A blob file whose buffered bytes cannot be written when it is closed."""

    def __init__(self, file) -> None:
        self._file = file

    @property
    def closed(self) -> bool:
        return self._file.closed

    def flush(self) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    def close(self) -> None:
        self._file.close()
        raise OSError(errno.ENOSPC, "No space left on device")


def test_discard_on_full_disk_removes_file(tmp_path):
    store = Store(tmp_path / "store")
    writer = BlobWriter(store, Digest.of(b"layer"))
    writer._file = FullDiskFile(writer._file)

    writer.discard()

    assert not writer.path.exists()


class Interrupted(Exception):
    """Stands for an error that ends a download, such as a truncated body."""


def test_full_disk_on_release_keeps_first_error(tmp_path):
    store = Store(tmp_path / "store")

    with pytest.raises(Interrupted), store.resumable(Digest.of(b"layer"), 5) as writer:
        writer._file = FullDiskFile(writer._file)
        raise Interrupted()


def test_folder_of_other_files_is_no_store(tmp_path):
    (tmp_path / "notes.txt").write_text("not a store")

    with pytest.raises(StoreError, match="contains other files such as notes.txt"):
        Store(tmp_path)

    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize(
    "names",
    [[".lock", "apparate.db"], ["oci-layout", "index.json", "notes.txt"]],
    ids=["creation stopped early", "layout of another tool"],
)
def test_store_opens_in_folder_of_store_files(tmp_path, names):
    for name in names:
        (tmp_path / name).write_text("")
    if "oci-layout" in names:
        (tmp_path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        (tmp_path / "index.json").write_text('{"schemaVersion": 2, "manifests": []}')

    store = Store(tmp_path)

    assert store.images() == []
    store.close()


def test_resumable_waits_for_writer_that_took_partial(tmp_path):
    # Two pulls passed their first wait at once, and the other one locked first.
    store = Store(tmp_path / "store")
    data = b"layer bytes"
    digest = Digest.of(data)
    other = Store(tmp_path / "store")
    outcome: list[str] = []

    def second_pull() -> None:
        try:
            with store.resumable(digest, len(data)):
                outcome.append("wrote it too")
        except StoredElsewhere:
            outcome.append("stored elsewhere")

    with other.resumable(digest, len(data)) as writer:
        waiting = threading.Thread(target=second_pull)
        waiting.start()
        writer.write(data)
        writer.commit()
    waiting.join(10)

    assert outcome == ["stored elsewhere"]


def test_resumable_after_other_commit_is_stored_elsewhere(tmp_path):
    # The other pull committed between this one's check and its open.
    store = Store(tmp_path / "store")
    data = b"layer bytes"
    digest = Digest.of(data)
    Store(tmp_path / "store").put_blob(data, digest)

    with pytest.raises(StoredElsewhere), store.resumable(digest, len(data)):
        pass

    assert list(store.ingest_dir.iterdir()) == []


def test_resumable_without_bytes_leaves_no_partial(tmp_path):
    # As for the other layers of a pull that a corrupt layer stopped.
    store = Store(tmp_path / "store")

    with pytest.raises(Interrupted), store.resumable(Digest.of(b"layer"), 5):
        raise Interrupted()

    assert list(store.ingest_dir.iterdir()) == []


def test_resumable_with_bytes_keeps_partial(tmp_path):
    store = Store(tmp_path / "store")
    digest = Digest.of(b"layer")

    with pytest.raises(Interrupted), store.resumable(digest, 5) as writer:
        writer.write(b"la")
        raise Interrupted()

    assert store.partial_path(digest, "").read_bytes() == b"la"


def test_release_on_full_disk_is_store_error(tmp_path):
    store = Store(tmp_path / "store")
    digest = Digest.of(b"layer")

    with (
        pytest.raises(StoreError, match="No space left"),
        store.resumable(digest, 5) as writer,
    ):
        writer._file = FullDiskFile(writer._file)


def test_store_given_relative_has_absolute_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    store = Store(Path("store"))

    assert store.root == tmp_path / "store"


def test_tag_removes_index_copy_of_killed_writer(tmp_path):
    store = Store(tmp_path / "store")
    leftover = store.root / ".index.json-k1lled"
    leftover.write_text("{}")
    manifest = b'{"schemaVersion":2}'
    store.put_blob(manifest, Digest.of(manifest))

    store.tag("registry.example/app:v1", descriptor_of(manifest))

    assert not leftover.exists()


def test_unwritable_store_is_named_before_sqlite(tmp_path, monkeypatch):
    root = tmp_path / "store"
    Store(root).close()
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != root)

    with pytest.raises(StoreError, match="is not writable: permission denied"):
        Store(root)

    # Reading it needs no writes.
    Store(root, create=False, read_only=True).close()


def wait_for_text(caplog, text: str) -> bool:
    """Poll the captured log for ``text`` for up to ten seconds."""
    deadline = time.monotonic() + 10
    while text not in caplog.text:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_open_waiting_for_gc_logs_why(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr("apparate.store.layout.WAIT_NOTICE_SECONDS", 0.0)
    root = tmp_path / "store"
    cleaner = Store(root)
    opened = threading.Event()

    def open_store() -> None:
        Store(root).close()
        opened.set()

    with cleaner.exclusive(wait=5):
        opener = threading.Thread(target=open_store)
        opener.start()
        noticed = wait_for_text(caplog, "removing images or blobs")
        opened_early = opened.is_set()
    opener.join(10)

    assert noticed
    assert not opened_early
    assert opened.is_set()


def test_gc_waiting_for_users_logs_why(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr("apparate.store.layout.WAIT_NOTICE_SECONDS", 0.0)
    root = tmp_path / "store"
    user = Store(root)
    cleaner = Store(root, create=False)
    done = threading.Event()

    def clean() -> None:
        with cleaner.exclusive(wait=10):
            done.set()

    worker = threading.Thread(target=clean)
    worker.start()
    noticed = wait_for_text(caplog, "waiting up to 10 s")
    done_early = done.is_set()
    user.close()
    worker.join(10)

    assert noticed
    assert not done_early
    assert done.is_set()
