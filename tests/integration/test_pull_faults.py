"""Pulls that must fail cleanly, or recover, against the real registry."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

import apparate
from apparate.errors import DiffIDMismatch, DigestMismatch, InvalidResponse
from apparate.manifest import OCI_INDEX, OCI_MANIFEST
from apparate.pulling import PullOptions
from apparate.reference import Reference
from apparate.registry.client import RegistryClient
from apparate.registry.credentials import Credentials, CredentialStore
from apparate.registry.transport import TransportSettings
from tests.integration.push import Pusher, gzip_members, sha256, tar_of
from tests.integration.throttle import throttled
from tests.testbed.registry import RegistryHandle, blob_path

pytestmark = [
    pytest.mark.integration,
    pytest.mark.usefixtures("isolated_environment"),
]

APPARATE = str(Path(sys.executable).with_name("apparate"))


def assert_store_clean(store: Path) -> None:
    """No tag, no partial blob, and every stored blob matches its name."""
    assert apparate.list_images(store) == []
    assert list((store / "ingest").iterdir()) == []
    for blob in (store / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name


def layer_digests(store_or_registry: RegistryHandle, tag: str) -> list[str]:
    manifest = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false",
         f"docker://{store_or_registry.host}/samples/base:{tag}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [layer["digest"] for layer in json.loads(manifest)["layers"]]


def test_corrupt_blob_fails_and_stores_nothing(private_registry, tmp_path):
    store = tmp_path / "store"
    first_layer = layer_digests(private_registry, "v1")[0]
    data = blob_path(private_registry.storage_dir, first_layer)
    damaged = bytearray(data.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    data.write_bytes(bytes(damaged))

    with pytest.raises(DigestMismatch) as caught:
        apparate.pull(
            f"{private_registry.host}/samples/base:v1", PullOptions(store=store)
        )

    message = str(caught.value)
    assert first_layer in message
    assert private_registry.host in message
    assert_store_clean(store)


def test_wrong_diff_id_fails_before_tagging(fresh_registry, tmp_path):
    store = tmp_path / "store"
    tar = tar_of({"etc/hello": b"hello\n"})
    pusher = Pusher(fresh_registry.host)
    pusher.image("lying/app", "v1", [(tar, gzip_members(tar, 1))], [sha256(b"other")])

    with pytest.raises(DiffIDMismatch):
        apparate.pull(f"{fresh_registry.host}/lying/app:v1", PullOptions(store=store))

    assert_store_clean(store)


def test_gzip_members_layer_pulls(fresh_registry, tmp_path):
    store = tmp_path / "store"
    files = {f"data/file{n}": os.urandom(50_000) for n in range(20)}
    tar = tar_of(files)
    pusher = Pusher(fresh_registry.host)
    digest = pusher.image("members/app", "v1", [(tar, gzip_members(tar, 7))])
    reference = f"{fresh_registry.host}/members/app:v1"

    result = apparate.pull(reference, PullOptions(store=store))

    assert str(result.digest) == digest
    subprocess.run(["skopeo", "inspect", f"oci:{store}:{reference}"], check=True,
                   capture_output=True)  # fmt: skip


AMD64 = {"os": "linux", "architecture": "amd64"}


def push_broken(pusher: Pusher, case: str) -> None:
    """Push a good image as ``broken/app:good`` and a broken one as ``:bad``."""
    tar = tar_of({"etc/hello": b"hello\n"})
    digest = pusher.image("broken/app", "good", [(tar, gzip.compress(tar))])
    manifest_url = f"http://{pusher.host}/v2/broken/app/manifests/good"
    good = httpx.get(manifest_url, headers={"Accept": OCI_MANIFEST}).content
    manifest = json.loads(good)
    entry = {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(good),
             "platform": AMD64}  # fmt: skip
    if case == "layer larger than its blob":
        manifest["layers"][0]["size"] = 10**15
    elif case == "unsupported layer type":
        manifest["layers"][0]["mediaType"] = "application/x-foo"
    elif case == "config without rootfs":
        config = pusher.blob("broken/app", json.dumps(AMD64).encode())
        manifest["config"] = {"mediaType": "application/vnd.oci.image.config.v1+json",
                              **config}  # fmt: skip
        manifest["layers"] = []
    elif case == "index entry of wrong size":
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX,
                 "manifests": [{**entry, "size": 5}]}  # fmt: skip
        pusher.manifest("broken/app", "bad", json.dumps(index).encode(), OCI_INDEX)
        return
    elif case == "nested index":
        inner = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]}
        body = json.dumps(inner).encode()
        inner_digest = pusher.manifest("broken/app", "inner", body, OCI_INDEX)
        outer = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_INDEX, "digest": inner_digest, "size": len(body),
             "platform": AMD64},
        ]}  # fmt: skip
        pusher.manifest("broken/app", "bad", json.dumps(outer).encode(), OCI_INDEX)
        return
    pusher.manifest("broken/app", "bad", json.dumps(manifest).encode())


BROKEN_IMAGES = {
    "layer larger than its blob": (DigestMismatch, "of size 1000000000000000"),
    "unsupported layer type": (
        InvalidResponse,
        "'application/x-foo', which is not supported",
    ),
    "config without rootfs": (InvalidResponse, "has no rootfs.diff_ids"),
    "index entry of wrong size": (InvalidResponse, "but the index lists it with 5"),
    "nested index": (InvalidResponse, "nested indexes are not supported"),
}


@pytest.mark.parametrize(
    "case, error, words",
    [(case, *expected) for case, expected in BROKEN_IMAGES.items()],
    ids=BROKEN_IMAGES,
)
def test_broken_image_fails_at_once(fresh_registry, tmp_path, case, error, words):
    push_broken(Pusher(fresh_registry.host), case)
    image = f"{fresh_registry.host}/broken/app:bad"
    store = tmp_path / "store"
    started = time.monotonic()

    with pytest.raises(error) as caught:
        apparate.pull(image, PullOptions(store=store))

    message = str(caught.value)
    assert words in message
    assert image in message or fresh_registry.host in message
    # No retry pauses: a broken image is not a dropped connection.
    assert time.monotonic() - started < 5
    assert_store_clean(store)


class _MisbehavingHandler(http.server.BaseHTTPRequestHandler):
    """A server that sends an HTML page for every request, like a captive portal."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b"<html><body>Please log in</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_html_instead_of_manifest(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _MisbehavingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host = f"127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(InvalidResponse) as caught:
            apparate.pull(f"{host}/team/app:v1", PullOptions(store=tmp_path / "s"))
    finally:
        server.shutdown()
        server.server_close()

    assert "not JSON" in str(caught.value)
    assert "<html>" in str(caught.value)
    assert_store_clean(tmp_path / "s")


def test_expired_token_is_renewed_mid_pull(registry_token, token_server, tmp_path):
    # The registry rejects a token once its exp is a minute gone; the client
    # believes expires_in, so its second request meets invalid_token.
    os.environ["APPARATE_CERTS_D"] = str(registry_token.certs_dir)
    token_server.lifetime = -120
    token_server.expires_in = 3600
    credentials = CredentialStore.from_environment(
        {registry_token.host: Credentials(registry_token.username,
                                          registry_token.password)}
    )  # fmt: skip
    reference = Reference.parse(f"{registry_token.host}/samples/base:v1")
    settings = TransportSettings.from_environment()

    with RegistryClient(reference, settings, credentials) as client:
        with pytest.raises(apparate.ApparateError):
            client.get_manifest("v1", None)
        token_server.lifetime = 3600
        fetched = client.get_manifest("v1", None)

    assert fetched.digest
    assert len(token_server.requests) >= 2


def test_killed_pull_leaves_consistent_store(registry_plain, tmp_path):
    store = tmp_path / "store"
    reference = f"{registry_plain.host}/samples/base:v2"
    env = {**os.environ, "APPARATE_STORE": str(store)}

    for delay in (0.05, 0.2, 0.4):
        process = subprocess.Popen(
            [APPARATE, "pull", "-q", reference],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        if (store / "index.json").exists():
            images = apparate.list_images(store)
            assert [image.reference for image in images] in ([], [reference])
            for blob in (store / "blobs" / "sha256").iterdir():
                assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name

    result = apparate.pull(reference, PullOptions(store=store))

    assert [image.reference for image in apparate.list_images(store)] == [reference]
    assert list((store / "ingest").iterdir()) == []
    assert result.bytes_fetched <= sum(layer.size for layer in result.layers)


def test_interrupted_pull_stops_its_layers(registry_plain, tmp_path):
    """Ctrl-C ends the pull without waiting for the layers still downloading."""
    store = tmp_path / "store"
    port = int(registry_plain.host.rsplit(":", 1)[1])
    with throttled(port, 256 * 1024) as slow_port:
        process = subprocess.Popen(
            [APPARATE, "pull", "-q", "--store", str(store),
             f"127.0.0.1:{slow_port}/samples/base:v1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(2.0)
        process.send_signal(signal.SIGINT)
        # At 256 kB/s the layers need minutes; stopped, the pull ends at once.
        _, stderr = process.communicate(timeout=30)

    assert process.returncode == 130
    assert "interrupted" in stderr
    assert apparate.list_images(store) == []


def test_two_pulls_of_one_image_fetch_it_once(registry_plain, tmp_path):
    """A second pull waits for the blobs the first is writing instead of fetching them."""
    store = tmp_path / "store"
    port = int(registry_plain.host.rsplit(":", 1)[1])
    with throttled(port, 8 * 1024 * 1024) as slow_port:
        command = [APPARATE, "pull", "--json", "--store", str(store),
                   f"127.0.0.1:{slow_port}/samples/base:v1"]  # fmt: skip
        first = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)
        second = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        first_out, _ = first.communicate(timeout=120)
        second_out, _ = second.communicate(timeout=120)

    assert (first.returncode, second.returncode) == (0, 0)
    fetched = [json.loads(out)["bytes_fetched"] for out in (first_out, second_out)]
    layer_bytes = sum(layer["size"] for layer in json.loads(first_out)["layers"])
    assert fetched[0] == layer_bytes
    assert fetched[1] < layer_bytes / 10
    for blob in (store / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name


def test_killed_pull_resumes_where_it_stopped(registry_plain, tmp_path):
    store = tmp_path / "store"
    port = int(registry_plain.host.rsplit(":", 1)[1])
    with throttled(port, 8 * 1024 * 1024) as slow_port:
        slow = f"127.0.0.1:{slow_port}/samples/base:v1"
        process = subprocess.Popen(
            [APPARATE, "pull", "-q", "--store", str(store), slow],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(2.0)
        process.send_signal(signal.SIGKILL)
        process.wait()
    partials = list((store / "ingest").glob("partial-*"))
    kept = sum(path.stat().st_size for path in partials)
    finished = {path.name for path in (store / "blobs" / "sha256").iterdir()}
    assert kept > 1_000_000, "the pull was killed before it stored anything"

    result = apparate.pull(
        f"{registry_plain.host}/samples/base:v1", PullOptions(store=store)
    )

    missing = sum(
        layer.size for layer in result.layers if layer.digest.hex not in finished
    )
    assert result.bytes_fetched == missing - kept
    assert list((store / "ingest").iterdir()) == []
    for blob in (store / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name


def test_killed_pull_bytes_count_as_resumed(registry_plain, tmp_path):
    """Bytes a killed pull fetched and left in partials count as resumed, not saved."""
    store = tmp_path / "store"
    port = int(registry_plain.host.rsplit(":", 1)[1])
    with throttled(port, 8 * 1024 * 1024) as slow_port:
        process = subprocess.Popen(
            [APPARATE, "pull", "-q", "--store", str(store),
             f"127.0.0.1:{slow_port}/samples/base:v1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(2.0)
        process.send_signal(signal.SIGKILL)
        process.wait()
    partials = (store / "ingest").glob("partial-*")
    partial_bytes = sum(path.stat().st_size for path in partials)
    assert partial_bytes > 1_000_000, "the pull was killed before it stored anything"
    reference = f"{registry_plain.host}/samples/base:v1"
    command = [APPARATE, "pull", "--json", "--into", "oci", "--store", str(store)]

    planned = subprocess.run(
        [*command, "--dry-run", reference], capture_output=True, text=True, check=True
    )
    pulled = subprocess.run(
        [*command, reference], capture_output=True, text=True, check=True
    )
    stats = subprocess.run(
        [APPARATE, "stats", "--json", "--store", str(store)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip

    result = json.loads(pulled.stdout)
    layer_bytes = sum(layer["size"] for layer in result["layers"])
    assert result["bytes_resumed"] == partial_bytes
    assert json.loads(planned.stdout)["bytes_resumed"] == partial_bytes
    assert sum(layer["bytes_resumed"] for layer in result["layers"]) == partial_bytes
    # The store held nothing before the killed pull: every layer byte
    # crossed the network in one of the two pulls, or was stored by the first.
    assert (
        result["bytes_fetched"] + result["bytes_resumed"] + result["bytes_reused"]
        == layer_bytes
    )
    assert result["bytes_saved"] == result["bytes_reused"]
    history = json.loads(stats.stdout)
    assert history["bytes_resumed"] == partial_bytes
    assert history["bytes_saved"] == result["bytes_saved"]
    assert history["recent"][0]["bytes_resumed"] == partial_bytes
