"""A store damaged on disk: caught where its bytes are read, and repaired by a pull."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import apparate
from apparate.digest import Digest
from apparate.pulling import PullOptions

pytestmark = [
    pytest.mark.integration,
    pytest.mark.usefixtures("isolated_environment"),
]

APPARATE = str(Path(sys.executable).with_name("apparate"))


def cli(*args: str, store: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [APPARATE, *args, "--store", str(store)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def damage(path: Path) -> None:
    """Overwrite a few bytes in the middle, keeping the file's size."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(8) if data[middle] else b"damaged!"
    path.write_bytes(bytes(data))


def blob(store: Path, digest: object) -> Path:
    return store / "blobs" / "sha256" / str(digest).split(":")[1]


def pull_two_damaging_first(host: str, store: Path) -> tuple[str, str]:
    """Pull base:v1 and base:v2, then damage v1's manifest; return both references."""
    v1, v2 = f"{host}/samples/base:v1", f"{host}/samples/base:v2"
    pulled = apparate.pull(v1, PullOptions(store=store))
    apparate.pull(v2, PullOptions(store=store))
    damage(blob(store, pulled.digest))
    return v1, v2


@pytest.mark.parametrize("archive", ["oci-archive", "docker-archive"])
def test_damaged_layer_caught_at_import(registry_plain, tmp_path, archive):
    store = tmp_path / "store"
    reference = f"{registry_plain.host}/samples/base:v1"
    pulled = apparate.pull(reference, PullOptions(store=store))
    layer = blob(store, pulled.layers[0].digest)
    damage(layer)
    output = tmp_path / "image.tar"

    failed = cli("import", "--into", f"{archive}:{output}", reference, store=store)

    assert failed.returncode == 10
    assert f"{pulled.layers[0].digest} of {reference} was damaged" in failed.stderr
    assert f"apparate pull {reference}" in failed.stderr
    assert not output.exists()
    assert not layer.exists()

    repaired = apparate.pull(reference, PullOptions(store=store))
    imported = cli("import", "--into", f"{archive}:{output}", reference, store=store)

    assert repaired.bytes_fetched == pulled.layers[0].size
    assert imported.returncode == 0, imported.stderr
    assert hashlib.sha256(layer.read_bytes()).hexdigest() == layer.name


def test_damaged_manifest_fetched_again_by_pull(registry_plain, tmp_path):
    store = tmp_path / "store"
    reference = f"{registry_plain.host}/samples/base:v1"
    pulled = apparate.pull(reference, PullOptions(store=store))
    manifest = blob(store, pulled.digest)
    damage(manifest)

    again = apparate.pull(reference, PullOptions(store=store))

    assert again.digest == pulled.digest
    assert again.bytes_fetched == 0
    assert hashlib.sha256(manifest.read_bytes()).hexdigest() == manifest.name
    assert [image.reference for image in apparate.list_images(store)] == [reference]


def test_gc_keeps_everything_while_kept_image_damaged(registry_plain, tmp_path):
    store = tmp_path / "store"
    v1, v2 = pull_two_damaging_first(registry_plain.host, store)
    before = sorted(path.name for path in (store / "blobs" / "sha256").iterdir())

    stopped = cli("gc", store=store)
    after = sorted(path.name for path in (store / "blobs" / "sha256").iterdir())
    removed = cli("rm", v1, store=store)

    assert stopped.returncode == 10
    assert f"{v1} is damaged" in stopped.stderr
    assert f"apparate rm {v1}" in stopped.stderr
    assert after == before
    assert removed.returncode == 0, removed.stderr
    assert [image.reference for image in apparate.list_images(store)] == [v2]


def test_import_by_digest_of_tagged_image(registry_plain, tmp_path):
    store = tmp_path / "store"
    tagged = f"{registry_plain.host}/samples/base:v1"
    pulled = apparate.pull(tagged, PullOptions(store=store))
    by_digest = f"{registry_plain.host}/samples/base@{pulled.digest}"
    output = tmp_path / "image.tar"

    imported = cli("import", "--into", f"oci-archive:{output}", by_digest, store=store)

    assert imported.returncode == 0, imported.stderr
    inspected = subprocess.run(
        ["skopeo", "inspect", f"oci-archive:{output}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert json.loads(inspected)["Digest"] == str(pulled.digest)


def test_index_json_of_wrong_shape(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    (store / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (store / "index.json").write_text("[]")

    listed = cli("images", store=store)

    assert listed.returncode == 10
    assert "has no manifests list" in listed.stderr
    assert "Traceback" not in listed.stderr


def test_images_lists_damaged_image_beside_others(registry_plain, tmp_path):
    store = tmp_path / "store"
    v1, v2 = pull_two_damaging_first(registry_plain.host, store)

    listed = cli("images", "--json", store=store)

    assert listed.returncode == 0, listed.stderr
    sizes = {row["reference"]: row["size"] for row in json.loads(listed.stdout)}
    assert sizes[v1] is None
    assert sizes[v2] > 0
    assert f"{v1} in the store is unreadable" in listed.stderr


def test_damaged_database_names_the_way_out(registry_plain, tmp_path):
    store = tmp_path / "store"
    reference = f"{registry_plain.host}/samples/base:v1"
    apparate.pull(reference, PullOptions(store=store))
    database = store / "apparate.db"
    database.write_bytes(b"not a database, but junk of some length" * 100)
    for leftover in store.glob("apparate.db-*"):
        leftover.unlink()

    failed = cli("pull", "-q", reference, store=store)
    database.rename(tmp_path / "apparate.db.damaged")
    pulled = cli("pull", "-q", reference, store=store)

    assert failed.returncode == 10
    assert "apparate.db is damaged: move it aside" in failed.stderr
    assert pulled.returncode == 0, pulled.stderr
    assert [image.reference for image in apparate.list_images(store)] == [reference]


TAGGED = {"org.opencontainers.image.ref.name": "example.com/bad:v1"}
INVALID_ENTRIES = {
    "no digest": {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                  "size": 1, "annotations": TAGGED},
    "malformed digest": {"digest": "sha256:zz", "size": 1, "annotations": TAGGED},
    "annotations a list": {"digest": "sha256:" + "a" * 64, "annotations": ["x"]},
    "a string": "hello",
}  # fmt: skip


def append_entry(store: Path, entry: object) -> Path:
    """Append ``entry`` to the store's index.json; return the file's path."""
    index = store / "index.json"
    document = json.loads(index.read_text())
    document["manifests"].append(entry)
    index.write_text(json.dumps(document))
    return index


def blob_names(store: Path) -> set[str]:
    return {path.name for path in (store / "blobs" / "sha256").iterdir()}


@pytest.mark.parametrize("entry", INVALID_ENTRIES.values(), ids=INVALID_ENTRIES)
def test_invalid_entry_skipped_or_stops_gc(registry_plain, tmp_path, entry):
    store = tmp_path / "store"
    reference = f"{registry_plain.host}/samples/base:v1"
    apparate.pull(reference, PullOptions(store=store))
    index = append_entry(store, entry)
    blobs = blob_names(store)
    output = tmp_path / "image.tar"

    listed = cli("images", "--json", store=store)
    pulled = cli("pull", "--into", f"oci-archive:{output}", reference, store=store)
    collected = cli("gc", store=store)
    removed = cli("rm", reference, store=store)

    assert listed.returncode == 0, listed.stderr
    assert [row["reference"] for row in json.loads(listed.stdout)] == [reference]
    assert "lists an invalid entry" in listed.stderr
    assert pulled.returncode == 0, pulled.stderr
    assert output.exists()
    assert entry in json.loads(index.read_text())["manifests"]
    for stopped in (collected, removed):
        assert stopped.returncode == 10
        assert "lists an invalid entry" in stopped.stderr
        assert "remove a tagged entry with 'apparate rm'" in stopped.stderr
        assert "Traceback" not in stopped.stderr
    assert blob_names(store) == blobs
    assert [image.reference for image in apparate.list_images(store)] == [reference]


@pytest.mark.parametrize("name", ["no digest", "malformed digest"])
def test_invalid_tagged_entry_removed_by_rm(registry_plain, tmp_path, name):
    store = tmp_path / "store"
    reference = f"{registry_plain.host}/samples/base:v1"
    apparate.pull(reference, PullOptions(store=store))
    index = append_entry(store, INVALID_ENTRIES[name])
    damaged = TAGGED["org.opencontainers.image.ref.name"]

    planned = cli("rm", "--dry-run", damaged, store=store)
    after_dry_run = json.loads(index.read_text())["manifests"]
    removed = cli("rm", damaged, store=store)
    collected = cli("gc", store=store)

    assert planned.returncode == 0, planned.stderr
    assert INVALID_ENTRIES[name] in after_dry_run
    assert removed.returncode == 0, removed.stderr
    assert damaged in removed.stdout
    assert INVALID_ENTRIES[name] not in json.loads(index.read_text())["manifests"]
    assert collected.returncode == 0, collected.stderr
    assert [image.reference for image in apparate.list_images(store)] == [reference]


def test_dry_run_leaves_damaged_config_in_place(registry_plain, tmp_path):
    store = tmp_path / "store"
    reference = f"{registry_plain.host}/samples/base:v1"
    pulled = apparate.pull(reference, PullOptions(store=store))
    manifest = json.loads(blob(store, pulled.digest).read_text())
    config = blob(store, manifest["config"]["digest"])
    config.chmod(0o644)
    damage(config)
    damaged = config.read_bytes()

    planned = cli("pull", "--dry-run", reference, store=store)
    after_dry_run = config.read_bytes()
    repaired = cli("pull", "-q", reference, store=store)

    assert planned.returncode == 0, planned.stderr
    assert "is damaged" in planned.stderr
    assert after_dry_run == damaged
    assert repaired.returncode == 0, repaired.stderr
    assert Digest.of(config.read_bytes()) == Digest.parse(manifest["config"]["digest"])


def test_malformed_index_json_repaired_as_advised(registry_plain, tmp_path):
    store = tmp_path / "store"
    reference = f"{registry_plain.host}/samples/base:v1"
    apparate.pull(reference, PullOptions(store=store))
    (store / "index.json").write_text('{"manifests": [ {,')

    listed = cli("images", store=store)
    (store / "index.json").rename(tmp_path / "index.json.damaged")
    pulled = cli("pull", "--json", reference, store=store)

    assert listed.returncode == 10
    assert "index.json is damaged: it is not valid JSON" in listed.stderr
    assert "move it aside and pull the images again" in listed.stderr
    assert "permissions" not in listed.stderr
    assert pulled.returncode == 0, pulled.stderr
    assert json.loads(pulled.stdout)["bytes_fetched"] == 0
    assert [image.reference for image in apparate.list_images(store)] == [reference]


def test_blobs_file_repaired_as_advised(registry_plain, tmp_path):
    store = tmp_path / "store"
    reference = f"{registry_plain.host}/samples/base:v1"
    apparate.pull(reference, PullOptions(store=store))
    blobs = store / "blobs"
    blobs.rename(tmp_path / "blobs.old")
    blobs.write_text("not a directory")

    listed = cli("images", store=store)
    failed = cli("pull", "-q", reference, store=store)
    blobs.rename(tmp_path / "blobs.damaged")
    pulled = cli("pull", "-q", reference, store=store)

    for refused in (listed, failed):
        assert refused.returncode == 10
        assert f"{blobs} is not a directory" in refused.stderr
        assert f"move {blobs} aside and pull the images again" in refused.stderr
        assert "cannot create the store" not in refused.stderr
    assert pulled.returncode == 0, pulled.stderr
    assert [image.reference for image in apparate.list_images(store)] == [reference]


def read_only(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run apparate on ``store`` bind-mounted read-only in a private mount namespace."""
    script = (
        'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
    )
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", str(store),
         APPARATE, *args, "--store", str(store)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="a read-only bind mount needs root and unshare",
)
def test_read_only_store_lists_and_plans(registry_plain, tmp_path):
    store = tmp_path / "store"
    reference = f"{registry_plain.host}/samples/base:v1"
    pulled = apparate.pull(reference, PullOptions(store=store))
    (store / ".users.lock").unlink()
    before = sorted((path.name, path.stat().st_mtime) for path in store.rglob("*"))

    listed = read_only(store, "images", "--json")
    stats = read_only(store, "stats")
    collected = read_only(store, "gc", "--dry-run", "--json")
    removed = read_only(store, "rm", "--dry-run", str(pulled.digest)[:19])
    planned = read_only(store, "pull", "--dry-run", "--json", reference)

    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [row["reference"] for row in rows] == [reference]
    assert rows[0]["last_used"] > 0
    assert stats.returncode == 0, stats.stderr
    assert "1 pull:" in stats.stdout
    assert collected.returncode == 0, collected.stderr
    # The image's local pack is kept, as a gc with write access would keep it.
    assert json.loads(collected.stdout)["bytes_freed"] == 0
    assert removed.returncode == 0, removed.stderr
    assert f"would untag: {reference}" in removed.stdout
    assert planned.returncode == 0, planned.stderr
    assert json.loads(planned.stdout)["bytes_fetched"] == 0
    after = sorted((path.name, path.stat().st_mtime) for path in store.rglob("*"))
    assert after == before


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="a read-only bind mount needs root and unshare",
)
@pytest.mark.parametrize("command", [["gc"], ["rm", "REFERENCE"]], ids=["gc", "rm"])
def test_read_only_store_refuses_changes_plainly(registry_plain, tmp_path, command):
    store = tmp_path / "store"
    reference = f"{registry_plain.host}/samples/base:v1"
    apparate.pull(reference, PullOptions(store=store))
    (store / ".users.lock").unlink()

    refused = read_only(store, *(reference if arg == "REFERENCE" else arg
                                 for arg in command))  # fmt: skip

    assert refused.returncode == 10
    assert f"the store {store} is not writable: a read-only file system" in (
        refused.stderr
    )
    assert "untag" not in refused.stderr
