"""Rank the sources of an image's content and spread requests over them.

This is pure logic: measured round-trip times and throughputs go in, an
order and a choice of source for each request come out. A source's cost for
a request is the time it would take to finish: its round trip, plus the
bytes already sent its way and the request's own, at its throughput.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# A throughput for sources not measured yet. Only its ratio to measured
# ones matters, and an estimate this low lets measured sources win.
UNMEASURED_THROUGHPUT = 4 * 1024 * 1024
# The request size that ranking compares sources at.
TYPICAL_REQUEST = 1024 * 1024
# A range in flight is judged only after this long, so that its round trip
# and a slow start weigh little.
OUTPACE_AFTER_SECONDS = 2.0
# A range moves to another source only when staying would take this many
# times longer, because moving costs a new request and the estimate is rough.
OUTPACE_FACTOR = 4.0


@dataclass(frozen=True)
class Measure:
    """Figures of one source: round trip in seconds, throughput in bytes/s.

    ``rtt`` is None when the probes failed, and ``throughput`` when no body
    was timed yet.
    """

    rtt: float | None = None
    throughput: float | None = None

    @property
    def reachable(self) -> bool:
        return self.rtt is not None


def seconds_for(measure: Measure, size: int, queued: int = 0) -> float:
    """Estimate when a request of ``size`` bytes would finish at this source."""
    rate = measure.throughput or UNMEASURED_THROUGHPUT
    return (measure.rtt or 0.0) + (queued + size) / rate


def rank(measures: Sequence[Measure]) -> list[int]:
    """Order sources best first; return their positions in ``measures``.

    Reachable sources come first, fastest for a typical request first. Ties
    keep the given order, which lists mirrors before the origin. Sources
    whose probes failed stay last, in case they respond after all.
    """
    return sorted(
        range(len(measures)),
        key=lambda position: (
            not measures[position].reachable,
            seconds_for(measures[position], TYPICAL_REQUEST),
            position,
        ),
    )


def pick(measures: Sequence[Measure], queued: Sequence[int], size: int) -> int:
    """Choose the source for one request, given the bytes each one has queued.

    The request goes where it would finish first, so a fast source takes
    more requests and a second source takes one when the first is busy.
    Unreachable sources are chosen only when no other is left.
    """
    if not measures:
        raise ValueError("no source to choose from")
    return min(
        range(len(measures)),
        key=lambda position: (
            not measures[position].reachable,
            seconds_for(measures[position], size, queued[position]),
            position,
        ),
    )


def outpaced(received: int, elapsed: float, remaining: int, elsewhere: float) -> bool:
    """Tell whether a request in flight would finish much sooner at another source.

    ``received`` bytes arrived in the ``elapsed`` seconds since the request
    began, and ``elsewhere`` estimates the seconds the best other source
    needs for the ``remaining`` bytes (see ``seconds_for``).
    """
    if elapsed < OUTPACE_AFTER_SECONDS:
        return False
    rate = received / elapsed
    return remaining > rate * OUTPACE_FACTOR * elsewhere


def blend_throughput(
    known: float | None, observed: float, weight: float = 0.5
) -> float:
    """Fold a newly observed throughput into the known one."""
    if known is None:
        return observed
    return weight * observed + (1 - weight) * known
