"""Smoke tests of the test bed itself, read through skopeo and plain HTTP.

They check that each registry kind serves the samples with the expected
auth, TLS, redirects and media types, so a failing apparate test can be
blamed on apparate rather than on the bed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.testbed.certs import client_context
from tests.testbed.ocibuild import (
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_LAYER_ZSTD,
)
from tests.testbed.registry import MANIFEST_ACCEPT, ZSTD_MAGIC, RegistryHandle
from tests.testbed.samples import Samples
from tests.testbed.tokenserver import REGISTRY_LEEWAY, TokenServer

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


def skopeo(
    handle: RegistryHandle, *args: str, side: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run skopeo with the TLS and credential options `handle` needs.

    `side` is "dest-" when `handle` is the destination of `skopeo copy`.
    """
    argv = ["skopeo", *args]
    if handle.tls:
        argv.append(f"--{side}cert-dir={handle.certs_dir / handle.host}")
    else:
        argv.append(f"--{side}tls-verify=false")
    if handle.username:
        argv.append(f"--{side}creds={handle.username}:{handle.password}")
    else:
        argv.append(f"--{side}no-creds")
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=120, check=False
    )


def inspect(handle: RegistryHandle, reference: str, *, raw: bool = False) -> Any:
    """Return `skopeo inspect` output for `samples/<reference>` as JSON."""
    args = [
        "inspect",
        *(["--raw"] if raw else []),
        f"docker://{handle.host}/{reference}",
    ]
    result = skopeo(handle, *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("kind", ["plain", "basic", "token", "redirect"])
def test_registry_serves_base_v1(
    kind: str, request: pytest.FixtureRequest, sample_images: Samples
) -> None:
    handle: RegistryHandle = request.getfixturevalue(f"registry_{kind}")
    info = inspect(handle, "samples/base:v1")
    assert info["Digest"] == sample_images.images["base:v1"].digest
    assert info["Architecture"] == "amd64"
    assert len(info["Layers"]) == 2


def test_every_sample_tag_is_served(
    registry_plain: RegistryHandle, sample_images: Samples
) -> None:
    with httpx.Client(base_url=registry_plain.url) as client:
        for image in sample_images.images.values():
            name, _, tag = image.reference.partition(":")
            response = client.head(
                f"/v2/{name}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT}
            )
            assert response.status_code == 200, image.reference
            assert response.headers["Docker-Content-Digest"] == image.digest


def test_basic_registry_rejects_anonymous(registry_basic: RegistryHandle) -> None:
    response = httpx.get(f"{registry_basic.url}/v2/")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic ")


def test_token_registry_challenge_names_token_server(
    registry_token: RegistryHandle, token_server: TokenServer
) -> None:
    assert registry_token.ca_file is not None
    context = client_context(registry_token.ca_file)
    response = httpx.get(f"{registry_token.url}/v2/", verify=context)
    assert response.status_code == 401
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ")
    assert f'realm="{token_server.realm}"' in challenge
    assert (registry_token.certs_dir / registry_token.host / "ca.crt").is_file()
    assert (registry_token.certs_dir / token_server.host / "ca.crt").is_file()
    assert token_server.host != registry_token.host


def test_token_server_grants_requested_scope(
    registry_token: RegistryHandle, token_server: TokenServer
) -> None:
    inspect(registry_token, "samples/base:v1")
    scopes = [scope for r in token_server.requests if r.granted for scope in r.scopes]
    assert "repository:samples/base:pull" in scopes


def test_token_server_access_token_field(
    registry_token: RegistryHandle, token_server: TokenServer
) -> None:
    token_server.token_field = "access_token"
    token_server.expires_in = None
    body = _fetch_token(registry_token, token_server, "repository:samples/base:pull")
    assert "token" not in body
    assert "expires_in" not in body
    assert _get_manifest(registry_token, body["access_token"]).status_code == 200


def test_token_server_rejects_wrong_password(
    registry_token: RegistryHandle, token_server: TokenServer
) -> None:
    assert registry_token.ca_file is not None
    response = httpx.get(
        token_server.realm,
        params={"service": token_server.service},
        auth=(token_server.username, "wrong"),
        verify=client_context(registry_token.ca_file),
    )
    assert response.status_code == 401


def test_registry_rejects_expired_token(
    registry_token: RegistryHandle, token_server: TokenServer
) -> None:
    scope = "repository:samples/base:pull"
    token_server.lifetime = -(REGISTRY_LEEWAY + 60)
    expired = _fetch_token(registry_token, token_server, scope)["token"]
    assert _get_manifest(registry_token, expired).status_code == 401
    token_server.reset()
    valid = _fetch_token(registry_token, token_server, scope)["token"]
    assert _get_manifest(registry_token, valid).status_code == 200


def _fetch_token(
    handle: RegistryHandle, server: TokenServer, scope: str
) -> dict[str, Any]:
    assert handle.ca_file is not None
    response = httpx.get(
        server.realm,
        params={"service": server.service, "scope": scope},
        auth=(server.username, server.password),
        verify=client_context(handle.ca_file),
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _get_manifest(handle: RegistryHandle, token: str) -> httpx.Response:
    assert handle.ca_file is not None
    return httpx.get(
        f"{handle.url}/v2/samples/base/manifests/v1",
        headers={"Authorization": f"Bearer {token}", "Accept": MANIFEST_ACCEPT},
        verify=client_context(handle.ca_file),
    )


def test_redirect_registry_sends_blobs_to_nginx(
    registry_redirect: RegistryHandle, sample_images: Samples
) -> None:
    manifest = inspect(registry_redirect, "samples/base:v1", raw=True)
    digest = manifest["layers"][0]["digest"]
    blob_url = f"{registry_redirect.url}/v2/samples/base/blobs/{digest}"
    with httpx.Client() as client:
        for method in ("GET", "HEAD"):
            response = client.request(method, blob_url)
            assert response.status_code == 307, method
        location = response.headers["Location"]
        assert registry_redirect.redirect_target is not None
        assert location.startswith(registry_redirect.redirect_target + "/")
        ranged = client.get(location, headers={"Range": "bytes=0-9"})
    assert ranged.status_code == 206
    assert ranged.headers["Content-Range"].startswith("bytes 0-9/")
    blob = sample_images.layout / "blobs" / "sha256" / digest.split(":")[1]
    assert ranged.content == blob.read_bytes()[:10]


def test_zstd_sample_has_zstd_layers(registry_plain: RegistryHandle) -> None:
    manifest = inspect(registry_plain, "samples/base:v1-zstd", raw=True)
    media_types = {layer["mediaType"] for layer in manifest["layers"]}
    assert media_types == {OCI_LAYER_ZSTD}
    digest = manifest["layers"][0]["digest"]
    response = httpx.get(
        f"{registry_plain.url}/v2/samples/base/blobs/{digest}",
        headers={"Range": "bytes=0-3"},
    )
    assert response.content[:4] == ZSTD_MAGIC


def test_zstd_sample_keeps_v1_diff_ids(registry_plain: RegistryHandle) -> None:
    gzip_config = inspect(registry_plain, "samples/base:v1", raw=False)
    zstd_config = inspect(registry_plain, "samples/base:v1-zstd", raw=False)
    assert zstd_config["Layers"] != gzip_config["Layers"]
    v1_raw = inspect(registry_plain, "samples/base:v1", raw=True)
    zstd_raw = inspect(registry_plain, "samples/base:v1-zstd", raw=True)
    assert zstd_raw["config"]["digest"] == v1_raw["config"]["digest"]


def test_multi_sample_has_two_platforms(registry_plain: RegistryHandle) -> None:
    index = inspect(registry_plain, "samples/multi:v1", raw=True)
    assert index["mediaType"] == OCI_INDEX
    platforms = {
        (m["platform"]["os"], m["platform"]["architecture"]) for m in index["manifests"]
    }
    assert platforms == {("linux", "amd64"), ("linux", "arm64")}


def test_multi_sample_arm64_content(registry_plain: RegistryHandle) -> None:
    result = skopeo(
        registry_plain,
        "--override-arch=arm64",
        "inspect",
        f"docker://{registry_plain.host}/samples/multi:v1",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["Architecture"] == "arm64"


def test_docker_sample_has_schema2_manifest(registry_plain: RegistryHandle) -> None:
    manifest = inspect(registry_plain, "samples/base:v1-docker", raw=True)
    assert manifest["mediaType"] == DOCKER_MANIFEST
    media_types = {layer["mediaType"] for layer in manifest["layers"]}
    assert media_types == {DOCKER_LAYER_GZIP}


def test_v2_shares_no_blob_with_v1(registry_plain: RegistryHandle) -> None:
    v1 = inspect(registry_plain, "samples/base:v1", raw=True)
    v2 = inspect(registry_plain, "samples/base:v2", raw=True)
    v1_digests = {layer["digest"] for layer in v1["layers"]}
    v2_digests = {layer["digest"] for layer in v2["layers"]}
    assert not v1_digests & v2_digests


def test_fresh_registry_is_empty_and_takes_pushes(
    fresh_registry: RegistryHandle, sample_images: Samples
) -> None:
    catalog = httpx.get(f"{fresh_registry.url}/v2/_catalog").json()
    assert catalog["repositories"] == []
    destination = f"docker://{fresh_registry.host}/pushed/base:v1"
    result = skopeo(
        fresh_registry,
        "copy",
        "--quiet",
        "--preserve-digests",
        sample_images.oci_reference("base:v1"),
        destination,
        side="dest-",
    )
    assert result.returncode == 0, result.stderr
    info = inspect(fresh_registry, "pushed/base:v1")
    assert info["Digest"] == sample_images.images["base:v1"].digest


def test_serve_prints_host_and_stops_on_sigterm(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.testbed.serve", "--kind", "plain"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    try:
        assert process.stdout is not None
        host = process.stdout.readline().strip()
        assert host.startswith("127.0.0.1:")
        response = httpx.get(f"http://{host}/v2/samples/base/tags/list")
        assert sorted(response.json()["tags"]) == ["v1", "v1-docker", "v1-zstd", "v2"]
    finally:
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=30)
        assert process.stdout is not None
        process.stdout.close()
    assert returncode == 0
