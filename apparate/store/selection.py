"""Which stored images a reference given to ``apparate rm`` names. Pure."""

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
    that manifest digest, whether pulled by tag or by digest; without one,
    the images pulled by that tag (an image pulled by digest is matched by
    its digest only). Raises InvalidReference for a malformed reference.
    """
    images = list(stored)
    exact = [image.reference for image in images if image.reference == text]
    if exact:
        return exact
    wanted = Reference.parse(text)
    return [image.reference for image in images if _names(wanted, image)]


def _names(wanted: Reference, image: StoredImage) -> bool:
    try:
        have = Reference.parse(image.reference)
    except InvalidReference:
        return False
    if have.name != wanted.name:
        return False
    if wanted.digest:
        digests = {have.digest, image.source_manifest, image.descriptor.digest}
        return wanted.digest in digests
    return have.digest is None and have.tag == wanted.tag
