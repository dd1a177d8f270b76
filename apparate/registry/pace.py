"""The least speed a response body must keep, as curl's ``--speed-limit`` has it.

httpx's read timeout bounds the wait for each piece of a body. A server that
sends a byte now and then never trips it, and could hold a pull forever. A
body that brings fewer than ``MIN_BYTES`` in ``WINDOW_SECONDS`` is given up
as stalled, which the download code treats as a dropped transfer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

import httpx

# 1 KiB in 30 s is 0.27 kbit/s: far below any link a pull can use, and far
# above a server that trickles bytes to hold a connection open.
MIN_BYTES = 1024
WINDOW_SECONDS = 30.0


class SlowBody(httpx.ReadTimeout):
    """A body arrived slower than the least speed allowed."""


class Pace:
    """Watch the pieces of one body arrive; raise SlowBody when they come too slowly.

    The speed is checked as each piece arrives, over the window that piece
    ends. A body that sends nothing at all is left to the read timeout.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._window_start = clock()
        self._received = 0

    def arrived(self, size: int) -> None:
        self._received += size
        now = self._clock()
        elapsed = now - self._window_start
        if elapsed < WINDOW_SECONDS:
            return
        if self._received < MIN_BYTES:
            raise SlowBody(
                f"sent {self._received} bytes in {elapsed:.0f} s, under the "
                f"least speed of {MIN_BYTES} bytes in {WINDOW_SECONDS:g} s"
            )
        self._window_start, self._received = now, 0


def paced(
    pieces: Iterable[bytes], clock: Callable[[], float] = time.monotonic
) -> Iterator[bytes]:
    """Yield ``pieces``, raising SlowBody when they come too slowly (see Pace)."""
    pace = Pace(clock)
    for piece in pieces:
        pace.arrived(len(piece))
        yield piece
