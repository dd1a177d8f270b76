"""Matching of references given to ``apparate rm`` with stored images. Pure."""

from __future__ import annotations

from collections.abc import Iterable

from apparate.errors import InvalidReference
from apparate.reference import Reference
from apparate.store.layout import StoredImage


def select_images(text: str, stored: Iterable[StoredImage]) -> list[str]:
    """Return the references of the stored images that ``text`` names.

    A reference written exactly as stored names that entry. Otherwise it is
    normalised as ``pull`` does (``debian`` is ``docker.io/library/debian:
    latest``). With a digest, it names every image of that repository with
    that manifest digest, whether pulled by tag or by digest. Without one, it
    names the images pulled by that tag, so an image pulled by digest is
    matched by its digest only. Raises InvalidReference for a malformed one.
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
        digests = {have.digest, image.source_manifest, image.descriptor.digest}
        return requested.digest in digests
    return have.digest is None and have.tag == requested.tag
