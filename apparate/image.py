"""Resolve a reference at its registry to one verified manifest and config."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from apparate.digest import Digest
from apparate.errors import InvalidResponse, PlatformNotFound
from apparate.manifest import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_CONFIG_BYTES,
    Descriptor,
    Manifest,
    check_layer_types,
    media_type_of,
    parse_diff_ids,
    parse_index,
    parse_json,
    parse_manifest,
)
from apparate.platform import Platform, match_rank
from apparate.reference import Reference
from apparate.registry.client import FetchedManifest, RegistryClient
from apparate.resolve import check_entry_manifest, select_manifest
from apparate.store.layout import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResolvedImage:
    """An image manifest for one platform, with the index it came from."""

    reference: Reference
    platform: str
    index: FetchedManifest | None
    manifest: FetchedManifest
    parsed: Manifest
    config: bytes
    diff_ids: list[Digest]

    @property
    def descriptor(self) -> Descriptor:
        return Descriptor(
            self.parsed.media_type, self.manifest.digest, len(self.manifest.body)
        )


def resolve_image(
    client: RegistryClient,
    store: Store,
    reference: Reference,
    wanted: Platform,
    explicit_platform: bool = False,
    check_platform: bool = True,
    on_manifest: Callable[[Manifest], None] | None = None,
) -> ResolvedImage:
    """Fetch (or read from the store) the manifest and config of ``reference``.

    An image whose config names another platform than ``wanted`` is an error
    when the user asked for that platform, else only a warning, as in docker.
    ``on_manifest`` sees the manifest before the config is fetched.
    """
    image = str(reference)
    top = fetch_manifest(
        client, store, reference.lookup, reference.digest, store.has_reference(image)
    )
    document = parse_json(top.body, f"manifest of {image}")
    media_type = media_type_of(document, top.media_type)

    index = None
    platform = ""
    if media_type in INDEX_TYPES:
        index = top
        entry = select_manifest(
            parse_index(document, f"index of {image}"), wanted, image
        )
        platform = str(entry.platform) if entry.platform else ""
        log.info("%s: %s is manifest %s", image, platform, entry.digest)
        top = fetch_manifest(client, store, str(entry.digest), entry.digest)
        document = parse_json(top.body, f"manifest {entry.digest} of {image}")
        media_type = media_type_of(document, top.media_type)
        check_entry_manifest(entry, top.body, media_type, image)
    if media_type not in MANIFEST_TYPES:
        raise InvalidResponse(
            f"{image}: manifest media type {media_type!r} is not supported",
            hint="apparate reads OCI and Docker schema 2 images; "
            "re-push older images with a current docker or skopeo",
        )

    manifest = parse_manifest(document, f"manifest of {image}")
    check_layer_types(manifest, image)
    if on_manifest is not None:
        on_manifest(manifest)
    config = _fetch_config(client, store, manifest.config, image)
    config_document = parse_json(config, f"config of {image}")
    if not platform:
        platform = _config_platform(config_document)
        if check_platform:
            _check_platform(image, platform, wanted, explicit_platform)
    diff_ids = parse_diff_ids(config_document, f"config of {image}")
    if len(diff_ids) != len(manifest.layers):
        raise InvalidResponse(
            f"{image}: the manifest lists {len(manifest.layers)} layers "
            f"but the config has {len(diff_ids)} diff_ids"
        )
    return ResolvedImage(reference, platform, index, top, manifest, config, diff_ids)


def fetch_manifest(
    client: RegistryClient,
    store: Store,
    lookup: str,
    expected: Digest | None,
    tag_stored: bool = True,
) -> FetchedManifest:
    """Read a manifest from the store when its digest is known, else GET it.

    For a tag the store contains (``tag_stored``), a HEAD request returns the
    digest it points to first, so an unchanged image costs no GET (Docker
    Hub counts GETs against limits). For a tag new to the store, that HEAD
    would most likely only add a round trip before the GET.
    NOTE: a new tag whose manifest the store contains under another name (the
    same image pulled by digest or by another tag) then costs a GET where a
    HEAD would have done.
    """
    digest = expected or (client.head_manifest(lookup) if tag_stored else None)
    if digest and store.has_blob(digest):
        log.debug("manifest %s is in the store", digest)
        body = store.read_intact_blob(digest)
        if body is not None:
            return FetchedManifest(body, "", digest)
    return client.get_manifest(lookup, expected)


def _fetch_config(
    client: RegistryClient, store: Store, config: Descriptor, image: str
) -> bytes:
    if store.has_blob(config.digest, config.size):
        body = store.read_intact_blob(config.digest)
        if body is not None:
            return body
    subject = f"config {config.digest} of {image}"
    return client.get_blob_bytes(config, MAX_CONFIG_BYTES, subject)


def _check_platform(
    image: str, platform: str, wanted: Platform, explicit: bool
) -> None:
    try:
        offered = Platform.parse(platform)
    except ValueError:
        offered = None
    if offered and match_rank(wanted, offered) is not None:
        return
    if explicit:
        hint = f"pull it with --platform {offered}" if offered else "pick another image"
        raise PlatformNotFound(
            f"{image} is an image for {platform} only, not {wanted}", hint=hint
        )
    log.warning(
        "%s is an image for %s, not for this machine (%s)", image, platform, wanted
    )


def _config_platform(config: dict[str, object]) -> str:
    platform = Platform.from_config(config)
    return str(platform) if platform else "unknown"
