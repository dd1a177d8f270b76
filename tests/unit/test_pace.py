"""Tests for the least speed a response body must keep."""

from __future__ import annotations

import pytest

from apparate.registry.pace import MIN_BYTES, WINDOW_SECONDS, SlowBody, paced


class SteppingClock:
    """A clock that returns the given times in turn."""

    def __init__(self, times: list[float]) -> None:
        self._times = iter(times)

    def __call__(self) -> float:
        return next(self._times)


# Each row: the pieces' sizes, the times they arrive (after a start at 0),
# and whether the body is given up as too slow.
CASES = {
    "fast body": ([65536] * 3, [0.1, 0.2, 0.3], False),
    "long body at the least speed": ([MIN_BYTES] * 4, [30, 60, 90, 120], False),
    "a byte now and then": ([1] * 4, [10, 20, 29, 31], True),
    "a pause, then a burst": ([65536], [WINDOW_SECONDS + 5], False),
    "slow after a fast start": ([65536, 10, 10], [1, 31, 62], True),
    "short body within the window": ([3, 3], [5, 29], False),
}


@pytest.mark.parametrize(
    ("sizes", "times", "too_slow"), CASES.values(), ids=CASES.keys()
)
def test_paced(sizes, times, too_slow):
    pieces = [b"x" * size for size in sizes]
    body = paced(pieces, clock=SteppingClock([0.0, *times]))

    if too_slow:
        with pytest.raises(SlowBody, match="under the least speed"):
            list(body)
    else:
        assert list(body) == pieces


def test_slow_piece_is_not_handed_on():
    received = []
    body = paced([b"a", b"b"], clock=SteppingClock([0.0, 1.0, 40.0]))

    with pytest.raises(SlowBody):
        received.extend(body)

    assert received == [b"a"]
