"""Read what gc needs to know about a store: images, links between blobs, sizes.

Manifests and indexes are read as plain JSON, so entries that other tools
wrote (an index tagged by skopeo, an artifact manifest) are followed too.
When a manifest of an image is missing or cannot be read, the blobs that
image needs are unknown, so the survey lists the image as damaged, and gc
removes nothing while such an image is kept. A manifest that an index names
but the store lacks is not damage: OCI image layouts may leave out the
blobs of other platforms.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apparate.digest import Digest
from apparate.errors import StoreError
from apparate.manifest import MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES, Descriptor
from apparate.store.gc import ImageEntry, PackEntry, PartialEntry, StoreState
from apparate.store.layout import (
    JOURNAL_SUFFIX,
    PARTIAL_PREFIX,
    REF_NAME,
    SOURCE_INDEX,
    SOURCE_MANIFEST,
    Store,
    journal_of,
)
from apparate.store.usage import last_used

log = logging.getLogger(__name__)

# Descriptors naming these kinds of blob are followed to the blobs they name.
_FOLLOWED = ("manifest", "index")


@dataclass(frozen=True)
class Survey:
    """The store's state for the planner, plus the partial files gc may delete."""

    state: StoreState
    stale: tuple[Path, ...]
    stale_bytes: int
    # Images whose own manifests could not be read, with the reason.
    damaged: dict[str, str] = field(default_factory=dict)

    def check_kept_images_readable(self, removed: Iterable[str]) -> None:
        """Raise StoreError if an image that stays has unreadable metadata.

        Its blobs would look unreferenced, so gc would remove them.
        """
        kept = {ref: why for ref, why in self.damaged.items() if ref not in removed}
        if not kept:
            return
        reference, reason = next(iter(kept.items()))
        name = reference or "an untagged entry"
        raise StoreError(
            f"gc stopped before removing anything: {name} is damaged ({reason}), "
            "so the blobs it needs are unknown",
            hint=f"pull it again to repair it, or remove it with 'apparate rm {name}'"
            if reference
            else "remove that entry from index.json",
        )


def survey(
    store: Store, packs: dict[Digest, Digest | None], partial_max_age: float
) -> Survey:
    """Read the store, which the caller has locked exclusively."""
    sizes = blob_sizes(store)
    walker = _Walker(store, sizes)
    uses = _last_uses(store)
    images = tuple(_image(store, entry, walker, uses) for entry in store.entries())
    pack_entries = tuple(
        PackEntry(pack, frozenset(walker.layers_of(diff_id)))
        for pack, diff_id in packs.items()
        if pack in sizes
    )
    stale, held, resumable = _partial_files(store, partial_max_age)
    held_bytes = sum(_size(path) for path in held)
    partials = tuple(_partial_entry(path) for path in resumable)
    state = StoreState(images, walker.links, sizes, pack_entries, held_bytes, partials)
    return Survey(
        state, tuple(stale), sum(_size(path) for path in stale), walker.damaged
    )


def _last_uses(store: Store) -> dict[str, float]:
    """Read when each image was last used; on a database error, use none.

    A full disk can keep SQLite from opening the database at all, and gc must
    still run there. Without recorded uses, manifest mtimes order the images.
    """
    try:
        return last_used(store.root)
    except StoreError as error:
        log.warning("%s; ordering images by their manifests' mtimes", error)
        return {}


def blob_sizes(store: Store) -> dict[Digest, int]:
    """Return every blob file under ``blobs/`` with its size, other files left out."""
    sizes: dict[Digest, int] = {}
    blobs = store.root / "blobs"
    for algorithm in sorted(blobs.iterdir()) if blobs.is_dir() else ():
        for path in algorithm.iterdir():
            try:
                digest = Digest.parse(f"{algorithm.name}:{path.name}")
                sizes[digest] = path.stat().st_size
            except (ValueError, OSError):
                continue
    return sizes


def _image(
    store: Store, entry: Descriptor, walker: _Walker, uses: dict[str, float]
) -> ImageEntry:
    """Describe an entry; without a recorded use, its manifest's mtime is used."""
    annotations = entry.annotations
    reference = annotations.get(REF_NAME, "")
    walker.follow(entry.digest, reference)
    roots = {entry.digest}
    source = _annotated_digest(annotations, SOURCE_MANIFEST, reference)
    if source:
        walker.follow(source, reference)
        roots.add(source)
    index = _annotated_digest(annotations, SOURCE_INDEX, reference)
    if index:
        # The registry's index names other platforms' manifests, which may
        # be other images of the store: it is kept, not followed.
        roots.add(index)
    used = uses.get(reference) or _mtime(store.blob_path(entry.digest))
    return ImageEntry(reference, entry.digest, frozenset(roots), used)


def _annotated_digest(
    annotations: dict[str, str], key: str, reference: str
) -> Digest | None:
    if not annotations.get(key):
        return None
    try:
        return Digest.parse(annotations[key])
    except ValueError as error:
        log.warning("%s: annotation %s is invalid: %s", reference, key, error)
        return None


class _Walker:
    """Follow manifests and indexes from the entries of ``index.json``."""

    def __init__(self, store: Store, sizes: dict[Digest, int]) -> None:
        self._store = store
        self._sizes = sizes
        self.links: dict[Digest, frozenset[Digest]] = {}
        self.layers_by_diff_id: dict[Digest, set[Digest]] = {}
        # Images that reach a damaged manifest, and what is wrong with each
        # damaged manifest.
        self.damaged: dict[str, str] = {}
        self.problems: dict[Digest, str] = {}

    def follow(self, digest: Digest, image: str) -> None:
        """Follow one of ``image``'s own manifests to every blob it reaches.

        A manifest of the image that is missing, or any manifest that is
        present but unreadable, marks the image damaged, also when another
        image reached it first. A manifest that an index or a ``subject``
        names but the store lacks is left out, as OCI image layouts allow.
        """
        pending = [(digest, True)]
        while pending:
            current, own = pending.pop()
            if current in self.problems:
                # A missing manifest damages only the images it belongs to.
                if own or current in self._sizes:
                    self._mark(image, current)
                continue
            if current in self.links:
                if own and current not in self._sizes:
                    self._problem(image, current, "is missing")
                continue
            document, problem = self._read_manifest(current, own)
            if problem is not None:
                self.links[current] = frozenset()
                self._problem(image, current, problem)
                continue
            children = _children(document) if document else []
            self.links[current] = frozenset(child for child, _ in children)
            pending.extend(
                (child, False)
                for child, media_type in children
                if _followed(media_type)
            )
            if document and isinstance(document.get("layers"), list):
                self._note_diff_ids(document, image)

    def layers_of(self, diff_id: Digest | None) -> set[Digest]:
        """Return the layer blobs whose content has this diff_id."""
        return self.layers_by_diff_id.get(diff_id, set()) if diff_id else set()

    def _problem(self, image: str, digest: Digest, problem: str) -> None:
        log.warning("%s: blob %s %s", image or "untagged entry", digest, problem)
        self.problems[digest] = problem
        self._mark(image, digest)

    def _mark(self, image: str, digest: Digest) -> None:
        self.damaged.setdefault(image, f"blob {digest} {self.problems[digest]}")

    def _read_manifest(
        self, digest: Digest, own: bool
    ) -> tuple[dict[str, Any] | None, str | None]:
        """Read a manifest or index; return it, or what is wrong with it.

        A missing blob is a problem only for a manifest of the image itself.
        """
        if digest not in self._sizes:
            return None, "is missing" if own else None
        return self._read(digest, MAX_MANIFEST_BYTES)

    def _read(
        self, digest: Digest, limit: int
    ) -> tuple[dict[str, Any] | None, str | None]:
        size = self._sizes.get(digest)
        if size is None:
            return None, "is missing"
        if size > limit:
            return None, f"is larger than {limit} bytes"
        try:
            body = self._store.blob_path(digest).read_bytes()
            document = json.loads(body)
        except (OSError, ValueError) as error:
            return None, f"is unreadable: {error}"
        if not digest.matches(body):
            return None, "does not match its digest"
        if not isinstance(document, dict):
            return None, "is not a JSON object"
        return document, None

    def _note_diff_ids(self, manifest: dict[str, Any], image: str) -> None:
        """Map each layer's diff_id to its blob, to find the packs cut from it.

        A config that cannot be read only leaves packs unmatched, so it is
        logged and does not mark the image damaged.
        """
        config = _digest_of(manifest.get("config"))
        layers = [_digest_of(layer) for layer in manifest["layers"]]
        if config is None:
            return
        document, problem = self._read(config, MAX_CONFIG_BYTES)
        if problem is not None:
            log.warning("%s: config %s %s", image or "untagged entry", config, problem)
            return
        rootfs = document.get("rootfs") if document else None
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        if not isinstance(diff_ids, list):
            return
        for layer, diff_id in zip(layers, diff_ids, strict=False):
            with contextlib.suppress(ValueError, TypeError):
                if layer:
                    key = Digest.parse(diff_id)
                    self.layers_by_diff_id.setdefault(key, set()).add(layer)


def _children(document: dict[str, Any]) -> list[tuple[Digest, str]]:
    """Return the blobs a manifest or index names, with their media types."""
    items: list[Any] = [document.get("config"), document.get("subject")]
    for key in ("layers", "manifests", "blobs"):
        value = document.get(key)
        if isinstance(value, list):
            items.extend(value)
    children = []
    for item in items:
        digest = _digest_of(item)
        if digest:
            children.append((digest, str(item.get("mediaType", ""))))
    return children


def _digest_of(item: Any) -> Digest | None:
    if not isinstance(item, dict):
        return None
    return Digest.parse_or_none(item.get("digest"))


def _followed(media_type: str) -> bool:
    return any(word in media_type for word in _FOLLOWED)


def _partial_files(
    store: Store, max_age: float
) -> tuple[list[Path], list[Path], list[Path]]:
    """Split ``ingest/`` into stale files, held files and resumable downloads.

    A resumable download is stale once older than ``max_age`` or once its
    blob is stored by another way (a rebuild from ranges, say), and its
    journal of written ranges with it; other files there are leftovers of
    killed pulls. A file that a process has locked is held, so gc keeps it.
    The resumable downloads returned are younger ones that no process holds,
    without their journals; gc deletes them only to fit a size limit.
    """
    stale, held, resumable, journals = [], [], [], []
    now = time.time()
    for path in _listing(store.ingest_dir):
        if path.name.endswith(JOURNAL_SUFFIX):
            journals.append(path)
        elif _held(path):
            held.append(path)
        elif (
            path.name.startswith(PARTIAL_PREFIX)
            and now - _mtime(path) < max_age
            and not store.blob_of_partial_stored(path)
        ):
            resumable.append(path)
        else:
            stale.append(path)
    held_names = {path.name for path in held}
    resumable_names = {path.name for path in resumable}
    for journal in journals:
        partial = journal.name.removesuffix(JOURNAL_SUFFIX)
        if partial in held_names:
            held.append(journal)
        elif partial not in resumable_names:
            stale.append(journal)
    return stale, held, resumable


def _partial_entry(path: Path) -> PartialEntry:
    size = _size(path) + _size(journal_of(path))
    return PartialEntry(path.name, size, _mtime(path))


def _listing(directory: Path) -> list[Path]:
    try:
        return sorted(directory.iterdir())
    except OSError:
        return []


def _held(path: Path) -> bool:
    """Return whether another process has the file locked, as a running pull does."""
    try:
        with open(path, "rb") as file:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
