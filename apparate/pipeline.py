"""Worker threads joined by bounded queues, for CPU work beside a download.

zlib, ISA-L, zstd and hashlib release the GIL on large buffers, so stages on
their own threads use both cores of a small machine while the download
thread keeps reading. Bounded queues keep memory flat: a producer waits
when its consumer falls behind.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator, Iterator

QUEUE_DEPTH = 8
_POLL_SECONDS = 0.1


class StageClosed(Exception):
    """The stage was aborted; its producer should stop."""


class Stage:
    """A thread that passes each queued item to ``consume``, then calls ``finish``.

    ``finish`` is optional: a stage that only consumes has nothing to end.

    The first exception ``consume`` or ``finish`` raises is kept: ``put``
    re-raises it to the producer at once, and ``end`` after the thread ends.
    """

    def __init__(
        self,
        name: str,
        consume: Callable[[bytes], None],
        finish: Callable[[], None] | None = None,
    ) -> None:
        self._consume = consume
        self._finish = finish
        self._queue: queue.Queue[bytes | None] = queue.Queue(QUEUE_DEPTH)
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, item: bytes) -> None:
        """Queue ``item``, waiting while the queue is full."""
        while True:
            if self._error is not None:
                raise self._error
            if self._closed:
                raise StageClosed()
            try:
                self._queue.put(item, timeout=_POLL_SECONDS)
                return
            except queue.Full:
                continue

    def end(self) -> None:
        """Signal the end of input, wait for ``finish``, and raise what failed."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Stop the thread without calling ``finish``; queued items are dropped."""
        self._closed = True
        while self._thread.is_alive():
            self._drain()
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                pass
            self._thread.join(_POLL_SECONDS)

    def _drain(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None and not self._closed:
                self._call(self._consume, item)
        if self._error is None and not self._closed and self._finish is not None:
            self._call(self._finish)

    def _call(self, function: Callable[..., None], *args: bytes) -> None:
        try:
            function(*args)
        except BaseException as error:  # noqa: BLE001 - handed to the producer
            self._error = error


class _End:
    """The item a read-ahead thread queues after the last one."""


def read_ahead(items: Iterator[bytes], name: str) -> Generator[bytes, None, None]:
    """Yield ``items``, produced on a thread of their own up to ``QUEUE_DEPTH`` ahead.

    A stream that is produced with CPU work (inflating layers) and consumed
    by a slow reader (a socket) then does both at once. What the producer
    raises is raised here, in its place. Closing the returned generator
    stops the producer and closes ``items`` on the producer's thread.
    """
    pending: queue.Queue[bytes | _End | BaseException] = queue.Queue(QUEUE_DEPTH)
    stopped = threading.Event()

    def offer(item: bytes | _End | BaseException) -> bool:
        while not stopped.is_set():
            try:
                pending.put(item, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer(item):
                    return
            offer(_End())
        except BaseException as error:  # noqa: BLE001 - raised to the consumer
            offer(error)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while not isinstance(item := pending.get(), _End):
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stopped.set()
        thread.join()
