"""A store damaged on disk: caught where its bytes are read, and repaired by a pull."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import apparate
from apparate.pull import PullOptions

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
