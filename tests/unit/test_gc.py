"""The gc planner, with a table of stores and what it must remove from each."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from apparate.digest import Digest
from apparate.store.gc import (
    IMAGE,
    PACK,
    UNREFERENCED,
    ImageEntry,
    PackEntry,
    PartialEntry,
    StoreState,
    plan_gc,
    reachable,
)


def d(name: str) -> Digest:
    return Digest.of(name.encode())


@dataclass
class Case:
    """A store written compactly: blob names, sizes and what names what."""

    # reference -> (manifest, last use); "" for an untagged entry.
    images: list[tuple[str, str, float]]
    links: dict[str, list[str]]
    sizes: dict[str, int]
    packs: dict[str, list[str]] = field(default_factory=dict)
    limit: int | None = None
    protected: tuple[str, ...] = ()
    untag: tuple[str, ...] = ()
    other_bytes: int = 0
    # Partial downloads no process holds: name -> (size, modification time).
    partials: dict[str, tuple[int, float]] = field(default_factory=dict)
    # What the plan must untag and remove (blob name -> reason).
    want_untag: tuple[str, ...] = ()
    want_removed: dict[str, str] = field(default_factory=dict)
    want_partials: tuple[str, ...] = ()
    want_fits: bool = True

    def state(self) -> StoreState:
        images = tuple(
            ImageEntry(ref, d(manifest), frozenset({d(manifest)}), used)
            for ref, manifest, used in self.images
        )
        links = {
            d(parent): frozenset(d(child) for child in children)
            for parent, children in self.links.items()
        }
        packs = tuple(
            PackEntry(d(pack), frozenset(d(layer) for layer in layers))
            for pack, layers in self.packs.items()
        )
        sizes = {d(name): size for name, size in self.sizes.items()}
        partials = tuple(
            PartialEntry(name, size, modified)
            for name, (size, modified) in self.partials.items()
        )
        return StoreState(images, links, sizes, packs, self.other_bytes, partials)


# Two images sharing a base layer: a (old) and b (new).
SHARED = {
    "links": {
        "ma": ["ca", "base", "la"],
        "mb": ["cb", "base", "lb"],
    },
    "sizes": {
        "ma": 1, "ca": 1, "la": 100, "mb": 1, "cb": 1, "lb": 200, "base": 500,
    },
}  # fmt: skip
TWO = [("a:v1", "ma", 10.0), ("b:v1", "mb", 20.0)]
PACKS = {"pa": ["la"], "pbase": ["base"], "pb": ["lb"]}
PACK_SIZES = {**SHARED["sizes"], "pa": 50, "pbase": 300, "pb": 80}
TOTAL = sum(SHARED["sizes"].values())  # 804

CASES = {
    "nothing to remove": Case(TWO, **SHARED),
    "unreferenced blobs go": Case(
        TWO,
        SHARED["links"],
        {**SHARED["sizes"], "old-manifest": 3, "old-layer": 70},
        want_removed={"old-manifest": UNREFERENCED, "old-layer": UNREFERENCED},
    ),
    "rm keeps the shared base": Case(
        TWO,
        **SHARED,
        untag=("a:v1",),
        want_untag=("a:v1",),
        want_removed={"ma": UNREFERENCED, "ca": UNREFERENCED, "la": UNREFERENCED},
    ),
    "pack of a gone layer goes, others stay": Case(
        TWO,
        SHARED["links"],
        {**PACK_SIZES, "pgone": 40},
        packs={**PACKS, "pgone": ["lgone"]},
        want_removed={"pgone": UNREFERENCED},
    ),
    "rm drops the packs of its own layers only": Case(
        TWO,
        SHARED["links"],
        PACK_SIZES,
        packs=PACKS,
        untag=("a:v1",),
        want_untag=("a:v1",),
        want_removed={
            "ma": UNREFERENCED,
            "ca": UNREFERENCED,
            "la": UNREFERENCED,
            "pa": UNREFERENCED,
        },
    ),
    "limit already met": Case(
        TWO, SHARED["links"], PACK_SIZES, packs=PACKS, limit=TOTAL + 430
    ),
    "packs of the least recently used go first": Case(
        TWO,
        SHARED["links"],
        PACK_SIZES,
        packs=PACKS,
        # pa (a is older) goes, then pbase (used by b too, so b's time) or pb.
        limit=TOTAL + 380,
        want_removed={"pa": PACK},
    ),
    "every pack goes before any image": Case(
        TWO,
        SHARED["links"],
        PACK_SIZES,
        packs=PACKS,
        limit=TOTAL,
        want_removed={"pa": PACK, "pbase": PACK, "pb": PACK},
    ),
    "least recently used image goes": Case(
        TWO,
        **SHARED,
        limit=TOTAL - 50,
        want_untag=("a:v1",),
        want_removed={"ma": IMAGE, "ca": IMAGE, "la": IMAGE},
    ),
    "use order, not tag order": Case(
        [("a:v1", "ma", 30.0), ("b:v1", "mb", 20.0)],
        **SHARED,
        limit=TOTAL - 50,
        want_untag=("b:v1",),
        want_removed={"mb": IMAGE, "cb": IMAGE, "lb": IMAGE},
    ),
    "images go until the store fits": Case(
        TWO,
        **SHARED,
        limit=0,
        want_untag=("a:v1", "b:v1"),
        want_removed={name: IMAGE for name in SHARED["sizes"]},
    ),
    "a protected image stays over the limit": Case(
        TWO,
        **SHARED,
        limit=0,
        protected=("a:v1",),
        want_untag=("b:v1",),
        want_removed={"mb": IMAGE, "cb": IMAGE, "lb": IMAGE},
        want_fits=False,
    ),
    "tags of one manifest go together": Case(
        [("a:v1", "ma", 10.0), ("a:latest", "ma", 30.0), ("b:v1", "mb", 20.0)],
        **SHARED,
        limit=TOTAL - 50,
        want_untag=("b:v1",),
        want_removed={"mb": IMAGE, "cb": IMAGE, "lb": IMAGE},
    ),
    "a protected tag protects its manifest's other tags": Case(
        [("a:v1", "ma", 10.0), ("a:latest", "ma", 30.0), ("b:v1", "mb", 20.0)],
        **SHARED,
        limit=0,
        protected=("a:latest",),
        want_untag=("b:v1",),
        want_removed={"mb": IMAGE, "cb": IMAGE, "lb": IMAGE},
        want_fits=False,
    ),
    "an untagged entry is never removed": Case(
        [("", "ma", 0.0), ("b:v1", "mb", 20.0)],
        **SHARED,
        limit=0,
        want_untag=("b:v1",),
        want_removed={"mb": IMAGE, "cb": IMAGE, "lb": IMAGE},
        want_fits=False,
    ),
    "partial downloads count toward the limit": Case(
        TWO,
        **SHARED,
        other_bytes=100,
        limit=TOTAL,
        want_untag=("a:v1",),
        want_removed={"ma": IMAGE, "ca": IMAGE, "la": IMAGE},
    ),
    "partial downloads stay without a limit": Case(
        TWO,
        **SHARED,
        partials={"partial-x": (100, 5.0)},
    ),
    "partial downloads stay while images make room": Case(
        TWO,
        **SHARED,
        partials={"partial-x": (100, 5.0)},
        limit=TOTAL + 100 - 50,
        want_untag=("a:v1",),
        want_removed={"ma": IMAGE, "ca": IMAGE, "la": IMAGE},
    ),
    "partial downloads go after images, oldest first": Case(
        [("a:v1", "ma", 10.0)],
        SHARED["links"],
        {"ma": 1, "ca": 1, "la": 100},
        protected=("a:v1",),
        partials={"partial-new": (40, 9.0), "partial-old": (30, 5.0)},
        limit=102 + 40,
        want_partials=("partial-old",),
    ),
    "held files stay over the limit": Case(
        [],
        {},
        {},
        other_bytes=60,
        partials={"partial-x": (10, 5.0), "partial-y": (20, 6.0)},
        limit=50,
        want_partials=("partial-x", "partial-y"),
        want_fits=False,
    ),
    "a blob named twice in one manifest": Case(
        [("a:v1", "ma", 1.0)],
        {"ma": ["ca", "la", "la"]},
        {"ma": 1, "ca": 1, "la": 5, "junk": 9},
        want_removed={"junk": UNREFERENCED},
    ),
    "an index reaches its child manifests": Case(
        [("multi:v1", "idx", 1.0)],
        {"idx": ["m1", "m2"], "m1": ["c1", "l1"], "m2": ["c2", "l2"]},
        {"idx": 1, "m1": 1, "m2": 1, "c1": 1, "l1": 9, "c2": 1, "l2": 9},
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES)
def test_plan(case: Case):
    state = case.state()

    plan = plan_gc(state, case.limit, case.protected, case.untag)

    assert plan.untag == case.want_untag
    removed = {removal.digest: removal.reason for removal in plan.remove}
    assert removed == {d(name): reason for name, reason in case.want_removed.items()}
    assert tuple(p.name for p in plan.remove_partials) == case.want_partials
    assert plan.fits == case.want_fits
    remaining = set(state.sizes) - set(removed)
    partial_bytes = sum(size for size, _ in case.partials.values())
    partials_left = partial_bytes - sum(p.size for p in plan.remove_partials)
    assert plan.size_after == (
        sum(state.sizes[b] for b in remaining) + case.other_bytes + partials_left
    )
    assert plan.size_before == (
        sum(state.sizes.values()) + case.other_bytes + partial_bytes
    )


@pytest.mark.parametrize("case", CASES.values(), ids=CASES)
def test_plan_never_breaks_a_kept_image(case: Case):
    state = case.state()

    plan = plan_gc(state, case.limit, case.protected, case.untag)

    removed = {removal.digest for removal in plan.remove}
    for image in state.images:
        if image.reference in plan.untag or image.reference in case.untag:
            continue
        needed = reachable(image.roots, state.links) & set(state.sizes)
        assert not needed & removed, image.reference


def test_protected_images_never_untagged():
    case = CASES["a protected image stays over the limit"]

    plan = plan_gc(case.state(), 0, ("a:v1",))

    assert "a:v1" not in plan.untag
    assert plan.blocked_by == ("a:v1",)


def test_reachable_stops_at_cycles():
    links = {d("x"): frozenset({d("y")}), d("y"): frozenset({d("x")})}

    assert reachable([d("x")], links) == {d("x"), d("y")}
