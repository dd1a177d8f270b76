"""Summaries of the images in the local store, for ``apparate images``."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apparate.digest import Digest
from apparate.errors import ApparateError, StoreError
from apparate.manifest import (
    Descriptor,
    Manifest,
    image_platform,
    parse_index,
    parse_json,
    parse_manifest,
)
from apparate.store.chunk_index import INDEX_FILE
from apparate.store.history import PullHistory, PullRecord, Totals
from apparate.store.layout import (
    Store,
    StoredImage,
    default_store_path,
    not_created,
)
from apparate.store.usage import last_used

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageSummary:
    """One tagged image: its digests, the bytes of its blobs, last use.

    ``digest`` is the manifest's, as the registry serves it, and
    ``index_digest`` that of the index or manifest list it was picked from,
    or None. ``last_used`` is when it was last pulled or imported (seconds
    since the epoch), else when its manifest was stored. ``size`` is None
    when the manifest cannot be read, and a warning names the image.
    ``complete`` is false when blobs of the image are missing, for instance
    a layer that an import found damaged and removed. ``platform`` is
    ``OS/ARCH[/VARIANT]`` as the index entry the image was picked from names
    it, else as its config does, or None when neither can be read.
    """

    reference: str
    digest: Digest
    size: int | None
    last_used: float = 0.0
    complete: bool = True
    index_digest: Digest | None = None
    platform: str | None = None

    @property
    def reference_digest(self) -> Digest:
        """Return the digest the reference names at the registry: the index's, if any.

        ``docker images --digests`` and ``ctr images ls`` show this one, and
        ``REPOSITORY@DIGEST`` pulls it on every platform the index lists.
        """
        return self.index_digest or self.digest


def list_images(store_path: Path | None = None) -> list[ImageSummary]:
    """List the images of a store (default: the user's store).

    A store not created yet, by a first pull, has no images, as with
    ``docker images`` before any pull.
    """
    root = store_path or default_store_path()
    if not_created(root):
        return []
    store = Store(root, create=False)
    try:
        uses = last_used(store.root)
    except StoreError as error:
        # On a full disk, the listing is what tells the user what to remove.
        log.warning("%s; showing when each image was stored instead", error)
        uses = {}
    summaries = []
    for image in store.images():
        manifest = _read_manifest(store, image.descriptor.digest, image.reference)
        size, complete = None, manifest is not None
        if manifest is not None:
            blobs = [manifest.config, *manifest.layers]
            size = image.descriptor.size + sum(blob.size for blob in blobs)
            missing = [blob for blob in blobs if not store.has_blob(blob.digest)]
            complete = not missing
            if missing:
                log.warning(
                    "%s: missing %d of its %d blobs, such as a layer removed as "
                    "damaged: pull it again to repair it",
                    image.reference, len(missing), len(blobs),
                )  # fmt: skip
        used = uses.get(image.reference) or _stored_at(store, image.descriptor.digest)
        platform = _read_platform(store, image, manifest.config) if manifest else None
        summary = ImageSummary(
            image.reference, image.source_manifest, size, used, complete,
            index_digest=image.source_index, platform=platform,
        )  # fmt: skip
        summaries.append(summary)
    return summaries


def _stored_at(store: Store, digest: Digest) -> float:
    try:
        return store.blob_path(digest).stat().st_mtime
    except OSError:
        return 0.0


def _read_platform(store: Store, image: StoredImage, config: Descriptor) -> str | None:
    """Return the platform of a stored image, or None if it cannot be read.

    The index entry the image was picked from names it, else the config. A
    missing or damaged config or index is already reported as a missing
    blob or at import, so it is not warned about here.
    """
    index = None
    if image.source_index is not None:
        subject = f"index {image.source_index}"
        document = _read_json(store, image.source_index, subject)
        with contextlib.suppress(ApparateError):
            index = parse_index(document, subject) if document else None
    parsed = _read_json(store, config.digest, f"config {config.digest}") or {}
    platform = image_platform(parsed, index, image.source_manifest)
    return str(platform) if platform else None


def _read_json(store: Store, digest: Digest, subject: str) -> dict[str, Any] | None:
    """Read a small JSON blob, or return None if it is missing, damaged or invalid."""
    try:
        body = store.read_blob(digest)
        if not digest.matches(body):
            return None
        return parse_json(body, subject)
    except ApparateError:
        return None


def _read_manifest(store: Store, digest: Digest, reference: str) -> Manifest | None:
    """Read a stored manifest; a damaged one gives None, so one image does not hide the others."""
    subject = f"manifest {digest} of {reference} in the store"
    try:
        body = store.read_blob(digest)
        if not digest.matches(body):
            raise StoreError("its bytes do not match its digest")
        return parse_manifest(parse_json(body, subject), subject)
    except ApparateError as error:
        log.warning(
            "%s is unreadable (%s): pull the image again to repair it",
            subject, error.message,
        )  # fmt: skip
        return None


def pull_statistics(
    store_path: Path | None = None, limit: int = 20
) -> tuple[Totals, list[PullRecord]]:
    """Return the totals of every recorded pull and the ``limit`` latest ones."""
    root = store_path or default_store_path()
    if not_created(root):
        return Totals(0, 0, 0, 0, 0.0), []
    store = Store(root, create=False)
    if not (store.root / INDEX_FILE).exists():
        return Totals(0, 0, 0, 0, 0.0), []
    history = PullHistory(store.root / INDEX_FILE, read_only=True)
    try:
        return history.totals(), history.recent(limit)
    finally:
        history.close()
