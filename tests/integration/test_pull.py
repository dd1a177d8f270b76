"""Pull the sample images from the real registry in every configuration."""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import apparate
from apparate.digest import Digest
from apparate.errors import AuthRejected, AuthRequired, PlatformNotFound
from apparate.platform import Platform
from apparate.pulling import PullOptions
from apparate.registry.credentials import Credentials
from apparate.store.chunk_index import INDEX_FILE, ChunkIndex
from tests.integration.push import Pusher, tar_of
from tests.testbed.registry import RegistryHandle, start_registry
from tests.testbed.samples import Samples

pytestmark = [
    pytest.mark.integration,
    pytest.mark.usefixtures("isolated_environment"),
]

KINDS = ["plain", "basic", "token", "redirect"]
APPARATE = str(Path(sys.executable).with_name("apparate"))


@pytest.fixture(params=KINDS)
def registry(request: pytest.FixtureRequest) -> RegistryHandle:
    return request.getfixturevalue(f"registry_{request.param}")


def options_for(registry: RegistryHandle, store: Path, **extra) -> PullOptions:
    os.environ["APPARATE_CERTS_D"] = str(registry.certs_dir)
    credentials = {}
    if registry.username:
        credentials[registry.host] = Credentials(registry.username, registry.password)
    return PullOptions(store=store, credentials=credentials, **extra)


def skopeo_inspect(store: Path, reference: str) -> dict:
    output = subprocess.run(
        ["skopeo", "inspect", f"oci:{store}:{reference}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(output)


def skopeo_raw(store: Path, reference: str) -> dict:
    output = subprocess.run(
        ["skopeo", "inspect", "--raw", f"oci:{store}:{reference}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(output)


def test_pull_every_registry_kind(registry, sample_images: Samples, tmp_path):
    store = tmp_path / "store"
    reference = f"{registry.host}/samples/base:v1"

    result = apparate.pull(reference, options_for(registry, store))

    sample = sample_images.images["base:v1"]
    assert str(result.digest) == sample.digest
    assert result.layers_fetched == 2
    assert result.bytes_fetched == sample.layer_bytes
    inspected = skopeo_inspect(store, reference)
    assert inspected["Digest"] == sample.digest
    assert inspected["Layers"] == [str(layer.digest) for layer in result.layers]
    assert list((store / "ingest").iterdir()) == []


def test_pull_packs_plain_layers(registry_plain, tmp_path):
    store = tmp_path / "store"

    result = apparate.pull(
        f"{registry_plain.host}/samples/base:v1", options_for(registry_plain, store)
    )

    with ChunkIndex(store / INDEX_FILE) as index:
        layer_blobs = [index.has_blob(layer.digest) for layer in result.layers]
    with contextlib.closing(sqlite3.connect(store / INDEX_FILE)) as database:
        query = "SELECT COUNT(DISTINCT blob) FROM chunks"
        packed = database.execute(query).fetchone()[0]
    assert layer_blobs == [False, False]
    assert packed == 2


def test_pull_keeps_tar_sizes_for_imports(registry_plain, tmp_path):
    store = tmp_path / "store"

    result = apparate.pull(
        f"{registry_plain.host}/samples/base:v1", options_for(registry_plain, store)
    )

    with contextlib.closing(sqlite3.connect(store / INDEX_FILE)) as database:
        recorded = dict(database.execute("SELECT blob, size FROM uncompressed_sizes"))
    for layer in result.layers:
        with open(store / "blobs" / "sha256" / layer.digest.hex, "rb") as blob:
            tar = gzip.decompress(blob.read())
        assert recorded[str(layer.digest)] == len(tar)


def test_pull_again_fetches_nothing(registry_plain, tmp_path):
    store = tmp_path / "store"
    reference = f"{registry_plain.host}/samples/base:v1"
    apparate.pull(reference, options_for(registry_plain, store))

    planned = apparate.pull(
        reference, dataclasses.replace(options_for(registry_plain, store), dry_run=True)
    )
    again = apparate.pull(reference, options_for(registry_plain, store))
    # Stored layers, under a tag new to the store.
    other_tag = apparate.pull(
        f"{registry_plain.host}/samples/base:v1-docker",
        options_for(registry_plain, store),
    )

    assert again.bytes_fetched == 0
    assert again.layers_fetched == 0
    assert again.up_to_date
    # An up-to-date pull needed nothing, so it reused and saved nothing.
    assert (again.bytes_reused, again.bytes_saved) == (0, 0)
    assert [layer.bytes_reused for layer in again.layers] == [0, 0]
    # The dry run before it reports the same.
    assert planned.up_to_date
    assert planned.bytes_reused == 0
    assert [layer.bytes_reused for layer in planned.layers] == [0, 0]
    assert other_tag.layers_fetched == 0
    assert not other_tag.up_to_date


def test_pull_next_version(registry_plain, sample_images: Samples, tmp_path):
    store = tmp_path / "store"
    options = options_for(registry_plain, store)
    apparate.pull(f"{registry_plain.host}/samples/base:v1", options)

    result = apparate.pull(f"{registry_plain.host}/samples/base:v2", options)

    assert str(result.digest) == sample_images.images["base:v2"].digest
    tags = {image.reference for image in apparate.list_images(store)}
    assert tags == {
        f"{registry_plain.host}/samples/base:v1",
        f"{registry_plain.host}/samples/base:v2",
    }


@pytest.mark.parametrize("platform", ["linux/amd64", "linux/arm64"])
def test_pull_platform_from_index(
    registry_plain, sample_images: Samples, tmp_path, platform
):
    store = tmp_path / "store"
    reference = f"{registry_plain.host}/samples/multi:v1"
    options = options_for(registry_plain, store, platform=Platform.parse(platform))

    result = apparate.pull(reference, options)

    assert result.platform == platform
    assert str(result.index_digest) == sample_images.images["multi:v1"].digest
    inspected = skopeo_inspect(store, reference)
    assert f"{inspected['Os']}/{inspected['Architecture']}" == platform
    index_blob = store / "blobs" / "sha256" / result.index_digest.hex
    assert index_blob.exists()


def test_pull_unknown_platform_lists_offers(registry_plain, tmp_path):
    store = tmp_path / "store"
    options = options_for(registry_plain, store, platform=Platform.parse("linux/s390x"))

    with pytest.raises(PlatformNotFound) as caught:
        apparate.pull(f"{registry_plain.host}/samples/multi:v1", options)

    assert "linux/amd64, linux/arm64" in str(caught.value)
    assert apparate.list_images(store) == []


@pytest.mark.parametrize(
    "tag, media_type",
    [
        ("v1-zstd", "application/vnd.oci.image.layer.v1.tar+zstd"),
        ("v1-docker", "application/vnd.docker.image.rootfs.diff.tar.gzip"),
    ],
)
def test_pull_layer_formats(registry_plain, sample_images, tmp_path, tag, media_type):
    store = tmp_path / "store"
    reference = f"{registry_plain.host}/samples/base:{tag}"

    result = apparate.pull(reference, options_for(registry_plain, store))

    assert {layer.media_type for layer in result.layers} == {media_type}
    assert str(result.digest) == sample_images.images[f"base:{tag}"].digest
    inspected = skopeo_inspect(store, reference)
    assert inspected["Layers"] == [str(layer.digest) for layer in result.layers]
    # The registry's own manifest is kept even where an OCI copy is tagged.
    assert (store / "blobs" / "sha256" / result.digest.hex).exists()


def test_pull_by_digest(registry_plain, sample_images: Samples, tmp_path):
    store = tmp_path / "store"
    digest = sample_images.images["base:v2"].digest
    reference = f"{registry_plain.host}/samples/base:v1@{digest}"

    result = apparate.pull(reference, options_for(registry_plain, store))

    assert str(result.digest) == digest
    assert skopeo_raw(store, reference)["layers"][0]["digest"] == str(
        result.layers[0].digest
    )


def test_pull_without_credentials_is_refused(registry_basic, tmp_path):
    options = options_for(registry_basic, tmp_path / "store")
    options.credentials = {}

    with pytest.raises(AuthRequired) as caught:
        apparate.pull(f"{registry_basic.host}/samples/base:v1", options)

    assert registry_basic.host in str(caught.value)


@pytest.mark.parametrize("kind", ["basic", "token"])
def test_pull_with_wrong_password_is_refused(request, tmp_path, kind):
    registry = request.getfixturevalue(f"registry_{kind}")
    options = options_for(registry, tmp_path / "store")
    options.credentials = {registry.host: Credentials(registry.username, "wrong")}

    with pytest.raises(AuthRejected):
        apparate.pull(f"{registry.host}/samples/base:v1", options)

    assert apparate.list_images(tmp_path / "store") == []


@pytest.mark.parametrize("field", ["token", "access_token"])
def test_token_response_fields(registry_token, token_server, tmp_path, field):
    token_server.token_field = field
    token_server.expires_in = None

    result = apparate.pull(
        f"{registry_token.host}/samples/base:v1",
        options_for(registry_token, tmp_path / "store"),
    )

    assert result.layers_fetched == 2
    assert token_server.requests


def test_credentials_from_docker_config(registry_token, tmp_path):
    docker_config = Path(os.environ["DOCKER_CONFIG"])
    docker_config.mkdir(parents=True)
    auth = f"{registry_token.username}:{registry_token.password}"
    entry = {"auth": __import__("base64").b64encode(auth.encode()).decode()}
    (docker_config / "config.json").write_text(
        json.dumps({"auths": {f"https://{registry_token.host}": entry}})
    )
    options = options_for(registry_token, tmp_path / "store")
    options.credentials = {}

    result = apparate.pull(f"{registry_token.host}/samples/base:v1", options)

    assert result.layers_fetched == 2


def run_cli(*args: str, store: Path, stdin: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "APPARATE_STORE": str(store)}
    return subprocess.run(
        [APPARATE, *args],
        capture_output=True,
        text=True,
        input=stdin,
        env=env,
        timeout=300,
        check=False,
    )


def test_cli_json_summary(registry_basic, tmp_path):
    os.environ["APPARATE_CERTS_D"] = str(registry_basic.certs_dir)
    reference = f"{registry_basic.host}/samples/base:v1"

    done = run_cli(
        "pull", "--json", "-u", registry_basic.username, "--password-stdin",
        reference, store=tmp_path / "store", stdin=registry_basic.password + "\n",
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["reference"] == reference
    assert summary["bytes_fetched"] == sum(layer["size"] for layer in summary["layers"])
    assert all(layer["fetched"] for layer in summary["layers"])
    assert summary["import"]["reference"] == reference


def test_cli_images_lists_pulled(registry_plain, tmp_path):
    store = tmp_path / "store"
    reference = f"{registry_plain.host}/samples/base:v1"
    assert run_cli("pull", "-q", reference, store=store).returncode == 0

    listed = run_cli("images", "--json", store=store)

    rows = json.loads(listed.stdout)
    assert [row["reference"] for row in rows] == [reference]
    assert rows[0]["size"] > 25_000_000


# Each row: arguments after the registry host is known, expected exit code,
# and words the one-line error must contain.
FAILURES = {
    "invalid reference": (["pull", "{host}/Samples/Base:v1"], 2, ["lowercase"]),
    "unknown tag": (["pull", "{host}/samples/base:nope"], 4, ["not found"]),
    "unknown repository": (["pull", "{host}/samples/none:v1"], 4, ["not found"]),
    "unknown digest": (
        ["pull", "{host}/samples/base@sha256:" + "0" * 64],
        4,
        ["not found"],
    ),
    "unknown platform": (
        ["pull", "--platform", "linux/riscv64", "{host}/samples/multi:v1"],
        5,
        ["linux/amd64", "linux/arm64"],
    ),
    "platform of a single-platform image": (
        ["pull", "--platform", "linux/arm64", "{host}/samples/base:v1"],
        5,
        ["linux/amd64 only, not linux/arm64", "--platform linux/amd64"],
    ),
    "invalid platform": (
        ["pull", "--platform", "linux", "{host}/samples/base:v1"],
        2,
        ["OS/ARCH"],
    ),
    "nothing listening": (
        ["pull", "127.0.0.1:9/samples/base:v1"],
        6,
        ["cannot connect"],
    ),
}


@pytest.mark.parametrize("args, code, words", FAILURES.values(), ids=FAILURES)
def test_cli_failure_is_one_line(registry_plain, tmp_path, args, code, words):
    store = tmp_path / "store"
    argv = [arg.format(host=registry_plain.host) for arg in args]

    done = run_cli(*argv, store=store)

    assert done.returncode == code, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    for word in words:
        assert word in lines[0]
    assert not (store / "index.json").exists() or apparate.list_images(store) == []


def test_cli_wrong_password_exit_code(registry_basic, tmp_path):
    done = run_cli(
        "pull", "-u", registry_basic.username, "--password-stdin",
        f"{registry_basic.host}/samples/base:v1",
        store=tmp_path / "store", stdin="wrong\n",
    )  # fmt: skip

    assert done.returncode == 3
    assert done.stderr.startswith("error: ")
    assert "wrong" not in done.stderr


@pytest.fixture
def registry_tls(tmp_path, sample_images: Samples) -> Iterator[RegistryHandle]:
    """A registry over https with a certificate of the test bed's own CA."""
    handle = start_registry("tls", tmp_path / "registry", samples=sample_images)
    try:
        yield handle
    finally:
        handle.stop()


def test_cli_untrusted_certificate_reported(registry_tls, tmp_path):
    # The registry responds to plain HTTP with 400, which must not hide the
    # certificate error.
    done = run_cli(
        "pull", f"{registry_tls.host}/samples/base:v1", store=tmp_path / "store"
    )

    assert done.returncode == 6, done.stderr
    assert f"TLS with {registry_tls.host} failed" in done.stderr
    # The folder APPARATE_CERTS_D names, as the test environment sets it.
    assert f"no-certs/{registry_tls.host}/ca.crt" in done.stderr
    assert "HTTP 400" not in done.stderr


def test_pull_trusted_certificate(registry_tls, tmp_path):
    options = options_for(registry_tls, tmp_path / "store")

    image = f"{registry_tls.host}/samples/base:v1"
    result = apparate.pull(image, options)

    stored = {summary.reference for summary in apparate.list_images(options.store)}
    assert stored == {image}
    assert result.bytes_fetched > 0


def digest_of_sample_layer(sample_images: Samples, tag: str) -> Digest:
    manifest = json.loads(
        subprocess.run(
            ["skopeo", "inspect", "--raw", sample_images.oci_reference(tag)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    return Digest.parse(manifest["layers"][0]["digest"])


def test_layer_listed_twice_counts_once(fresh_registry, tmp_path):
    tar = tar_of({"etc/hello": os.urandom(4096)})
    blob = gzip.compress(tar)
    Pusher(fresh_registry.host).image("twice/app", "v1", [(tar, blob), (tar, blob)])

    result = apparate.pull(
        f"{fresh_registry.host}/twice/app:v1", PullOptions(store=tmp_path / "store")
    )

    assert result.bytes_fetched == len(blob)
    assert result.layer_bytes == len(blob)
    assert result.bytes_reused == 0
    assert result.bytes_saved == 0
    assert [layer.fetched for layer in result.layers] == [True, True]
    assert [layer.bytes_fetched for layer in result.layers] == [len(blob), 0]
