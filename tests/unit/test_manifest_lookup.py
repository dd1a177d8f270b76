"""A tag's manifest: HEAD first only when the store already contains that tag."""

import json

import httpx
import pytest
import respx

from apparate.digest import Digest
from apparate.errors import InvalidResponse, PlatformNotFound
from apparate.image import fetch_manifest, resolve_image
from apparate.manifest import OCI_INDEX, OCI_MANIFEST, Descriptor, Manifest
from apparate.platform import Platform
from apparate.reference import Reference
from apparate.registry.client import RegistryClient
from apparate.registry.credentials import CredentialStore
from apparate.registry.transport import TransportSettings
from apparate.store.layout import Store
from tests.unit.test_client import HOST, MANIFEST, MANIFEST_DIGEST, MANIFEST_URL

FOUND = httpx.Response(200, headers={"Docker-Content-Digest": str(MANIFEST_DIGEST)})


@pytest.fixture
def client(tmp_path):
    credentials = CredentialStore.from_environment({}, env={"HOME": str(tmp_path)})
    settings = TransportSettings(certs_dirs=())
    reference = Reference.parse(f"{HOST}/team/app:v1")
    with RegistryClient(reference, settings, credentials) as opened:
        yield opened


def answer_manifest() -> httpx.Response:
    return httpx.Response(200, content=MANIFEST, headers={"Content-Type": OCI_MANIFEST})


@respx.mock
def test_new_tag_is_fetched_without_head(client, tmp_path):
    head = respx.head(MANIFEST_URL).mock(return_value=FOUND)
    get = respx.get(MANIFEST_URL).mock(return_value=answer_manifest())

    fetched = fetch_manifest(client, Store(tmp_path), "v1", None, tag_stored=False)

    assert fetched.digest == MANIFEST_DIGEST
    assert (head.call_count, get.call_count) == (0, 1)


@respx.mock
def test_stored_tag_unchanged_costs_one_head(client, tmp_path):
    store = Store(tmp_path)
    store.put_blob(MANIFEST, MANIFEST_DIGEST)
    head = respx.head(MANIFEST_URL).mock(return_value=FOUND)
    get = respx.get(MANIFEST_URL).mock(return_value=answer_manifest())

    fetched = fetch_manifest(client, store, "v1", None, tag_stored=True)

    assert fetched.body == MANIFEST
    assert (head.call_count, get.call_count) == (1, 0)


def test_store_knows_its_tagged_references(tmp_path):
    store = Store(tmp_path)
    store.put_blob(MANIFEST, MANIFEST_DIGEST)
    descriptor = Descriptor(OCI_MANIFEST, MANIFEST_DIGEST, len(MANIFEST))

    store.tag("registry.example/team/app:v1", descriptor)

    assert store.has_reference("registry.example/team/app:v1")
    assert not store.has_reference("registry.example/team/app:v2")
    assert not store.has_reference(str(Digest.of(b"other")))


CONFIG = json.dumps(
    {"os": "linux", "architecture": "amd64", "rootfs": {"diff_ids": []}}
).encode()
IMAGE_MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": str(Digest.of(CONFIG)),
            "size": len(CONFIG),
        },
        "layers": [],
    }
).encode()


@respx.mock
def test_resolve_new_tag_skips_head(client, tmp_path):
    head = respx.head(MANIFEST_URL).mock(return_value=FOUND)
    respx.get(MANIFEST_URL).mock(
        return_value=httpx.Response(
            200, content=IMAGE_MANIFEST, headers={"Content-Type": OCI_MANIFEST}
        )
    )
    seen: list[Manifest] = []

    def serve_config(request: httpx.Request) -> httpx.Response:
        # The manifest is handed on before the config is requested.
        assert len(seen) == 1
        return httpx.Response(200, content=CONFIG)

    respx.get(f"https://{HOST}/v2/team/app/blobs/{Digest.of(CONFIG)}").mock(
        side_effect=serve_config
    )

    image = resolve_image(
        client, Store(tmp_path), client.reference, Platform.parse("linux/amd64"),
        on_manifest=seen.append,
    )  # fmt: skip

    assert image.manifest.digest == Digest.of(IMAGE_MANIFEST)
    assert seen == [image.parsed]
    assert head.call_count == 0


def index_of(body: bytes, media_type: str = OCI_MANIFEST, size: int = -1) -> bytes:
    entry = {
        "mediaType": media_type,
        "digest": str(Digest.of(body)),
        "size": len(body) if size < 0 else size,
        "platform": {"os": "linux", "architecture": "amd64"},
    }
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                       "manifests": [entry]}).encode()  # fmt: skip


def serve(index: bytes, manifest: bytes, media_type: str = OCI_MANIFEST) -> None:
    """Serve ``index`` for the tag and ``manifest`` by its digest, and CONFIG."""
    respx.get(MANIFEST_URL).mock(
        return_value=httpx.Response(
            200, content=index, headers={"Content-Type": OCI_INDEX}
        )
    )
    respx.get(f"https://{HOST}/v2/team/app/manifests/{Digest.of(manifest)}").mock(
        return_value=httpx.Response(
            200, content=manifest, headers={"Content-Type": media_type}
        )
    )
    respx.get(f"https://{HOST}/v2/team/app/blobs/{Digest.of(CONFIG)}").mock(
        return_value=httpx.Response(200, content=CONFIG)
    )


def resolve(client, tmp_path):
    return resolve_image(
        client, Store(tmp_path), client.reference, Platform.parse("linux/amd64")
    )


@respx.mock
def test_resolve_index_entry_with_wrong_size(client, tmp_path):
    serve(index_of(IMAGE_MANIFEST, size=5), IMAGE_MANIFEST)

    with pytest.raises(InvalidResponse) as caught:
        resolve(client, tmp_path)

    message = str(caught.value)
    assert f"is {len(IMAGE_MANIFEST)} bytes" in message
    assert "index lists it with 5" in message
    assert "registry.example/team/app:v1" in message


@respx.mock
def test_resolve_index_entry_that_is_an_index(client, tmp_path):
    # The entry does not say it is an index, but its own media type does.
    inner = index_of(IMAGE_MANIFEST)
    serve(index_of(inner, media_type=""), inner, media_type=OCI_INDEX)

    with pytest.raises(InvalidResponse) as caught:
        resolve(client, tmp_path)

    message = str(caught.value)
    assert "nested indexes are not supported" in message
    assert "registry.example/team/app:v1" in message


@respx.mock
def test_resolve_rejects_unsupported_layer_type(client, tmp_path):
    layer = {"mediaType": "application/x-foo", "digest": str(Digest.of(b"x")),
             "size": 1}  # fmt: skip
    document = json.loads(IMAGE_MANIFEST)
    document["layers"] = [layer]
    manifest = json.dumps(document).encode()
    serve(index_of(manifest), manifest)

    with pytest.raises(InvalidResponse) as caught:
        resolve(client, tmp_path)

    message = str(caught.value)
    assert "registry.example/team/app:v1" in message
    assert "'application/x-foo'" in message
    assert "not supported" in message
    assert caught.value.exit_code == 8


@respx.mock
def test_single_platform_mismatch_names_the_platform(client, tmp_path):
    respx.get(MANIFEST_URL).mock(
        return_value=httpx.Response(
            200, content=IMAGE_MANIFEST, headers={"Content-Type": OCI_MANIFEST}
        )
    )
    respx.get(f"https://{HOST}/v2/team/app/blobs/{Digest.of(CONFIG)}").mock(
        return_value=httpx.Response(200, content=CONFIG)
    )

    with pytest.raises(PlatformNotFound) as caught:
        resolve_image(
            client, Store(tmp_path), client.reference,
            Platform.parse("linux/arm64"), explicit_platform=True,
        )  # fmt: skip

    assert "for linux/amd64 only" in str(caught.value)
    assert caught.value.hint == "pull it with --platform linux/amd64"
