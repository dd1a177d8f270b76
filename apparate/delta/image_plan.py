"""Plan the chunked layers of one image together, once every table is in.

Layers of one image can share chunks, for instance when a later layer copies
files of an earlier one or changes their mode. Planned one by one, each
layer would fetch the shared frames again. Planned together, the first layer
that lacks a frame fetches it, and the others copy it from that layer's blob
once it is stored. A dry run uses the same plans, so its figures are what
the pull fetches.
"""

from __future__ import annotations

import threading

from apparate.chunked.format import is_chunked_layer
from apparate.delta.assembler import RemoteTable, can_recompress, known_frames
from apparate.delta.planner import LayerToPlan, Plan, plan_image
from apparate.delta.prefetch import TablePrefetch
from apparate.digest import Digest
from apparate.manifest import Descriptor
from apparate.registry.client import RangeFetchStopped
from apparate.store.chunk_index import ChunkIndex


class ImagePlans:
    """The plans of an image's chunked layers, made on the first request.

    ``layers`` are the layers the pull fetches, in manifest order. The
    first ``plan_for`` takes every table. When a layer's table fetch failed,
    ``plan_for`` raises that error for it, and its frames are offered to no
    other layer.
    """

    def __init__(
        self, index: ChunkIndex, tables: TablePrefetch, layers: list[Descriptor]
    ) -> None:
        self._index = index
        self._tables = tables
        self._layers = [
            layer
            for layer in layers
            if is_chunked_layer(layer.media_type, layer.annotations)
        ]
        self._lock = threading.Lock()
        self._planned = False
        self._plans: dict[Digest, tuple[RemoteTable, Plan]] = {}
        self._errors: dict[Digest, Exception] = {}

    def plan_for(self, layer: Descriptor) -> tuple[RemoteTable, Plan]:
        """Return the layer's verified table and plan, or raise its table's error."""
        with self._lock:
            if not self._planned:
                self._make()
        error = self._errors.get(layer.digest)
        if error is not None:
            raise error
        found = self._plans.get(layer.digest)
        if found is None:
            raise ValueError(f"layer {layer.digest} was not planned")
        return found

    def subject(self, layer: Descriptor) -> str:
        """Name a layer of the image in messages, as the whole pull does."""
        return self._tables.subject(layer)

    def _make(self) -> None:
        remotes: dict[Digest, RemoteTable] = {}
        for layer in self._layers:
            try:
                remotes[layer.digest] = self._tables.take(layer)
            except RangeFetchStopped:
                raise
            except Exception as error:  # noqa: BLE001 - raised to that layer
                self._errors[layer.digest] = error
        planned = [
            LayerToPlan(
                digest,
                remote.table,
                known_frames(self._index, remote.table, self._tables.store.has_blob),
                can_recompress(remote.table),
            )
            for digest, remote in remotes.items()
        ]
        for layer, plan in zip(planned, plan_image(planned), strict=True):
            self._plans[layer.blob] = (remotes[layer.blob], plan)
        self._planned = True
