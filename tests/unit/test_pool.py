"""Failover of the source pool, with stand-in clients that fail on cue."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from apparate.digest import Digest, DigestVerifier
from apparate.errors import DigestMismatch, ServerError, TruncatedBody
from apparate.manifest import Descriptor
from apparate.registry.client import Endpoint, RangesUnsupported
from apparate.registry.errors import status_error
from apparate.registry.transport import TransportSettings
from apparate.sources.pool import MIRROR, ORIGIN, Source, SourcePool
from apparate.sources.probe import PROBE_SECONDS, probe_timeout
from apparate.sources.ranking import Measure

BLOB = bytes(range(256)) * 64
DESCRIPTOR = Descriptor(
    "application/octet-stream",
    Digest("sha256", hashlib.sha256(BLOB).hexdigest()),
    len(BLOB),
)


class StandIn:
    """A client serving BLOB, or misbehaving in the way ``mode`` names.

    ``corrupt`` serves flipped bytes, ``truncate`` stops after 100 bytes,
    ``error`` fails with a 500, ``whole`` ignores ranges, ``flaky`` fails its first
    call only, ``missing`` answers 404, ``wrong-length`` announces a body of
    another size than the blob's.
    """

    def __init__(self, mode: str = "good") -> None:
        self.mode = mode
        self.calls = 0
        self.host = mode

    def fetch_blob(
        self, descriptor, write, subject, verifier, failover=False, stopped=None
    ):
        self.calls += 1
        start = verifier.bytes_read
        body = BLOB[start:]
        if self.mode == "corrupt":
            body = bytes(b ^ 0xFF for b in body)
        if self.mode == "truncate":
            body = body[:100]
        if self.mode == "error":
            raise ServerError("HTTP 500")
        if self.mode == "wrong-length":
            raise DigestMismatch("sent 10 bytes for blob x of size 16384")
        if self.mode == "missing":
            request = httpx.Request("GET", "https://registry.example/v2/a/blobs/x")
            body = b'{"errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown"}]}'
            answer = httpx.Response(404, request=request, stream=httpx.ByteStream(body))
            raise status_error(answer, subject)
        verifier.update(body)
        write(body)
        if self.mode == "truncate":
            raise TruncatedBody(
                f"{subject} from {self.host}: the transfer timed out once, last "
                f"at byte {start + 100} of {len(BLOB)} (no data for 1 s)"
            )
        verifier.verify()

    def fetch_range(self, descriptor, start, end, write, subject, stopped, failover):
        self.calls += 1
        if self.mode == "whole":
            raise RangesUnsupported("responded 200 to a range")
        if self.mode == "error" or (self.mode == "flaky" and self.calls == 1):
            raise ServerError("HTTP 500")
        write(start, BLOB[start:end])

    def close(self) -> None:
        pass


def pool_of(*clients: StandIn, origin_first: bool = False) -> SourcePool:
    """Make the last client the origin; earlier ones rank first unless ``origin_first``."""
    sources = []
    for position, client in enumerate(clients):
        role = ORIGIN if position == len(clients) - 1 else MIRROR
        endpoint = Endpoint(f"{client.mode}-{position}.example")
        rank = len(clients) - position if origin_first else position + 1
        measure = Measure(0.001 * rank, 1e8)
        sources.append(Source(endpoint, role, False, client, measure))
    return SourcePool(sources)


def fetch_whole(pool: SourcePool) -> bytes:
    received: list[bytes] = []
    verifier = DigestVerifier(DESCRIPTOR.digest, "blob", "x", DESCRIPTOR.size)
    pool.fetch_blob(DESCRIPTOR, received.append, "blob", verifier)
    return b"".join(received)


def fetch_span(pool: SourcePool, start: int, end: int) -> bytes:
    received = bytearray(end - start)

    def place(offset: int, data: bytes) -> None:
        received[offset - start : offset - start + len(data)] = data

    pool.fetch_range(DESCRIPTOR, start, end, place, "blob")
    return bytes(received)


def test_failed_mirror_resumes_at_origin(caplog):
    pool = pool_of(StandIn("truncate"), StandIn())

    assert fetch_whole(pool) == BLOB
    [record] = caplog.records
    # The source is named once, and the reason follows it.
    assert record.getMessage() == (
        "blob: source truncate-0.example: the transfer timed out once, last at "
        "byte 100 of 16384 (no data for 1 s); trying the next one"
    )


def test_missing_blob_warning_gives_reason_only(caplog):
    pool = pool_of(StandIn("missing"), StandIn())

    assert fetch_whole(pool) == BLOB
    [record] = caplog.records
    message = record.getMessage()
    assert message == (
        "blob: source missing-0.example: not found (HTTP 404) "
        "(BLOB_UNKNOWN: blob unknown); "
        "trying the next one"
    )


def test_corrupt_mirror_is_blamed():
    pool = pool_of(StandIn("corrupt"), StandIn())

    with pytest.raises(DigestMismatch) as caught:
        fetch_whole(pool)

    assert pool.blame(DESCRIPTOR.digest, caught.value)
    assert pool.sources[0].dropped is not None
    assert fetch_whole(pool) == BLOB


def test_mirror_dropped_meanwhile_is_still_blamed():
    pool = pool_of(StandIn("corrupt"), StandIn())

    with pytest.raises(DigestMismatch) as caught:
        fetch_whole(pool)
    # Another blob fetched from the mirror at the same time failed first.
    pool.drop(pool.sources[0], "served another blob with wrong bytes")

    assert pool.blame(DESCRIPTOR.digest, caught.value)
    assert fetch_whole(pool) == BLOB


def test_origin_alone_is_not_blamed():
    pool = pool_of(StandIn("corrupt"))

    with pytest.raises(DigestMismatch) as caught:
        fetch_whole(pool)

    assert not pool.blame(DESCRIPTOR.digest, caught.value)


def test_range_ignored_by_mirror_goes_to_origin():
    mirror = StandIn("whole")
    pool = pool_of(mirror, StandIn())

    assert fetch_span(pool, 0, 1000) == BLOB[:1000]
    assert fetch_span(pool, 1000, 2000) == BLOB[1000:2000]
    assert mirror.calls == 1


def test_every_source_failing_once_retries_origin():
    origin = StandIn("flaky")
    pool = pool_of(StandIn("error"), origin, origin_first=True)

    assert fetch_span(pool, 0, 1000) == BLOB[:1000]
    assert origin.calls == 2


def test_no_source_serving_ranges_raises():
    pool = pool_of(StandIn("whole"), StandIn("whole"))

    with pytest.raises(RangesUnsupported):
        fetch_span(pool, 0, 1000)


def test_unreached_mirror_is_not_asked_for_tags():
    reached, unreached, origin = StandIn(), StandIn(), StandIn()
    sources = [
        Source(Endpoint("reached.example"), MIRROR, True, reached, Measure(0.01)),
        Source(Endpoint("unreached.example"), MIRROR, True, unreached, Measure()),
        Source(Endpoint("origin.example"), ORIGIN, True, origin, Measure(0.02)),
    ]

    resolvers = SourcePool(sources).resolvers()

    assert [source.name for source in resolvers] == [
        "reached.example",
        "origin.example",
    ]


# Each row: the host's connect timeout (None: not set, 0: no limit), then the
# probe's connect timeout.
PROBE_TIMEOUT_CASES = {
    "host without its own timeout": (None, PROBE_SECONDS),
    "shorter dial_timeout": (0.5, 0.5),
    "longer dial_timeout": (30.0, PROBE_SECONDS),
    "no limit": (0.0, PROBE_SECONDS),
}


@pytest.mark.parametrize("own, expected", PROBE_TIMEOUT_CASES.values(),
                         ids=PROBE_TIMEOUT_CASES)  # fmt: skip
def test_probe_connect_timeout(own, expected):
    timeouts = () if own is None else (("mirror.test:5000", own),)
    settings = TransportSettings(connect_timeouts=timeouts)

    timeout = probe_timeout(settings, "mirror.test:5000")

    assert timeout.connect == expected
    assert timeout.read == PROBE_SECONDS


class ManualClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_throughput_counts_overlapping_requests_once(monkeypatch):
    clock = ManualClock()
    monkeypatch.setattr("apparate.sources.pool.time.monotonic", clock)
    pool = pool_of(StandIn())
    source = pool.origin
    piece = 64 * 1024

    # Two requests open at once for 2 s, then one alone for 1 s.
    pool._begin(source)
    pool._begin(source)
    clock.now += 2
    pool._time(source, piece)
    pool._time(source, piece)
    pool._begin(source)
    clock.now += 1
    pool._time(source, piece)

    assert source.seconds_fetching == 3
    assert source.observed_throughput == 3 * piece / 3
    assert source.measure.throughput == piece


def test_source_failing_twice_for_a_blob_warns_once(caplog):
    mirror, origin = StandIn("truncate"), StandIn()
    pool = pool_of(mirror, origin)
    source = pool.sources[0]

    # Two ranges of one blob, fetched side by side, meet the same failure.
    pool._leave(source, DESCRIPTOR.digest, "blob", OSError("HTTP 500"))
    pool._leave(source, DESCRIPTOR.digest, "blob", OSError("HTTP 500"))

    assert len(caplog.records) == 1


def test_source_that_sent_no_bytes_is_not_blamed():
    pool = pool_of(StandIn("truncate"), StandIn("error"), StandIn("corrupt"))

    with pytest.raises(DigestMismatch) as caught:
        fetch_whole(pool)

    assert pool.blame(DESCRIPTOR.digest, caught.value)
    assert pool.sources[0].dropped is not None
    assert pool.sources[1].dropped is None


def test_range_sources_are_those_that_wrote():
    pool = pool_of(StandIn("error"), StandIn())

    served = pool.fetch_range(DESCRIPTOR, 0, 1000, lambda offset, data: None, "blob")

    assert served == [pool.origin]


def test_mirror_announcing_wrong_length_is_blamed():
    pool = pool_of(StandIn("wrong-length"), StandIn())

    with pytest.raises(DigestMismatch) as caught:
        fetch_whole(pool)

    assert pool.blame(DESCRIPTOR.digest, caught.value)
    assert pool.sources[0].dropped is not None


class Crawler(StandIn):
    """A client that writes ranges in 1 KiB pieces, ``seconds`` apart on ``clock``."""

    def __init__(self, clock: ManualClock, seconds: float) -> None:
        super().__init__("crawl")
        self.clock = clock
        self.seconds = seconds
        self.written = 0

    def fetch_range(self, descriptor, start, end, write, subject, stopped, failover):
        self.calls += 1
        for offset in range(start, end, 1024):
            self.clock.now += self.seconds
            piece = BLOB[offset : min(offset + 1024, end)]
            write(offset, piece)
            self.written += len(piece)

    def fetch_blob(
        self, descriptor, write, subject, verifier, failover=False, stopped=None
    ):
        self.calls += 1
        for offset in range(verifier.bytes_read, len(BLOB), 1024):
            self.clock.now += self.seconds
            piece = BLOB[offset : offset + 1024]
            verifier.update(piece)
            write(piece)
            self.written += len(piece)
        verifier.verify()


def crawler_pool(monkeypatch, seconds: float, origin_throughput: float):
    """Make a pool of a crawling mirror, ranked first, and a good origin."""
    clock = ManualClock()
    monkeypatch.setattr("apparate.sources.pool.time.monotonic", clock)
    mirror, origin = Crawler(clock, seconds), StandIn()
    sources = [
        Source(Endpoint("crawl.example"), MIRROR, False, mirror, Measure(0.001, 1e9)),
        Source(Endpoint("origin.example"), ORIGIN, False, origin, Measure(0.002, origin_throughput)),
    ]  # fmt: skip
    return SourcePool(sources), mirror, origin


def test_crawling_mirror_gives_way_to_origin(monkeypatch, caplog):
    # 1 KiB every 0.5 s, against an origin measured at 100 MB/s.
    pool, mirror, origin = crawler_pool(monkeypatch, 0.5, 1e8)

    data = fetch_span(pool, 0, len(BLOB))

    assert data == BLOB
    assert mirror.written < len(BLOB) // 2
    assert origin.calls == 1
    assert pool.sources[0].measure.throughput < 4096
    assert "sends 2 kB/s, much slower than another source" in caplog.text


def test_crawling_mirror_gives_way_for_whole_blob(monkeypatch, caplog):
    pool, mirror, origin = crawler_pool(monkeypatch, 0.5, 1e8)

    assert fetch_whole(pool) == BLOB
    assert mirror.written < len(BLOB) // 2
    assert origin.calls == 1
    assert "much slower than another source" in caplog.text


def test_crawling_mirror_not_asked_again(monkeypatch):
    pool, mirror, origin = crawler_pool(monkeypatch, 0.5, 1e8)
    fetch_span(pool, 0, 8192)

    assert fetch_span(pool, 8192, len(BLOB)) == BLOB[8192:]
    assert mirror.calls == 1
    assert origin.calls == 2


def test_mirror_nearly_as_fast_keeps_its_range(monkeypatch, caplog):
    # 1 KiB every 0.2 s for 3.2 s, against an origin measured at twice that.
    pool, mirror, origin = crawler_pool(monkeypatch, 0.2, 1e4)

    assert fetch_span(pool, 0, len(BLOB)) == BLOB
    assert mirror.written == len(BLOB)
    assert origin.calls == 0
    assert not caplog.records


def test_crawling_origin_alone_keeps_its_range(monkeypatch):
    clock = ManualClock()
    monkeypatch.setattr("apparate.sources.pool.time.monotonic", clock)
    origin = Crawler(clock, 0.5)
    endpoint = Endpoint("origin.example")
    pool = SourcePool([Source(endpoint, ORIGIN, False, origin, Measure(0.001))])

    assert fetch_span(pool, 0, len(BLOB)) == BLOB
    assert origin.written == len(BLOB)


@pytest.mark.parametrize("fetch", ["range", "whole"])
def test_crawling_mirror_as_last_resort(monkeypatch, fetch):
    # The origin, measured fast, fails once the mirror gave way to it.
    pool, mirror, origin = crawler_pool(monkeypatch, 0.5, 1e8)
    origin.mode = "error"

    if fetch == "range":
        assert fetch_span(pool, 0, len(BLOB)) == BLOB
    else:
        assert fetch_whole(pool) == BLOB
    assert origin.calls == 1
    assert mirror.calls == 2


def test_mirror_slowed_midway_ranks_lower(monkeypatch):
    # 100 MB in 1 s earlier in the pull, then 1 KiB every 0.5 s.
    pool, _, _ = crawler_pool(monkeypatch, 0.5, 1e8)
    mirror = pool.sources[0]
    mirror.bytes_fetched = 10**8
    mirror.seconds_fetching = 1.0

    fetch_span(pool, 0, len(BLOB))

    assert mirror.measure.throughput < 4096
    assert pool.ranked()[0] is pool.origin


def test_mirror_sharing_bandwidth_keeps_its_range(monkeypatch, caplog):
    # 1 KiB every 0.2 s on each of four requests open at the mirror, against
    # an origin measured at about 1.5 times the mirror's 20 KiB/s in all.
    pool, mirror, origin = crawler_pool(monkeypatch, 0.2, 3e4)
    for _ in range(3):
        pool._begin(pool.sources[0])

    assert fetch_span(pool, 0, len(BLOB)) == BLOB
    assert mirror.written == len(BLOB)
    assert origin.calls == 0
    assert not caplog.records


def test_crawling_mirror_warns_once_for_two_blobs(monkeypatch, caplog):
    pool, mirror, _ = crawler_pool(monkeypatch, 0.5, 1e8)
    other = Descriptor(DESCRIPTOR.media_type, Digest.of(b"other"), DESCRIPTOR.size)

    def place(offset: int, data: bytes) -> None:
        pass

    pool.fetch_range(DESCRIPTOR, 0, len(BLOB), place, "blob")
    # As if the second blob's range had started before the first gave way.
    pool.sources[0].measure = Measure(0.001, 1e9)
    pool.fetch_range(other, 0, len(BLOB), place, "other blob")

    assert mirror.calls == 2
    assert caplog.text.count("much slower than another source") == 1
