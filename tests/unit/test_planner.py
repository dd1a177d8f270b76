"""The delta planner, one row per situation."""

import pytest

from apparate.chunked.format import ChunkEntry, ChunkTable
from apparate.delta.planner import (
    FetchRange,
    LayerToPlan,
    LocalFrame,
    Source,
    plan_image,
    plan_layer,
    replan_as_fetch,
)
from apparate.digest import Digest

STORED = Digest.of(b"stored blob")
F, L, R, D = Source.FETCH, Source.LOCAL_FRAME, Source.RECOMPRESS, Source.DUPLICATE
S = Source.SIBLING


def make_table(sizes: list[int], names: str) -> ChunkTable:
    """A table whose entry n has identity names[n] and frame hash ord(names[n])."""
    entries, offset = [], 0
    for size, name in zip(sizes, names, strict=True):
        entries.append(
            ChunkEntry(name.encode() * 16, size * 3, size, ord(name), offset)
        )
        offset += size
    return ChunkTable(1, {}, {}, entries)


def frame(name: str, same_bytes: bool = True) -> LocalFrame:
    return LocalFrame(STORED, 0, 10, ord(name) if same_bytes else 0)


# Each row: frame sizes, entry names, names stored locally (lower case: the
# chunk is stored in another frame), recompression allowed, expected sources,
# expected (start, end) ranges with gap 100.
CASES = {
    "none present": (
        [50, 50, 50],
        "abc",
        "",
        True,
        [F, F, F],
        [(0, 150)],
    ),
    "all present": (
        [50, 50, 50],
        "abc",
        "ABC",
        True,
        [L, L, L],
        [],
    ),
    "adjacent missing frames merge": (
        [50, 50, 50, 50],
        "abcd",
        "A",
        True,
        [L, F, F, F],
        [(50, 200)],
    ),
    "small gap is fetched": (
        [50, 60, 50],
        "abc",
        "B",
        True,
        [F, L, F],
        [(0, 160)],
    ),
    "large gap splits": (
        [50, 500, 50],
        "abc",
        "B",
        True,
        [F, L, F],
        [(0, 50), (550, 600)],
    ),
    "duplicate chunk fetched once": (
        [50, 500, 50],
        "aba",
        "B",
        True,
        [F, L, D],
        [(0, 50)],
    ),
    "chunk present only as bytes": (
        [50, 50],
        "ab",
        "a",
        True,
        [R, F],
        [(50, 100)],
    ),
    "bytes without a matching encoder are fetched": (
        [50, 50],
        "ab",
        "a",
        False,
        [F, F],
        [(0, 100)],
    ),
}


@pytest.mark.parametrize(
    "sizes, names, stored, can_recompress, sources, ranges",
    CASES.values(),
    ids=CASES,
)
def test_plan_layer(sizes, names, stored, can_recompress, sources, ranges):
    table = make_table(sizes, names)
    known = {
        name.lower().encode() * 16: [frame(name.lower(), name.isupper())]
        for name in stored
    }

    plan = plan_layer(table, known, can_recompress, max_gap=100)

    assert plan.sources == sources
    assert [(fetch.start, fetch.end) for fetch in plan.ranges] == ranges
    assert plan.bytes_to_fetch == sum(end - start for start, end in ranges)


def test_ranges_split_at_max_range():
    table = make_table([100] * 10, "abcdefghij")

    plan = plan_layer(table, {}, True, max_gap=0, max_range=300)

    assert [fetch.length for fetch in plan.ranges] == [300, 300, 300, 100]
    assert plan.ranges[0].entries == (0, 1, 2)


def test_duplicate_points_at_first_copy():
    table = make_table([50, 50, 50], "aba")

    plan = plan_layer(table, {}, True)

    assert plan.duplicates == {2: 0}


def test_replan_fetches_only_failed_frames():
    table = make_table([50, 50, 50], "abc")
    plan = plan_layer(table, {b"a" * 16: [frame("a", False)]}, True, max_gap=0)

    second = replan_as_fetch(plan, [0], table)

    assert second.sources == [F, F, F]
    assert second.ranges == [FetchRange(0, 50, (0,))]


def layer_to_plan(blob: str, names: str, stored: str = "") -> LayerToPlan:
    """A layer of 50-byte frames; ``stored`` as in CASES.

    Entry n contains chunk names[n].lower() in a frame whose hash is
    ord(names[n]): an upper-case name is the same chunk in another frame.
    """
    known = {
        name.lower().encode() * 16: [frame(name.lower(), name.isupper())]
        for name in stored
    }
    entries = [
        ChunkEntry(name.lower().encode() * 16, 150, 50, ord(name), 50 * n)
        for n, name in enumerate(names)
    ]
    return LayerToPlan(Digest.of(blob.encode()), ChunkTable(1, {}, {}, entries),
                       known, True)  # fmt: skip


# Each row: the layers in image order, as (blob, names, stored names), then
# the expected sources per layer. The last column maps each SIBLING, as
# (layer, position), to the layer it copies from.
IMAGE_CASES = {
    "a frame two layers lack is fetched by the first": (
        [("one", "ab", ""), ("two", "bc", "")],
        [[F, F], [S, F]],
        {(1, 0): 0},
    ),
    "a stored frame is copied, not taken from a sibling": (
        [("one", "ab", ""), ("two", "ab", "A")],
        [[F, F], [L, S]],
        {(1, 1): 0},
    ),
    "the third layer takes from the first that fetches": (
        [("one", "a", ""), ("two", "ab", ""), ("three", "ba", "")],
        [[F], [S, F], [S, S]],
        {(1, 0): 0, (2, 0): 1, (2, 1): 0},
    ),
    "the same chunk in another frame is fetched": (
        [("one", "ab", ""), ("two", "Ab", "")],
        [[F, F], [F, S]],
        {(1, 1): 0},
    ),
    "a duplicate inside a layer stays a duplicate": (
        [("one", "a", ""), ("two", "aa", "")],
        [[F], [S, D]],
        {(1, 0): 0},
    ),
    "a locally stored chunk is recompressed, not waited for": (
        [("one", "a", ""), ("two", "a", "a")],
        [[F], [R]],
        {},
    ),
}


@pytest.mark.parametrize("layers, sources, copied_from", IMAGE_CASES.values(),
                         ids=IMAGE_CASES)  # fmt: skip
def test_plan_image(layers, sources, copied_from):
    planned = [layer_to_plan(*layer) for layer in layers]

    plans = plan_image(planned)

    assert [plan.sources for plan in plans] == sources
    blobs = [layer.blob for layer in planned]
    siblings = {
        (number, position): blobs.index(plan.local[position].blob)
        for number, plan in enumerate(plans)
        for position, source in enumerate(plan.sources)
        if source is S
    }
    assert siblings == copied_from
    for plan, layer in zip(plans, planned, strict=True):
        fetched = [p for p, source in enumerate(plan.sources) if source is F]
        assert [p for r in plan.ranges for p in r.entries] == fetched
        for position, source in enumerate(plan.sources):
            if source is S:
                assert plan.local[position].frame_xxh3 == (
                    layer.table.entries[position].frame_xxh3
                )
