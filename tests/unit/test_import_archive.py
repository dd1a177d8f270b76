"""Archive builders, layer sizes and the choice of import target."""

from __future__ import annotations

import fcntl
import gzip
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
from pathlib import Path

import pytest
import zstandard
from typer.testing import CliRunner

from apparate.catalog import list_images
from apparate.cli.main import app
from apparate.cli.text import import_line
from apparate.digest import Digest
from apparate.errors import NotFound, StoreError, UsageError
from apparate.importers import files
from apparate.importers.archive import (
    archive_size,
    docker_members,
    oci_index,
    oci_members,
    stream_tar,
)
from apparate.importers.daemon_layers import shared_bottom
from apparate.importers.image import find_stored, load_content, retry_command
from apparate.importers.run import import_stored
from apparate.importers.sizes import LayerSizes
from apparate.importers.target import (
    Daemons,
    ImportTarget,
    detected_target,
    docker_socket,
    parse_target,
    requested_target,
)
from apparate.manifest import OCI_INDEX, OCI_MANIFEST, Descriptor
from apparate.result import ImportResult
from apparate.store import layout
from apparate.store.layout import Store
from apparate.store.usage import last_used

GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
ZSTD_LAYER = "application/vnd.oci.image.layer.v1.tar+zstd"
PLAIN_LAYER = "application/vnd.oci.image.layer.v1.tar"
REFERENCE = "registry.example/team/app:v1"


def tar_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def zstd_frames(data: bytes, pieces: int) -> bytes:
    """Compress ``data`` as several zstd frames, as a chunked layer is."""
    step = len(data) // pieces + 1
    compressor = zstandard.ZstdCompressor()
    return b"".join(
        compressor.compress(data[start : start + step])
        for start in range(0, len(data), step)
    )


def put(store: Store, data: bytes, media_type: str) -> Descriptor:
    descriptor = Descriptor(media_type, Digest.of(data), len(data))
    store.put_blob(data, descriptor.digest)
    return descriptor


def as_json(descriptor: Descriptor) -> dict[str, object]:
    return {
        "mediaType": descriptor.media_type,
        "digest": str(descriptor.digest),
        "size": descriptor.size,
    }


AMD64 = {"os": "linux", "architecture": "amd64"}


def make_store(
    root: Path,
    reference: str = REFERENCE,
    *,
    with_index: bool = False,
    platform: dict[str, str] = AMD64,
    entry_platform: dict[str, str] = AMD64,
) -> tuple[Store, dict[str, object]]:
    """Store a small image of a gzip, a zstd (several frames) and a plain layer.

    ``platform`` goes into its config, ``entry_platform`` into its index entry.
    """
    store = Store(root)
    tars = [
        tar_of({"etc/os-release": b"ID=test\n"}),
        tar_of({"usr/bin/tool": bytes(range(256)) * 300}),
        tar_of({"opt/app/data": b"app\n"}),
    ]
    blobs = [
        (gzip.compress(tars[0], mtime=0), GZIP_LAYER),
        (zstd_frames(tars[1], 4), ZSTD_LAYER),
        (tars[2], PLAIN_LAYER),
    ]
    layers = [put(store, blob, media_type) for blob, media_type in blobs]

    diff_ids = [str(Digest.of(tar)) for tar in tars]
    config_body = json.dumps(
        {**platform, "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    ).encode()
    config = put(store, config_body, "application/vnd.oci.image.config.v1+json")
    manifest_body = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": as_json(config),
         "layers": [as_json(layer) for layer in layers]}
    ).encode()  # fmt: skip
    manifest = put(store, manifest_body, OCI_MANIFEST)

    index = None
    if with_index:
        entry = {**as_json(manifest), "platform": entry_platform}
        other = {"mediaType": OCI_MANIFEST, "digest": str(Digest.of(b"arm64")),
                 "size": 5, "platform": {"os": "linux", "architecture": "arm64"}}  # fmt: skip
        index_body = json.dumps(
            {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry, other]}
        ).encode()
        index = put(store, index_body, OCI_INDEX)

    store.tag(reference, manifest, manifest.digest, index.digest if index else None)
    facts = {
        "tars": tars, "layers": layers, "diff_ids": diff_ids, "config": config,
        "config_body": config_body, "manifest": manifest, "index": index,
    }  # fmt: skip
    return store, facts


def read_tar(data: bytes) -> dict[str, bytes | None]:
    """Map each entry of a tar to its content (None for folders), in order."""
    entries: dict[str, bytes | None] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for info in tar:
            file = tar.extractfile(info) if info.isfile() else None
            entries[info.name] = file.read() if file else None
    return entries


def stored(store: Store, reference: str = REFERENCE):
    return load_content(store, find_stored(store, reference))


def test_docker_archive_has_manifest_config_and_uncompressed_layers(tmp_path):
    store, facts = make_store(tmp_path)
    sizes = LayerSizes(store)

    members = docker_members(store, stored(store), sizes)
    data = b"".join(stream_tar(members))

    entries = read_tar(data)
    config_hex = facts["config"].digest.hex
    layer_names = [f"{Digest.parse(d).hex}/layer.tar" for d in facts["diff_ids"]]
    manifest = json.loads(entries["manifest.json"])
    assert manifest == [
        {"Config": f"{config_hex}.json", "RepoTags": [REFERENCE], "Layers": layer_names}
    ]
    assert entries[f"{config_hex}.json"] == facts["config_body"]
    assert [entries[name] for name in layer_names] == facts["tars"]
    assert len(data) == archive_size(members)
    assert len(data) % 512 == 0


def test_docker_archive_of_digest_pull_has_no_tag(tmp_path):
    digest = "sha256:" + "ab" * 32
    store, _ = make_store(tmp_path, f"registry.example/team/app@{digest}")

    members = docker_members(
        store, stored(store, f"registry.example/team/app@{digest}"), LayerSizes(store)
    )

    manifest = json.loads(read_tar(b"".join(stream_tar(members)))["manifest.json"])
    assert manifest[0]["RepoTags"] == []


def test_oci_archive_names_registry_manifest(tmp_path):
    store, facts = make_store(tmp_path)

    entries = read_tar(
        b"".join(stream_tar(oci_members(store, stored(store), REFERENCE)))
    )

    assert json.loads(entries["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(entries["index.json"])
    assert index["manifests"] == [
        {
            **as_json(facts["manifest"]),
            "annotations": {
                "io.containerd.image.name": REFERENCE,
                "org.opencontainers.image.ref.name": "v1",
            },
        }
    ]
    blobs = {name for name in entries if name.startswith("blobs")}
    expected = [facts["manifest"], facts["config"], *facts["layers"]]
    names = {f"blobs/sha256/{d.digest.hex}" for d in expected}
    assert blobs == {"blobs", "blobs/sha256"} | names
    for descriptor in expected:
        data = entries[f"blobs/sha256/{descriptor.digest.hex}"]
        assert Digest.of(data) == descriptor.digest


def test_oci_archive_multi_platform_index(tmp_path):
    store, facts = make_store(tmp_path, with_index=True)
    content = stored(store)

    document = json.loads(oci_index(content, REFERENCE))
    entries = read_tar(b"".join(stream_tar(oci_members(store, content, REFERENCE))))

    assert document["manifests"][0]["digest"] == str(facts["index"].digest)
    assert document["manifests"][0]["mediaType"] == OCI_INDEX
    assert f"blobs/sha256/{facts['index'].digest.hex}" in entries
    assert f"blobs/sha256/{facts['manifest'].digest.hex}" in entries
    assert f"blobs/sha256/{Digest.of(b'arm64').hex}" not in entries


ARM = {"os": "linux", "architecture": "arm"}
ARM_V6 = {**ARM, "variant": "v6"}


def test_platform_of_index_entry(tmp_path):
    """ctr imports the index entry --platform names: the one pulled, v6 here.

    Its config names no variant, which reads as arm/v7.
    """
    store, _ = make_store(
        tmp_path, with_index=True, platform=ARM, entry_platform=ARM_V6
    )

    assert stored(store).platform == "linux/arm/v6"


def test_platform_of_single_manifest(tmp_path):
    store, _ = make_store(tmp_path, platform=ARM_V6)

    assert stored(store).platform == "linux/arm/v6"


def test_images_platform_of_index_entry(tmp_path):
    store, _ = make_store(
        tmp_path, with_index=True, platform=ARM, entry_platform=ARM_V6
    )
    store.close()

    (image,) = list_images(tmp_path)

    assert image.platform == "linux/arm/v6"


def test_oci_index_digest_pull_untagged(tmp_path):
    name = "registry.example/team/app@sha256:" + "cd" * 32
    store, _ = make_store(tmp_path, name)

    document = json.loads(oci_index(stored(store, name), name))

    assert document["manifests"][0]["annotations"] == {"io.containerd.image.name": name}


def test_sizes_are_counted_once_then_read_back(tmp_path):
    store, facts = make_store(tmp_path)
    sizes = LayerSizes(store)
    gzip_layer, zstd_layer, _ = facts["layers"]

    counted = [sizes.size_of(layer, "layer") for layer in facts["layers"]]
    store.blob_path(gzip_layer.digest).write_bytes(b"")  # a recount would fail now

    assert counted == [len(tar) for tar in facts["tars"]]
    assert sizes.size_of(gzip_layer, "layer") == len(facts["tars"][0])
    assert LayerSizes(store).size_of(zstd_layer, "layer") == len(facts["tars"][1])


def test_damaged_layer_stops_the_stream(tmp_path):
    store, facts = make_store(tmp_path)
    members = docker_members(store, stored(store), LayerSizes(store))
    gzip_layer = facts["layers"][0]
    store.blob_path(gzip_layer.digest).write_bytes(
        gzip.compress(facts["tars"][0][:1024], mtime=0)
    )

    with pytest.raises(StoreError, match="damaged"):
        b"".join(stream_tar(members))


def test_archive_file_is_written_atomically(tmp_path):
    store, facts = make_store(tmp_path / "store")
    target = tmp_path / "out" / "app.tar"
    target.parent.mkdir()

    result = import_stored(store, REFERENCE, f"oci-archive:{target}", Daemons())

    assert result.target == f"oci-archive:{target}"
    assert result.image_id == str(facts["manifest"].digest)
    assert result.bytes_sent == target.stat().st_size
    assert list(target.parent.iterdir()) == [target]


def test_docker_archive_by_digest_note(tmp_path):
    """An image pulled by tag and written by its digest gets no 'pulled' note."""
    store, facts = make_store(tmp_path / "store")
    reference = f"registry.example/team/app@{facts['manifest'].digest}"
    target = tmp_path / "app.tar"

    result = import_stored(store, reference, f"docker-archive:{target}", Daemons())

    assert result.name is None
    assert f"{reference} names it by digest" in result.note
    assert "pulled" not in result.note


def test_archive_through_symlink_keeps_link(tmp_path):
    store, _ = make_store(tmp_path / "store")
    target = tmp_path / "real.tar"
    target.write_bytes(b"older archive")
    link = tmp_path / "link.tar"
    link.symlink_to(target)

    result = import_stored(store, REFERENCE, f"docker-archive:{link}", Daemons())

    assert link.is_symlink()
    assert target.stat().st_size == result.bytes_sent


def test_archive_into_fifo_streams(tmp_path):
    store, _ = make_store(tmp_path / "store")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()

    result = import_stored(store, REFERENCE, f"oci-archive:{fifo}", Daemons())
    reader.join(10)

    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert len(received[0]) == result.bytes_sent
    with tarfile.open(fileobj=io.BytesIO(received[0])) as archive:
        assert "index.json" in archive.getnames()


def test_missing_layer_is_a_store_error(tmp_path):
    store, facts = make_store(tmp_path)
    store.blob_path(facts["layers"][1].digest).unlink()

    with pytest.raises(StoreError, match="missing from the store"):
        stored(store)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("docker", ImportTarget("docker")),
        ("containerd", ImportTarget("containerd")),
        ("oci", ImportTarget("oci")),
        ("auto", ImportTarget("auto")),
        (" docker ", ImportTarget("docker")),
        (
            "docker-archive:/tmp/a.tar",
            ImportTarget("docker-archive", Path("/tmp/a.tar")),
        ),
        ("oci-archive:/tmp/b:c.tar", ImportTarget("oci-archive", Path("/tmp/b:c.tar"))),
    ],
)
def test_parse_target(text, expected):
    assert parse_target(text) == expected


def test_parse_target_makes_archive_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    assert parse_target("oci-archive:x.tar").path == tmp_path / "x.tar"


@pytest.mark.parametrize(
    "text", ["podman", "docker:x", "oci:dir", "docker-archive:", "oci-archive", ""]
)
def test_parse_target_rejects(text):
    with pytest.raises(UsageError):
        parse_target(text)


@pytest.mark.parametrize(
    ("explicit", "env", "configured", "expected"),
    [
        (None, {}, None, "auto"),
        (None, {}, "containerd", "containerd"),
        (None, {"APPARATE_INTO": "oci"}, "containerd", "oci"),
        ("docker", {"APPARATE_INTO": "oci"}, "containerd", "docker"),
        (None, {"APPARATE_INTO": ""}, "oci", "oci"),
    ],
)
def test_requested_target_order(explicit, env, configured, expected):
    assert str(requested_target(explicit, env, configured)) == expected


@pytest.mark.parametrize(
    ("explicit", "env", "configured", "named"),
    [
        ("bogus", {}, None, "--into"),
        (None, {"APPARATE_INTO": "bogus"}, None, "APPARATE_INTO"),
        (None, {"APPARATE_INTO": "docker-archive:"}, None, "APPARATE_INTO"),
        (None, {}, "bogus", "into in config.toml"),
    ],
)
def test_requested_target_error_names_its_source(explicit, env, configured, named):
    with pytest.raises(UsageError, match=named):
        requested_target(explicit, env, configured)


@pytest.mark.parametrize(
    ("docker", "containerd", "expected"),
    [
        (True, True, "docker"),
        (True, False, "docker"),
        (False, True, "containerd"),
        (False, False, "oci"),
    ],
)
def test_detected_target(docker, containerd, expected):
    assert detected_target(docker, containerd).kind == expected


@pytest.mark.parametrize(
    ("host", "socket"),
    [
        ("unix:///var/run/docker.sock", "/var/run/docker.sock"),
        ("unix:///tmp/d.sock", "/tmp/d.sock"),
    ],
)
def test_docker_socket(host, socket):
    assert docker_socket(host) == socket


@pytest.mark.parametrize(
    "host", ["tcp://127.0.0.1:2375", "ssh://user@host", "/var/run/docker.sock",
             "unix://relative.sock"]
)  # fmt: skip
def test_docker_socket_rejects(host):
    with pytest.raises(UsageError, match="DOCKER_HOST"):
        docker_socket(host)


def test_daemons_from_environment():
    daemons = Daemons.from_environment(
        {"DOCKER_HOST": "unix:///d.sock", "CONTAINERD_ADDRESS": "/c.sock"}
    )

    assert daemons == Daemons("unix:///d.sock", "/c.sock", "default")
    assert daemons.with_options(None, "k8s.io").containerd_namespace == "k8s.io"
    assert daemons.with_options("/o.sock", None).containerd_address == "/o.sock"


DOCKER_LINE = (
    "imported into docker (detected by auto) as r/a:v1, ID sha256:c, "
    "2.0 MB sent in 1.2 s"
)
FILE_LINE = (
    "written to oci-archive:/t/a.tar as r/a:v1, ID sha256:m, 4.0 kB sent in 0.5 s"
)
FILE_RESULT = ImportResult(
    "oci-archive:/t/a.tar", "oci-archive:/t/a.tar", "r/a:v1", "sha256:m", 4_000, 0.5
)


@pytest.mark.parametrize(
    ("imported", "expected"),
    [
        (
            ImportResult("docker", "auto", "r/a:v1", "sha256:c", 2_000_000, 1.25),
            DOCKER_LINE,
        ),
        (
            ImportResult("docker", "docker", None, "sha256:c", note="pulled by digest"),
            "imported into docker without a name, ID sha256:c; pulled by digest",
        ),
        (
            ImportResult("oci", "auto", "r/a:v1", "sha256:m", note="kept in /s only"),
            "not imported, target oci (detected by auto): kept in /s only",
        ),
        (FILE_RESULT, FILE_LINE),
    ],
)
def test_import_line(imported, expected):
    assert import_line(imported) == expected


def test_sizes_with_damaged_database(tmp_path):
    store, facts = make_store(tmp_path)
    (store.root / "apparate.db").write_bytes(b"not a database")

    sizes = LayerSizes(store)

    assert sizes.size_of(facts["layers"][0], "layer") == len(facts["tars"][0])


def tag_first_by_other_tool(store: Store, name: str) -> None:
    """List the stored image first under ``name``, as skopeo tags an OCI layout."""
    index_path = store.root / "index.json"
    document = json.loads(index_path.read_text())
    foreign = {**document["manifests"][0]}
    foreign["annotations"] = {"org.opencontainers.image.ref.name": name}
    document["manifests"].insert(0, foreign)
    index_path.write_text(json.dumps(document))


def test_find_by_digest_skips_names_other_tools_wrote(tmp_path):
    store, facts = make_store(tmp_path / "store")
    tag_first_by_other_tool(store, "v1.2.3-rc1+build")
    manifest = facts["manifest"].digest

    image = find_stored(store, f"registry.example/team/app@{manifest}")

    assert image.source_manifest == manifest
    assert image.reference == f"registry.example/team/app@{manifest}"


def test_find_by_digest_prefix(tmp_path):
    store, facts = make_store(tmp_path / "store")
    manifest = facts["manifest"].digest

    image = find_stored(store, str(manifest)[:19])

    assert image.source_manifest == manifest
    assert image.reference == REFERENCE


def test_find_by_index_digest_prefix(tmp_path):
    """The index digest that ``apparate images`` shows names the image too."""
    store, facts = make_store(tmp_path / "store", with_index=True)

    image = find_stored(store, str(facts["index"].digest)[:19])

    assert image.source_manifest == facts["manifest"].digest
    assert image.reference == REFERENCE


@pytest.mark.parametrize("by_repository", [False, True])
def test_index_digest_two_platforms_rejected(tmp_path, by_repository):
    """Neither a prefix nor REPOSITORY@INDEX picks one platform of two stored."""
    store, facts = make_store(tmp_path / "store", with_index=True)
    other = Descriptor(OCI_MANIFEST, Digest.of(b"arm64 manifest"), 14)
    two_platforms = [
        *store.images(),
        layout.StoredImage(
            "registry.example/team/app:arm64",
            other,
            other.digest,
            facts["index"].digest,
        ),
    ]
    index = str(facts["index"].digest)
    named = f"registry.example/team/app@{index}" if by_repository else index[:19]
    store.images = lambda: two_platforms

    with pytest.raises(UsageError) as caught:
        find_stored(store, named)

    assert "names images of 2 platforms" in str(caught.value)
    assert "registry.example/team/app:arm64" in str(caught.value)
    assert "import one by its name or by its manifest digest" in str(caught.value)


def test_manifest_digest_archive_omits_index(tmp_path):
    """An archive of REPOSITORY@MANIFEST lists the manifest, as ``ctr images pull`` does."""
    store, facts = make_store(tmp_path / "store", with_index=True)
    by_manifest = f"registry.example/team/app@{facts['manifest'].digest}"
    by_index = f"registry.example/team/app@{facts['index'].digest}"

    manifest_top = json.loads(oci_index(stored(store, by_manifest), by_manifest))
    index_top = json.loads(oci_index(stored(store, by_index), by_index))

    assert manifest_top["manifests"][0]["digest"] == str(facts["manifest"].digest)
    assert manifest_top["manifests"][0]["mediaType"] == OCI_MANIFEST
    assert index_top["manifests"][0]["digest"] == str(facts["index"].digest)


def test_unknown_digest_prefix_not_found(tmp_path):
    store, _ = make_store(tmp_path / "store")

    with pytest.raises(NotFound) as caught:
        find_stored(store, "sha256:0000000000")

    assert "has a digest starting with sha256:0000000000" in str(caught.value)
    assert "docker.io" not in str(caught.value)


def test_unknown_bare_digest_not_found(tmp_path):
    store, _ = make_store(tmp_path / "store")

    with pytest.raises(NotFound) as caught:
        find_stored(store, "0123456789ab")

    assert "docker.io/library/0123456789ab:latest is not" in str(caught.value)
    assert "has a digest starting with sha256:0123456789ab" in str(caught.value)
    assert "apparate images" in caught.value.hint


@pytest.mark.parametrize("algorithm", [True, False], ids=["sha256", "bare"])
def test_cli_import_by_digest_prefix(tmp_path, algorithm):
    store, facts = make_store(tmp_path / "store")
    digest = facts["manifest"].digest
    # As 'apparate images' prints it, or bare as docker takes an image ID.
    prefix = str(digest)[:19] if algorithm else digest.hex[:12]
    archive = tmp_path / "image.tar"

    done = CliRunner().invoke(
        app, ["import", "--store", str(store.root), "--into",
              f"oci-archive:{archive}", prefix],
    )  # fmt: skip

    assert done.exit_code == 0, done.output
    assert done.output.startswith(f"{REFERENCE}: ")
    assert archive.is_file()
    assert set(last_used(store.root)) == {REFERENCE}


def test_find_by_digest_prefix_prefers_own_names(tmp_path):
    store, facts = make_store(tmp_path / "store")
    tag_first_by_other_tool(store, "mytag")

    image = find_stored(store, str(facts["manifest"].digest)[:19])

    assert image.reference == REFERENCE


def test_archive_removes_abandoned_temporaries(tmp_path):
    store, _ = make_store(tmp_path / "store")
    target = tmp_path / "out" / "app.tar"
    target.parent.mkdir()
    abandoned = target.parent / ".app.tar.apparate-killed"
    abandoned.write_bytes(b"half an archive")
    in_use = target.parent / ".app.tar.apparate-running"
    in_use.write_bytes(b"another import")
    unrelated = target.parent / ".app.tar.bak"
    unrelated.write_bytes(b"the user's")

    with open(in_use, "rb") as running:
        fcntl.flock(running, fcntl.LOCK_EX)
        import_stored(store, REFERENCE, f"oci-archive:{target}", Daemons())

    assert sorted(path.name for path in target.parent.iterdir()) == [
        ".app.tar.apparate-running", ".app.tar.bak", "app.tar",
    ]  # fmt: skip


def test_archive_into_own_descriptor_appends(tmp_path):
    store, _ = make_store(tmp_path / "store")
    log = tmp_path / "log.txt"
    log.write_bytes(b"earlier lines\n")

    with open(log, "ab") as output:
        result = import_stored(
            store, REFERENCE, f"oci-archive:/dev/fd/{output.fileno()}", Daemons()
        )

    data = log.read_bytes()
    assert data.startswith(b"earlier lines\n")
    assert len(data) == len(b"earlier lines\n") + result.bytes_sent
    assert sorted(path.name for path in tmp_path.iterdir()) == ["log.txt", "store"]


def test_cli_archive_to_stdout_keeps_it_whole(tmp_path):
    store, _ = make_store(tmp_path / "store")
    command = [sys.executable, "-m", "apparate.cli.main", "import", "--store",
               str(store.root), "--into", "docker-archive:/dev/stdout", REFERENCE]  # fmt: skip

    # An unlinked file, as a caller capturing the output might use.
    with tempfile.TemporaryFile(dir=tmp_path) as output:
        done = subprocess.run(
            command, check=False, stdout=output, stderr=subprocess.PIPE, text=True
        )
        output.seek(0)
        archive = output.read()

    assert done.returncode == 0, done.stderr
    assert "manifest.json" in read_tar(archive)
    assert done.stderr.startswith(f"{REFERENCE}: written to docker-archive:/dev/stdout")


def test_cli_archive_to_closed_pipe_fails(tmp_path):
    """A reader that exits, as a failing ``docker load`` does, fails the import with code 12."""
    store, _ = make_store(tmp_path / "store")
    command = [sys.executable, "-m", "apparate.cli.main", "import", "--store",
               str(store.root), "--into", "docker-archive:/dev/stdout", REFERENCE]  # fmt: skip
    reader, writer = os.pipe()
    os.close(reader)

    try:
        done = subprocess.run(
            command, check=False, stdout=writer, stderr=subprocess.PIPE, text=True
        )
    finally:
        os.close(writer)

    assert done.returncode == 12, done.stderr
    assert done.stderr.startswith("error: cannot write the archive")
    assert "kept in the local store" in done.stderr


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/dev/stdout", True),
        ("/dev/fd/1", True),
        ("/proc/self/fd/1", True),
        (f"/proc/{os.getpid()}/fd/1", True),
        ("/dev/stderr", False),
        ("/proc/1/fd/1", False),  # another process's
        ("/tmp", False),
    ],
)
def test_writes_to_stdout(path, expected):
    assert files.writes_to_stdout(Path(path)) is expected


def test_writes_to_stdout_through_link(tmp_path):
    link = tmp_path / "out"
    link.symlink_to("/dev/stdout")

    assert files.writes_to_stdout(link)


def test_archive_temporary_swept_before_lock(tmp_path, monkeypatch):
    store, _ = make_store(tmp_path / "store")
    target = tmp_path / "out" / "app.tar"
    target.parent.mkdir()
    create = tempfile.mkstemp
    swept = []

    def create_then_sweep(**options):
        handle, name = create(**options)
        if not swept:
            # Another import's sweep, between the creation and the lock.
            swept.append(name)
            os.unlink(name)
        return handle, name

    monkeypatch.setattr(layout.tempfile, "mkstemp", create_then_sweep)

    result = import_stored(store, REFERENCE, f"oci-archive:{target}", Daemons())

    assert swept
    assert target.stat().st_size == result.bytes_sent
    assert list(target.parent.iterdir()) == [target]


def test_retry_command_names_other_store(tmp_path, monkeypatch):
    store = Store(tmp_path / "my store")
    monkeypatch.setenv("APPARATE_STORE", str(tmp_path / "default"))

    command = retry_command(store, REFERENCE, "docker")

    assert command == (
        f"apparate import --store '{tmp_path}/my store' {REFERENCE} --into docker"
    )


def test_retry_command_of_default_store(tmp_path, monkeypatch):
    monkeypatch.setenv("APPARATE_STORE", str(tmp_path / "default"))
    store = Store(tmp_path / "default")

    assert retry_command(store, REFERENCE, "docker") == (
        f"apparate import {REFERENCE} --into docker"
    )


@pytest.mark.parametrize(
    ("ours", "theirs", "shared"),
    [
        ("abc", "abc", 3),
        ("abc", "abd", 2),
        ("abc", "ab", 2),
        ("ab", "abc", 2),
        ("abc", "bbc", 0),
        ("", "abc", 0),
    ],
)
def test_shared_bottom_layers(ours, theirs, shared):
    def digests(letters: str) -> list[Digest]:
        return [Digest.of(letter.encode()) for letter in letters]

    assert shared_bottom(digests(ours), digests(theirs)) == shared


def test_docker_archive_present_layers_empty(tmp_path):
    store, facts = make_store(tmp_path / "store")
    content = load_content(store, find_stored(store, REFERENCE))
    sizes = LayerSizes(store)

    members = docker_members(store, content, sizes, in_daemon=2)
    data = b"".join(stream_tar(members))

    entries = read_tar(data)
    layers = json.loads(entries["manifest.json"])[0]["Layers"]
    assert [len(entries[name]) for name in layers][:2] == [0, 0]
    assert entries[layers[2]] == facts["tars"][2]
    assert archive_size(members) == len(data)
