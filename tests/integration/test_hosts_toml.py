"""Pulls that reach the registry itself as the top level of hosts.toml sets.

The image reference names ``registry.invalid:5000``, a name that never
resolves, and ``server`` points at a real registry on 127.0.0.1 that holds
the converted sample. A pull succeeds only if it went through ``server``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import apparate
from apparate.errors import AuthError, RegistryUnreachable
from apparate.pulling import PullOptions
from apparate.registry.credentials import Credentials
from tests.testbed.registry import RegistryHandle, start_registry

pytestmark = [
    pytest.mark.integration,
    pytest.mark.usefixtures("isolated_environment"),
]

UNREACHABLE = "registry.invalid:5000"
IMAGE = f"{UNREACHABLE}/converted/base:v2"


def write_hosts(tmp_path: Path, registry: str, text: str) -> Path:
    """Write the hosts.toml apparate reads for ``registry`` and return its folder."""
    folder = tmp_path / "no-hosts" / f"{registry.replace(':', '_')}_"
    folder.mkdir(parents=True)
    (folder / "hosts.toml").write_text(text)
    return folder


def stored_digest(store: Path, image: str) -> str:
    inspected = subprocess.run(
        ["skopeo", "inspect", f"oci:{store}:{image}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return json.loads(inspected)["Digest"]


@pytest.fixture
def https_registry(
    converted, fresh_registry, tmp_path, request
) -> Iterator[RegistryHandle]:
    """A copy of the converted sample's registry over https, of the given kind."""
    handle = start_registry(
        request.param, tmp_path / "https", storage_from=fresh_registry.storage_dir
    )
    try:
        yield handle
    finally:
        handle.stop()


def test_server_over_plain_http(converted, fresh_registry, tmp_path):
    write_hosts(tmp_path, UNREACHABLE, f'server = "http://{fresh_registry.host}"\n')
    store = tmp_path / "store"

    result = apparate.pull(IMAGE, PullOptions(store=store))

    assert set(result.bytes_by_source) == {f"http://{fresh_registry.host}"}
    assert result.warnings == []
    # The image keeps the name the reference gives it.
    assert stored_digest(store, IMAGE) == str(result.digest)


@pytest.mark.parametrize("https_registry", ["tls"], indirect=True)
def test_server_over_https_with_top_level_ca(https_registry, tmp_path):
    folder = write_hosts(
        tmp_path, UNREACHABLE,
        f'server = "{https_registry.url}"\nca = "registry-ca.crt"\n'
        'dial_timeout = "3s"\n[header]\nX-Apparate-Test = "1"\n',
    )  # fmt: skip
    shutil.copy(https_registry.ca_file, folder / "registry-ca.crt")
    store = tmp_path / "store"

    result = apparate.pull(IMAGE, PullOptions(store=store))

    assert set(result.bytes_by_source) == {https_registry.url}
    assert stored_digest(store, IMAGE) == str(result.digest)


@pytest.mark.parametrize("https_registry", ["mtls"], indirect=True)
def test_server_requiring_top_level_client_cert(https_registry, tmp_path):
    pair = https_registry.client_cert
    folder = write_hosts(
        tmp_path, UNREACHABLE,
        f'server = "{https_registry.url}"\nca = "registry-ca.crt"\n'
        f'client = [["client.crt", "{pair.key_path}"]]\n',
    )  # fmt: skip
    shutil.copy(https_registry.ca_file, folder / "registry-ca.crt")
    shutil.copy(pair.cert_path, folder / "client.crt")
    store = tmp_path / "store"

    result = apparate.pull(IMAGE, PullOptions(store=store))

    assert set(result.bytes_by_source) == {https_registry.url}
    assert stored_digest(store, IMAGE) == str(result.digest)


@pytest.mark.parametrize("https_registry", ["tls"], indirect=True)
def test_server_with_untrusted_certificate_fails(https_registry, tmp_path):
    write_hosts(tmp_path, UNREACHABLE, f'server = "{https_registry.url}"\n')

    with pytest.raises(RegistryUnreachable, match=f"TLS with {https_registry.host}"):
        apparate.pull(IMAGE, PullOptions(store=tmp_path / "store"))


@pytest.mark.parametrize("https_registry", ["tls"], indirect=True)
@pytest.mark.parametrize("trust", ['ca = "registry-ca.crt"', "skip_verify = true"])
def test_top_level_tls_applies_without_server(https_registry, tmp_path, trust):
    folder = write_hosts(tmp_path, https_registry.host, f"{trust}\n")
    shutil.copy(https_registry.ca_file, folder / "registry-ca.crt")
    image = f"{https_registry.host}/converted/base:v2"
    store = tmp_path / "store"

    result = apparate.pull(image, PullOptions(store=store))

    assert stored_digest(store, image) == str(result.digest)
    assert sum(result.bytes_by_source.values()) > 0


def test_explicit_credentials_reach_the_server(registry_basic, tmp_path):
    write_hosts(tmp_path, UNREACHABLE, f'server = "http://{registry_basic.host}"\n')
    image = f"{UNREACHABLE}/samples/base:v1"
    login = Credentials(registry_basic.username, registry_basic.password, None)
    store = tmp_path / "store"

    result = apparate.pull(
        image, PullOptions(store=store, credentials={UNREACHABLE: login})
    )

    assert set(result.bytes_by_source) == {f"http://{registry_basic.host}"}
    assert stored_digest(store, image) == str(result.digest)


def test_server_without_credentials_is_refused(registry_basic, tmp_path):
    write_hosts(tmp_path, UNREACHABLE, f'server = "http://{registry_basic.host}"\n')

    with pytest.raises(AuthError):
        apparate.pull(
            f"{UNREACHABLE}/samples/base:v1", PullOptions(store=tmp_path / "store")
        )
