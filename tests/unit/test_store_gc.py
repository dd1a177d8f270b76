"""gc and rm on stores built by hand: what goes, what stays, locks and crashes."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from apparate.catalog import list_images
from apparate.chunked.packer import LocalPacker
from apparate.cli.text import gc_report, images_report
from apparate.digest import Digest
from apparate.errors import NotFound, StoreError
from apparate.importers import ImportOptions, import_image
from apparate.manifest import OCI_MANIFEST, Descriptor
from apparate.result import PullResult
from apparate.store.chunk_index import INDEX_FILE, ChunkIndex
from apparate.store.collector import GcOptions, after_pull, collect, remove_images
from apparate.store.layout import USERS_LOCK, Store
from apparate.store.usage import last_used, mark_used
from tests.unit.test_chunked import make_tar

LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"


def add_image(store: Store, reference: str, layers: list[bytes]) -> Digest:
    """Store a small image whose layers are plain tars; return its manifest."""
    diff_ids = [str(Digest.of(layer)) for layer in layers]
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    descriptors = []
    for layer in layers:
        store.put_blob(layer, Digest.of(layer))
        descriptors.append(
            {
                "mediaType": LAYER_TYPE,
                "digest": str(Digest.of(layer)),
                "size": len(layer),
            }
        )
    store.put_blob(config, Digest.of(config))
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": str(Digest.of(config)),
                "size": len(config),
            },
            "layers": descriptors,
        }
    ).encode()
    store.put_blob(manifest, Digest.of(manifest))
    store.tag(reference, Descriptor(OCI_MANIFEST, Digest.of(manifest), len(manifest)))
    return Digest.of(manifest)


def blobs_of(store: Store, manifest: Digest) -> set[Digest]:
    document = json.loads(store.read_blob(manifest))
    named = [document["config"], *document["layers"]]
    return {manifest, *(Digest.parse(item["digest"]) for item in named)}


def assert_whole(store: Store, manifest: Digest) -> None:
    for digest in blobs_of(store, manifest):
        data = store.blob_path(digest).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest.hex


def chunk_blobs(root: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(root / INDEX_FILE)) as db:
        return {row[0] for row in db.execute("SELECT DISTINCT blob FROM chunks")}


BASE = b"base layer " * 1000
APP1 = b"app one " * 1000
APP2 = b"app two " * 2000


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """An open store; tests close it before calling what opens it again."""
    return Store(tmp_path / "store")


def test_gc_removes_unreferenced_blobs_only(store):
    manifest = add_image(store, "example.com/app:v1", [BASE, APP1])
    store.put_blob(b"left over", Digest.of(b"left over"))

    result = collect(store, GcOptions())

    assert [item.digest for item in result.removed] == [Digest.of(b"left over")]
    assert result.bytes_freed == len(b"left over")
    assert not store.has_blob(Digest.of(b"left over"))
    assert_whole(store, manifest)


def test_rm_keeps_blobs_another_image_needs(store):
    add_image(store, "example.com/app:v1", [BASE, APP1])
    second = add_image(store, "example.com/app:v2", [BASE, APP2])

    store.close()
    result = remove_images(["example.com/app:v1"], store.root)

    assert result.untagged == ["example.com/app:v1"]
    assert not store.has_blob(Digest.of(APP1))
    assert store.has_blob(Digest.of(BASE))
    assert [image.reference for image in store.images()] == ["example.com/app:v2"]
    assert_whole(store, second)


def test_rm_of_images_none_stored_removes_nothing(store):
    add_image(store, "example.com/app:v1", [BASE])

    store.close()
    with pytest.raises(NotFound) as caught:
        remove_images(["example.com/app:v8", "example.com/app:v9"], store.root)

    assert caught.value.exit_code == 4
    assert "example.com/app:v8, example.com/app:v9:" in str(caught.value)
    assert len(store.images()) == 1


def test_rm_without_store_names_every_image(tmp_path):
    with pytest.raises(NotFound) as caught:
        remove_images(["example.com/app:v8", "example.com/app:v9"], tmp_path / "s")

    assert "example.com/app:v8, example.com/app:v9:" in str(caught.value)


def test_rm_lists_missing_and_removes_others(store):
    add_image(store, "example.com/app:v1", [BASE])
    kept = add_image(store, "example.com/app:v2", [APP2])

    store.close()
    requested = ["example.com/app:v9", "example.com/app:v1"]
    result = remove_images(requested, store.root)

    assert result.not_found == ["example.com/app:v9"]
    assert result.to_dict()["not_found"] == ["example.com/app:v9"]
    assert result.untagged == ["example.com/app:v1"]
    assert not store.has_blob(Digest.of(BASE))
    assert [image.reference for image in store.images()] == ["example.com/app:v2"]
    assert_whole(store, kept)


def test_rm_by_digest(store):
    manifest = add_image(store, "example.com/app:v1", [BASE])
    store.untag(["example.com/app:v1"])
    by_digest = f"example.com/app@{manifest}"
    store.tag(by_digest, Descriptor(OCI_MANIFEST, manifest, 10))

    store.close()
    result = remove_images([f"example.com/app:v1@{manifest}"], store.root)

    assert result.untagged == [by_digest]
    assert not store.has_blob(manifest)


def test_dry_run_removes_nothing(store):
    add_image(store, "example.com/app:v1", [BASE])
    add_image(store, "example.com/app:v2", [APP2])
    before = sorted(os.listdir(store.root / "blobs" / "sha256"))

    result = collect(store, GcOptions(max_size=1, dry_run=True))

    assert result.dry_run and len(result.untagged) == 2
    assert sorted(os.listdir(store.root / "blobs" / "sha256")) == before
    assert len(store.images()) == 2


def test_max_size_removes_least_recently_used(store):
    add_image(store, "example.com/app:v1", [BASE, APP1])
    add_image(store, "example.com/app:v2", [APP2])
    add_image(store, "example.com/app:v3", [APP1])
    mark_used(store.root, "example.com/app:v1", now=300.0)
    mark_used(store.root, "example.com/app:v2", now=100.0)
    mark_used(store.root, "example.com/app:v3", now=200.0)

    result = collect(store, GcOptions(max_size=len(BASE) + len(APP1) + 2000))

    assert result.untagged == ["example.com/app:v2"]
    assert {image.reference for image in store.images()} == {
        "example.com/app:v1",
        "example.com/app:v3",
    }
    assert "example.com/app:v2" not in last_used(store.root)


def test_protected_image_is_kept_over_the_limit(store):
    add_image(store, "example.com/app:v1", [BASE])
    mark_used(store.root, "example.com/app:v1", now=1.0)

    result = collect(store, GcOptions(max_size=0, protected=["example.com/app:v1"]))

    assert result.untagged == []
    assert result.over_limit_because == ["example.com/app:v1"]


def test_stale_partial_downloads_go(store):
    old = store.ingest_dir / f"partial-{'a' * 64}"
    old.write_bytes(b"x" * 100)
    (store.ingest_dir / f"{old.name}.ranges").write_text("0-10\n")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    fresh = store.ingest_dir / f"partial-{'b' * 64}"
    fresh.write_bytes(b"y" * 50)
    orphan_journal = store.ingest_dir / f"partial-delta-{'c' * 64}.ranges"
    orphan_journal.write_text("0-10\n")

    result = collect(store, GcOptions(partial_max_age=3600))

    assert sorted(result.partial_files) == sorted(
        [old.name, f"{old.name}.ranges", orphan_journal.name]
    )
    assert sorted(path.name for path in store.ingest_dir.iterdir()) == [fresh.name]


def test_partial_of_stored_blob_goes(store):
    add_image(store, "example.com/app:v1", [BASE])
    # A whole download an earlier pull left, before a rebuild stored the blob.
    useless = store.partial_path(Digest.of(BASE))
    useless.write_bytes(BASE[:100])

    result = collect(store, GcOptions())

    assert result.partial_files == [useless.name]
    assert not useless.exists()


def test_gc_waits_for_other_users_of_the_store(store):
    store.put_blob(b"left over", Digest.of(b"left over"))
    pulling = Store(store.root)

    with pytest.raises(StoreError, match="in use"):
        collect(store, GcOptions(wait=0.3))

    assert store.has_blob(Digest.of(b"left over"))
    pulling.close()
    collect(store, GcOptions(wait=0.3))
    assert not store.has_blob(Digest.of(b"left over"))


def held_by_another(store: Store) -> bool:
    """Tell whether another Store object keeps the store open."""
    with open(store.root / USERS_LOCK, "rb") as users:
        try:
            fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(users, fcntl.LOCK_UN)
        return False


def test_rm_waits_for_a_running_import(store, tmp_path):
    add_image(store, "example.com/app:v1", [BASE, APP1])
    store.close()
    # The import blocks on opening the FIFO until a reader comes.
    fifo = tmp_path / "archive"
    os.mkfifo(fifo)
    options = ImportOptions(store=store.root, into=f"oci-archive:{fifo}")
    importing = threading.Thread(
        target=import_image, args=("example.com/app:v1", options), daemon=True
    )
    importing.start()
    try:
        deadline = time.monotonic() + 10
        while not held_by_another(store) and time.monotonic() < deadline:
            time.sleep(0.01)

        with pytest.raises(StoreError, match="in use"):
            remove_images(["example.com/app:v1"], store.root, GcOptions(wait=0.3))

        assert store.has_blob(Digest.of(APP1))
    finally:
        # A reader lets the import finish, or fail, whatever happened above.
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        while importing.is_alive():
            with contextlib.suppress(BlockingIOError):
                os.read(reader, 1 << 20)
            importing.join(0.01)
        os.close(reader)


def test_killed_gc_leaves_kept_images_whole(store, monkeypatch):
    add_image(store, "example.com/app:v1", [BASE, APP1])
    survivor = add_image(store, "example.com/app:v2", [BASE, APP2])
    real_unlink = Path.unlink
    calls = []

    def unlink_then_die(path: Path, missing_ok: bool = False) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_unlink(path, missing_ok=missing_ok)

    store.close()
    monkeypatch.setattr(Path, "unlink", unlink_then_die)
    with pytest.raises(KeyboardInterrupt):
        remove_images(["example.com/app:v1"], store.root)
    monkeypatch.undo()

    assert [image.reference for image in store.images()] == ["example.com/app:v2"]
    assert_whole(store, survivor)
    collect(store, GcOptions())
    assert not store.has_blob(Digest.of(APP1))
    assert_whole(store, survivor)


def pack_of(store: Store, tar: bytes) -> Digest:
    with ChunkIndex(store.root / INDEX_FILE) as index:
        packer = LocalPacker(store, index, "layer")
        packer.feed(tar)
        digest = packer.finish(Digest.of(tar))
    assert digest is not None
    return digest


def test_packs_go_with_their_layers(store):
    tar = make_tar(3)
    add_image(store, "example.com/app:v1", [tar])
    add_image(store, "example.com/app:v2", [BASE])
    pack = pack_of(store, tar)

    collect(store, GcOptions())
    pack_stayed = store.has_blob(pack)
    store.close()
    remove_images(["example.com/app:v1"], store.root)

    assert pack_stayed
    assert not store.has_blob(pack)
    assert str(pack) not in chunk_blobs(store.root)


def test_packs_go_before_images(store):
    tar = make_tar(3)
    add_image(store, "example.com/app:v1", [tar])
    pack = pack_of(store, tar)
    image_bytes = sum(
        path.stat().st_size
        for path in (store.root / "blobs" / "sha256").iterdir()
        if path.name != pack.hex
    )

    result = collect(store, GcOptions(max_size=image_bytes))

    assert result.untagged == []
    assert [item.digest for item in result.removed] == [pack]
    assert chunk_blobs(store.root) == set()


def untag_denied(self: Store, references: list[str]) -> list[str]:
    """Stand in for Store.untag on a store whose index cannot be written."""
    denied = StoreError("cannot untag images: Permission denied")
    denied.errno = errno.EACCES
    raise denied


def test_rm_stopped_before_untag_keeps_packs(store, monkeypatch):
    # A kept image's packs seed later delta pulls, and a pull of the image
    # finds it up to date without cutting them again.
    tar = make_tar(3)
    add_image(store, "example.com/app:v1", [tar])
    pack = pack_of(store, tar)

    monkeypatch.setattr(Store, "untag", untag_denied)
    store.close()
    with pytest.raises(StoreError, match="Permission denied"):
        remove_images(["example.com/app:v1"], store.root)
    monkeypatch.undo()

    assert [image.reference for image in store.images()] == ["example.com/app:v1"]
    assert store.has_blob(pack)
    assert str(pack) in chunk_blobs(store.root)
    remove_images(["example.com/app:v1"], store.root)
    assert not store.has_blob(pack)


def test_chunk_rows_of_missing_blobs_go(store):
    tar = make_tar(2)
    add_image(store, "example.com/app:v1", [tar])
    pack = pack_of(store, tar)
    store.blob_path(pack).unlink()

    collect(store, GcOptions())

    assert chunk_blobs(store.root) == set()


def test_images_show_last_use(store):
    add_image(store, "example.com/app:v1", [BASE])
    mark_used(store.root, "example.com/app:v1", now=1234.0)
    mark_used(store.root, "example.com/app:v1", now=1000.0)

    (image,) = list_images(store.root)

    assert image.last_used == 1234.0


def test_images_keep_index_digest(store):
    manifest = add_image(store, "example.com/app:v1", [BASE])
    index = Digest.of(b"index")
    descriptor = store.images()[0].descriptor
    store.tag("example.com/app:v1", descriptor, source_index=index)
    add_image(store, "example.com/app:v2", [APP2])

    images = {image.reference: image for image in list_images(store.root)}

    picked, single = images["example.com/app:v1"], images["example.com/app:v2"]
    assert picked.digest == manifest
    assert picked.index_digest == index
    assert picked.reference_digest == index
    assert single.index_digest is None
    assert single.reference_digest == single.digest


def test_gc_report_names_each_kind(store):
    add_image(store, "example.com/app:v1", [BASE])
    add_image(store, "example.com/app:v2", [APP2])
    store.put_blob(b"left over", Digest.of(b"left over"))
    (store.ingest_dir / "0123-abandoned").write_bytes(b"x")

    report = gc_report(collect(store, GcOptions(max_size=len(APP2) + 2000)))

    assert "untagged: example.com/app:v1" in report
    assert "removed 3 blobs of removed images" in report
    assert "removed 1 blob no image needs" in report
    assert "removed 1 partial download (1 B)" in report
    assert "freed " in report


def pulled(reference: str, manifest: Digest) -> PullResult:
    return PullResult(reference, manifest, "linux/amd64", "", None)


def test_after_pull_marks_use_and_fits_limit(store):
    add_image(store, "example.com/app:v1", [BASE])
    manifest = add_image(store, "example.com/app:v2", [APP2])

    after_pull(store, pulled("example.com/app:v2", manifest), limit=1)

    assert [image.reference for image in store.images()] == ["example.com/app:v2"]
    assert "example.com/app:v2" in last_used(store.root)
    assert_whole(store, manifest)


def test_after_pull_warns_in_binary_units(store, caplog):
    manifest = add_image(store, "example.com/app:v1", [BASE])

    after_pull(store, pulled("example.com/app:v1", manifest), limit=1024)

    assert "over max_store_size (1.0 KiB)" in caplog.text
    assert "the store holds 11.3 KiB" in caplog.text
    assert " bytes" not in caplog.text


def test_after_pull_failure_only_warns(store, monkeypatch, caplog):
    manifest = add_image(store, "example.com/app:v1", [BASE])

    def fail(*args: object, **kwargs: object) -> None:
        raise StoreError("disk on fire")

    monkeypatch.setattr("apparate.store.collector.collect", fail)
    after_pull(store, pulled("example.com/app:v1", manifest), limit=1)

    assert "disk on fire" in caplog.text
    assert len(store.images()) == 1


def partial(store: Store, name: str, size: int, age: float) -> Path:
    """Write a resumable download ``age`` seconds old, with a journal."""
    path = store.ingest_dir / f"partial-{name * 64}"
    path.write_bytes(b"p" * size)
    journal = store.ingest_dir / f"{path.name}.ranges"
    journal.write_text("0-10\n")
    when = time.time() - age
    os.utime(path, (when, when))
    return path


def test_max_size_removes_partials_after_images(store):
    manifest = add_image(store, "example.com/app:v1", [BASE])
    image_bytes = store_size(store)
    old = partial(store, "a", 3000, age=600)
    new = partial(store, "b", 2000, age=60)
    held = partial(store, "c", 1000, age=900)
    holder = open(held, "rb")  # noqa: SIM115 - a running pull's lock
    fcntl.flock(holder, fcntl.LOCK_EX)

    try:
        options = GcOptions(
            max_size=image_bytes + 3100, protected=["example.com/app:v1"]
        )
        result = collect(store, options)
    finally:
        holder.close()

    assert result.untagged == []
    assert result.partial_files == [old.name]
    assert not old.exists()
    assert not old.with_name(old.name + ".ranges").exists()
    assert new.exists()
    assert held.exists()
    assert result.size_after <= image_bytes + 3100
    assert_whole(store, manifest)


def test_max_size_keeps_partials_when_images_make_room(store):
    add_image(store, "example.com/app:v1", [APP2])
    kept = partial(store, "a", 100, age=60)

    result = collect(store, GcOptions(max_size=500))

    assert result.untagged == ["example.com/app:v1"]
    assert kept.exists()
    assert result.partial_files == []


def store_size(store: Store) -> int:
    blobs = store.root / "blobs" / "sha256"
    return sum(path.stat().st_size for path in blobs.iterdir())


def test_gc_frees_space_when_database_fails(store, monkeypatch, caplog):
    add_image(store, "example.com/app:v1", [BASE])
    kept = add_image(store, "example.com/app:v2", [APP2])
    tar = make_tar(2)
    add_image(store, "example.com/app:v3", [tar])
    pack = pack_of(store, tar)

    def disk_full(*args: object) -> None:
        raise StoreError("cannot update apparate.db: database or disk is full")

    monkeypatch.setattr("apparate.store.collector._forget", disk_full)
    store.close()
    requested = ["example.com/app:v1", "example.com/app:v3"]
    result = remove_images(requested, store.root)

    assert not store.has_blob(Digest.of(BASE))
    assert not store.has_blob(pack)
    assert result.bytes_freed > len(BASE)
    assert "database or disk is full" in caplog.text
    assert_whole(store, kept)
    monkeypatch.undo()
    collect(store, GcOptions())
    assert chunk_blobs(store.root) == set()


def test_gc_deletes_layers_when_untag_fails(store, monkeypatch, caplog):
    manifest = add_image(store, "example.com/app:v1", [BASE])
    kept = add_image(store, "example.com/app:v2", [APP2])
    real_untag = Store.untag
    calls = []

    def untag_once_full(self: Store, references: list[str]) -> list[str]:
        calls.append(store.has_blob(Digest.of(BASE)))
        if len(calls) == 1 and references:
            full = StoreError("cannot untag images: No space left on device")
            full.errno = errno.ENOSPC
            raise full
        return real_untag(self, references)

    monkeypatch.setattr(Store, "untag", untag_once_full)
    store.close()
    result = remove_images(["example.com/app:v1"], store.root)

    assert calls == [True, False]
    assert result.untagged == ["example.com/app:v1"]
    assert not store.has_blob(manifest)
    assert [image.reference for image in store.images()] == ["example.com/app:v2"]
    assert "No space left" in caplog.text
    assert_whole(store, kept)


def test_gc_untag_failure_not_disk_full_deletes_nothing(store, monkeypatch):
    manifest = add_image(store, "example.com/app:v1", [BASE])

    monkeypatch.setattr(Store, "untag", untag_denied)
    store.close()
    with pytest.raises(StoreError, match="Permission denied"):
        remove_images(["example.com/app:v1"], store.root)

    assert_whole(store, manifest)


def test_gc_deletes_chunk_rows_naming_no_digest(store, caplog):
    tar = make_tar(2)
    add_image(store, "example.com/app:v1", [tar])
    pack_of(store, tar)
    with contextlib.closing(sqlite3.connect(store.root / INDEX_FILE)) as db, db:
        db.execute("UPDATE chunks SET blob = 'garbage'")

    result = collect(store, GcOptions())

    assert result.removed != []
    assert chunk_blobs(store.root) == set()
    assert caplog.text.count("garbage") == 1


@pytest.mark.parametrize("value", [b"\xde\xad\xbe\xef", 42], ids=["bytes", "number"])
def test_gc_deletes_chunk_rows_of_other_types(store, value):
    tar = make_tar(2)
    add_image(store, "example.com/app:v1", [tar])
    pack_of(store, tar)
    with contextlib.closing(sqlite3.connect(store.root / INDEX_FILE)) as db, db:
        db.execute("UPDATE chunks SET blob = ?", (value,))

    collect(store, GcOptions())

    assert chunk_blobs(store.root) == set()


def test_gc_dry_run_leaves_chunk_rows(store):
    tar = make_tar(2)
    add_image(store, "example.com/app:v1", [tar])
    pack_of(store, tar)
    with contextlib.closing(sqlite3.connect(store.root / INDEX_FILE)) as db, db:
        db.execute("UPDATE chunks SET blob = 'garbage'")

    collect(store, GcOptions(dry_run=True))

    assert chunk_blobs(store.root) == {"garbage"}


def test_gc_runs_when_database_cannot_open(store, monkeypatch, caplog):
    tar = make_tar(2)
    manifest = add_image(store, "example.com/app:v1", [tar])
    pack = pack_of(store, tar)
    store.put_blob(b"left over", Digest.of(b"left over"))

    def disk_io_error(*args: object) -> None:
        raise StoreError("cannot open apparate.db: disk I/O error")

    monkeypatch.setattr("apparate.store.collector.pack_sources", disk_io_error)
    monkeypatch.setattr("apparate.store.survey.last_used", disk_io_error)
    monkeypatch.setattr("apparate.store.collector._disk_full", lambda root: True)
    result = collect(store, GcOptions())

    removed = {item.digest for item in result.removed}
    assert removed == {pack, Digest.of(b"left over")}
    assert caplog.text.count("disk I/O error") == 2
    assert_whole(store, manifest)


def test_gc_keeps_packs_when_database_fails_with_room(store, monkeypatch):
    tar = make_tar(2)
    add_image(store, "example.com/app:v1", [tar])
    pack = pack_of(store, tar)

    def database_locked(*args: object) -> None:
        raise StoreError("cannot read the packs in apparate.db: database is locked")

    monkeypatch.setattr("apparate.store.collector.pack_sources", database_locked)
    with pytest.raises(StoreError, match="database is locked"):
        collect(store, GcOptions())

    assert store.has_blob(pack)


def damage_blob(store: Store, digest: Digest) -> None:
    path = store.blob_path(digest)
    path.write_bytes(path.read_bytes().replace(b"layers", b"LAYERS", 1))


def test_rm_with_shared_damaged_manifest(store):
    manifest = add_image(store, "example.com/app:v1", [b"layer one"])
    descriptor = Descriptor(
        OCI_MANIFEST, manifest, store.blob_path(manifest).stat().st_size
    )
    store.tag("example.com/app:latest", descriptor)
    damage_blob(store, manifest)
    before = set(store.blob_path(manifest).parent.iterdir())
    store.close()

    with pytest.raises(StoreError, match="example.com/app:latest is damaged"):
        remove_images(["example.com/app:v1"], store.root)

    assert set(store.blob_path(manifest).parent.iterdir()) == before


def test_index_missing_another_platform_is_not_damage(store):
    manifest = add_image(store, "example.com/app:v1", [b"layer one"])
    size = store.blob_path(manifest).stat().st_size
    absent = Digest.of(b"a manifest of another platform")
    index = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": str(manifest), "size": size},
            {"mediaType": OCI_MANIFEST, "digest": str(absent), "size": 10},
        ],
    }).encode()  # fmt: skip
    store.put_blob(index, Digest.of(index))
    index_type = "application/vnd.oci.image.index.v1+json"
    store.tag(
        "example.com/multi:v1", Descriptor(index_type, Digest.of(index), len(index))
    )

    result = collect(store, GcOptions())

    assert result.removed == []
    assert_whole(store, manifest)


def test_large_config_does_not_stop_gc(store):
    padding = "x" * (5 * 1024 * 1024)
    layer = b"layer one"
    config = json.dumps({"rootfs": {"diff_ids": [str(Digest.of(layer))]},
                         "history": [{"comment": padding}]}).encode()  # fmt: skip
    store.put_blob(layer, Digest.of(layer))
    store.put_blob(config, Digest.of(config))
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": str(Digest.of(config)), "size": len(config)},
        "layers": [{"mediaType": LAYER_TYPE, "digest": str(Digest.of(layer)),
                    "size": len(layer)}],
    }).encode()  # fmt: skip
    store.put_blob(manifest, Digest.of(manifest))
    store.tag(
        "example.com/big:v1",
        Descriptor(OCI_MANIFEST, Digest.of(manifest), len(manifest)),
    )
    store.put_blob(b"unreferenced", Digest.of(b"unreferenced"))

    result = collect(store, GcOptions())

    assert [item.digest for item in result.removed] == [Digest.of(b"unreferenced")]
    assert_whole(store, Digest.of(manifest))


@pytest.mark.parametrize(
    "damaged_first", [True, False], ids=["damaged first", "index first"]
)
def test_rm_of_image_whose_manifest_is_missing(store, damaged_first):
    kept = add_image(store, "example.com/app:amd64", [b"layer one"])
    size = store.blob_path(kept).stat().st_size
    missing = Digest.of(b"an arm64 manifest the store lacks")
    index_type = "application/vnd.oci.image.index.v1+json"
    index = json.dumps({
        "schemaVersion": 2,
        "mediaType": index_type,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": str(kept), "size": size},
            {"mediaType": OCI_MANIFEST, "digest": str(missing), "size": 33},
        ],
    }).encode()  # fmt: skip
    store.put_blob(index, Digest.of(index))
    tags = [
        ("example.com/app:arm64", Descriptor(OCI_MANIFEST, missing, 33)),
        ("example.com/app:multi", Descriptor(index_type, Digest.of(index), len(index))),
    ]
    for reference, descriptor in tags if damaged_first else reversed(tags):
        store.tag(reference, descriptor)
    store.close()

    result = remove_images(["example.com/app:arm64"], store.root)

    assert result.untagged == ["example.com/app:arm64"]
    assert_whole(store, kept)


def test_images_listed_when_database_unreadable(store, caplog):
    add_image(store, "example.com/app:v1", [BASE])
    (store.root / INDEX_FILE).write_bytes(b"not a database, as a full disk leaves it")

    (image,) = list_images(store.root)

    assert image.reference == "example.com/app:v1"
    assert image.last_used > 0
    assert "showing when each image was stored instead" in caplog.text


def test_images_marks_image_missing_a_layer(store, caplog):
    add_image(store, "example.com/app:v1", [BASE, APP2])
    add_image(store, "example.com/app:v2", [BASE])
    # As an import does with a layer it found damaged.
    store.blob_path(Digest.of(APP2)).unlink()

    images = {image.reference: image for image in list_images(store.root)}

    assert not images["example.com/app:v1"].complete
    assert images["example.com/app:v2"].complete
    assert "example.com/app:v1: missing 1 of its 3 blobs" in caplog.text
    assert "(incomplete)" in images_report(list(images.values()))
