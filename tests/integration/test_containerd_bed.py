"""Smoke tests of the containerd in the test bed, driven through `ctr`.

They check that the daemon pulls the samples from the plain registry with
their registry digests, unpacks gzip and zstd layers into the native
snapshotter, and runs a container. A failing importer test can then be blamed
on apparate rather than on the bed. Each test uses its own namespace, because
images and snapshots are per namespace and the daemon is shared.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from typing import Any

import pytest

from tests.testbed.containerd import ContainerdHandle, ctr
from tests.testbed.registry import RegistryHandle
from tests.testbed.samples import Samples

pytestmark = pytest.mark.integration


def pull(
    containerd: ContainerdHandle,
    registry: RegistryHandle,
    reference: str,
    namespace: str,
) -> str:
    """Pull `reference` from the plain registry and return the image name."""
    name = f"{registry.host}/{reference}"
    result = ctr(
        containerd,
        "images", "pull", "--plain-http",
        "--snapshotter", containerd.snapshotter,
        name,
        namespace=namespace,
    )  # fmt: skip
    assert result.returncode == 0, (
        f"ctr images pull {name} failed:\n{result.stderr}\n"
        f"containerd log:\n{containerd.log_tail()}"
    )
    return name


def listed_digests(containerd: ContainerdHandle, namespace: str) -> dict[str, str]:
    """Return `ctr images ls` as a map of image name to digest."""
    result = ctr(containerd, "images", "ls", namespace=namespace)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split()[:3] == ["REF", "TYPE", "DIGEST"], header
    digests = {}
    for row in rows:
        name, _media_type, digest, *_rest = row.split()
        digests[name] = digest
    return digests


def snapshot_keys(containerd: ContainerdHandle, namespace: str) -> list[str]:
    result = ctr(
        containerd,
        "snapshots", "--snapshotter", containerd.snapshotter, "ls",
        namespace=namespace,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [row.split()[0] for row in result.stdout.splitlines()[1:]]


def read_layout_json(samples: Samples, digest: str) -> Any:
    blob = samples.layout / "blobs" / "sha256" / digest.split(":", 1)[1]
    return json.loads(blob.read_bytes())


def top_chain_id(samples: Samples, tag: str) -> str:
    """Compute the OCI ChainID of a sample's layers from its config's diff_ids.

    containerd names each committed snapshot by the ChainID of the layers
    below and including it, so the top one exists once the image is unpacked.
    """
    manifest = read_layout_json(samples, samples.images[tag].digest)
    config = read_layout_json(samples, manifest["config"]["digest"])
    diff_ids = config["rootfs"]["diff_ids"]
    chain_id = diff_ids[0]
    for diff_id in diff_ids[1:]:
        chained = f"{chain_id} {diff_id}".encode()
        chain_id = "sha256:" + hashlib.sha256(chained).hexdigest()
    return chain_id


@pytest.mark.parametrize("tag", ["base:v1", "base:v1-zstd"])
def test_pull_lists_registry_digest(
    containerd: ContainerdHandle,
    registry_plain: RegistryHandle,
    sample_images: Samples,
    tag: str,
) -> None:
    # A namespace per tag: the two tags share diff_ids, so in one namespace
    # the second pull would find its snapshots and never decompress a layer.
    namespace = "bed-pull-" + tag.replace(":", "-")
    image = sample_images.images[tag]
    name = pull(containerd, registry_plain, image.reference, namespace)

    digests = listed_digests(containerd, namespace)
    assert name in digests, f"{name} missing from ctr images ls: {digests}"
    assert digests[name] == image.digest

    keys = snapshot_keys(containerd, namespace)
    assert top_chain_id(sample_images, tag) in keys, (
        f"{tag} was not unpacked into the {containerd.snapshotter} snapshotter; "
        f"snapshots: {keys}"
    )


def test_run_prints_os_release(
    containerd: ContainerdHandle,
    registry_plain: RegistryHandle,
    sample_images: Samples,
) -> None:
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed (Debian package runc); ctr run needs it")
    namespace = "bed-run"
    name = pull(
        containerd, registry_plain, sample_images.images["base:v1"].reference, namespace
    )
    container_id = "bed-run-" + uuid.uuid4().hex[:8]

    result = ctr(
        containerd,
        "run", "--rm", *containerd.run_options(),
        name, container_id, "cat", "/etc/os-release",
        namespace=namespace,
        timeout=120,
    )  # fmt: skip

    assert result.returncode == 0, (
        f"ctr run failed:\n{result.stderr}\ncontainerd log:\n{containerd.log_tail()}"
    )
    assert "VERSION_CODENAME=bookworm" in result.stdout
