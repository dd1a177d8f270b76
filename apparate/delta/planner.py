"""Plan how to rebuild a chunked layer: which frames are local, which to fetch.

This is pure logic. A chunk table and the frames the local chunk index lists
go in, and the source of every frame and the byte ranges to request come out. Ranges are
single ranges only (many registries and CDNs reject multi-range requests):
adjacent frames are merged, and a small gap between two missing frames is
fetched rather than split into two requests. When the layers of one image
are planned together, a frame that several of them lack is fetched once, by
the first, and the others copy it from that layer's blob.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from apparate.chunked.format import ChunkEntry, ChunkTable
from apparate.digest import Digest

# A gap up to this size between two fetched frames is fetched too: a request
# costs a round trip, which on a slow link is worth more than a few kB.
DEFAULT_MAX_GAP = 16 * 1024
# Ranges are split at this size so several can be fetched in parallel. A
# range is checked once it has arrived, so the last range's size sets the
# check left after the last byte. With 2 MiB ranges a cold pull across a
# 100 Mbit/s link ended 30 ms sooner than with 4 MiB ones.
DEFAULT_MAX_RANGE = 2 * 1024 * 1024


class Source(enum.Enum):
    """The origin of one frame's bytes."""

    LOCAL_FRAME = "local frame"  # the same frame bytes are in the store
    RECOMPRESS = "recompress"  # the chunk's bytes are in the store, in another frame
    DUPLICATE = "duplicate"  # an earlier frame of this blob has the same bytes
    SIBLING = "sibling"  # an earlier layer of the image fetches the same frame
    FETCH = "fetch"


@dataclass(frozen=True)
class LocalFrame:
    """A stored frame of a chunk: in which blob, where, and its xxh3."""

    blob: Digest
    offset: int
    length: int
    frame_xxh3: int


@dataclass(frozen=True)
class FetchRange:
    """One single-range request: bytes ``start`` to ``end`` (exclusive)."""

    start: int
    end: int
    entries: tuple[int, ...]

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class LayerToPlan:
    """One layer of an image: its blob, its table and its chunks in the store."""

    blob: Digest
    table: ChunkTable
    known: dict[bytes, list[LocalFrame]]
    can_recompress: bool


@dataclass
class Plan:
    """The source of each table entry, and the requests for missing frames.

    ``local`` gives the frame to copy for LOCAL_FRAME, RECOMPRESS and
    SIBLING entries. A SIBLING's frame is in the blob of another layer of
    the image, which that layer fetches.
    """

    sources: list[Source] = field(default_factory=list)
    local: dict[int, LocalFrame] = field(default_factory=dict)
    duplicates: dict[int, int] = field(default_factory=dict)
    ranges: list[FetchRange] = field(default_factory=list)

    @property
    def bytes_to_fetch(self) -> int:
        return sum(fetch.length for fetch in self.ranges)


def plan_layer(
    table: ChunkTable,
    known: dict[bytes, list[LocalFrame]],
    can_recompress: bool,
    max_gap: int = DEFAULT_MAX_GAP,
    max_range: int = DEFAULT_MAX_RANGE,
    siblings: dict[tuple[bytes, int], LocalFrame] | None = None,
) -> Plan:
    """Decide the source of every frame of ``table``.

    ``known`` maps chunk identities to their stored frames. A stored frame
    with the same xxh3 is copied as it is. A chunk stored only in another
    frame is recompressed when ``can_recompress`` is true, because the
    table's encoder record equals this machine's. ``siblings`` maps an
    (identity, frame xxh3) pair to the same frame in a blob another layer
    of the image fetches. Any other frame is fetched.
    """
    plan = Plan()
    siblings = siblings or {}
    first_of: dict[tuple[bytes, int], int] = {}
    for position, entry in enumerate(table.entries):
        frames = known.get(entry.identity, [])
        same = [f for f in frames if f.frame_xxh3 == entry.frame_xxh3]
        key = (entry.identity, entry.frame_xxh3)
        if same:
            plan.sources.append(Source.LOCAL_FRAME)
            plan.local[position] = same[0]
        elif key in first_of and _same_length(table, first_of[key], entry):
            plan.sources.append(Source.DUPLICATE)
            plan.duplicates[position] = first_of[key]
        elif frames and can_recompress:
            plan.sources.append(Source.RECOMPRESS)
            plan.local[position] = frames[0]
        elif key in siblings and siblings[key].length == entry.frame_length:
            plan.sources.append(Source.SIBLING)
            plan.local[position] = siblings[key]
        else:
            plan.sources.append(Source.FETCH)
        first_of.setdefault(key, position)
    plan.ranges = merge_ranges(table, plan.sources, max_gap, max_range)
    return plan


def _same_length(table: ChunkTable, first: int, entry: ChunkEntry) -> bool:
    """Tell whether a frame is as long as the one it would copy, as a table claims."""
    return table.entries[first].frame_length == entry.frame_length


def plan_image(layers: list[LayerToPlan]) -> list[Plan]:
    """Plan the layers of one image in order, fetching each missing frame once.

    A frame that an earlier layer fetches is a SIBLING in later ones: they
    copy it from that layer's blob once it is stored.
    """
    fetched: dict[tuple[bytes, int], LocalFrame] = {}
    plans = []
    for layer in layers:
        plan = plan_layer(
            layer.table, layer.known, layer.can_recompress, siblings=fetched
        )
        for position, source in enumerate(plan.sources):
            if source is Source.FETCH:
                entry = layer.table.entries[position]
                fetched.setdefault(
                    (entry.identity, entry.frame_xxh3),
                    LocalFrame(
                        layer.blob, entry.frame_offset, entry.frame_length,
                        entry.frame_xxh3,
                    ),
                )  # fmt: skip
        plans.append(plan)
    return plans


def merge_ranges(
    table: ChunkTable, sources: list[Source], max_gap: int, max_range: int
) -> list[FetchRange]:
    """Group the frames to fetch into single ranges, bridging small gaps."""
    ranges: list[FetchRange] = []
    start = end = 0
    members: list[int] = []
    for position, entry in enumerate(table.entries):
        if sources[position] is not Source.FETCH:
            continue
        frame_end = entry.frame_offset + entry.frame_length
        bridge = entry.frame_offset - end
        if members and bridge <= max_gap and frame_end - start <= max_range:
            end = frame_end
            members.append(position)
            continue
        if members:
            ranges.append(FetchRange(start, end, tuple(members)))
        start, end, members = entry.frame_offset, frame_end, [position]
    if members:
        ranges.append(FetchRange(start, end, tuple(members)))
    return ranges


def replan_as_fetch(plan: Plan, positions: list[int], table: ChunkTable) -> Plan:
    """Plan a second round that fetches the frames a local rebuild got wrong."""
    wanted = set(positions)
    sources = [
        Source.FETCH if position in wanted else source
        for position, source in enumerate(plan.sources)
    ]
    only_wanted = [
        Source.FETCH if position in wanted else Source.LOCAL_FRAME
        for position in range(len(sources))
    ]
    ranges = merge_ranges(table, only_wanted, DEFAULT_MAX_GAP, DEFAULT_MAX_RANGE)
    return Plan(sources, plan.local, plan.duplicates, ranges)
