"""Delta pulls of converted images from the real registry."""

from __future__ import annotations

import gzip
import hashlib
import json
import signal
import socket
import sqlite3
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

import apparate
from apparate.config import Config, Mirror
from apparate.convert import ConvertOptions, convert
from apparate.digest import Digest
from apparate.errors import TransferTimedOut
from apparate.progress import PullObserver
from apparate.pulling import PullOptions
from apparate.store.chunk_index import INDEX_FILE, ChunkIndex
from tests.integration.faulty import misbehaving
from tests.integration.push import Pusher, tar_of
from tests.integration.throttle import throttled
from tests.testbed.samples import Samples

pytestmark = [
    pytest.mark.integration,
    pytest.mark.usefixtures("isolated_environment"),
]


def assert_store_verified(store: Path) -> None:
    for blob in (store / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name


def test_update_fetches_only_changed_chunks(converted, tmp_path):
    store = tmp_path / "pull"
    apparate.pull(f"{converted}:v1", PullOptions(store=store))

    result = apparate.pull(f"{converted}:v2", PullOptions(store=store))

    layer_bytes = sum(layer.size for layer in result.layers)
    assert result.bytes_fetched < layer_bytes / 4
    assert result.bytes_reused > layer_bytes / 2
    # Nothing failed, so every layer byte was either fetched once or reused.
    assert result.bytes_reused == layer_bytes - result.bytes_fetched
    layers = result.to_dict()["layers"]
    assert sum(layer["bytes_reused"] for layer in layers) == result.bytes_reused
    inspected = subprocess.run(
        ["skopeo", "inspect", f"oci:{store}:{converted}:v2"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert json.loads(inspected)["Digest"] == str(result.digest)
    assert_store_verified(store)
    with ChunkIndex(store / INDEX_FILE) as index:
        assert all(index.has_blob(layer.digest) for layer in result.layers)


class Recorder(PullObserver):
    """Record the bytes each layer reported it needs, and the bytes it received."""

    def __init__(self) -> None:
        self.needs: dict[Digest, int] = {}
        self.received: dict[Digest, int] = {}
        self.lock = threading.Lock()

    def layer_needs(self, digest: Digest, to_fetch: int) -> None:
        with self.lock:
            self.needs[digest] = self.needs.get(digest, 0) + to_fetch

    def layer_progress(self, digest: Digest, received: int) -> None:
        with self.lock:
            self.received[digest] = self.received.get(digest, 0) + received


def test_update_reports_bytes_each_layer_needs(converted, tmp_path):
    # Progress bars and their time left count these bytes, not the layer's size.
    store = tmp_path / "pull"
    apparate.pull(f"{converted}:v1", PullOptions(store=store))
    recorder = Recorder()

    result = apparate.pull(
        f"{converted}:v2", PullOptions(store=store, observer=recorder)
    )

    assert recorder.needs == recorder.received
    for layer in result.layers:
        assert recorder.needs[layer.digest] <= layer.bytes_fetched
    largest = max(result.layers, key=lambda layer: layer.size)
    assert recorder.needs[largest.digest] < largest.size / 4


def test_cold_pull_of_converted_image(converted, tmp_path):
    result = apparate.pull(f"{converted}:v2", PullOptions(store=tmp_path / "pull"))

    layer_bytes = sum(layer.size for layer in result.layers)
    assert layer_bytes * 0.9 < result.bytes_fetched <= layer_bytes
    assert_store_verified(tmp_path / "pull")


def test_damaged_local_frames_are_fetched_again(converted, tmp_path):
    store = tmp_path / "pull"
    first = apparate.pull(f"{converted}:v1", PullOptions(store=store))
    stored = store / "blobs" / "sha256" / first.layers[0].digest.hex
    damaged = bytearray(stored.read_bytes())
    for offset in range(1000, len(damaged) - 100_000, 500_000):
        damaged[offset] ^= 0xFF
    stored.write_bytes(bytes(damaged))

    result = apparate.pull(f"{converted}:v2", PullOptions(store=store))

    blob = store / "blobs" / "sha256" / result.layers[0].digest.hex
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == result.layers[0].digest.hex
    assert result.bytes_fetched > 0


def test_dry_run_equals_following_pull(converted, tmp_path):
    store = tmp_path / "pull"
    apparate.pull(f"{converted}:v1", PullOptions(store=store))
    before = sorted(path.name for path in (store / "blobs" / "sha256").iterdir())

    planned = apparate.pull(f"{converted}:v2", PullOptions(store=store, dry_run=True))
    after_dry_run = sorted(path.name for path in (store / "blobs" / "sha256").iterdir())
    pulled = apparate.pull(f"{converted}:v2", PullOptions(store=store))

    assert planned.dry_run
    assert after_dry_run == before
    assert [layer.bytes_fetched for layer in planned.layers] == [
        layer.bytes_fetched for layer in pulled.layers
    ]
    assert [image.reference for image in apparate.list_images(store)] == [
        f"{converted}:v1",
        f"{converted}:v2",
    ]


def test_dry_run_creates_no_store(converted, tmp_path):
    store = tmp_path / "not-yet"

    planned = apparate.pull(f"{converted}:v2", PullOptions(store=store, dry_run=True))
    pulled = apparate.pull(f"{converted}:v2", PullOptions(store=tmp_path / "pull"))

    assert not store.exists()
    assert planned.bytes_fetched == pulled.bytes_fetched


def test_dry_run_of_failing_table_plans_whole_layer(
    converted, fresh_registry, tmp_path
):
    """A table the server fails to send means the whole layer, as the pull does."""
    store = tmp_path / "pull"
    apparate.pull(f"{converted}:v1", PullOptions(store=store))
    planned = apparate.pull(f"{converted}:v2", PullOptions(store=store, dry_run=True))
    failing = planned.layers[0]
    repository = converted.split("/", 1)[1]

    with misbehaving(fresh_registry.host, str(failing.digest), "error") as faulty:
        result = apparate.pull(
            f"{faulty}/{repository}:v2", PullOptions(store=store, dry_run=True)
        )

    assert result.layers[0].bytes_fetched == failing.size
    assert result.layers[1].bytes_fetched == planned.layers[1].bytes_fetched


def large_sample_files(samples: Samples, count: int) -> dict[str, bytes]:
    """Return the ``count`` largest regular files of the base:v1 sample's first layer."""
    layout = samples.layout
    index = json.loads((layout / "index.json").read_text())
    (descriptor,) = [
        manifest
        for manifest in index["manifests"]
        if manifest["annotations"]["org.opencontainers.image.ref.name"] == "base:v1"
    ]
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / descriptor["digest"].split(":")[1]).read_bytes())
    layer = blobs / manifest["layers"][0]["digest"].split(":")[1]
    with tarfile.open(layer, mode="r:gz") as tar:
        members = sorted(
            (member for member in tar if member.isfile()),
            key=lambda member: (-member.size, member.name),
        )[:count]
        return {
            member.name: tar.extractfile(member).read()  # type: ignore[union-attr]
            for member in members
        }


def test_layers_sharing_chunks_fetch_them_once(sample_images, fresh_registry, tmp_path):
    """A layer holding copies of an earlier layer's files takes their frames from it."""
    files = large_sample_files(sample_images, 8)
    first = tar_of(files)
    second = tar_of({f"copy/{name}": data for name, data in files.items()})
    host = fresh_registry.host
    Pusher(host).image(
        "plain/shared", "v1",
        [(tar, gzip.compress(tar, mtime=0)) for tar in (first, second)],
    )  # fmt: skip
    reference = f"{host}/converted/shared:v1"
    convert(f"{host}/plain/shared:v1", reference,
            ConvertOptions(store=tmp_path / "convert"))  # fmt: skip
    store = tmp_path / "pull"

    planned = apparate.pull(reference, PullOptions(store=store, dry_run=True))
    pulled = apparate.pull(reference, PullOptions(store=store))

    assert [layer.bytes_fetched for layer in planned.layers] == [
        layer.bytes_fetched for layer in pulled.layers
    ]
    shared, copies = pulled.layers
    assert shared.bytes_fetched > shared.size * 0.9
    assert copies.bytes_fetched < copies.size / 10
    assert_store_verified(store)
    inspected = subprocess.run(
        ["skopeo", "inspect", f"oci:{store}:{reference}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert json.loads(inspected)["Digest"] == str(pulled.digest)


def test_stats_report_recorded_pulls(converted, tmp_path):
    store = tmp_path / "pull"
    apparate.pull(f"{converted}:v1", PullOptions(store=store))
    update = apparate.pull(f"{converted}:v2", PullOptions(store=store))
    apparate_cli = Path(sys.executable).with_name("apparate")

    done = subprocess.run(
        [str(apparate_cli), "stats", "--json", "--store", str(store)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip

    stats = json.loads(done.stdout)
    assert stats["pulls"] == 2
    assert stats["recent"][0]["reference"] == f"{converted}:v2"
    assert stats["recent"][0]["bytes_fetched"] == update.bytes_fetched
    assert stats["bytes_saved"] > 0


def test_killed_rebuild_resumes(converted, fresh_registry, tmp_path):
    store = tmp_path / "pull"
    apparate.pull(f"{converted}:v1", PullOptions(store=store))
    planned = apparate.pull(f"{converted}:v2", PullOptions(store=store, dry_run=True))
    port = int(fresh_registry.host.rsplit(":", 1)[1])
    repository = converted.split("/", 1)[1]
    with throttled(port, 256 * 1024) as slow_port:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("apparate")), "pull", "-q",
             "--store", str(store), f"127.0.0.1:{slow_port}/{repository}:v2"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(3.0)
        process.send_signal(signal.SIGKILL)
        process.wait()
    journals = list((store / "ingest").glob("partial-delta-*.ranges"))
    assert journals, "the pull was killed before it finished a range"

    replanned = apparate.pull(f"{converted}:v2", PullOptions(store=store, dry_run=True))
    result = apparate.pull(f"{converted}:v2", PullOptions(store=store))

    assert result.bytes_fetched < planned.bytes_fetched
    # Neither fetches the chunk tables again, nor the frames written.
    assert replanned.bytes_fetched == result.bytes_fetched
    # The tables and frames the killed pull wrote are resumed, not reused.
    assert planned.bytes_resumed == 0
    assert replanned.bytes_resumed == result.bytes_resumed > 0
    assert replanned.bytes_reused == result.bytes_reused
    layer_bytes = sum(layer.size for layer in result.layers)
    assert (
        result.bytes_fetched + result.bytes_resumed + result.bytes_reused == layer_bytes
    )
    assert result.bytes_saved == result.bytes_reused
    assert list((store / "ingest").iterdir()) == []
    assert_store_verified(store)


def test_silent_rebuild_fails_and_resumes(converted, fresh_registry, tmp_path):
    # Every source goes silent on the ranges of the largest layer. Fetching
    # the layer whole over that link would cost many times the ranges.
    store = tmp_path / "pull"
    apparate.pull(f"{converted}:v1", PullOptions(store=store))
    planned = apparate.pull(f"{converted}:v2", PullOptions(store=store, dry_run=True))
    largest = max(planned.layers, key=lambda layer: layer.size).digest
    repository = converted.split("/", 1)[1]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        nothing_listens = f"http://127.0.0.1:{probe.getsockname()[1]}"

    with misbehaving(fresh_registry.host, str(largest), "silent") as faulty:
        config = Config(stall_timeout=0.5, mirrors={faulty: (Mirror(nothing_listens),)})
        with pytest.raises(TransferTimedOut) as caught:
            apparate.pull(
                f"{faulty}/{repository}:v2", PullOptions(store=store, config=config)
            )
    kept = [path.name for path in (store / "ingest").iterdir()]
    result = apparate.pull(f"{converted}:v2", PullOptions(store=store))

    assert "run again resumes the layer" in str(caught.value)
    assert f"partial-{largest.hex}" not in kept
    assert f"partial-delta-{largest.hex}" in kept
    # The other layer was stored by the failed pull. This one's table and
    # ranges are resumed, and only the rest is fetched.
    before = next(layer for layer in planned.layers if layer.digest == largest)
    after = next(layer for layer in result.layers if layer.digest == largest)
    assert after.bytes_resumed > 0
    assert after.bytes_fetched + after.bytes_resumed == before.bytes_fetched
    assert_store_verified(store)


def test_unusable_frames_fetch_layer_whole(converted, tmp_path):
    store = tmp_path / "pull"
    apparate.pull(f"{converted}:v1", PullOptions(store=store))
    with sqlite3.connect(store / INDEX_FILE) as db:
        db.execute("UPDATE chunks SET frame_offset = frame_offset + 7")

    result = apparate.pull(f"{converted}:v2", PullOptions(store=store))

    layer_bytes = sum(layer.size for layer in result.layers)
    # The chunk tables fetched for planning come to about 90 kB; fetching
    # every unusable frame one range at a time cost over 400 kB more.
    assert result.bytes_fetched <= layer_bytes + 200_000
    assert_store_verified(store)
