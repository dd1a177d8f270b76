"""A damaged index.json or layout: clear errors, good entries still usable."""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path

import pytest

from apparate.digest import Digest
from apparate.errors import StoreError, UsageError
from apparate.manifest import OCI_MANIFEST, Descriptor
from apparate.store.collector import GcOptions, collect, remove_images
from apparate.store.layout import REF_NAME, SOURCE_MANIFEST, Store, StoredImage
from apparate.store.selection import select_by_bare_digest, select_by_digest
from tests.unit.test_store_gc import BASE, add_image

GOOD = "example.com/app:v1"
TAGGED = {REF_NAME: "example.com/bad:v1"}
DIGEST = str(Digest.of(b"manifest"))

INVALID_ENTRIES = {
    "no digest": ({"mediaType": OCI_MANIFEST, "annotations": TAGGED}, "no digest"),
    "malformed digest": (
        {"digest": "sha256:zz", "annotations": TAGGED},
        "invalid sha256 digest",
    ),
    "annotations a list": ({"digest": DIGEST, "annotations": ["x"]}, "annotations"),
    "a string": ("hello", '"hello" is not a JSON object'),
    "size a string": ({"digest": DIGEST, "size": "abc"}, "size 'abc'"),
    "media type a number": ({"digest": DIGEST, "mediaType": 5}, "mediaType 5"),
    "source annotation malformed": (
        {"digest": DIGEST, "annotations": {**TAGGED, SOURCE_MANIFEST: "sha256:zz"}},
        "invalid digest",
    ),
}


def index_path(store: Store) -> Path:
    return store.root / "index.json"


def add_entry(store: Store, entry: object) -> None:
    document = json.loads(index_path(store).read_text())
    document["manifests"].append(entry)
    index_path(store).write_text(json.dumps(document))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


@pytest.mark.parametrize(
    "entry, problem", INVALID_ENTRIES.values(), ids=INVALID_ENTRIES
)
def test_images_skip_invalid_entry(store, caplog, entry, problem):
    add_image(store, GOOD, [BASE])
    add_entry(store, entry)

    with caplog.at_level(logging.WARNING):
        images = store.images()

    assert [image.reference for image in images] == [GOOD]
    assert "lists an invalid entry, manifests[1]" in caplog.text
    assert problem in caplog.text


@pytest.mark.parametrize(
    "entry, problem", [INVALID_ENTRIES["no digest"], INVALID_ENTRIES["a string"]]
)
def test_entries_reject_invalid_entry(store, entry, problem):
    add_entry(store, entry)

    with pytest.raises(StoreError) as caught:
        store.entries()

    assert caught.value.exit_code == 10
    assert "lists an invalid entry, manifests[0]" in str(caught.value)
    assert problem in str(caught.value)
    assert "apparate rm" in str(caught.value)


def test_tag_and_untag_keep_invalid_entry(store):
    manifest = add_image(store, GOOD, [BASE])
    add_entry(store, "hello")
    add_entry(store, {"annotations": ["x"]})

    store.tag("example.com/app:v2", Descriptor(OCI_MANIFEST, manifest, 10))
    removed = store.untag([GOOD])

    manifests = json.loads(index_path(store).read_text())["manifests"]
    assert removed == [GOOD]
    assert "hello" in manifests
    assert {"annotations": ["x"]} in manifests
    assert store.has_reference("example.com/app:v2")
    assert not store.has_reference(GOOD)


@pytest.mark.parametrize("dry_run", [True, False])
def test_gc_stops_at_invalid_entry(store, dry_run):
    add_image(store, GOOD, [BASE])
    left_over = Digest.of(b"left over")
    store.put_blob(b"left over", left_over)
    add_entry(store, "hello")
    before = index_path(store).read_bytes()

    with pytest.raises(StoreError, match="lists an invalid entry"):
        collect(store, GcOptions(dry_run=dry_run))

    assert store.has_blob(left_over)
    assert index_path(store).read_bytes() == before


def test_rm_stops_at_invalid_entry(store):
    add_image(store, GOOD, [BASE])
    add_entry(store, {"annotations": ["x"]})
    before = index_path(store).read_bytes()

    store.close()
    with pytest.raises(StoreError, match="lists an invalid entry"):
        remove_images([GOOD], store.root)

    assert index_path(store).read_bytes() == before
    assert store.has_blob(Digest.of(BASE))


def test_rm_removes_invalid_entry(store):
    add_image(store, GOOD, [BASE])
    add_entry(store, INVALID_ENTRIES["no digest"][0])
    add_entry(store, INVALID_ENTRIES["source annotation malformed"][0])
    before = index_path(store).read_bytes()
    store.close()

    planned = remove_images(["example.com/bad:v1"], store.root, GcOptions(dry_run=True))
    after_dry_run = index_path(store).read_bytes()
    removed = remove_images(["example.com/bad:v1"], store.root)

    assert planned.untagged == ["example.com/bad:v1"]
    assert after_dry_run == before
    assert removed.untagged == ["example.com/bad:v1"]
    assert removed.not_found == []
    manifests = json.loads(index_path(store).read_text())["manifests"]
    assert len(manifests) == 1
    assert [image.reference for image in Store(store.root).images()] == [GOOD]


def test_rm_removes_invalid_entry_by_short_name(store):
    add_entry(store, {"mediaType": OCI_MANIFEST,
                      "annotations": {REF_NAME: "docker.io/library/bad:v1"}})  # fmt: skip
    store.close()

    removed = remove_images(["bad:v1"], store.root)

    assert removed.untagged == ["docker.io/library/bad:v1"]
    assert json.loads(index_path(store).read_text())["manifests"] == []


def test_rm_failing_leaves_invalid_entry(store):
    add_entry(store, INVALID_ENTRIES["no digest"][0])
    add_entry(store, "hello")
    before = index_path(store).read_bytes()
    store.close()

    with pytest.raises(StoreError, match="lists an invalid entry"):
        remove_images(["example.com/bad:v1"], store.root)

    assert index_path(store).read_bytes() == before


def test_hidden_invalid_entry_kept_by_later_tag(store):
    manifest = add_image(store, GOOD, [BASE])
    add_entry(store, INVALID_ENTRIES["no digest"][0])

    store.hide_invalid(["example.com/bad:v1"])
    store.tag("example.com/app:v2", Descriptor(OCI_MANIFEST, manifest, 10))

    manifests = json.loads(index_path(store).read_text())["manifests"]
    assert INVALID_ENTRIES["no digest"][0] in manifests


@pytest.mark.parametrize(
    "body, message",
    [
        ('{"manifests": [ {,', "is damaged: it is not valid JSON"),
        ("[]", "is not an OCI image index: it has no manifests list"),
        ('{"manifests": "x"}', "has no manifests list"),
    ],
)
def test_damaged_index_says_how_to_repair(store, body, message):
    index_path(store).write_text(body)

    with pytest.raises(StoreError) as caught:
        store.images()

    assert message in str(caught.value)
    assert "move it aside and pull the images again" in str(caught.value)
    assert "permissions" not in str(caught.value)


@pytest.mark.parametrize("part", ["blobs", "blobs/sha256", "ingest"])
@pytest.mark.parametrize("create", [True, False])
def test_file_in_place_of_directory(tmp_path, part, create):
    root = tmp_path / "store"
    Store(root).close()
    path = root / part
    for child in sorted(path.rglob("*"), reverse=True):
        child.rmdir()
    path.rmdir()
    path.write_text("x")

    with pytest.raises(StoreError) as caught:
        Store(root, create=create)

    assert f"{path} is not a directory" in str(caught.value)
    assert f"move {path} aside and pull the images again" in str(caught.value)
    assert "cannot create" not in str(caught.value)


def test_read_only_store_opens_without_users_file(tmp_path, monkeypatch):
    root = tmp_path / "store"
    Store(root).close()
    (root / ".users.lock").unlink()
    real_open = os.open

    def read_only_open(path: object, flags: int, *args: object) -> int:
        if flags & (os.O_CREAT | os.O_RDWR | os.O_WRONLY):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only_open)
    store = Store(root)
    with store.exclusive(wait=0):
        images = store.images()

    assert images == []


def image(
    reference: str,
    manifest: Digest,
    source: Digest | None = None,
    index: Digest | None = None,
):
    return StoredImage(
        reference, Descriptor(OCI_MANIFEST, manifest, 1), source or manifest, index
    )


M1 = Digest("sha256", "497fecd365e8" + "1" * 52)
M2 = Digest("sha256", "497fecd365e9" + "2" * 52)
COPY = Digest("sha256", "c0" + "3" * 62)
AMD64 = Digest("sha256", "a4" + "4" * 62)
ARM64 = Digest("sha256", "a5" + "5" * 62)
INDEX = Digest("sha256", "1d" + "6" * 62)
STORED = [
    image("example.com/app:v1", M1),
    image("example.com/app:latest", M1),
    image("example.com/app:v2", M2),
    image("example.com/converted:v1", COPY, source=M2),
    image("example.com/multi:v1", AMD64, index=INDEX),
    image("example.com/multi:arm64", ARM64, index=INDEX),
    image(f"example.com/multi@{AMD64}", AMD64),
]
PREFIX_CASES = {
    "short digest as images prints it": (
        "sha256:497fecd365e8",
        ["example.com/app:v1", "example.com/app:latest"],
    ),
    "whole digest": (str(M2), ["example.com/app:v2", "example.com/converted:v1"]),
    "digest of a converted copy": ("sha256:c0", ["example.com/converted:v1"]),
    "index digest as images prints it": (
        "sha256:1d6666666666",
        ["example.com/multi:v1", "example.com/multi:arm64"],
    ),
    "whole index digest": (
        str(INDEX),
        ["example.com/multi:v1", "example.com/multi:arm64"],
    ),
    "manifest picked from an index": (
        str(AMD64),
        ["example.com/multi:v1", f"example.com/multi@{AMD64}"],
    ),
    "no such digest": ("sha256:0000", []),
    "not a digest": ("example.com/app:v1", []),
    "upper-case hex": ("sha256:497FECD", []),
    "no hex digits": ("sha256:", []),
}


@pytest.mark.parametrize("text, expected", PREFIX_CASES.values(), ids=PREFIX_CASES)
def test_select_by_digest(text, expected):
    assert select_by_digest(text, STORED) == expected


def test_select_by_ambiguous_digest_prefix():
    with pytest.raises(UsageError) as caught:
        select_by_digest("sha256:497fecd365e", STORED)

    assert caught.value.exit_code == 2
    assert str(M1) in str(caught.value)
    assert str(M2) in str(caught.value)


def test_select_by_ambiguous_index_prefix():
    other = Digest("sha256", "1d7" + "7" * 61)
    stored = [*STORED, image("example.com/other:v1", other)]

    with pytest.raises(UsageError) as caught:
        select_by_digest("sha256:1d", stored)

    assert str(INDEX) in str(caught.value)
    assert str(other) in str(caught.value)


BARE_PREFIX_CASES = {
    "short digest as images prints it": (
        "497fecd365e8",
        ["example.com/app:v1", "example.com/app:latest"],
    ),
    "whole digest": (M2.hex, ["example.com/app:v2", "example.com/converted:v1"]),
    "fewer than 12 digits": ("497fecd365e", []),
    "with its algorithm": ("sha256:497fecd365e8", []),
    "no such digest": ("0" * 12, []),
}


@pytest.mark.parametrize(
    "text, expected", BARE_PREFIX_CASES.values(), ids=BARE_PREFIX_CASES
)
def test_select_by_bare_digest(text, expected):
    assert select_by_bare_digest(text, STORED) == expected


def test_rm_by_short_digest(store):
    manifest = add_image(store, GOOD, [BASE])

    store.close()
    result = remove_images([str(manifest)[:19]], store.root)

    assert result.untagged == [GOOD]
    assert result.not_found == []
    assert not store.has_blob(manifest)


def test_rm_by_short_index_digest(store):
    manifest = add_image(store, GOOD, [BASE])
    index = Digest.of(b"index")
    store.tag(GOOD, store.images()[0].descriptor, source_index=index)

    store.close()
    result = remove_images([str(index)[:19]], store.root)

    assert result.untagged == [GOOD]
    assert result.not_found == []
    assert not store.has_blob(manifest)


def test_rm_by_short_digest_without_algorithm(store):
    manifest = add_image(store, GOOD, [BASE])

    store.close()
    result = remove_images([manifest.hex[:12]], store.root)

    assert result.untagged == [GOOD]
    assert result.not_found == []
