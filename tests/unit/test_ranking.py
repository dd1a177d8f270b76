"""Ranking sources and spreading requests over them."""

from __future__ import annotations

import pytest

from apparate.sources.ranking import (
    UNMEASURED_THROUGHPUT,
    Measure,
    blend_throughput,
    outpaced,
    pick,
    rank,
    seconds_for,
)

MB = 1024 * 1024

RANK_CASES = {
    "shorter round trip first": ([Measure(0.05), Measure(0.01)], [1, 0]),
    "faster throughput beats shorter round trip": (
        [Measure(0.001, 1 * MB), Measure(0.02, 100 * MB)],
        [1, 0],
    ),
    "unreachable last": ([Measure(None), Measure(0.5)], [1, 0]),
    "ties keep the given order": ([Measure(0.01), Measure(0.01)], [0, 1]),
    "all unreachable keep the given order": ([Measure(), Measure()], [0, 1]),
    "measured throughput beats unmeasured": (
        [Measure(0.01), Measure(0.01, 50 * MB)],
        [1, 0],
    ),
}


@pytest.mark.parametrize("measures, expected", RANK_CASES.values(), ids=RANK_CASES)
def test_rank(measures, expected):
    assert rank(measures) == expected


PICK_CASES = {
    "idle sources: the faster": (
        [Measure(0.01, 10 * MB), Measure(0.01, 20 * MB)],
        [0, 0],
        1,
    ),
    "busy fast source: the idle one": (
        [Measure(0.01, 10 * MB), Measure(0.01, 20 * MB)],
        [0, 40 * MB],
        0,
    ),
    "unreachable only when alone": ([Measure(None), Measure(1.0, 1)], [0, 10 * MB], 1),
    "single source": ([Measure(None)], [0], 0),
}


@pytest.mark.parametrize(
    "measures, queued, expected", PICK_CASES.values(), ids=PICK_CASES
)
def test_pick(measures, queued, expected):
    assert pick(measures, queued, 4 * MB) == expected


def test_pick_without_sources_raises():
    with pytest.raises(ValueError):
        pick([], [], 1)


def test_seconds_for_counts_queued_bytes():
    measure = Measure(0.1, 10 * MB)

    assert seconds_for(measure, 10 * MB) == pytest.approx(1.1)
    assert seconds_for(measure, 10 * MB, queued=10 * MB) == pytest.approx(2.1)


def test_seconds_for_unmeasured_uses_default():
    assert seconds_for(Measure(), UNMEASURED_THROUGHPUT) == pytest.approx(1.0)


def test_blend_throughput():
    assert blend_throughput(None, 8.0) == 8.0
    assert blend_throughput(4.0, 8.0) == 6.0


OUTPACED_CASES = {
    # received bytes, elapsed s, remaining bytes, seconds elsewhere, moves
    "judged only after the grace period": (0, 1.9, 10**6, 0.01, False),
    "nothing received after it": (0, 2.0, 10**6, 0.01, True),
    "much slower than elsewhere": (20_000, 2.0, 10**6, 1.0, True),
    "slower within the factor": (200_000, 2.0, 10**6, 3.0, False),
    "faster than elsewhere": (10**6, 2.0, 10**6, 1.0, False),
    "done": (10**6, 5.0, 0, 0.01, False),
}


@pytest.mark.parametrize(
    "received, elapsed, remaining, elsewhere, moves",
    OUTPACED_CASES.values(), ids=OUTPACED_CASES.keys(),
)  # fmt: skip
def test_outpaced(received, elapsed, remaining, elsewhere, moves):
    assert outpaced(received, elapsed, remaining, elsewhere) == moves
