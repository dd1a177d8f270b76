"""Import pulled images into the real dockerd and containerd, and into files.

Every test gets a fresh containerd and, where it needs one, a fresh dockerd
using that containerd, so no daemon has the layers before the import.
Each imported image runs `cat /etc/os-release` (docker with `--network
none`, ctr with the native snapshotter), which needs its whole root
filesystem. dockerd never pulls: it only gets what apparate loads.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from apparate.importers import containerd as containerd_importer
from apparate.importers import docker as docker_importer
from apparate.importers.image import find_stored, load_content
from apparate.importers.run import import_stored
from apparate.importers.target import Daemons
from apparate.store.layout import Store
from tests.testbed.app_update import push_app_update
from tests.testbed.containerd import ContainerdHandle, ctr, start_containerd
from tests.testbed.dockerd import (
    DOCKER_CLI,
    DockerdHandle,
    docker,
    dockerd_binary,
    start_dockerd,
)
from tests.testbed.samples import Samples

pytestmark = [
    pytest.mark.integration,
    pytest.mark.usefixtures("isolated_environment"),
]

APPARATE = str(Path(sys.executable).with_name("apparate"))
SAMPLE_TAGS = ["base:v1", "base:v1-zstd", "base:v1-docker", "multi:v1"]
IMPORT_FAILED = 12


@contextlib.contextmanager
def short_folder() -> Iterator[Path]:
    """A folder under /tmp whose socket paths fit in sun_path's 107 bytes."""
    folder = Path(tempfile.mkdtemp(prefix="apparate-", dir="/tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` at ``path``, to fill the disk on purpose."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def containerd_daemon() -> Iterator[ContainerdHandle]:
    if shutil.which("containerd") is None or shutil.which("runc") is None:
        pytest.skip("containerd and runc are needed (Debian packages containerd, runc)")
    with short_folder() as folder:
        handle = start_containerd(folder / "ctd")
        try:
            yield handle
        finally:
            handle.stop()


@pytest.fixture
def dockerd_daemon(containerd_daemon: ContainerdHandle) -> Iterator[DockerdHandle]:
    if dockerd_binary() is None:
        pytest.skip("dockerd is not installed (Debian package docker.io)")
    with short_folder() as folder:
        handle = start_dockerd(folder / "dk", containerd=containerd_daemon.address)
        try:
            yield handle
        finally:
            handle.stop()


def apparate(
    *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [APPARATE, *args],
        capture_output=True, text=True, check=False,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    if check:
        assert done.returncode == 0, f"apparate {' '.join(args)}:\n{done.stderr}"
    return done


def pull_json(*args: str, env: dict[str, str]) -> dict:
    return json.loads(apparate("pull", "--json", *args, env=env).stdout)


def docker_env(daemon: DockerdHandle) -> dict[str, str]:
    return {"DOCKER_HOST": daemon.host}


def containerd_env(daemon: ContainerdHandle, namespace: str) -> dict[str, str]:
    return {
        "CONTAINERD_ADDRESS": daemon.address,
        "CONTAINERD_NAMESPACE": namespace,
        # ctr unpacks into this snapshotter, which needs no overlay mounts.
        "CONTAINERD_SNAPSHOTTER": daemon.snapshotter,
    }


def sample_config_digest(samples: Samples, tag: str) -> str:
    """The config digest of a sample for linux/amd64: docker's image ID."""
    document = layout_json(samples, samples.images[tag].digest)
    if "manifests" in document:
        amd64 = [
            entry for entry in document["manifests"]
            if entry.get("platform", {}).get("architecture") == "amd64"
        ]  # fmt: skip
        document = layout_json(samples, amd64[0]["digest"])
    return document["config"]["digest"]


def layout_json(samples: Samples, digest: str) -> dict:
    blob = samples.layout / "blobs" / "sha256" / digest.split(":", 1)[1]
    return json.loads(blob.read_bytes())


def docker_inspect(daemon: DockerdHandle, name: str) -> dict:
    done = docker(daemon, "image", "inspect", name)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)[0]


def docker_os_release(daemon: DockerdHandle, image: str) -> str:
    done = docker(daemon, "run", "--rm", "--network", "none", image,
                  "cat", "/etc/os-release")  # fmt: skip
    assert done.returncode == 0, f"{done.stderr}\ndockerd log:\n{daemon.log_tail()}"
    return done.stdout


def containerd_images(daemon: ContainerdHandle, namespace: str) -> dict[str, str]:
    """Return `ctr images ls` as a map of image name to digest."""
    done = ctr(daemon, "images", "ls", namespace=namespace)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[1:]]
    return {row[0]: row[2] for row in rows}


def containerd_os_release(daemon: ContainerdHandle, namespace: str, image: str) -> str:
    container = "import-" + uuid.uuid4().hex[:8]
    done = ctr(
        daemon, "run", "--rm", *daemon.run_options(), image, container,
        "cat", "/etc/os-release", namespace=namespace, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, f"{done.stderr}\ncontainerd log:\n{daemon.log_tail()}"
    return done.stdout


@pytest.mark.parametrize("tag", SAMPLE_TAGS)
def test_pull_into_docker_runs(
    tag, registry_plain, sample_images, dockerd_daemon, tmp_path
):
    reference = f"{registry_plain.host}/samples/{tag}"

    summary = pull_json(
        "--store", str(tmp_path / "store"), "--into", "docker", reference,
        env=docker_env(dockerd_daemon),
    )  # fmt: skip

    image_id = sample_config_digest(sample_images, tag)
    assert summary["imported_into"] == "docker"
    assert summary["import"]["image_id"] == image_id
    inspected = docker_inspect(dockerd_daemon, reference)
    assert inspected["Id"] == image_id
    assert inspected["RepoTags"] == [reference]
    assert "VERSION_CODENAME=bookworm" in docker_os_release(dockerd_daemon, reference)


@pytest.mark.parametrize("tag", SAMPLE_TAGS)
def test_pull_into_containerd_runs(
    tag, registry_plain, sample_images, containerd_daemon, tmp_path
):
    reference = f"{registry_plain.host}/samples/{tag}"
    namespace = "import-" + tag.replace(":", "-")

    output = apparate(
        "pull", "--store", str(tmp_path / "store"), "--into", "containerd",
        "--containerd-address", containerd_daemon.address, "--namespace", namespace,
        reference, env=containerd_env(containerd_daemon, "unused"),
    ).stdout  # fmt: skip

    assert f"imported into containerd as {reference}" in output
    images = containerd_images(containerd_daemon, namespace)
    assert images == {reference: sample_images.images[tag].digest}
    release = containerd_os_release(containerd_daemon, namespace, reference)
    assert "VERSION_CODENAME=bookworm" in release


def assert_same_listing(containerd_daemon) -> None:
    """Check that ``ctr images ls`` lists the same in namespaces by-apparate and by-ctr."""
    by_apparate = ctr(containerd_daemon, "images", "ls", namespace="by-apparate")
    by_ctr = ctr(containerd_daemon, "images", "ls", namespace="by-ctr")
    assert by_apparate.stdout == by_ctr.stdout


def test_containerd_lists_what_plain_pull_lists(
    registry_plain, containerd_daemon, tmp_path
):
    reference = f"{registry_plain.host}/samples/multi:v1"
    env = containerd_env(containerd_daemon, "by-apparate")
    apparate("pull", "-q", "--store", str(tmp_path / "store"), "--into", "containerd",
             reference, env=env)  # fmt: skip

    pulled = ctr(containerd_daemon, "images", "pull", "--plain-http", reference,
                 namespace="by-ctr")  # fmt: skip

    assert pulled.returncode == 0, pulled.stderr
    assert_same_listing(containerd_daemon)


@pytest.mark.parametrize("digest_of", ["index", "manifest"])
def test_containerd_by_digest_matches_plain_pull(
    digest_of, registry_plain, sample_images, containerd_daemon, tmp_path
):
    """Import multi:v1, stored by tag, as REPOSITORY@DIGEST of its index or manifest."""
    store = str(tmp_path / "store")
    apparate("pull", "-q", "--store", store, "--into", "oci",
             f"{registry_plain.host}/samples/multi:v1")  # fmt: skip
    digests = {
        "index": sample_images.images["multi:v1"].digest,
        "manifest": json.loads(apparate("images", "--json", "--store", store).stdout)[
            0
        ]["digest"],
    }
    reference = f"{registry_plain.host}/samples/multi@{digests[digest_of]}"

    apparate("import", "-q", "--store", store, "--into", "containerd", reference,
             env=containerd_env(containerd_daemon, "by-apparate"))  # fmt: skip
    pulled = ctr(containerd_daemon, "images", "pull", "--plain-http", reference,
                 namespace="by-ctr")  # fmt: skip

    assert pulled.returncode == 0, pulled.stderr
    assert_same_listing(containerd_daemon)
    release = containerd_os_release(containerd_daemon, "by-apparate", reference)
    assert "VERSION_CODENAME=bookworm" in release


def test_arm64_image_into_containerd(
    registry_plain, sample_images, containerd_daemon, tmp_path
):
    reference = f"{registry_plain.host}/samples/multi:v1"
    env = containerd_env(containerd_daemon, "arm64")

    apparate("pull", "-q", "--platform", "linux/arm64", "--store",
             str(tmp_path / "store"), "--into", "containerd", reference, env=env)  # fmt: skip

    images = containerd_images(containerd_daemon, "arm64")
    assert images == {reference: sample_images.images["multi:v1"].digest}


def test_delta_pulled_image_into_both_daemons(
    converted, dockerd_daemon, containerd_daemon, tmp_path
):
    store = str(tmp_path / "store")
    apparate("pull", "-q", "--store", store, "--into", "oci", f"{converted}:v1")
    env = {**docker_env(dockerd_daemon), **containerd_env(containerd_daemon, "delta")}

    update = pull_json("--store", store, "--into", "docker", f"{converted}:v2", env=env)
    again = apparate("import", "--json", "--store", store, "--into", "containerd",
                     f"{converted}:v2", env=env)  # fmt: skip

    layer_bytes = sum(layer["size"] for layer in update["layers"])
    assert update["bytes_fetched"] < layer_bytes / 2
    assert json.loads(again.stdout)["target"] == "containerd"
    reference = f"{converted}:v2"
    assert "bookworm" in docker_os_release(dockerd_daemon, reference)
    assert containerd_images(containerd_daemon, "delta") == {
        reference: update["digest"]
    }
    assert "bookworm" in containerd_os_release(containerd_daemon, "delta", reference)


def test_digest_pull_into_docker_loads_untagged(
    registry_plain, sample_images, dockerd_daemon, tmp_path
):
    digest = sample_images.images["base:v1"].digest
    reference = f"{registry_plain.host}/samples/base@{digest}"

    output = apparate("pull", "--store", str(tmp_path / "store"), "--into", "docker",
                      reference, env=docker_env(dockerd_daemon)).stdout  # fmt: skip

    image_id = sample_config_digest(sample_images, "base:v1")
    assert f"without a name, ID {image_id}" in output
    assert f"{reference} names it by digest" in output
    assert docker_inspect(dockerd_daemon, image_id)["RepoTags"] == []
    assert "bookworm" in docker_os_release(dockerd_daemon, image_id)


def test_digest_pull_into_containerd(
    registry_plain, sample_images, containerd_daemon, tmp_path
):
    digest = sample_images.images["base:v1"].digest
    reference = f"{registry_plain.host}/samples/base@{digest}"
    env = containerd_env(containerd_daemon, "digest")

    apparate("pull", "-q", "--store", str(tmp_path / "store"), "--into", "containerd",
             reference, env=env)  # fmt: skip

    assert containerd_images(containerd_daemon, "digest") == {reference: digest}
    assert "bookworm" in containerd_os_release(containerd_daemon, "digest", reference)


def test_auto_picks_docker_then_containerd(
    registry_plain, dockerd_daemon, containerd_daemon, tmp_path
):
    reference = f"{registry_plain.host}/samples/base:v1"
    store = str(tmp_path / "store")
    env = {
        **docker_env(dockerd_daemon),
        **containerd_env(containerd_daemon, "auto"),
        "APPARATE_INTO": "auto",
    }
    no_docker = {**env, "DOCKER_HOST": f"unix://{tmp_path}/none.sock"}

    first = pull_json("--store", store, reference, env=env)
    second = apparate("import", "--json", "--store", store, reference, env=no_docker)
    third = apparate("import", "--json", "--store", store, reference, env={
        **no_docker, "CONTAINERD_ADDRESS": str(tmp_path / "none.sock")})  # fmt: skip

    assert (first["import"]["target"], first["import"]["requested"]) == (
        "docker",
        "auto",
    )
    assert json.loads(second.stdout)["target"] == "containerd"
    assert json.loads(third.stdout)["target"] == "oci"


def test_import_follows_the_docker_context(
    registry_plain, dockerd_daemon, tmp_path, monkeypatch
):
    """The context that `docker context use` made current names the daemon."""
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    reference = f"{registry_plain.host}/samples/base:v1"
    endpoint = f"host={dockerd_daemon.host}"
    for argv in (
        ["context", "create", "apparate-test", "--docker", endpoint],
        ["context", "use", "apparate-test"],
    ):
        done = subprocess.run(
            [DOCKER_CLI, *argv], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr

    summary = pull_json(
        "--store", str(tmp_path / "store"), "--into", "docker", reference, env={}
    )  # fmt: skip

    assert summary["imported_into"] == "docker"
    assert docker_inspect(dockerd_daemon, reference)["RepoTags"] == [reference]


def test_import_retries_without_fetching(private_registry, dockerd_daemon, tmp_path):
    reference = f"{private_registry.host}/samples/base:v1"
    store = str(tmp_path / "store")
    apparate("pull", "-q", "--store", store, "--into", "oci", reference)
    private_registry.stop()

    output = apparate("import", "--store", store, "--into", "docker", reference,
                      env=docker_env(dockerd_daemon)).stdout  # fmt: skip
    repeated = apparate("import", "--store", store, "--into", "docker", reference,
                        env=docker_env(dockerd_daemon)).stdout  # fmt: skip

    assert f"imported into docker as {reference}" in output
    assert "only tagged" in repeated
    assert "bookworm" in docker_os_release(dockerd_daemon, reference)


def test_archive_files_load_into_daemons(
    registry_plain, sample_images, dockerd_daemon, containerd_daemon, tmp_path
):
    reference = f"{registry_plain.host}/samples/base:v1-zstd"
    store = str(tmp_path / "store")
    docker_file, oci_file = tmp_path / "docker.tar", tmp_path / "oci.tar"
    apparate("pull", "-q", "--store", store, "--into", f"docker-archive:{docker_file}",
             reference)  # fmt: skip
    apparate("import", "-q", "--store", store, "--into", f"oci-archive:{oci_file}",
             reference)  # fmt: skip

    loaded = docker(dockerd_daemon, "load", "-i", str(docker_file))
    imported = ctr(containerd_daemon, "images", "import", str(oci_file),
                   namespace="files")  # fmt: skip

    assert loaded.returncode == 0, loaded.stderr
    assert imported.returncode == 0, imported.stderr
    image_id = sample_config_digest(sample_images, "base:v1-zstd")
    assert docker_inspect(dockerd_daemon, reference)["Id"] == image_id
    digest = sample_images.images["base:v1-zstd"].digest
    assert containerd_images(containerd_daemon, "files") == {reference: digest}
    leftovers = [path.name for path in tmp_path.iterdir() if path.name[0] == "."]
    assert leftovers == []


def pull_base_then_update(
    base: str, update: str, target: str, env: dict[str, str], tmp_path: Path
) -> tuple[dict, dict]:
    """Pull ``base`` then ``update`` into ``target``; return both summaries."""
    store = str(tmp_path / "store")
    first = pull_json("--store", store, "--into", target, base, env=env)
    return first, pull_json("--store", store, "--into", target, update, env=env)


def test_update_sends_docker_only_new_layers(
    registry_plain, fresh_registry, sample_images, dockerd_daemon, tmp_path
):
    update = push_app_update(sample_images, fresh_registry.host, tmp_path)
    base = f"{registry_plain.host}/samples/base:v1"
    env = docker_env(dockerd_daemon)

    first, summary = pull_base_then_update(base, update, "docker", env, tmp_path)

    app_layer = summary["layers"][1]
    assert summary["import"]["bytes_sent"] < first["import"]["bytes_sent"] / 10
    assert summary["import"]["bytes_sent"] > app_layer["size"]
    assert "docker already had 1 of its 2 layers" in summary["import"]["note"]
    inspected = docker_inspect(dockerd_daemon, update)
    assert inspected["Id"] == summary["import"]["image_id"]
    assert "bookworm" in docker_os_release(dockerd_daemon, update)
    app_file = docker(dockerd_daemon, "run", "--rm", "--network", "none", update,
                      "cat", "/opt/app/VERSION")  # fmt: skip
    assert app_file.stdout.strip() == "v2", app_file.stderr


def test_docker_missing_present_layers_gets_all(
    registry_plain, dockerd_daemon, tmp_path, monkeypatch
):
    # As if the image docker shared its bottom layer with were removed
    # between apparate's check and the load.
    reference = f"{registry_plain.host}/samples/base:v1"
    store = tmp_path / "store"
    apparate("pull", "-q", "--store", str(store), "--into", "oci", reference)
    monkeypatch.setattr(docker_importer, "bottom_layers_in_docker", lambda *args: 1)
    daemons = Daemons(docker_host=dockerd_daemon.host)

    result = import_stored(Store(store), reference, "docker", daemons)

    assert result.bytes_sent > 70_000_000
    assert "bookworm" in docker_os_release(dockerd_daemon, reference)


def test_update_sends_containerd_only_new_layers(
    registry_plain, fresh_registry, sample_images, containerd_daemon, tmp_path
):
    update = push_app_update(sample_images, fresh_registry.host, tmp_path)
    base = f"{registry_plain.host}/samples/base:v1"
    env = containerd_env(containerd_daemon, "update")

    first, summary = pull_base_then_update(base, update, "containerd", env, tmp_path)

    app_layer = summary["layers"][1]
    assert summary["import"]["bytes_sent"] < first["import"]["bytes_sent"] / 10
    assert summary["import"]["bytes_sent"] > app_layer["size"]
    assert "containerd already had 1 of its 2 layers" in summary["import"]["note"]
    assert containerd_images(containerd_daemon, "update")[update] == summary["digest"]
    assert "bookworm" in containerd_os_release(containerd_daemon, "update", update)


def test_containerd_missing_present_layers_gets_all(
    registry_plain, containerd_daemon, tmp_path, monkeypatch
):
    # As if containerd's garbage collector removed the layer blobs between
    # apparate's check and the import.
    reference = f"{registry_plain.host}/samples/base:v1"
    store = tmp_path / "store"
    apparate("pull", "-q", "--store", str(store), "--into", "oci", reference)
    stored = Store(store)
    layers = load_content(stored, find_stored(stored, reference)).parsed.layers
    monkeypatch.setattr(containerd_importer, "blobs_in_containerd",
                        lambda *args: {layer.digest for layer in layers})  # fmt: skip
    daemons = Daemons(
        containerd_address=containerd_daemon.address, containerd_namespace="gone"
    )
    monkeypatch.setenv("CONTAINERD_SNAPSHOTTER", containerd_daemon.snapshotter)

    result = import_stored(stored, reference, "containerd", daemons)

    assert result.bytes_sent > sum(layer.size for layer in layers)
    assert "bookworm" in containerd_os_release(containerd_daemon, "gone", reference)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_pull_interrupted_importing_names_pipe(sig, registry_plain, tmp_path):
    """A pull stopped while streaming the archive to standard output reports it."""
    reference = f"{registry_plain.host}/samples/base:v1"
    store = str(tmp_path / "store")
    apparate("pull", "-q", "--store", store, "--into", "oci", reference)

    process = subprocess.Popen(
        [APPARATE, "pull", "--store", store, "--into", "docker-archive:/dev/stdout",
         reference],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    # The first bytes of the archive show that the import has begun. The
    # pipe, no longer read, then fills and blocks apparate in its write.
    first = process.stdout.read(512)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)

    assert len(first) == 512
    assert process.returncode == 128 + sig
    assert stderr.decode().splitlines()[-1] == (
        "error: interrupted; the image is kept in the local store, and "
        "/dev/stdout may have received part of the archive"
    )


def test_docker_not_running_keeps_image(registry_plain, tmp_path):
    reference = f"{registry_plain.host}/samples/base:v1"
    store = str(tmp_path / "store")

    failed = apparate("pull", "--json", "--store", store, "--into", "docker",
                      reference, env={"DOCKER_HOST": f"unix://{tmp_path}/none.sock"},
                      check=False)  # fmt: skip

    assert failed.returncode == IMPORT_FAILED
    assert failed.stderr.startswith(
        f"error: {reference}: docker is not reachable: its socket "
    )
    assert "kept in the local store" in failed.stderr
    listed = json.loads(apparate("images", "--json", "--store", store).stdout)
    assert [row["reference"] for row in listed] == [reference]
    # The summary still reaches a script: the image is stored.
    summary = json.loads(failed.stdout)
    assert summary["digest"] == listed[0]["digest"]
    assert summary["imported_into"] is None


def test_docker_disk_full_keeps_image(registry_plain, containerd_daemon, tmp_path):
    if dockerd_binary() is None:
        pytest.skip("dockerd is not installed (Debian package docker.io)")
    reference = f"{registry_plain.host}/samples/base:v1"
    store = str(tmp_path / "store")
    apparate("pull", "-q", "--store", store, "--into", "oci", reference)

    with short_folder() as folder, small_tmpfs(folder / "dk", "24m"):
        daemon = start_dockerd(folder / "dk", containerd=containerd_daemon.address)
        try:
            failed = apparate("import", "--store", store, "--into", "docker",
                              reference, env=docker_env(daemon), check=False)  # fmt: skip
        finally:
            daemon.stop()

    assert failed.returncode == IMPORT_FAILED, failed.stderr
    assert "no space left on device" in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1
    assert f"apparate import --store {store} {reference} --into docker" in failed.stderr


def test_archive_disk_full_leaves_no_file(registry_plain, tmp_path):
    reference = f"{registry_plain.host}/samples/base:v1"
    store = str(tmp_path / "store")
    apparate("pull", "-q", "--store", store, "--into", "oci", reference)

    with small_tmpfs(tmp_path / "small", "4m") as small:
        failed = apparate("import", "--store", store, "--into",
                          f"docker-archive:{small}/image.tar", reference,
                          check=False)  # fmt: skip
        left = list(small.iterdir())

    assert failed.returncode == IMPORT_FAILED
    assert "the disk is full" in failed.stderr
    assert (
        f"apparate import --store {store} {reference} --into docker-archive:FILE"
        in (failed.stderr)
    )
    assert left == []


def test_containerd_disk_full_keeps_image(registry_plain, tmp_path):
    if shutil.which("containerd") is None:
        pytest.skip("containerd is not installed (Debian package containerd)")
    reference = f"{registry_plain.host}/samples/base:v1"
    store = str(tmp_path / "store")
    apparate("pull", "-q", "--store", store, "--into", "oci", reference)

    with short_folder() as folder, small_tmpfs(folder / "ctd", "12m"):
        daemon = start_containerd(folder / "ctd")
        try:
            failed = apparate("import", "--store", store, "--into", "containerd",
                              reference, env=containerd_env(daemon, "full"),
                              check=False)  # fmt: skip
        finally:
            daemon.stop()

    assert failed.returncode == IMPORT_FAILED, failed.stderr
    assert "no space left on device" in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1
    assert f"apparate import --store {store} {reference} --into containerd" in (
        failed.stderr
    )
