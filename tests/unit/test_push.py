"""The registry writer's mounts, uploads and checks against servers played by respx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import respx

from apparate.digest import Digest
from apparate.errors import AuthRejected, InvalidResponse
from apparate.manifest import Descriptor
from apparate.reference import Reference
from apparate.registry.credentials import CredentialStore
from apparate.registry.push import RegistryWriter
from apparate.registry.transport import TransportSettings

HOST = "registry.example"
UPLOADS = f"https://{HOST}/v2/team/app/blobs/uploads/"
BLOB = b"converted layer bytes"
DESCRIPTOR = Descriptor("application/octet-stream", Digest.of(BLOB), len(BLOB))


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        yield router


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[RegistryWriter]:
    credentials = CredentialStore.from_environment({}, env={"HOME": str(tmp_path)})
    settings = TransportSettings(certs_dirs=())
    reference = Reference.parse(f"{HOST}/team/app:v1")
    with RegistryWriter(reference, settings, credentials, ("team/base",)) as client:
        yield client


@pytest.fixture
def blob_file(tmp_path: Path) -> Path:
    path = tmp_path / "blob"
    path.write_bytes(BLOB)
    return path


def upload_session(location: str) -> httpx.Response:
    return httpx.Response(202, headers={"Location": location})


def test_mount_blob_returns_none_when_mounted(mock, writer):
    mount = mock.post(url__startswith=UPLOADS).respond(201)

    assert writer.mount_blob(DESCRIPTOR, "team/base") is None
    assert mount.calls[0].request.url.params["mount"] == str(DESCRIPTOR.digest)
    assert mount.calls[0].request.url.params["from"] == "team/base"


@pytest.mark.parametrize(
    "location, expected",
    [
        ("uploads/u1?_state=a", f"{UPLOADS}uploads/u1?_state=a"),
        ("/v2/team/app/blobs/uploads/u1", f"{UPLOADS}u1"),
        ("https://storage.example/u1", "https://storage.example/u1"),
    ],
    ids=["relative", "absolute path", "other host"],
)
def test_mount_refused_returns_resolved_session(mock, writer, location, expected):
    mock.post(url__startswith=UPLOADS).mock(return_value=upload_session(location))

    assert writer.mount_blob(DESCRIPTOR, "team/base") == expected


def test_upload_uses_session_of_refused_mount(mock, writer, blob_file):
    # A DELETE of the session needs the delete action, which a token for
    # pull and push lacks, so the upload must not need it.
    mock.post(url__startswith=UPLOADS).mock(return_value=upload_session("u1"))
    delete = mock.delete(url__startswith=UPLOADS).respond(401)
    put = mock.put(url__startswith=f"{UPLOADS}u1").respond(201)

    location = writer.mount_blob(DESCRIPTOR, "team/base")
    writer.upload_blob(DESCRIPTOR, blob_file, location)

    assert not delete.called
    assert put.call_count == 1
    assert put.calls[0].request.url.params["digest"] == str(DESCRIPTOR.digest)
    assert put.calls[0].request.content == BLOB


def test_upload_resolves_relative_location(mock, writer, blob_file):
    mock.post(UPLOADS).mock(return_value=upload_session("u2?_state=b"))
    put = mock.put(url__startswith=f"{UPLOADS}u2").respond(201)

    writer.upload_blob(DESCRIPTOR, blob_file)

    assert put.calls[0].request.url.params["_state"] == "b"
    assert put.calls[0].request.url.params["digest"] == str(DESCRIPTOR.digest)


BAD_LOCATIONS = [
    ("http://[::1", "invalid upload location 'http://[::1'"),
    ("ftp://storage.example/u1", "unsupported scheme ftp:"),
    (None, "sent no upload location"),
]


@pytest.mark.parametrize("location, words", BAD_LOCATIONS)
def test_mount_rejects_bad_location(mock, writer, location, words):
    headers = {"Location": location} if location else {}
    mock.post(url__startswith=UPLOADS).respond(202, headers=headers)

    with pytest.raises(InvalidResponse) as caught:
        writer.mount_blob(DESCRIPTOR, "team/base")

    assert words in str(caught.value)
    assert f"registry {HOST}" in str(caught.value)
    assert caught.value.exit_code == 8


@pytest.mark.parametrize("location, words", BAD_LOCATIONS)
def test_upload_rejects_bad_location(mock, writer, blob_file, location, words):
    headers = {"Location": location} if location else {}
    mock.post(UPLOADS).respond(202, headers=headers)

    with pytest.raises(InvalidResponse) as caught:
        writer.upload_blob(DESCRIPTOR, blob_file)

    assert words in str(caught.value)
    assert f"registry {HOST}" in str(caught.value)


def test_bad_location_message_hides_query(mock, writer):
    location = "http://[::1/u1?X-Amz-Signature=secret"
    mock.post(url__startswith=UPLOADS).respond(202, headers={"Location": location})

    with pytest.raises(InvalidResponse) as caught:
        writer.mount_blob(DESCRIPTOR, "team/base")

    assert "secret" not in str(caught.value)


@pytest.mark.parametrize("status, exists", [(200, True), (404, False)])
def test_manifest_exists(mock, writer, status, exists):
    digest = Digest.of(b"attestation manifest")
    head = mock.head(f"https://{HOST}/v2/team/app/manifests/{digest}")
    head.respond(status)

    found = writer.manifest_exists(digest)

    assert found is exists
    accepted = head.calls[0].request.headers["Accept"]
    assert "application/vnd.oci.image.manifest.v1+json" in accepted


def test_push_access_check_starts_session(mock, writer):
    start = mock.post(UPLOADS).mock(return_value=upload_session("u3"))

    writer.check_push_access()

    assert start.call_count == 1


def test_push_access_check_raises_denial(mock, writer):
    mock.post(UPLOADS).respond(403, json={"errors": [{"code": "DENIED"}]})

    with pytest.raises(AuthRejected) as caught:
        writer.check_push_access()

    assert f"push to {HOST}/team/app:v1: access denied" in str(caught.value)
