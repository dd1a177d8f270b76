"""Read a tagged image back from the local store, as the importers need it.

The store tags an OCI copy of a Docker schema 2 manifest, but keeps the
registry's own manifest and index too. Importers that must show the image
under its registry digest (containerd) use those, found through the
``SOURCE_MANIFEST`` and ``SOURCE_INDEX`` annotations of the tag.
"""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass

from apparate.digest import Digest
from apparate.errors import (
    ApparateError,
    InvalidReference,
    NotFound,
    StoreError,
    UsageError,
)
from apparate.manifest import (
    Descriptor,
    Index,
    Manifest,
    image_platform,
    parse_diff_ids,
    parse_index,
    parse_json,
    parse_manifest,
)
from apparate.reference import Reference
from apparate.store.layout import Store, StoredImage, default_store_path
from apparate.store.selection import (
    is_bare_digest_prefix,
    is_digest_prefix,
    select_by_bare_digest,
    select_by_digest,
    select_images,
)


@dataclass(frozen=True)
class StoredContent:
    """The blobs of one stored image, as the registry served them."""

    reference: Reference
    top: Descriptor
    index_body: bytes | None
    manifest: Descriptor
    manifest_body: bytes
    parsed: Manifest
    config_body: bytes
    diff_ids: list[Digest]
    platform: str

    @property
    def config_digest(self) -> Digest:
        return self.parsed.config.digest

    @property
    def tag(self) -> str | None:
        """The tag daemons may name the image by; None for a pull by digest."""
        return None if self.reference.digest else self.reference.tag


def find_stored(store: Store, reference: str) -> StoredImage:
    """Return the store's entry for ``reference``, raising NotFound if absent.

    A reference by digest also finds the image stored under a tag of that
    repository, which is then imported without the tag, as a pull by
    digest would be. A manifest digest names it without the index it was
    picked from. A manifest or index digest or a prefix of it, as
    ``apparate images`` prints it, names the image under its first stored
    name that apparate wrote, since names other tools wrote are no
    references. So does such a prefix without ``sha256:`` that names no
    stored image. An index digest that names stored images of several
    platforms, whole or as a prefix, raises UsageError.
    """
    images = store.images()
    named = select_by_digest(reference, images)
    if named:
        return _first_named(reference, named, images)
    if is_digest_prefix(reference):
        raise NotFound(
            f"no image in the local store {store.root} has a digest starting "
            f"with {reference}",
            hint="list the stored images with 'apparate images'",
        )
    ref = Reference.parse(reference)
    for image in images:
        if image.reference == str(ref):
            return image
    if ref.digest:
        names = set(select_images(str(ref), images))
        matching = [image for image in images if image.reference in names]
        if matching:
            _reject_several_platforms(reference, matching)
            return _by_digest(matching[0], ref)
    named = select_by_bare_digest(reference, images)
    if named:
        return _first_named(reference, named, images)
    if is_bare_digest_prefix(reference):
        # Hexadecimal digits alone may be a digest prefix, as docker takes an
        # image ID, so the error covers both readings.
        raise NotFound(
            f"{ref} is not in the local store {store.root}, and no image there "
            f"has a digest starting with sha256:{reference}",
            hint="list the stored images with 'apparate images', or pull it "
            f"with 'apparate pull {ref}'",
        )
    raise NotFound(
        f"{ref} is not in the local store {store.root}",
        hint=f"pull it first with 'apparate pull {ref}'",
    )


def _by_digest(image: StoredImage, ref: Reference) -> StoredImage:
    """Return ``image`` renamed to ``ref``, a reference by its manifest or index digest.

    A manifest digest drops the index, so containerd lists the manifest, as
    ``ctr images pull REPOSITORY@DIGEST`` does.
    """
    if ref.digest == image.source_index:
        return dataclasses.replace(image, reference=str(ref))
    return dataclasses.replace(image, reference=str(ref), source_index=None)


def _reject_several_platforms(digest: str, chosen: list[StoredImage]) -> None:
    """Raise UsageError when ``chosen``, the images ``digest`` names, differ in manifest.

    Only an index digest names several manifests, one per platform, so any
    choice among them would be a guess.
    """
    manifests = {image.source_manifest for image in chosen}
    if len(manifests) > 1:
        listed = ", ".join(
            f"{i.reference} ({str(i.source_manifest)[:19]})" for i in chosen
        )
        raise UsageError(
            f"{digest} names images of {len(manifests)} platforms: {listed}",
            hint="import one by its name or by its manifest digest",
        )


def _first_named(
    digest: str, named: list[str], images: list[StoredImage]
) -> StoredImage:
    """Return the image of ``named`` stored under the first name apparate wrote.

    Raises UsageError when ``named``, the images an index ``digest`` names,
    are of several platforms, since the choice would be a guess.
    """
    _reject_several_platforms(
        digest, [image for image in images if image.reference in named]
    )
    preferred = [name for name in named if _is_full_reference(name)] or named
    return next(image for image in images if image.reference == preferred[0])


def _is_full_reference(name: str) -> bool:
    """Tell whether a stored name is a whole reference, as apparate tags images."""
    try:
        return str(Reference.parse(name)) == name
    except InvalidReference:
        return False


def load_content(store: Store, image: StoredImage) -> StoredContent:
    """Read manifest, index and config of a stored image, and check its layers."""
    subject = f"{image.reference} in the store"
    manifest_body = _read_intact(store, image.source_manifest, image.reference)
    try:
        document = parse_json(manifest_body, f"manifest of {subject}")
        parsed = parse_manifest(document, f"manifest of {subject}")
        config_body = _read_intact(store, parsed.config.digest, image.reference)
        config = parse_json(config_body, f"config of {subject}")
        diff_ids = parse_diff_ids(config, f"config of {subject}")
    except StoreError:
        raise
    except ApparateError as error:
        raise StoreError(f"{subject} is unreadable: {error.message}") from None
    _check_layers(store, parsed, diff_ids, subject)
    manifest = Descriptor(parsed.media_type, image.source_manifest, len(manifest_body))
    top, index_body, index = manifest, None, None
    if image.source_index:
        index_body = _read_intact(store, image.source_index, image.reference)
        index = _read_index(index_body, f"index of {subject}")
        top = Descriptor(index.media_type, image.source_index, len(index_body))
    platform = image_platform(config, index, image.source_manifest)
    return StoredContent(
        Reference.parse(image.reference), top, index_body, manifest, manifest_body,
        parsed, config_body, diff_ids, str(platform) if platform else "",
    )  # fmt: skip


def _read_index(body: bytes, subject: str) -> Index:
    try:
        return parse_index(parse_json(body, subject), subject)
    except ApparateError as error:
        raise StoreError(f"{subject} is unreadable: {error.message}") from None


def _read_intact(store: Store, digest: Digest, reference: str) -> bytes:
    """Read a manifest, index or config blob; a damaged one is removed and raised."""
    body = store.read_intact_blob(digest)
    if body is None:
        raise StoreError(
            f"blob {digest} of {reference} was damaged in the store, so it was removed",
            hint=f"pull the image again with 'apparate pull {reference}'",
        )
    return body


def _check_layers(
    store: Store, parsed: Manifest, diff_ids: list[Digest], subject: str
) -> None:
    if len(diff_ids) != len(parsed.layers):
        raise StoreError(
            f"{subject}: the config lists {len(diff_ids)} diff_ids for "
            f"{len(parsed.layers)} layers"
        )
    for layer in parsed.layers:
        if not store.has_blob(layer.digest, layer.size):
            raise StoreError(
                f"{subject}: layer {layer.digest} is missing from the store",
                hint="pull the image again",
            )


def retry_command(store: Store, reference: str, into: str) -> str:
    """Return the ``apparate import`` command that hands the image on again.

    It names the store when the command would otherwise read another one.
    """
    store_option = ""
    if store.root != default_store_path():
        store_option = f" --store {shlex.quote(str(store.root))}"
    return f"apparate import{store_option} {shlex.quote(reference)} --into {into}"
