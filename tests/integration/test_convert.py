"""Convert sample images through the real registry and read them back."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import socketserver
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import ClassVar

import httpx
import pytest
import zstandard

import apparate
from apparate.chunked.format import footer_from_annotations
from apparate.chunked.reader import file_range_reader, read_table
from apparate.convert import ConvertOptions, convert
from apparate.digest import Digest
from apparate.errors import AuthError, UsageError
from apparate.pulling import PullOptions
from apparate.registry.credentials import Credentials
from apparate.store.chunk_index import INDEX_FILE, ChunkIndex
from tests.integration.push import OCI_MANIFEST, Pusher, tar_of
from tests.testbed.containerd import ctr

pytestmark = [
    pytest.mark.integration,
    pytest.mark.usefixtures("isolated_environment"),
]

ZSTD_LAYER = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def raw_manifest(reference: str) -> dict:
    output = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{reference}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return json.loads(output)


def copy_to_layout(reference: str, layout: Path) -> None:
    subprocess.run(
        ["skopeo", "copy", "--quiet", "--src-tls-verify=false",
         f"docker://{reference}", f"oci:{layout}:image"],
        check=True, capture_output=True,
    )  # fmt: skip


def blob_file(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.removeprefix("sha256:")


def test_convert_keeps_config_and_diff_ids(registry_plain, fresh_registry, tmp_path):
    source = f"{registry_plain.host}/samples/base:v1"
    destination = f"{fresh_registry.host}/converted/base:v1"

    result = convert(source, destination, ConvertOptions(store=tmp_path / "store"))

    original, converted = raw_manifest(source), raw_manifest(destination)
    assert converted["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert converted["config"]["digest"] == original["config"]["digest"]
    assert [layer["mediaType"] for layer in converted["layers"]] == [ZSTD_LAYER] * 2
    inspected = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", f"docker://{destination}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert json.loads(inspected)["Digest"] == str(result.digest)
    assert result.bytes_pushed > 0
    layout = tmp_path / "copy"
    copy_to_layout(destination, layout)
    config = json.loads(blob_file(layout, converted["config"]["digest"]).read_bytes())
    for layer, diff_id in zip(converted["layers"], config["rootfs"]["diff_ids"]):
        blob = blob_file(layout, layer["digest"])
        tar = subprocess.run(["zstd", "-dc", str(blob)], capture_output=True,
                             check=True).stdout  # fmt: skip
        assert "sha256:" + hashlib.sha256(tar).hexdigest() == diff_id


def test_converted_layers_carry_valid_tables(registry_plain, fresh_registry, tmp_path):
    destination = f"{fresh_registry.host}/converted/base:v1"
    convert(f"{registry_plain.host}/samples/base:v1", destination,
            ConvertOptions(store=tmp_path / "store"))  # fmt: skip
    layout = tmp_path / "copy"
    copy_to_layout(destination, layout)

    for layer in raw_manifest(destination)["layers"]:
        footer = footer_from_annotations(layer["annotations"])
        with open(blob_file(layout, layer["digest"]), "rb") as blob:
            table = read_table(file_range_reader(blob), footer, layer["digest"])
        assert table.entries
        assert footer.table_offset == table.frames_length


def test_convert_is_deterministic_and_idempotent(
    registry_plain, fresh_registry, tmp_path
):
    source = f"{registry_plain.host}/samples/base:v1"
    first = convert(source, f"{fresh_registry.host}/a/base:v1",
                    ConvertOptions(store=tmp_path / "one"))  # fmt: skip
    second = convert(source, f"{fresh_registry.host}/b/base:v1",
                     ConvertOptions(store=tmp_path / "two"))  # fmt: skip

    again = convert(f"{fresh_registry.host}/a/base:v1", f"{fresh_registry.host}/a/base:v1",
                    ConvertOptions(store=tmp_path / "one"))  # fmt: skip

    assert first.digest == second.digest
    assert again.digest == first.digest
    assert again.bytes_pushed == 0
    assert all(layer.kept for layer in again.layers)


def test_convert_index_keeps_platforms(registry_plain, fresh_registry, tmp_path):
    destination = f"{fresh_registry.host}/converted/multi:v1"
    conversions = []
    options = ConvertOptions(store=tmp_path / "store", on_layer=conversions.append)

    result = convert(f"{registry_plain.host}/samples/multi:v1", destination, options)

    index = raw_manifest(destination)
    platforms = sorted(
        f"{entry['platform']['os']}/{entry['platform']['architecture']}"
        for entry in index["manifests"]
    )
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert platforms == ["linux/amd64", "linux/arm64"]
    # A layer the platforms share is converted once.
    sources = [conversion.source for conversion in conversions]
    assert len(sources) == len(set(sources))
    assert {layer.source for layer in result.layers} == set(sources)


def test_convert_mounts_blobs_on_same_registry(private_registry, tmp_path):
    host = private_registry.host

    result = convert(f"{host}/samples/base:v1", f"{host}/converted/base:v1",
                     ConvertOptions(store=tmp_path / "store"))  # fmt: skip

    assert result.blobs_mounted == 1  # the config; the layers are new blobs


def test_convert_mount_without_delete_scope(
    registry_token, token_server, tmp_path, monkeypatch
):
    monkeypatch.setenv("APPARATE_CERTS_D", str(registry_token.certs_dir))
    token_server.allowed_actions = {"pull", "push"}
    host = registry_token.host
    login = {host: Credentials(registry_token.username, registry_token.password)}
    destination = f"{host}/pushonly-{uuid.uuid4().hex[:8]}/base:v1"

    result = convert(f"{host}/samples/base:v1", destination,
                     ConvertOptions(store=tmp_path / "store", credentials=login))  # fmt: skip

    assert result.blobs_mounted == 1
    scopes = [scope for request in token_server.requests for scope in request.scopes]
    actions = {action for scope in scopes for action in scope.split(":")[-1].split(",")}
    assert actions == {"pull", "push"}
    pulled = apparate.pull(
        destination, PullOptions(store=tmp_path / "pull", credentials=login)
    )
    assert pulled.digest == result.digest


class FailingDaemon(BaseHTTPRequestHandler):
    """A docker daemon that records each request and fails it."""

    protocol_version = "HTTP/1.1"
    requests: ClassVar[list[str]] = []

    def log_message(self, format: str, *args: object) -> None:
        pass

    def fail_request(self) -> None:
        self.requests.append(f"{self.command} {self.path}")
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = b'{"message":"this daemon loads nothing"}'
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_HEAD = do_POST = fail_request


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self):
        connection, _ = super().get_request()
        return connection, ("local", 0)


@pytest.fixture
def failing_docker(tmp_path, monkeypatch) -> Iterator[list[str]]:
    """Yield the requests that a docker socket accepting connections received."""
    socket_path = tmp_path / "docker.sock"
    requests: list[str] = []
    handler = type("Handler", (FailingDaemon,), {"requests": requests})
    server = UnixServer(str(socket_path), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{socket_path}")
    monkeypatch.setenv("CONTAINERD_ADDRESS", str(tmp_path / "no-containerd.sock"))
    try:
        yield requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_convert_imports_nothing_into_docker(
    registry_plain, fresh_registry, failing_docker, tmp_path, monkeypatch
):
    # With no target set, a pull imports into a docker that accepts
    # connections, but convert's own pulls must not.
    monkeypatch.delenv("APPARATE_INTO")
    destination = f"{fresh_registry.host}/converted/multi:v1"

    convert(f"{registry_plain.host}/samples/multi:v1", destination,
            ConvertOptions(store=tmp_path / "store"))  # fmt: skip

    assert failing_docker == []
    assert raw_manifest(destination)["manifests"]


def push_attestation(pusher: Pusher, repository: str) -> dict:
    """Push a small attestation manifest and return its index entry."""
    statement = pusher.blob(repository, b'{"_type":"https://in-toto.io/Statement/v1"}')
    config = pusher.blob(repository, b"{}")
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
        "layers": [{"mediaType": "application/vnd.in-toto+json", **statement}],
    }).encode()  # fmt: skip
    digest = pusher.manifest(repository, "attestation", manifest)
    return {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": digest,
        "size": len(manifest),
        "platform": {"os": "unknown", "architecture": "unknown"},
        "annotations": {"vnd.docker.reference.type": "attestation-manifest"},
    }


def test_convert_attested_index_elsewhere(registry_plain, fresh_registry, tmp_path):
    host = fresh_registry.host
    convert(f"{registry_plain.host}/samples/multi:v1", f"{host}/attested/multi:v1",
            ConvertOptions(store=tmp_path / "first"))  # fmt: skip
    index = raw_manifest(f"{host}/attested/multi:v1")
    pusher = Pusher(host)
    index["manifests"].append(push_attestation(pusher, "attested/multi"))
    body = json.dumps(index).encode()
    pusher.manifest("attested/multi", "signed", body, index["mediaType"])
    options = ConvertOptions(store=tmp_path / "second")

    elsewhere = convert(f"{host}/attested/multi:signed", f"{host}/copy/multi:v1",
                        options)  # fmt: skip
    in_place = convert(f"{host}/attested/multi:signed", f"{host}/attested/multi:v2",
                       options)  # fmt: skip

    copied = raw_manifest(f"{host}/copy/multi:v1")
    assert len(copied["manifests"]) == len(index["manifests"]) - 1
    assert all("annotations" not in entry for entry in copied["manifests"])
    assert elsewhere.bytes_pushed == 0
    assert in_place.digest == Digest.of(body)


def frame_hashes(reference: str, layout: Path) -> dict[bytes, int]:
    """Each chunk identity of an image's layers, mapped to its frame's xxh3."""
    copy_to_layout(reference, layout)
    frames: dict[bytes, int] = {}
    for layer in raw_manifest(reference)["layers"]:
        footer = footer_from_annotations(layer["annotations"])
        with open(blob_file(layout, layer["digest"]), "rb") as blob:
            table = read_table(file_range_reader(blob), footer, layer["digest"])
        frames.update({entry.identity: entry.frame_xxh3 for entry in table.entries})
    return frames


def test_reuse_keeps_frames_across_levels(registry_plain, fresh_registry, tmp_path):
    v1 = f"{fresh_registry.host}/converted/base:v1"
    v2 = f"{fresh_registry.host}/converted/base:v2"
    convert(f"{registry_plain.host}/samples/base:v1", v1,
            ConvertOptions(store=tmp_path / "one", level=1))  # fmt: skip

    result = convert(
        f"{registry_plain.host}/samples/base:v2", v2,
        ConvertOptions(store=tmp_path / "two", level=9, reuse_from=[v1]),
    )  # fmt: skip

    old, new = frame_hashes(v1, tmp_path / "l1"), frame_hashes(v2, tmp_path / "l2")
    shared = set(old) & set(new)
    assert len(shared) > len(new) // 2
    assert all(old[identity] == new[identity] for identity in shared)
    assert sum(layer.frames_reused for layer in result.layers) >= len(shared)


def test_reuse_from_unconverted_image_warns(
    registry_plain, fresh_registry, tmp_path, caplog
):
    plain = f"{registry_plain.host}/samples/base:v1"

    result = convert(
        plain, f"{fresh_registry.host}/converted/base:v1",
        ConvertOptions(store=tmp_path / "store", reuse_from=[plain]),
    )  # fmt: skip

    assert "has no converted layers, so it has no frames to reuse" in caplog.text
    assert sum(layer.frames_reused for layer in result.layers) == 0


def test_pull_converted_image(registry_plain, fresh_registry, tmp_path):
    destination = f"{fresh_registry.host}/converted/base:v2"
    convert(f"{registry_plain.host}/samples/base:v2", destination,
            ConvertOptions(store=tmp_path / "convert"))  # fmt: skip

    result = apparate.pull(destination, PullOptions(store=tmp_path / "pull"))

    assert {layer.media_type for layer in result.layers} == {ZSTD_LAYER}
    with ChunkIndex(tmp_path / "pull" / INDEX_FILE) as index:
        for layer in result.layers:
            assert index.has_blob(layer.digest)
    dctx = zstandard.ZstdDecompressor()
    blob = tmp_path / "pull" / "blobs" / "sha256" / result.layers[1].digest.hex
    with (
        open(blob, "rb") as handle,
        dctx.stream_reader(handle, read_across_frames=True) as reader,
    ):
        assert len(reader.read()) > 1_000_000


def test_containerd_pulls_and_runs_converted_image(
    registry_plain, fresh_registry, containerd, tmp_path
):
    destination = f"{fresh_registry.host}/converted/base:v1"
    result = convert(f"{registry_plain.host}/samples/base:v1", destination,
                     ConvertOptions(store=tmp_path / "store"))  # fmt: skip
    namespace = "convert-run"

    pulled = ctr(
        containerd, "images", "pull", "--plain-http",
        "--snapshotter", containerd.snapshotter, destination,
        namespace=namespace,
    )  # fmt: skip
    listed = ctr(containerd, "images", "ls", namespace=namespace)
    ran = ctr(
        containerd, "run", "--rm", *containerd.run_options(),
        destination, "convert-run-" + uuid.uuid4().hex[:8], "cat", "/etc/os-release",
        namespace=namespace, timeout=120,
    )  # fmt: skip

    assert pulled.returncode == 0, pulled.stderr
    assert str(result.digest) in listed.stdout
    assert ran.returncode == 0, f"{ran.stderr}\n{containerd.log_tail()}"
    assert "VERSION_CODENAME=bookworm" in ran.stdout


def test_pull_with_bad_table_annotation_takes_layer_whole(
    registry_plain, fresh_registry, tmp_path, caplog
):
    destination = f"{fresh_registry.host}/converted/base:v1"
    convert(f"{registry_plain.host}/samples/base:v1", destination,
            ConvertOptions(store=tmp_path / "convert"))  # fmt: skip
    manifest = raw_manifest(destination)
    annotations = manifest["layers"][0]["annotations"]
    annotations["dev.apparate.chunked.table-digest"] = "sha256:" + "0" * 64
    Pusher(fresh_registry.host).manifest(
        "converted/base", "lying-table", json.dumps(manifest).encode()
    )

    result = apparate.pull(
        f"{fresh_registry.host}/converted/base:lying-table",
        PullOptions(store=tmp_path / "pull"),
    )

    assert result.layers_fetched == 2
    with ChunkIndex(tmp_path / "pull" / INDEX_FILE) as index:
        assert not index.has_blob(result.layers[0].digest)
        assert index.has_blob(result.layers[1].digest)
    assert "chunks not indexed" in caplog.text
    assert str(result.layers[0].digest) in caplog.text


def test_reuse_skips_layer_with_bad_table(
    registry_plain, fresh_registry, tmp_path, caplog
):
    repository = f"{fresh_registry.host}/converted/base"
    convert(f"{registry_plain.host}/samples/base:v1", f"{repository}:v1",
            ConvertOptions(store=tmp_path / "convert"))  # fmt: skip
    manifest = raw_manifest(f"{repository}:v1")
    annotations = manifest["layers"][0]["annotations"]
    annotations["dev.apparate.chunked.table-digest"] = "sha256:" + "0" * 64
    Pusher(fresh_registry.host).manifest(
        "converted/base", "lying-table", json.dumps(manifest).encode()
    )
    options = ConvertOptions(
        store=tmp_path / "again", reuse_from=[f"{repository}:lying-table"]
    )

    result = convert(f"{registry_plain.host}/samples/base:v1", f"{repository}:v1b",
                     options)  # fmt: skip

    assert f"not reusing frames of layer {manifest['layers'][0]['digest']}" in (
        caplog.text
    )
    assert result.layers[1].frames_reused == result.layers[1].chunks
    assert result.layers[0].frames_reused == 0


@pytest.mark.parametrize("tag", ["v1-zstd", "v1-docker"])
def test_convert_other_source_formats(registry_plain, fresh_registry, tmp_path, tag):
    source = f"{registry_plain.host}/samples/base:{tag}"
    destination = f"{fresh_registry.host}/converted/base:{tag}"

    convert(source, destination, ConvertOptions(store=tmp_path / "store"))

    original, converted = raw_manifest(source), raw_manifest(destination)
    assert converted["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert converted["config"]["digest"] == original["config"]["digest"]
    assert [layer["mediaType"] for layer in converted["layers"]] == [ZSTD_LAYER] * 2


def test_convert_malformed_tar_falls_back(fresh_registry, tmp_path, caplog):
    not_a_tar = random.Random(5).randbytes(300_000)
    pusher = Pusher(fresh_registry.host)
    pusher.image("odd/app", "v1", [(not_a_tar, gzip.compress(not_a_tar, mtime=0))])
    destination = f"{fresh_registry.host}/odd/app:chunked"

    result = convert(f"{fresh_registry.host}/odd/app:v1", destination,
                     ConvertOptions(store=tmp_path / "store"))  # fmt: skip

    (layer,) = raw_manifest(destination)["layers"]
    assert layer["mediaType"] == ZSTD_LAYER
    assert result.layers[0].chunks > 1
    assert "cutting it with plain FastCDC instead" in caplog.text
    assert str(result.layers[0].source) in caplog.text


@pytest.mark.parametrize(
    "options, destination, words",
    [
        (["--compress-level", "99"], "converted/base:v1", "-131072 to 22"),
        ([], f"converted/base@sha256:{'a' * 64}", "must be a tag"),
    ],
    ids=["level", "digest destination"],
)
def test_convert_rejects_before_any_work(
    registry_plain, fresh_registry, tmp_path, options, destination, words
):
    store = tmp_path / "store"
    apparate_cli = str(Path(sys.executable).with_name("apparate"))

    done = subprocess.run(
        [apparate_cli, "convert", *options, "--store", str(store),
         f"{registry_plain.host}/samples/base:v1",
         f"{fresh_registry.host}/{destination}"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip

    assert done.returncode == 2, done.stderr
    assert words in done.stderr
    assert done.stdout == ""
    assert not store.exists()


def test_convert_without_push_access_fails_first(
    registry_token, token_server, tmp_path, monkeypatch
):
    monkeypatch.setenv("APPARATE_CERTS_D", str(registry_token.certs_dir))
    token_server.allowed_actions = {"pull"}
    host = registry_token.host
    login = {host: Credentials(registry_token.username, registry_token.password)}
    store = tmp_path / "store"

    with pytest.raises(AuthError) as caught:
        convert(f"{host}/samples/base:v1", f"{host}/readonly/base:v1",
                ConvertOptions(store=store, credentials=login))  # fmt: skip

    assert f"{host}/readonly/base:v1" in str(caught.value)
    assert "insufficient_scope" in str(caught.value)
    # Nothing was pulled to be converted.
    assert not [path for path in store.rglob("blobs/*/*") if path.is_file()]


def test_convert_rejects_index_of_indexes(fresh_registry, tmp_path):
    pusher = Pusher(fresh_registry.host)
    tar = tar_of({"etc/hello": b"hello"})
    image = pusher.image("nested/app", "image", [(tar, gzip.compress(tar))])
    inner = index_of([{"mediaType": OCI_MANIFEST, "digest": image,
                       "size": manifest_size(fresh_registry.host, "nested/app", image),
                       "platform": {"os": "linux", "architecture": "amd64"}}])  # fmt: skip
    inner_digest = pusher.manifest("nested/app", "inner", inner, OCI_INDEX)
    outer = index_of(
        [{"mediaType": OCI_INDEX, "digest": inner_digest, "size": len(inner)}]
    )
    pusher.manifest("nested/app", "outer", outer, OCI_INDEX)
    destination = f"{fresh_registry.host}/nested/app:converted"

    with pytest.raises(UsageError, match="lists no image manifest to convert"):
        convert(f"{fresh_registry.host}/nested/app:outer", destination,
                ConvertOptions(store=tmp_path / "store"))  # fmt: skip

    tags = httpx.get(f"http://{fresh_registry.host}/v2/nested/app/tags/list").json()
    assert "converted" not in tags["tags"]


def index_of(entries: list[dict]) -> bytes:
    document = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    return json.dumps(document).encode()


def manifest_size(host: str, repository: str, digest: str) -> int:
    response = httpx.get(
        f"http://{host}/v2/{repository}/manifests/{digest}",
        headers={"Accept": OCI_MANIFEST},
    )
    response.raise_for_status()
    return len(response.content)


def test_convert_fits_store_once_after_push(
    registry_plain, fresh_registry, tmp_path, monkeypatch, caplog
):
    settings = tmp_path / "config.toml"
    settings.write_text('max_store_size = "1M"\n')
    monkeypatch.setenv("APPARATE_CONFIG", str(settings))
    store = tmp_path / "store"

    convert(f"{registry_plain.host}/samples/multi:v1",
            f"{fresh_registry.host}/converted/multi:v1",
            ConvertOptions(store=store))  # fmt: skip

    messages = [record.getMessage() for record in caplog.records]
    assert not [message for message in messages if "in use" in message]
    assert [message for message in messages if "to fit max_store_size" in message]
    assert (
        not (store / "index.json").exists()
        or not json.loads((store / "index.json").read_text())["manifests"]
    )


class _LargeUploadLimit(socketserver.StreamRequestHandler):
    """A destination that responds 413 to a large upload and closes before
    reading the body, as a proxy's body size limit does."""

    def handle(self) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            piece = self.connection.recv(65536)
            # A TLS handshake (first byte 0x16) is closed at once, so the
            # client moves on to plain HTTP.
            if not piece or head + piece[:1] == b"\x16":
                return
            head += piece
        request, _, headers = head.decode("latin-1").partition("\r\n")
        method, path, _ = request.split(" ", 2)
        length = 0
        for line in headers.lower().splitlines():
            if line.startswith("content-length:"):
                length = int(line.split(":", 1)[1])
        if method in ("PATCH", "PUT") and "/uploads/" in path and length > 1 << 20:
            self._answer("413 Request Entity Too Large")
            return
        body = head.partition(b"\r\n\r\n")[2]
        while len(body) < length:
            body += self.connection.recv(65536)
        if method == "POST" and "/blobs/uploads/" in path or method == "PATCH":
            self._answer("202 Accepted", "Location: /v2/app/blobs/uploads/1\r\n")
        elif method == "PUT":
            self._answer("201 Created")
        elif path == "/v2/":
            self._answer("200 OK")
        else:
            self._answer("404 Not Found")

    def _answer(self, status: str, headers: str = "") -> None:
        self.connection.sendall(
            f"HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n"
            f"{headers}\r\n".encode()
        )


class _TcpServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True


def test_convert_reports_upload_refused_mid_body(registry_plain, tmp_path):
    """A destination that closes during an upload fails the command with a
    message, not a silent end by SIGPIPE (exit 141)."""
    server = _TcpServer(("127.0.0.1", 0), _LargeUploadLimit)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    apparate_cli = str(Path(sys.executable).with_name("apparate"))
    try:
        done = subprocess.run(
            [apparate_cli, "convert", "--store", str(tmp_path / "store"),
             f"{registry_plain.host}/samples/base:v1",
             f"127.0.0.1:{server.server_address[1]}/app:converted"],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()

    assert done.returncode == 8, done.stderr
    assert "HTTP 413" in done.stderr


def test_convert_refuses_layer_with_table_over_limit(
    registry_plain, fresh_registry, tmp_path, monkeypatch
):
    # Lowered so that a sample layer's table is over it.
    monkeypatch.setattr("apparate.convert.MAX_TABLE_BYTES", 4096)
    destination = f"{fresh_registry.host}/converted/base:v1"
    store = tmp_path / "store"

    with pytest.raises(UsageError) as caught:
        convert(f"{registry_plain.host}/samples/base:v1", destination,
                ConvertOptions(store=store))  # fmt: skip

    assert "over the 4096 bytes a chunked layer may have" in str(caught.value)
    assert "pull this image unconverted" in str(caught.value)
    found = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{destination}"],
        capture_output=True, check=False,
    )  # fmt: skip
    assert found.returncode != 0
    assert not list((store / "ingest").iterdir())
