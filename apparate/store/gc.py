"""Choose what gc removes from the store. Pure: a description of the store in,
a plan out.

A blob is kept while a kept image reaches it: the tagged manifest, what
manifests and indexes name (configs, layers, child manifests) and the
registry's own manifest and index kept beside an OCI copy. A local pack is
kept while one of the layers it was cut from is kept. Everything else goes.

With a size limit, packs go first because they only speed up later delta
pulls, starting with those of the least recently used images. Then whole
images go, least recently used first, until the store fits. Tags naming one manifest go together, and
images that are protected (pulled by the running command) or untagged
(written by another tool) are never removed. If the store still does not
fit, partial downloads that no process has locked go last, oldest first: a later
pull fetches them again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from apparate.digest import Digest

UNREFERENCED = "unreferenced"
PACK = "pack"
IMAGE = "image"


@dataclass(frozen=True)
class ImageEntry:
    """One entry of ``index.json`` and what it needs to stay whole.

    ``reference`` is empty for an untagged entry. ``roots`` are the blobs the
    entry names itself; ``links`` of the store lead from them to the rest.
    """

    reference: str
    manifest: Digest
    roots: frozenset[Digest]
    last_used: float


@dataclass(frozen=True)
class PackEntry:
    """A local pack and the layer blobs whose content it holds."""

    digest: Digest
    layers: frozenset[Digest]


@dataclass(frozen=True)
class PartialEntry:
    """A resumable download in ``ingest/`` that no process holds.

    ``size`` counts its journal of written ranges too, which goes with it.
    ``modified`` is its modification time, in seconds since the epoch.
    """

    name: str
    size: int
    modified: float


@dataclass(frozen=True)
class StoreState:
    """Facts about a store that gc plans from, read while gc has it locked."""

    images: tuple[ImageEntry, ...]
    # Blobs each manifest or index blob names; blobs absent here name nothing.
    links: Mapping[Digest, frozenset[Digest]]
    # Every blob on disk, with its size.
    sizes: Mapping[Digest, int]
    packs: tuple[PackEntry, ...] = ()
    # Bytes on disk that gc always keeps but that are not blobs: files in
    # ingest/ that a running pull holds.
    other_bytes: int = 0
    # Partial downloads that gc removes only to fit a size limit.
    partials: tuple[PartialEntry, ...] = ()

    @property
    def non_blob_bytes(self) -> int:
        """Bytes of files in ingest/: held ones and partial downloads."""
        return self.other_bytes + sum(partial.size for partial in self.partials)


@dataclass(frozen=True)
class Removal:
    digest: Digest
    size: int
    reason: str


@dataclass(frozen=True)
class GcPlan:
    """References to untag and blobs to delete, in that order."""

    untag: tuple[str, ...]
    remove: tuple[Removal, ...]
    size_before: int
    size_after: int
    limit: int | None = None
    # Images that kept the store over the limit because they are protected.
    blocked_by: tuple[str, ...] = field(default=())
    # Partial downloads to delete, after the images, to fit the limit.
    remove_partials: tuple[PartialEntry, ...] = ()

    @property
    def bytes_freed(self) -> int:
        return self.size_before - self.size_after

    @property
    def fits(self) -> bool:
        return self.limit is None or self.size_after <= self.limit


def plan_gc(
    state: StoreState,
    limit: int | None = None,
    protected: Iterable[str] = (),
    untag: Iterable[str] = (),
) -> GcPlan:
    """Plan a gc: untag ``untag``, drop what no image needs, then fit ``limit``."""
    removed_refs = set(untag)
    images = [image for image in state.images if image.reference not in removed_refs]
    present = set(state.sizes)
    size_before = sum(state.sizes.values()) + state.non_blob_bytes
    removals = _unneeded(state, images, present, UNREFERENCED)
    present -= {removal.digest for removal in removals}

    partials: list[PartialEntry] = []
    if limit is not None:
        removals += _drop_packs(state, images, present, limit)
        present -= {removal.digest for removal in removals}
        dropped, more = _drop_images(state, images, present, limit, set(protected))
        removed_refs |= dropped
        removals += more
        partials = _drop_partials(state, present, limit)
    size_after = (
        sum(state.sizes[digest] for digest in present)
        + state.non_blob_bytes
        - sum(partial.size for partial in partials)
    )
    remaining = [image for image in images if image.reference not in removed_refs]
    blocked = () if limit is None or size_after <= limit else _names(remaining)
    order = [image.reference for image in state.images]
    return GcPlan(
        untag=tuple(ref for ref in order if ref and ref in removed_refs),
        remove=tuple(removals),
        size_before=size_before,
        size_after=size_after,
        limit=limit,
        blocked_by=blocked,
        remove_partials=tuple(partials),
    )


def reachable(
    roots: Iterable[Digest], links: Mapping[Digest, frozenset[Digest]]
) -> set[Digest]:
    """Return the blobs reached from ``roots`` through ``links``, roots included."""
    seen: set[Digest] = set()
    pending = list(roots)
    while pending:
        digest = pending.pop()
        if digest in seen:
            continue
        seen.add(digest)
        pending.extend(links.get(digest, ()))
    return seen


def needed(
    state: StoreState, images: list[ImageEntry], present: set[Digest]
) -> set[Digest]:
    """Blobs the images reach, plus present packs of layers they reach."""
    needed = reachable((root for image in images for root in image.roots), state.links)
    for pack in state.packs:
        if pack.digest in present and pack.layers & needed:
            needed.add(pack.digest)
    return needed


def _unneeded(
    state: StoreState, images: list[ImageEntry], present: set[Digest], reason: str
) -> list[Removal]:
    kept = needed(state, images, present)
    return [
        Removal(digest, state.sizes[digest], reason)
        for digest in sorted(present - kept, key=str)
    ]


def _drop_packs(
    state: StoreState, images: list[ImageEntry], present: set[Digest], limit: int
) -> list[Removal]:
    """Drop packs of the least recently used images until the store fits."""
    size = sum(state.sizes[digest] for digest in present) + state.non_blob_bytes
    referenced = reachable(
        (root for image in images for root in image.roots), state.links
    )
    candidates = [
        pack
        for pack in state.packs
        if pack.digest in present and pack.digest not in referenced
    ]
    candidates.sort(
        key=lambda pack: (_pack_last_use(state, images, pack), str(pack.digest))
    )
    dropped = []
    for pack in candidates:
        if size <= limit:
            break
        size -= state.sizes[pack.digest]
        dropped.append(Removal(pack.digest, state.sizes[pack.digest], PACK))
    return dropped


def _pack_last_use(
    state: StoreState, images: list[ImageEntry], pack: PackEntry
) -> float:
    uses = [
        image.last_used
        for image in images
        if pack.layers & reachable(image.roots, state.links)
    ]
    return max(uses, default=0.0)


def _drop_images(
    state: StoreState,
    images: list[ImageEntry],
    present: set[Digest],
    limit: int,
    protected: set[str],
) -> tuple[set[str], list[Removal]]:
    """Untag images, least recently used first, until the store fits."""
    size = sum(state.sizes[digest] for digest in present) + state.non_blob_bytes
    untagged: set[str] = set()
    removals: list[Removal] = []
    for group in _groups_by_use(images, protected):
        if size <= limit:
            break
        untagged |= {image.reference for image in group}
        remaining = [image for image in images if image.reference not in untagged]
        freed = _unneeded(state, remaining, present, IMAGE)
        present -= {removal.digest for removal in freed}
        size -= sum(removal.size for removal in freed)
        removals += freed
    return untagged, removals


def _drop_partials(
    state: StoreState, present: set[Digest], limit: int
) -> list[PartialEntry]:
    """Drop partial downloads, oldest first, until the store fits."""
    size = sum(state.sizes[digest] for digest in present) + state.non_blob_bytes
    dropped = []
    for partial in sorted(state.partials, key=lambda p: (p.modified, p.name)):
        if size <= limit:
            break
        size -= partial.size
        dropped.append(partial)
    return dropped


def _groups_by_use(
    images: list[ImageEntry], protected: set[str]
) -> list[list[ImageEntry]]:
    """Group tags by manifest; return removable groups, least recently used first.

    A group with a protected or untagged member is not removable.
    """
    groups: dict[Digest, list[ImageEntry]] = {}
    for image in images:
        groups.setdefault(image.manifest, []).append(image)
    removable = [
        group
        for group in groups.values()
        if all(image.reference and image.reference not in protected for image in group)
    ]
    removable.sort(
        key=lambda group: (
            max(image.last_used for image in group),
            min(image.reference for image in group),
        )
    )
    return removable


def binary_size(size: float) -> str:
    """Format a size in the store in IEC units, as ``--max-size`` reads them.

    ``parse_size`` takes 1M as 1024 KiB, so a limit prints as it was given.
    """
    return scaled_size(size, 1024, ("B", "KiB", "MiB", "GiB", "TiB"))


def scaled_size(size: float, base: int, units: tuple[str, ...]) -> str:
    """Format ``size`` bytes in the first of ``units`` where it is below ``base``."""
    for unit in units:
        if size < base or unit == units[-1]:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= base
    raise AssertionError("unreachable")


def _names(images: list[ImageEntry]) -> tuple[str, ...]:
    return tuple(image.reference or str(image.manifest) for image in images)
