"""Matching of references given to ``apparate rm`` and ``import`` with stored images. Pure."""

from __future__ import annotations

import re
from collections.abc import Iterable

from apparate.digest import Digest
from apparate.errors import InvalidReference, UsageError
from apparate.reference import Reference
from apparate.store.layout import StoredImage

# A manifest or index digest or a prefix of it, as ``apparate images`` prints it.
_DIGEST_PREFIX = re.compile(r"sha256:[0-9a-f]{1,64}")
# The same without ``sha256:``, as docker takes an image ID. It needs the 12
# digits that ``apparate images`` prints, so a name such as ``cafe`` is no prefix.
_BARE_DIGEST_PREFIX = re.compile(r"[0-9a-f]{12,64}")


def select_images(text: str, stored: Iterable[StoredImage]) -> list[str]:
    """Return the references of the stored images that ``text`` names.

    A reference written exactly as stored names that entry. Otherwise it is
    normalised as ``pull`` does (``debian`` is ``docker.io/library/debian:
    latest``). With a digest, it names every image of that repository with
    that manifest digest, or picked from an index of that digest, whether
    pulled by tag or by digest. Without one, it names the images pulled by
    that tag, so an image pulled by digest is matched by its digest only.
    Raises InvalidReference for a malformed one.
    """
    images = list(stored)
    exact = [image.reference for image in images if image.reference == text]
    if exact:
        return exact
    requested = Reference.parse(text)
    return [image.reference for image in images if _names(requested, image)]


def _names(requested: Reference, image: StoredImage) -> bool:
    try:
        have = Reference.parse(image.reference)
    except InvalidReference:
        return False
    if have.name != requested.name:
        return False
    if requested.digest:
        return requested.digest in {have.digest, *_digests(image)}
    return have.digest is None and have.tag == requested.tag


def is_digest_prefix(text: str) -> bool:
    """Tell whether ``text`` is a digest or a prefix of one."""
    return _DIGEST_PREFIX.fullmatch(text) is not None


def select_by_digest(text: str, stored: Iterable[StoredImage]) -> list[str]:
    """Return the references of the stored images whose digest starts with ``text``.

    ``text`` is a manifest or index digest, or a prefix of it as ``apparate
    images`` prints it (``sha256:497fecd365e8``), as ``docker rmi`` takes a
    prefix of an image ID. It names every tag of that manifest, or of the
    manifests picked from that index. Raises UsageError when the prefix
    matches more than one stored manifest or index.
    """
    if not is_digest_prefix(text):
        return []
    by_digest: dict[Digest, list[str]] = {}
    for image in stored:
        named = _named_by(text, image)
        if named:
            by_digest.setdefault(named, []).append(image.reference)
    if len(by_digest) > 1:
        matched = ", ".join(str(digest) for digest in by_digest)
        raise UsageError(
            f"digest prefix {text} is ambiguous: it matches {len(by_digest)} "
            f"stored images, {matched}",
            hint="give more digits, as 'apparate images --json' prints them",
        )
    return next(iter(by_digest.values()), [])


def _digests(image: StoredImage) -> list[Digest]:
    """Return the digests of a stored image: its manifests, and its index if any."""
    digests = [image.source_manifest, image.descriptor.digest]
    return [*digests, image.source_index] if image.source_index else digests


def _named_by(prefix: str, image: StoredImage) -> Digest | None:
    """Return the index or manifest digest of ``image`` that starts with ``prefix``.

    A match of a converted copy's digest returns the registry's manifest it
    was made from, so that both name one image. None when no digest matches.
    """
    if image.source_index and str(image.source_index).startswith(prefix):
        return image.source_index
    manifests = (image.source_manifest, image.descriptor.digest)
    if any(str(digest).startswith(prefix) for digest in manifests):
        return image.source_manifest
    return None


def is_bare_digest_prefix(text: str) -> bool:
    """Tell whether ``text`` is 12 to 64 hexadecimal digits, a digest prefix without ``sha256:``."""
    return _BARE_DIGEST_PREFIX.fullmatch(text) is not None


def select_by_bare_digest(text: str, stored: Iterable[StoredImage]) -> list[str]:
    """Return the stored images whose digest starts with ``sha256:`` and ``text``.

    ``text`` is hexadecimal digits alone, as ``docker rmi 497fecd365e8``
    takes an image ID. It is also a valid image name, so callers try it only
    after ``text`` named no stored image.
    """
    if not is_bare_digest_prefix(text):
        return []
    return select_by_digest(f"sha256:{text}", stored)
