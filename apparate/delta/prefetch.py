"""Fetch the chunk tables of an image's layers while its config is fetched.

A delta pull needs each chunked layer's table before it can plan, and the
manifest alone gives where the tables are. Starting their range requests as
soon as the manifest is known saves the config's round trip, and more where
the config's GET is redirected.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Self

from apparate.chunked.format import is_chunked_layer
from apparate.delta.assembler import RemoteTable, fetch_table, kept_table
from apparate.digest import Digest
from apparate.manifest import Descriptor, Manifest
from apparate.registry.client import RangeFetchStopped
from apparate.sources.pool import SourcePool
from apparate.store.layout import Store

log = logging.getLogger(__name__)

MAX_PARALLEL_TABLES = 4
_POLL_SECONDS = 0.1


@dataclass(frozen=True)
class _Started:
    """A table fetch under way, and the event that stops it alone."""

    layer: Descriptor
    future: Future[RemoteTable]
    stop: threading.Event


class TablePrefetch:
    """Table fetches started early, held in a context around the pull.

    ``start`` begins fetching the tables of the chunked layers the store
    lacks; ``take`` hands a table over, or raises what its fetch raised.
    A layer not started here is fetched when taken. Setting ``cancelled``
    stops the fetches before their next piece or attempt, and makes
    ``take`` raise RangeFetchStopped. Leaving the context sets it, then
    waits for the fetches, so none outlives the pool. A second ``start``,
    after a mirror's manifest failed, stops the fetches its manifest does
    not need.
    """

    def __init__(
        self, pool: SourcePool, store: Store, image: str, cancelled: threading.Event
    ) -> None:
        self._pool = pool
        self._store = store
        self._image = image
        self._cancelled = cancelled
        self._executor: ThreadPoolExecutor | None = None
        self._started: dict[Digest, _Started] = {}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, error_type: type[BaseException] | None, *rest: object) -> None:
        # After an error the pull stops. After success, the tables still left
        # are of no use. After Ctrl-C, a fetch blocked on a silent server is
        # not waited for.
        self._cancelled.set()
        interrupted = error_type is not None and issubclass(
            error_type, KeyboardInterrupt
        )
        if self._executor is not None:
            self._executor.shutdown(wait=not interrupted, cancel_futures=True)

    def start(self, manifest: Manifest) -> None:
        """Begin fetching the tables of ``manifest``'s chunked layers.

        Called again with another manifest, it stops the fetches of tables
        that manifest does not list, and starts those it lacks.
        """
        missing = {
            layer.digest: layer
            for layer in manifest.layers
            if is_chunked_layer(layer.media_type, layer.annotations)
            and not self._store.has_blob(layer.digest, layer.size)
        }
        for digest, started in list(self._started.items()):
            needed = missing.get(digest)
            if needed is None or needed.annotations != started.layer.annotations:
                started.stop.set()
                started.future.cancel()
                del self._started[digest]
        new = [
            layer for digest, layer in missing.items() if digest not in self._started
        ]
        if not new:
            return
        if self._executor is None:
            # Threads start only as fetches are submitted, so the pool is
            # sized for whichever manifest comes last.
            self._executor = ThreadPoolExecutor(
                MAX_PARALLEL_TABLES, thread_name_prefix="table"
            )
        for layer in new:
            stop = threading.Event()
            future = self._executor.submit(
                self._table_of, layer,
                lambda stop=stop: stop.is_set() or self._cancelled.is_set(),
            )  # fmt: skip
            self._started[layer.digest] = _Started(layer, future, stop)

    def take(self, layer: Descriptor) -> RemoteTable:
        """Return the table of ``layer``, fetched now if it was not started."""
        started = self._started.pop(layer.digest, None)
        if started is None or started.layer.annotations != layer.annotations:
            return self._table_of(layer, self._cancelled.is_set)
        # Polled with wait(), not result(timeout=...): result() raises the
        # fetch's own TimeoutError, if it had one, as if the wait had ended.
        while not wait([started.future], timeout=_POLL_SECONDS).done:
            if self._cancelled.is_set():
                raise RangeFetchStopped()
        return started.future.result()

    def _table_of(self, layer: Descriptor, stopped: Callable[[], bool]) -> RemoteTable:
        """Read the table back from a killed pull's partial rebuild, else fetch it."""
        subject = self.subject(layer)
        from_partial = kept_table(self._store, layer, subject)
        if from_partial is not None:
            return from_partial
        return fetch_table(self._pool, layer, subject, stopped)

    @property
    def store(self) -> Store:
        """The store the pull writes to, which also contains the chunks it reuses."""
        return self._store

    def subject(self, layer: Descriptor) -> str:
        """Name a layer of the image in messages, as the whole pull does."""
        return f"layer {layer.digest} of {self._image}"
