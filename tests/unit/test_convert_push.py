"""How convert pushes its result: mounts, uploads, the kept index, pull targets."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import respx

from apparate.convert import (
    ConvertOptions,
    LayerConversion,
    _ConvertedImage,
    _push,
    _Session,
    _SourceImage,
    _top_document,
)
from apparate.digest import Digest
from apparate.errors import UsageError
from apparate.manifest import OCI_INDEX, OCI_MANIFEST, Descriptor, parse_manifest
from apparate.reference import Reference

HOST = "registry.example"
CONFIG = b'{"architecture":"amd64","os":"linux"}'
KEPT_LAYER = b"a layer already chunked in the source"
NEW_LAYER = b"a layer converted just now"
ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
ATTESTATION_TYPE = {"vnd.docker.reference.type": "attestation-manifest"}


def descriptor(data: bytes, media_type: str = ZSTD) -> Descriptor:
    return Descriptor(media_type, Digest.of(data), len(data))


def manifest_body(layers: list[bytes]) -> bytes:
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": str(Digest.of(CONFIG)), "size": len(CONFIG)},
        "layers": [{"mediaType": ZSTD, "digest": str(Digest.of(layer)),
                    "size": len(layer)} for layer in layers],
    }  # fmt: skip
    return json.dumps(document).encode()


def converted_image(body: bytes, platform: dict | None = None) -> _ConvertedImage:
    config = descriptor(CONFIG, "application/vnd.oci.image.config.v1+json")
    blobs = [config, descriptor(KEPT_LAYER), descriptor(NEW_LAYER)]
    manifest = Descriptor(OCI_MANIFEST, Digest.of(body), len(body))
    kept = Digest.of(KEPT_LAYER)
    new = Digest.of(NEW_LAYER)
    layers = [
        LayerConversion(kept, kept, len(KEPT_LAYER), len(KEPT_LAYER), 1, 0, True),
        LayerConversion(Digest.of(b"gzip"), new, 4, len(NEW_LAYER), 1, 0, False),
    ]
    return _ConvertedImage(manifest, body, blobs, layers, platform)


def source_image(body: bytes, platform: dict | None = None) -> _SourceImage:
    parsed = parse_manifest(json.loads(body), "manifest")
    manifest = Descriptor(OCI_MANIFEST, Digest.of(body), len(body))
    return _SourceImage(manifest, body, parsed, [], platform)


@pytest.fixture
def session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Session]:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("APPARATE_CERTS_D", str(tmp_path / "no-certs"))
    monkeypatch.delenv("APPARATE_INTO", raising=False)
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    converting = _Session(ConvertOptions(store=tmp_path / "store"))
    for data in (CONFIG, KEPT_LAYER, NEW_LAYER):
        converting.store.put_blob(data, Digest.of(data))
    try:
        yield converting
    finally:
        converting.index.close()


class FakeRegistry:
    """An empty repository that rejects mounts of all blobs but ``mountable``."""

    def __init__(self, mock: respx.MockRouter, mountable: set[Digest]) -> None:
        self.mountable = mountable
        self.mounts: list[tuple[str, str]] = []
        self.uploads: list[str] = []
        self.deletes = 0
        mock.head(url__startswith=f"https://{HOST}/v2/").respond(404)
        mock.post(url__regex=rf"https://{HOST}/v2/.*/blobs/uploads/").mock(
            side_effect=self.start
        )
        mock.put(url__regex=rf"https://{HOST}/v2/.*/blobs/uploads/").mock(
            side_effect=self.finish
        )
        # A token for pull and push cannot delete an upload session.
        mock.delete(url__startswith=f"https://{HOST}/v2/").mock(
            side_effect=self.abandon
        )
        mock.put(url__regex=rf"https://{HOST}/v2/.*/manifests/").respond(201)

    def start(self, request: httpx.Request) -> httpx.Response:
        digest = request.url.params.get("mount")
        if digest is not None:
            self.mounts.append((digest, request.url.params["from"]))
            if Digest.parse(digest) in self.mountable:
                return httpx.Response(201)
        return httpx.Response(202, headers={"Location": "session"})

    def abandon(self, request: httpx.Request) -> httpx.Response:
        self.deletes += 1
        challenge = 'Bearer realm="https://auth.example/t",error="insufficient_scope"'
        return httpx.Response(401, headers={"WWW-Authenticate": challenge})

    def finish(self, request: httpx.Request) -> httpx.Response:
        self.uploads.append(request.url.params["digest"])
        return httpx.Response(201)


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        yield router


def push_one(session: _Session, source: str, destination: str) -> tuple[int, int]:
    body = manifest_body([KEPT_LAYER, NEW_LAYER])
    _, pushed, mounted = _push(
        Reference.parse(source), Reference.parse(destination),
        (body, OCI_MANIFEST), [], [converted_image(body)], session,
    )  # fmt: skip
    return pushed, mounted


def test_push_mounts_only_source_blobs(mock, session):
    registry = FakeRegistry(mock, mountable={Digest.of(CONFIG)})

    pushed, mounted = push_one(session, f"{HOST}/team/base:v1", f"{HOST}/team/app:v1")

    assert registry.mounts == [
        (str(Digest.of(CONFIG)), "team/base"),
        (str(Digest.of(KEPT_LAYER)), "team/base"),
    ]
    assert mounted == 1
    assert registry.uploads == [str(Digest.of(KEPT_LAYER)), str(Digest.of(NEW_LAYER))]
    assert pushed == len(KEPT_LAYER) + len(NEW_LAYER)
    assert registry.deletes == 0


def test_push_never_mounts_within_one_repository(mock, session):
    registry = FakeRegistry(mock, mountable={Digest.of(CONFIG)})

    pushed, mounted = push_one(session, f"{HOST}/team/app:v1", f"{HOST}/team/app:v2")

    assert registry.mounts == []
    assert mounted == 0
    assert len(registry.uploads) == 3
    assert pushed == len(CONFIG) + len(KEPT_LAYER) + len(NEW_LAYER)


def test_push_never_mounts_across_registries(mock, session):
    registry = FakeRegistry(mock, mountable={Digest.of(CONFIG)})

    push_one(session, "other.example/team/app:v1", f"{HOST}/team/app:v1")

    assert registry.mounts == []


def index_with_attestation(image: bytes) -> tuple[bytes, Digest]:
    attestation = Digest.of(b"attestation manifest")
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": str(Digest.of(image)),
             "size": len(image), "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": OCI_MANIFEST, "digest": str(attestation), "size": 20,
             "platform": {"os": "unknown", "architecture": "unknown"},
             "annotations": ATTESTATION_TYPE},
        ],
    }  # fmt: skip
    return json.dumps(document).encode(), attestation


def test_top_document_keeps_complete_index():
    image = manifest_body([KEPT_LAYER])
    index, attestation = index_with_attestation(image)
    platform = {"os": "linux", "architecture": "amd64"}
    requested: list[Digest] = []

    def at_destination(digest: Digest) -> bool:
        requested.append(digest)
        return True

    body, media_type = _top_document(
        (index, OCI_INDEX), [source_image(image, platform)],
        [converted_image(image, platform)], at_destination,
    )  # fmt: skip

    assert body == index
    assert media_type == OCI_INDEX
    assert requested == [attestation]


def test_top_document_rebuilds_incomplete_index():
    image = manifest_body([KEPT_LAYER])
    index, attestation = index_with_attestation(image)
    platform = {"os": "linux", "architecture": "amd64"}

    body, media_type = _top_document(
        (index, OCI_INDEX), [source_image(image, platform)],
        [converted_image(image, platform)], lambda digest: False,
    )  # fmt: skip

    entries = json.loads(body)["manifests"]
    assert media_type == OCI_INDEX
    assert [entry["digest"] for entry in entries] == [str(Digest.of(image))]
    assert entries[0]["platform"] == platform
    assert str(attestation) not in body.decode()


def test_rebuilt_index_keeps_annotations(caplog):
    image = manifest_body([KEPT_LAYER])
    index, _ = index_with_attestation(image)
    document = json.loads(index)
    document["annotations"] = {"org.opencontainers.image.revision": "abc123"}
    entry_annotations = {"org.opencontainers.image.ref.name": "v1"}
    platform = {"os": "linux", "architecture": "amd64"}
    source = source_image(image, platform)
    source.manifest.annotations.update(entry_annotations)

    body, _ = _top_document(
        (json.dumps(document).encode(), OCI_INDEX), [source],
        [converted_image(image, platform)], lambda digest: False,
    )  # fmt: skip

    rebuilt = json.loads(body)
    assert rebuilt["annotations"] == document["annotations"]
    assert rebuilt["manifests"][0]["annotations"] == entry_annotations
    assert "leaves out 1 of the source's entries" in caplog.text


def test_source_pulls_stay_in_store(session):
    # Without a target, pull would import into docker or containerd when
    # their sockets accept connections.
    assert session.pull_options().into == "oci"


def test_invalid_settings_leave_no_store(tmp_path):
    options = ConvertOptions(store=tmp_path / "store", insecure_registries=("ftp://x",))

    with pytest.raises(UsageError, match="ftp://x"):
        _Session(options)

    assert not (tmp_path / "store").exists()
