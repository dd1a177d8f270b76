"""apparate images, rm and gc on stores filled from the real registry."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import apparate
from apparate.platform import Platform
from apparate.pulling import PullOptions
from apparate.store.chunk_index import INDEX_FILE
from tests.integration.throttle import throttled
from tests.testbed.registry import RegistryHandle
from tests.testbed.samples import Samples

pytestmark = [
    pytest.mark.integration,
    pytest.mark.usefixtures("isolated_environment"),
]

APPARATE = str(Path(sys.executable).with_name("apparate"))
SAMPLES = ["base:v1", "base:v2", "base:v1-zstd", "base:v1-docker", "multi:v1"]


def cli(*args: str, store: Path, env: dict[str, str] | None = None):
    return subprocess.run(
        [APPARATE, *args, "--store", str(store)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
        check=False,
    )


def pull_all(registry: RegistryHandle, store: Path, tags: list[str]) -> None:
    for tag in tags:
        apparate.pull(f"{registry.host}/samples/{tag}", PullOptions(store=store))


def images(store: Path) -> dict[str, dict]:
    done = cli("images", "--json", store=store)
    assert done.returncode == 0, done.stderr
    return {row["reference"]: row for row in json.loads(done.stdout)}


def store_bytes(store: Path) -> int:
    blobs = store / "blobs" / "sha256"
    ingest = store / "ingest"
    return sum(path.stat().st_size for path in [*blobs.iterdir(), *ingest.iterdir()])


def assert_every_image_whole(store: Path) -> None:
    """skopeo reads every kept image, and every blob matches its name."""
    for reference in images(store):
        subprocess.run(
            ["skopeo", "inspect", f"oci:{store}:{reference}"],
            capture_output=True,
            check=True,
        )
        copy = subprocess.run(
            ["skopeo", "copy", "--quiet", f"oci:{store}:{reference}",
             f"dir:{store.parent / 'copy'}"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert copy.returncode == 0, copy.stderr
        subprocess.run(["rm", "-rf", str(store.parent / "copy")], check=True)
    for blob in (store / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name


def indexed_blobs(store: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(store / INDEX_FILE)) as db:
        rows = db.execute("SELECT DISTINCT blob FROM chunks").fetchall()
    return {row[0].split(":", 1)[1] for row in rows}


def pack_bytes(store: Path) -> int:
    with contextlib.closing(sqlite3.connect(store / INDEX_FILE)) as db:
        rows = db.execute("SELECT DISTINCT blob FROM chunks WHERE kind = 'pack'")
        packs = [row[0].split(":", 1)[1] for row in rows]
    return sum((store / "blobs" / "sha256" / pack).stat().st_size for pack in packs)


@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` at ``path``; skip the test where that fails."""
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
    done = subprocess.run(mount, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def fill(path: Path) -> None:
    """Write zeros to ``path`` until its filesystem is full."""
    with open(path, "ab", buffering=0) as file:
        for block in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while file.write(b"\0" * block):
                    pass
    with pytest.raises(OSError) as full:
        path.with_name(path.name + "-more").write_bytes(b"\0" * 4096)
    assert full.value.errno == errno.ENOSPC


def test_images_show_last_use_and_a_pull_counts(registry_plain, tmp_path):
    store = tmp_path / "store"
    pull_all(registry_plain, store, ["base:v1", "base:v2"])
    v1, v2 = (f"{registry_plain.host}/samples/base:{tag}" for tag in ("v1", "v2"))
    first = images(store)

    pull_all(registry_plain, store, ["base:v1"])
    again = images(store)

    assert first[v1]["last_used"] < first[v2]["last_used"]
    assert again[v1]["last_used"] > first[v2]["last_used"]
    listed = cli("images", store=store).stdout.splitlines()
    header = ["REFERENCE", "DIGEST", "PLATFORM", "SIZE", "LAST", "USED"]
    assert listed[0].split() == header
    assert "just now" in listed[1]


def registry_digest(reference: str) -> str:
    """Return the digest of what the registry serves for ``reference``."""
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{reference}"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    return f"sha256:{hashlib.sha256(raw).hexdigest()}"


def test_images_show_index_digest_and_platform(registry_plain, tmp_path):
    store = tmp_path / "store"
    multi = f"{registry_plain.host}/samples/multi:v1"
    arm64 = PullOptions(store=store, platform=Platform.parse("linux/arm64"))
    pulled = apparate.pull(multi, arm64)
    index = registry_digest(multi)

    row = images(store)[multi]
    table = cli("images", store=store).stdout.splitlines()

    assert row["index_digest"] == index
    assert row["digest"] == str(pulled.digest)
    assert row["digest"] != index
    assert row["platform"] == "linux/arm64"
    assert table[1].split()[:3] == [multi, index[:19], "linux/arm64"]


def test_rm_by_short_index_digest(registry_plain, tmp_path):
    store = tmp_path / "store"
    pull_all(registry_plain, store, ["base:v1", "multi:v1"])
    base = f"{registry_plain.host}/samples/base:v1"
    multi = f"{registry_plain.host}/samples/multi:v1"
    table = cli("images", store=store).stdout.splitlines()
    short_index = next(line.split()[1] for line in table if line.startswith(multi))

    done = cli("rm", short_index, store=store)

    assert short_index == registry_digest(multi)[:19]
    assert done.returncode == 0, done.stderr
    assert f"untagged: {multi}" in done.stdout
    assert list(images(store)) == [base]
    assert_every_image_whole(store)


def test_rm_keeps_what_other_images_share(registry_plain, tmp_path):
    store = tmp_path / "store"
    pull_all(registry_plain, store, ["base:v1", "base:v2"])
    v1, v2 = (f"{registry_plain.host}/samples/base:{tag}" for tag in ("v1", "v2"))
    before = store_bytes(store)

    done = cli("rm", v1, store=store)

    assert done.returncode == 0, done.stderr
    assert f"untagged: {v1}" in done.stdout
    assert list(images(store)) == [v2]
    assert store_bytes(store) < before
    assert_every_image_whole(store)
    present = {path.name for path in (store / "blobs" / "sha256").iterdir()}
    assert indexed_blobs(store) <= present
    again = apparate.pull(v1, PullOptions(store=store))
    assert 0 < again.bytes_fetched
    assert_every_image_whole(store)


def test_rm_by_digest_and_unknown_image(registry_plain, sample_images, tmp_path):
    store = tmp_path / "store"
    digest = sample_images.images["base:v2"].digest
    by_digest = f"{registry_plain.host}/samples/base@{digest}"
    pull_all(registry_plain, store, ["base:v1", f"base@{digest}"])

    missing = cli("rm", f"{registry_plain.host}/samples/base:v7", store=store)
    removed = cli("rm", "--json", by_digest, store=store)

    assert missing.returncode == 4
    assert missing.stderr.startswith("error: ")
    assert "v7" in missing.stderr
    assert removed.returncode == 0, removed.stderr
    assert json.loads(removed.stdout)["untagged"] == [by_digest]
    assert list(images(store)) == [f"{registry_plain.host}/samples/base:v1"]
    assert_every_image_whole(store)


def test_rm_by_digest_as_images_prints_it(registry_plain, tmp_path):
    store = tmp_path / "store"
    pull_all(registry_plain, store, ["base:v1", "base:v2"])
    v1, v2 = (f"{registry_plain.host}/samples/base:{tag}" for tag in ("v1", "v2"))
    table = cli("images", store=store).stdout.splitlines()
    short_digest = next(line.split()[1] for line in table if line.startswith(v1))

    done = cli("rm", short_digest, store=store)

    assert short_digest.startswith("sha256:")
    assert len(short_digest) == 19
    assert done.returncode == 0, done.stderr
    assert f"untagged: {v1}" in done.stdout
    assert list(images(store)) == [v2]
    assert_every_image_whole(store)


def test_rm_of_a_missing_image_removes_others(registry_plain, tmp_path):
    store = tmp_path / "store"
    pull_all(registry_plain, store, ["base:v1", "base:v2"])
    v1, v2 = (f"{registry_plain.host}/samples/base:{tag}" for tag in ("v1", "v2"))
    missing = f"{registry_plain.host}/samples/base:v7"

    done = cli("rm", missing, v1, store=store)

    assert done.returncode == 4
    assert f"untagged: {v1}" in done.stdout
    assert done.stderr.startswith(f"error: {missing}: no such image")
    assert list(images(store)) == [v2]
    assert_every_image_whole(store)


def test_gc_frees_space_on_a_full_disk(registry_plain, tmp_path):
    v1, v2 = (f"{registry_plain.host}/samples/base:{tag}" for tag in ("v1", "v2"))
    with small_filesystem(tmp_path / "disk", "200m") as disk:
        store = disk / "store"
        pull_all(registry_plain, store, ["base:v1", "base:v2"])
        junk = os.urandom(1 << 20)
        junk_path = store / "blobs" / "sha256" / hashlib.sha256(junk).hexdigest()
        junk_path.write_bytes(junk)
        fill(disk / "filler")

        plain = cli("gc", "--json", store=store)

        assert plain.returncode == 0, plain.stderr
        assert json.loads(plain.stdout)["bytes_freed"] >= len(junk)
        assert not junk_path.exists()

        # Read before the disk fills: opening the index may create its -shm file.
        limit = store_bytes(store) - pack_bytes(store) - 1
        fill(disk / "filler")
        sized = cli("gc", "--json", "--max-size", str(limit), store=store)

        assert sized.returncode == 0, sized.stderr
        assert json.loads(sized.stdout)["untagged"] == [v1]
        for path in disk.glob("filler*"):
            path.unlink()
        assert list(images(store)) == [v2]
        assert_every_image_whole(store)
        again = apparate.pull(v1, PullOptions(store=store))
        assert again.bytes_fetched > 0
        assert_every_image_whole(store)


def test_gc_max_size_removes_partials_not_held(registry_plain, tmp_path):
    store = tmp_path / "store"
    pull_all(registry_plain, store, ["base:v1"])
    young = store / "ingest" / f"partial-{'a' * 64}"
    young.write_bytes(b"\0" * 100_000)
    held = store / "ingest" / f"partial-{'b' * 64}"
    held.write_bytes(b"\0" * 50_000)

    with open(held, "rb") as pulling:
        fcntl.flock(pulling, fcntl.LOCK_EX)
        done = cli("gc", "--json", "--max-size", "1", store=store)

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["partial_files"] == [young.name]
    assert not young.exists()
    assert held.exists()
    assert images(store) == {}
    assert result["size_after"] == 50_000


def test_gc_tight_limit_images_whole(registry_plain, tmp_path):
    store = tmp_path / "store"
    pull_all(registry_plain, store, SAMPLES)
    sizes = images(store)
    newest = f"{registry_plain.host}/samples/{SAMPLES[-1]}"
    limit = sizes[newest]["size"] + 4_000_000

    done = cli("gc", "--json", "--max-size", str(limit), store=store)

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["size_after"] <= limit
    assert store_bytes(store) == result["size_after"]
    assert result["bytes_freed"] == result["size_before"] - result["size_after"]
    remaining = images(store)
    assert newest in remaining
    assert set(result["untagged"]) == set(sizes) - set(remaining)
    assert_every_image_whole(store)


def test_gc_dry_run_removes_nothing(registry_plain, tmp_path):
    store = tmp_path / "store"
    pull_all(registry_plain, store, ["base:v1", "base:v2"])
    before = sorted(os.listdir(store / "blobs" / "sha256"))

    done = cli("gc", "--dry-run", "--max-size", "1M", store=store)

    assert done.returncode == 0, done.stderr
    assert "would remove" in done.stdout
    assert "would untag: " in done.stdout
    assert sorted(os.listdir(store / "blobs" / "sha256")) == before
    assert len(images(store)) == 2


def test_gc_removes_leftovers(registry_plain, sample_images, tmp_path):
    store = tmp_path / "store"
    pull_all(registry_plain, store, ["base:v1", "base:v1-docker", "multi:v1"])
    registry_documents = [
        store / "blobs" / "sha256" / sample_images.images[tag].digest.split(":")[1]
        for tag in ("base:v1-docker", "multi:v1")
    ]
    junk = b"a blob no image names"
    junk_path = store / "blobs" / "sha256" / hashlib.sha256(junk).hexdigest()
    junk_path.write_bytes(junk)
    stale = store / "ingest" / f"partial-{'e' * 64}"
    stale.write_bytes(b"\0" * 1000)
    os.utime(stale, (time.time() - 3 * 86400, time.time() - 3 * 86400))

    done = cli("gc", "--json", store=store)

    assert done.returncode == 0, done.stderr
    removed = json.loads(done.stdout)["removed"]
    assert [item["digest"] for item in removed] == [f"sha256:{junk_path.name}"]
    assert json.loads(done.stdout)["partial_files"] == [stale.name]
    assert not junk_path.exists()
    assert not stale.exists()
    assert all(path.exists() for path in registry_documents)
    assert_every_image_whole(store)


def test_max_store_size_applies_after_each_pull(registry_plain, tmp_path):
    store = tmp_path / "store"
    config = tmp_path / "config.toml"
    config.write_text('max_store_size = "40M"\n')
    env = {"APPARATE_CONFIG": str(config)}
    v1, v2 = (f"{registry_plain.host}/samples/base:{tag}" for tag in ("v1", "v2"))

    first = cli("pull", "-q", v1, store=store, env=env)
    second = cli("pull", "--json", v2, store=store, env=env)

    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    removed = f"removed an image from the store to fit max_store_size: {v1}"
    assert removed in second.stderr
    assert removed in json.loads(second.stdout)["warnings"]
    assert list(images(store)) == [v2]
    assert store_bytes(store) <= 40 << 20
    assert_every_image_whole(store)


def test_max_store_size_never_removes_the_pulled_image(registry_plain, tmp_path):
    store = tmp_path / "store"
    config = tmp_path / "config.toml"
    config.write_text("max_store_size = 1000\n")
    v1 = f"{registry_plain.host}/samples/base:v1"

    done = cli("pull", "-q", v1, store=store, env={"APPARATE_CONFIG": str(config)})

    assert done.returncode == 0, done.stderr
    assert "over max_store_size (1000 B)" in done.stderr
    assert f"because the image just pulled is never removed: {v1}" in done.stderr
    assert "MiB" in done.stderr
    assert list(images(store)) == [v1]
    assert_every_image_whole(store)


def gc_during_slow_pull(
    registry, store: Path, *gc_args: str
) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """Run ``gc --json`` 1.5 s into a pull of base:v2 throttled to 8 MB/s.

    Returns the finished pull, whose ``args[-1]`` is the reference it
    pulled, and the gc.
    """
    port = int(registry.host.rsplit(":", 1)[1])
    with throttled(port, 8 * 1024 * 1024) as slow_port:
        v2 = f"127.0.0.1:{slow_port}/samples/base:v2"
        command = [APPARATE, "pull", "-q", "--store", str(store), v2]
        pulling = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        time.sleep(1.5)
        gc = cli("gc", "--json", *gc_args, store=store)
        out, errors = pulling.communicate(timeout=300)
    return subprocess.CompletedProcess(command, pulling.returncode, out, errors), gc


def test_gc_waits_for_a_running_pull(registry_plain, sample_images, tmp_path):
    """A gc never deletes the blobs a running pull has stored but not tagged."""
    store = tmp_path / "store"
    v1 = f"{registry_plain.host}/samples/base:v1"
    pull_all(registry_plain, store, ["base:v1"])
    limit = sample_images.images["base:v2"].layer_bytes + 1_000_000
    pulling, gc = gc_during_slow_pull(registry_plain, store, "--max-size", str(limit))

    assert pulling.returncode == 0, pulling.stderr
    assert gc.returncode == 0, gc.stderr
    assert json.loads(gc.stdout)["untagged"] == [v1]
    assert list(images(store)) == [pulling.args[-1]]
    assert_every_image_whole(store)


def test_gc_dry_run_during_a_pull_matches_gc(registry_plain, tmp_path):
    """A dry run that waited for a pull counts the pack that pull wrote as kept."""
    store = tmp_path / "store"
    pulling, planned = gc_during_slow_pull(registry_plain, store, "--dry-run")
    done = cli("gc", "--json", store=store)

    assert pulling.returncode == 0, pulling.stderr
    assert planned.returncode == 0, planned.stderr
    assert json.loads(planned.stdout)["removed"] == []
    assert json.loads(done.stdout)["removed"] == []


def test_delta_pull_after_packs_are_dropped(registry_plain, converted, tmp_path):
    """Without packs a delta pull fetches more, and its image is still right."""
    fetched = {}
    for name, drop_packs in (("kept", False), ("dropped", True)):
        store = tmp_path / name
        pull_all(registry_plain, store, ["base:v1"])
        if drop_packs:
            limit = store_bytes(store) - pack_bytes(store)
            done = cli("gc", "--json", "--max-size", str(limit), store=store)
            result = json.loads(done.stdout)
            assert result["untagged"] == [], result
            assert {item["reason"] for item in result["removed"]} == {"pack"}
            assert pack_bytes(store) == 0
        update = apparate.pull(f"{converted}:v2", PullOptions(store=store))
        fetched[name] = update.bytes_fetched
        assert_every_image_whole(store)

    assert fetched["dropped"] > fetched["kept"]


def test_damaged_chunk_rows_are_skipped(registry_plain, converted, tmp_path):
    store = tmp_path / "store"
    pull_all(registry_plain, store, ["base:v1"])
    with contextlib.closing(sqlite3.connect(store / INDEX_FILE)) as db, db:
        db.execute("UPDATE chunks SET blob = 'garbage'")

    pulled = cli("pull", "--json", f"{converted}:v2", store=store)
    collected = cli("gc", "--json", store=store)

    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stderr.count("'garbage'") == 1
    assert collected.returncode == 0, collected.stderr
    assert "garbage" not in indexed_blobs(store)
    assert_every_image_whole(store)


def test_samples_are_the_ones_expected(sample_images: Samples):
    assert set(SAMPLES) <= set(sample_images.images)
