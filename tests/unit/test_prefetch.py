"""Chunk tables fetched while the config is: handed over once, or fetched again."""

import io
import threading
import time

import pytest

from apparate.chunked.format import ZSTD_LAYER_TYPES, table_annotations
from apparate.chunked.writer import write_chunked_layer
from apparate.delta.prefetch import TablePrefetch
from apparate.digest import Digest
from apparate.errors import ChunkTableCorrupt
from apparate.manifest import Descriptor, Manifest
from apparate.registry.client import RangeFetchStopped
from apparate.store.layout import Store
from tests.unit.test_chunked import CHUNKER, DEFAULT_ENCODER, make_tar


class BlobServer:
    """Serves ranges of one blob, as a source pool does, counting requests."""

    def __init__(self, blob: bytes) -> None:
        self.blob = blob
        self.requests = 0

    def fetch_range(self, layer, start, end, place, subject, stopped=None) -> list:
        self.requests += 1
        place(start, self.blob[start:end])
        return []


class StalledServer:
    """A source that sends nothing until the fetch is stopped."""

    def __init__(self) -> None:
        self.stopped_early = threading.Event()

    def fetch_range(self, layer, start, end, place, subject, stopped=None) -> None:
        for _ in range(200):
            if stopped is not None and stopped():
                self.stopped_early.set()
                raise RangeFetchStopped()
            time.sleep(0.05)
        raise AssertionError("the fetch was never stopped")


class StalledForOneLayer(StalledServer):
    """Stalls on the ranges of ``stalled`` and serves those of ``blob``."""

    def __init__(self, stalled: Digest, blob: bytes) -> None:
        super().__init__()
        self.stalled = stalled
        self.served = BlobServer(blob)

    def fetch_range(self, layer, start, end, place, subject, stopped=None) -> list:
        if layer.digest == self.stalled:
            return super().fetch_range(layer, start, end, place, subject, stopped)
        return self.served.fetch_range(layer, start, end, place, subject, stopped)


def chunked_layer(seed: int = 3) -> tuple[Descriptor, bytes]:
    output = io.BytesIO()
    converted = write_chunked_layer(
        io.BytesIO(make_tar(seed)), output.write, CHUNKER, DEFAULT_ENCODER
    )
    blob = output.getvalue()
    layer = Descriptor(
        ZSTD_LAYER_TYPES[0], Digest.of(blob), len(blob),
        annotations=table_annotations(converted.footer),
    )  # fmt: skip
    return layer, blob


def manifest_of(layer: Descriptor) -> Manifest:
    config = Descriptor("application/vnd.oci.image.config.v1+json", Digest.of(b"{}"), 2)
    return Manifest("application/vnd.oci.image.manifest.v1+json", config, [layer])


def test_prefetch_started_table_is_taken_once(tmp_path):
    layer, blob = chunked_layer()
    server = BlobServer(blob)

    with TablePrefetch(server, Store(tmp_path), "app:v2", threading.Event()) as tables:
        tables.start(manifest_of(layer))
        first = tables.take(layer)
        second = tables.take(layer)

    assert first == second
    assert first.table_offset == int(
        layer.annotations["dev.apparate.chunked.table-offset"]
    )
    assert server.requests == 2


def test_prefetch_other_annotations_fetch_again(tmp_path):
    layer, blob = chunked_layer()
    server = BlobServer(blob)
    damaged = dict(layer.annotations)
    damaged["dev.apparate.chunked.table-digest"] = str(Digest.of(b"other"))
    relabelled = Descriptor(
        layer.media_type, layer.digest, layer.size, annotations=damaged
    )

    with TablePrefetch(server, Store(tmp_path), "app:v2", threading.Event()) as tables:
        tables.start(manifest_of(layer))
        with pytest.raises(ChunkTableCorrupt):
            tables.take(relabelled)

    assert server.requests == 2


def test_prefetch_failure_is_raised_at_take(tmp_path):
    layer, blob = chunked_layer()
    server = BlobServer(blob[:-1] + bytes([blob[-1] ^ 1]))

    with TablePrefetch(server, Store(tmp_path), "app:v2", threading.Event()) as tables:
        tables.start(manifest_of(layer))
        with pytest.raises(ChunkTableCorrupt):
            tables.take(layer)

    assert server.requests == 1


def test_prefetch_skips_stored_layers(tmp_path):
    layer, blob = chunked_layer()
    server = BlobServer(blob)
    store = Store(tmp_path)
    store.put_blob(blob, layer.digest)

    with TablePrefetch(server, store, "app:v2", threading.Event()) as tables:
        tables.start(manifest_of(layer))

    assert server.requests == 0


def test_prefetch_cancelled_take_stops_waiting(tmp_path):
    layer, _ = chunked_layer()
    server = StalledServer()
    cancelled = threading.Event()

    with TablePrefetch(server, Store(tmp_path), "app:v2", cancelled) as tables:
        tables.start(manifest_of(layer))
        threading.Timer(0.2, cancelled.set).start()
        with pytest.raises(RangeFetchStopped):
            tables.take(layer)

    assert server.stopped_early.is_set()


def test_prefetch_failed_pull_stops_running_fetches(tmp_path):
    layer, _ = chunked_layer()
    server = StalledServer()
    cancelled = threading.Event()

    with (
        pytest.raises(KeyError),
        TablePrefetch(server, Store(tmp_path), "app:v2", cancelled) as tables,
    ):
        tables.start(manifest_of(layer))
        raise KeyError("the config named another platform")

    assert cancelled.is_set()
    assert server.stopped_early.is_set()


def test_second_manifest_stops_unneeded_fetches(tmp_path):
    mirror_layer, _ = chunked_layer(3)
    origin_layer, origin_blob = chunked_layer(4)
    server = StalledForOneLayer(mirror_layer.digest, origin_blob)

    with TablePrefetch(server, Store(tmp_path), "app:v2", threading.Event()) as tables:
        tables.start(manifest_of(mirror_layer))
        tables.start(manifest_of(origin_layer))
        table = tables.take(origin_layer)
        assert server.stopped_early.wait(5)

    assert table.table_offset == int(
        origin_layer.annotations["dev.apparate.chunked.table-offset"]
    )
    assert server.served.requests == 1


class BlockedThenParallel:
    """Blocks the fetch of ``blocked`` in a read that ignores ``stopped``.

    The other layers' fetches each wait until ``parallel`` of them run at
    once, so they fail when the pool cannot run them side by side.
    """

    def __init__(self, blocked: Digest, blobs: dict[Digest, bytes], parallel: int):
        self.blocked = blocked
        self.blobs = blobs
        self.release = threading.Event()
        self.together = threading.Barrier(parallel, timeout=5)

    def fetch_range(self, layer, start, end, place, subject, stopped=None) -> list:
        if layer.digest == self.blocked:
            self.release.wait(10)
            raise RangeFetchStopped()
        self.together.wait()
        place(start, self.blobs[layer.digest][start:end])
        return []


def test_second_manifest_gets_parallel_fetches(tmp_path):
    mirror_layer, _ = chunked_layer(3)
    origin = [chunked_layer(seed) for seed in (4, 5, 6)]
    server = BlockedThenParallel(
        mirror_layer.digest, {layer.digest: blob for layer, blob in origin}, 3
    )
    config = Descriptor("application/vnd.oci.image.config.v1+json", Digest.of(b"{}"), 2)
    origin_manifest = Manifest(
        "application/vnd.oci.image.manifest.v1+json", config,
        [layer for layer, _ in origin],
    )  # fmt: skip

    with TablePrefetch(server, Store(tmp_path), "app:v2", threading.Event()) as tables:
        tables.start(manifest_of(mirror_layer))
        tables.start(origin_manifest)
        try:
            fetched = [tables.take(layer) for layer, _ in origin]
        finally:
            server.release.set()

    assert [remote.table_offset for remote in fetched] == [
        int(layer.annotations["dev.apparate.chunked.table-offset"])
        for layer, _ in origin
    ]
