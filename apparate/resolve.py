"""Pick the manifest for one platform out of an index. Pure logic, no I/O."""

from __future__ import annotations

from apparate.errors import InvalidResponse, PlatformNotFound
from apparate.manifest import INDEX_TYPES, MANIFEST_TYPES, Descriptor, Index
from apparate.platform import Platform, match_rank

ATTESTATION_TYPE_KEY = "vnd.docker.reference.type"


def is_attestation(entry: Descriptor) -> bool:
    """Tell whether an index entry is a build attestation rather than an image."""
    if entry.annotations.get(ATTESTATION_TYPE_KEY) == "attestation-manifest":
        return True
    platform = entry.platform
    return platform is not None and platform.os == "unknown"


def image_entries(index: Index) -> list[Descriptor]:
    """Index entries that are images, attestations left out."""
    return [
        entry
        for entry in index.manifests
        if not is_attestation(entry)
        and (not entry.media_type or entry.media_type in MANIFEST_TYPES)
    ]


def select_manifest(index: Index, wanted: Platform, image: str) -> Descriptor:
    """Return the entry that best runs on ``wanted``; the first wins among equals.

    An entry without a platform is taken only when no entry names a match,
    as containerd does, and its config shows the caller what it really is.
    """
    best: tuple[int, int, Descriptor] | None = None
    entries = image_entries(index)
    for position, entry in enumerate(entries):
        rank = match_rank(wanted, entry.platform) if entry.platform else None
        if rank is not None and (best is None or (rank, position) < best[:2]):
            best = (rank, position, entry)
    if best is not None:
        return best[2]
    unlabelled = [entry for entry in entries if entry.platform is None]
    if unlabelled:
        return unlabelled[0]
    _reject_nested_index(index, wanted, image)
    offered = ", ".join(sorted({str(e.platform) for e in entries})) or "none"
    raise PlatformNotFound(f"{image} has no image for {wanted}; it offers: {offered}")


def check_entry_manifest(
    entry: Descriptor, body: bytes, media_type: str, image: str
) -> None:
    """Raise InvalidResponse unless the manifest an index entry points to fits it.

    The body was verified against the entry's digest already, so a size that
    differs means the index itself is wrong.
    """
    if len(body) != entry.size:
        raise InvalidResponse(
            f"manifest {entry.digest} of {image} is {len(body)} bytes, but the "
            f"index lists it with {entry.size}"
        )
    if media_type in INDEX_TYPES:
        raise _nested_index(entry, image)


def _reject_nested_index(index: Index, requested: Platform, image: str) -> None:
    """Raise InvalidResponse when an entry that may run on ``requested`` is an index.

    Such an entry might contain the requested image, so "no image for this
    platform" would mislead.
    """
    for entry in index.manifests:
        if entry.media_type not in INDEX_TYPES or is_attestation(entry):
            continue
        if entry.platform is None or match_rank(requested, entry.platform) is not None:
            raise _nested_index(entry, image)


def _nested_index(entry: Descriptor, image: str) -> InvalidResponse:
    return InvalidResponse(
        f"index of {image} lists another index, {entry.digest}, and nested "
        "indexes are not supported",
        hint="push the image with an index whose entries are image manifests",
    )
