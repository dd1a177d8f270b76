"""Fetch blobs and ranges from the best of several sources, with failover.

The sources of one pull are the origin registry and its mirrors. Each
request goes to the source where it would finish first (see ``ranking``).
A source that fails a request is left for that blob, and the request goes on
at the next one from the byte where it stopped. A source that responds to a
range request with the whole blob (200) is sent no more ranges of that blob.
A source whose bytes fail verification is dropped for the rest of the pull.
A request in flight moves to another source when that one would finish it
much sooner. The slow source serves that blob again only if every faster
source fails.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from apparate.digest import Digest, DigestVerifier
from apparate.errors import (
    ApparateError,
    AuthError,
    DigestMismatch,
    NotFound,
    RegistryError,
    TruncatedBody,
    reason_for_warning,
)
from apparate.manifest import Descriptor
from apparate.registry.client import (
    Endpoint,
    RangeFetchStopped,
    RangesUnsupported,
    RegistryClient,
)
from apparate.sources.ranking import Measure, outpaced, pick, rank, seconds_for

log = logging.getLogger(__name__)

ORIGIN = "origin"
MIRROR = "mirror"
# Failures after which a request moves on to the next source.
_SOURCE_FAILURES = (AuthError, NotFound, RegistryError, TruncatedBody)
# Bodies shorter than this measure round trips more than throughput.
_MIN_TIMED_BYTES = 64 * 1024
# How often a request in flight is compared with the other sources.
_PACE_CHECK_SECONDS = 0.25


class _Outpaced(Exception):
    """Raised from a request's write to move the request off a source that is too slow."""


@dataclass(eq=False)
class Source:
    """One place to fetch content from, with what was measured of it."""

    endpoint: Endpoint
    role: str
    resolve: bool
    client: RegistryClient
    measure: Measure = field(default_factory=Measure)
    dropped: str | None = None
    bytes_fetched: int = 0
    # Seconds during which at least one request to this source was open.
    # Requests overlap, so this is wall time, not the sum of their durations.
    seconds_fetching: float = 0.0
    open_requests: int = 0
    busy_since: float = 0.0

    @property
    def name(self) -> str:
        return str(self.endpoint)

    @property
    def observed_throughput(self) -> float | None:
        """Bytes per second over this pull's timed requests, if enough were timed."""
        if self.bytes_fetched < _MIN_TIMED_BYTES or self.seconds_fetching <= 0:
            return None
        return self.bytes_fetched / self.seconds_fetching


class SourcePool:
    """The sources of one pull; the origin is always the last one listed."""

    def __init__(self, sources: list[Source]) -> None:
        if not sources or sources[-1].role != ORIGIN:
            raise ValueError("the origin must be the last source")
        self.sources = sources
        self._lock = threading.Lock()
        self._failed: dict[Digest, set[Source]] = {}
        self._no_ranges: dict[Digest, set[Source]] = {}
        # The sources that gave way to a faster one for each blob.
        self._outpaced: dict[Digest, set[Source]] = {}
        self._warned_slow: set[Source] = set()
        self._queued: dict[Source, int] = dict.fromkeys(sources, 0)
        # The sources that wrote bytes of each whole-blob download.
        self._served_blob: dict[Digest, set[Source]] = {}

    @property
    def origin(self) -> Source:
        return self.sources[-1]

    @property
    def host(self) -> str:
        return self.origin.client.host

    def close(self) -> None:
        for source in self.sources:
            source.client.close()

    def ranked(self) -> list[Source]:
        """Return the sources not dropped, best first."""
        live = [source for source in self.sources if source.dropped is None]
        return [live[position] for position in rank([s.measure for s in live])]

    def resolvers(self, by_digest: bool = False) -> list[Source]:
        """Return the sources to ask for the manifest: mirrors, then the origin.

        Only mirrors allowed to resolve tags get a request for a tag. A
        manifest named ``by_digest`` is content, which every mirror serves,
        and containerd's resolver needs only the pull capability for it. A
        mirror that no probe reached is left out, so it costs no timeout.
        """
        mirrors = [
            source
            for source in self.ranked()
            if source.role == MIRROR
            and source.measure.reachable
            and (source.resolve or by_digest)
        ]
        return [*mirrors, self.origin]

    def bytes_by_source(self) -> dict[str, int]:
        return {s.name: s.bytes_fetched for s in self.sources if s.bytes_fetched}

    def fetch_blob(
        self,
        descriptor: Descriptor,
        write: Callable[[bytes], None],
        subject: str,
        verifier: DigestVerifier | None = None,
        stopped: Callable[[], bool] | None = None,
    ) -> None:
        """Stream a whole blob, moving to the next source when one fails.

        When ``stopped()`` turns true, no new attempt starts (see the client).

        The next source resumes after the bytes already received. A digest
        mismatch is raised as it is: call ``blame`` to drop the source that
        served the blob before fetching it again.
        """
        if verifier is None:
            verifier = DigestVerifier(
                descriptor.digest, subject, self.host, descriptor.size
            )
        pace: _Pace | None = None

        def track(data: bytes) -> None:
            write(data)
            if pace is not None and pace.outpaced(verifier.bytes_read):
                raise _Outpaced()

        while True:
            candidates, last_resort = self._candidates(descriptor.digest, False)
            source = candidates[0]
            verifier.source = source.name
            served = self._served_blob.setdefault(descriptor.digest, set())
            if verifier.bytes_read == 0:
                served.clear()
            before = verifier.bytes_read
            pace = None
            if not last_resort:
                pace = _Pace(
                    self, source, descriptor.digest, before, descriptor.size, False
                )
            slow_rate: float | None = None
            self._begin(source)
            try:
                source.client.fetch_blob(
                    descriptor,
                    track,
                    subject,
                    verifier,
                    failover=not last_resort,
                    stopped=stopped,
                )
                return
            except DigestMismatch:
                # Blamed even before its first byte: a whole body whose
                # announced length is wrong is rejected unread.
                served.add(source)
                raise
            except _Outpaced:
                assert pace is not None
                slow_rate = pace.rate(verifier.bytes_read)
            except _SOURCE_FAILURES as error:
                if last_resort:
                    raise
                self._leave(source, descriptor.digest, subject, error)
            finally:
                # Only a source that wrote bytes can be blamed for them.
                if verifier.bytes_read > before:
                    served.add(source)
                self._time(source, verifier.bytes_read - before)
            if slow_rate is not None:
                self._give_way(source, descriptor.digest, subject, slow_rate)

    def fetch_range(
        self,
        descriptor: Descriptor,
        start: int,
        end: int,
        write: Callable[[int, bytes], None],
        subject: str,
        stopped: Callable[[], bool] | None = None,
    ) -> list[Source]:
        """Fetch bytes ``start`` to ``end`` of a blob; return the sources that wrote them.

        Raises RangesUnsupported when no source is left that serves ranges
        of this blob, and the last failure when every source failed.
        """
        position = [start]
        served: list[Source] = []
        pace: _Pace | None = None

        def track(offset: int, data: bytes) -> None:
            write(offset, data)
            position[0] = offset + len(data)
            if pace is not None and pace.outpaced(position[0]):
                raise _Outpaced()

        while position[0] < end:
            if stopped is not None and stopped():
                raise RangeFetchStopped()
            source, last_resort = self._choose(descriptor.digest, end - position[0])
            before = position[0]
            # The origin as last resort has no other source to give way to.
            pace = None
            if not last_resort:
                pace = _Pace(self, source, descriptor.digest, before, end, True)
            slow_rate: float | None = None
            self._begin(source)
            try:
                source.client.fetch_range(
                    descriptor,
                    position[0],
                    end,
                    track,
                    subject,
                    stopped,
                    failover=not last_resort,
                )
            except RangeFetchStopped:
                raise
            except _Outpaced:
                assert pace is not None
                slow_rate = pace.rate(position[0])
            except RangesUnsupported as error:
                if last_resort:
                    raise
                self._stop_ranges(source, descriptor.digest, subject, error)
            except _SOURCE_FAILURES as error:
                if last_resort:
                    raise
                self._leave(source, descriptor.digest, subject, error)
            finally:
                with self._lock:
                    self._queued[source] -= end - before
                if position[0] > before:
                    served.append(source)
                self._time(source, position[0] - before)
            if slow_rate is not None:
                self._give_way(source, descriptor.digest, subject, slow_rate)
        return served

    def blame(self, digest: Digest, error: ApparateError) -> bool:
        """Drop the mirrors that served a blob that failed verification.

        Returns whether a mirror served part of the blob, so it is worth
        fetching again. That mirror may have been dropped already, over
        another blob fetched at the same time. The origin is never dropped:
        its bytes alone failing means the image is bad.
        """
        mirrors = [
            source
            for source in self._served_blob.pop(digest, set())
            if source.role != ORIGIN
        ]
        for source in mirrors:
            reason = (
                f"served {digest} with bytes that failed verification ({error.message})"
            )
            self.drop(source, reason)
        return bool(mirrors)

    def drop(self, source: Source, reason: str) -> None:
        """Stop using a source for the rest of the pull, with a warning."""
        if source.role == ORIGIN or source.dropped is not None:
            return
        source.dropped = reason
        log.warning(
            "source %s dropped for the rest of the pull: %s", source.name, reason
        )

    def _candidates(self, digest: Digest, ranges: bool) -> tuple[list[Source], bool]:
        """Return the sources for ``digest``, best first, and whether it is the last resort.

        A source that gave way to a faster one is chosen again only once
        every other source failed. The last resort is the origin with no
        other source left.
        """
        with self._lock:
            failed = self._failed.get(digest, set())
            slow = self._outpaced.get(digest, set())
            rangeless = self._no_ranges.get(digest, set()) if ranges else set()
            usable = [
                s for s in self.ranked() if s not in failed and s not in rangeless
            ]
        fast = [s for s in usable if s not in slow]
        if fast:
            return fast, fast == [self.origin] and fast == usable
        if usable:
            return usable, usable == [self.origin]
        if ranges and self.origin in rangeless:
            raise RangesUnsupported(f"no source serves ranges of {digest}")
        # Every source failed once: the origin gets the request again, now
        # with its usual retries, as a pull without mirrors would.
        return [self.origin], True

    def _choose(self, digest: Digest, size: int) -> tuple[Source, bool]:
        """Pick the source for one range, and whether it is the last resort.

        The last resort is the origin with no other source left; a request
        there retries as a pull without mirrors would, instead of failing over.
        """
        candidates, last_resort = self._candidates(digest, ranges=True)
        with self._lock:
            queued = [self._queued[s] for s in candidates]
            source = candidates[pick([s.measure for s in candidates], queued, size)]
            self._queued[source] += size
        return source, last_resort

    def _leave(
        self, source: Source, digest: Digest, subject: str, error: Exception
    ) -> None:
        if self._exclude(source, digest):
            names = (source.name, source.client.host)
            log.warning(
                "%s: source %s: %s; trying the next one",
                subject,
                source.name,
                reason_for_warning(error, subject, names),
            )

    def _give_way(
        self, source: Source, digest: Digest, subject: str, rate: float
    ) -> None:
        """Send no more requests for ``digest`` to a source much slower than another.

        Its throughput becomes this request's rate, unless a lower one was
        measured, so that requests for other blobs go elsewhere too. It is
        called after ``_time``, which sets the throughput to the pull's
        average. NOTE: the next request to the source that ends sets the
        average again.
        """
        with self._lock:
            known = source.measure.throughput
            if known is None or rate < known:
                source.measure = Measure(source.measure.rtt, rate)
            self._outpaced.setdefault(digest, set()).add(source)
            # Blobs fetched side by side all give way, so one warning covers them.
            first = source not in self._warned_slow
            self._warned_slow.add(source)
        if first:
            log.warning(
                "%s: source %s sends %d kB/s, much slower than another source "
                "would; trying the next one",
                subject,
                source.name,
                rate // 1000,
            )

    def _exclude(self, source: Source, digest: Digest) -> bool:
        """Leave ``source`` out of the requests for ``digest``; return whether it was in."""
        with self._lock:
            failed = self._failed.setdefault(digest, set())
            if source in failed:
                # Another range of the blob met the same failure and warned.
                return False
            failed.add(source)
            return True

    def seconds_elsewhere(
        self, source: Source, digest: Digest, size: int, ranges: bool
    ) -> float | None:
        """Estimate the seconds the best source other than ``source`` needs for ``size`` bytes.

        None when no other reachable source serves ``digest`` (its ranges,
        with ``ranges``).
        """
        try:
            candidates, _ = self._candidates(digest, ranges)
        except RangesUnsupported:
            return None
        others = [s for s in candidates if s is not source and s.measure.reachable]
        with self._lock:
            estimates = [seconds_for(s.measure, size, self._queued[s]) for s in others]
        return min(estimates, default=None)

    def _stop_ranges(
        self, source: Source, digest: Digest, subject: str, error: Exception
    ) -> None:
        """Send no more ranges of ``digest`` to ``source``, warning once.

        Ranges fetched side by side can all meet the same rejection, so only
        the first one warns. The error names the blob and the source already.
        """
        with self._lock:
            sources_without_ranges = self._no_ranges.setdefault(digest, set())
            if source in sources_without_ranges:
                return
            sources_without_ranges.add(source)
        log.warning("%s; its other ranges go to other sources", error)

    def _begin(self, source: Source) -> None:
        """Count a request to ``source`` as open, starting its busy time if it is the first."""
        with self._lock:
            if source.open_requests == 0:
                source.busy_since = time.monotonic()
            source.open_requests += 1

    def _time(self, source: Source, received: int) -> None:
        """Add an ended request's bytes and the busy time since the last count to ``source``.

        Requests to one source overlap, so the seconds counted are those in
        which at least one was open. Summing each request's duration would
        measure one connection, a fraction of what the source delivers.
        """
        now = time.monotonic()
        with self._lock:
            source.open_requests -= 1
            source.seconds_fetching += now - source.busy_since
            source.busy_since = now
            source.bytes_fetched += received
            observed = source.observed_throughput
            if observed is not None:
                source.measure = Measure(source.measure.rtt, observed)


class _Pace:
    """The progress of one request at one source, to tell when another would finish it sooner.

    ``start`` and ``end`` are the bytes of the blob requested, and
    ``ranges`` is true for a range request.
    """

    def __init__(
        self,
        pool: SourcePool,
        source: Source,
        digest: Digest,
        start: int,
        end: int,
        ranges: bool,
    ) -> None:
        self._pool = pool
        self._ranges = ranges
        self._source = source
        self._digest = digest
        self._start = start
        self._end = end
        self._began = time.monotonic()
        self._checked = self._began

    def rate(self, position: int) -> float:
        """Return the bytes per second received since the request began."""
        elapsed = time.monotonic() - self._began
        return (position - self._start) / elapsed if elapsed > 0 else 0.0

    def outpaced(self, position: int) -> bool:
        """Tell whether another source would fetch the rest much sooner."""
        now = time.monotonic()
        if now - self._checked < _PACE_CHECK_SECONDS:
            return False
        self._checked = now
        remaining = self._end - position
        elsewhere = self._pool.seconds_elsewhere(
            self._source, self._digest, remaining, self._ranges
        )
        if elsewhere is None:
            return False
        # Requests to one source share its bandwidth, and the other source's
        # figure is for all its requests, so this one's bytes count as many
        # times as the source has requests open.
        received = (position - self._start) * max(1, self._source.open_requests)
        return outpaced(received, now - self._began, remaining, elsewhere)
