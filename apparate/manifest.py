"""OCI and Docker manifests, indexes and image configs, parsed from JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from apparate.digest import Digest
from apparate.errors import InvalidResponse
from apparate.platform import Platform

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
ACCEPTED_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST)

# Layer media types, grouped by the compression of their bytes.
GZIP_LAYERS = {
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
}
ZSTD_LAYERS = {
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.zstd",
}
PLAIN_LAYERS = {
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.docker.image.rootfs.diff.tar",
}

LAYER_TYPES = GZIP_LAYERS | ZSTD_LAYERS | PLAIN_LAYERS

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
# The OCI media type for each Docker one, as ``skopeo copy`` converts them.
DOCKER_TO_OCI = {
    DOCKER_MANIFEST: OCI_MANIFEST,
    DOCKER_CONFIG: OCI_CONFIG,
    "application/vnd.docker.image.rootfs.diff.tar.gzip":
        "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip":
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd":
        "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar":
        "application/vnd.oci.image.layer.v1.tar",
}  # fmt: skip

# Manifests over this size are rejected before they are buffered; registries
# commonly cap pushes at 4 MiB, so everything real fits.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_CONFIG_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Descriptor:
    """A pointer to content: media type, digest, size, and optional extras."""

    media_type: str
    digest: Digest
    size: int
    platform: Platform | None = None
    annotations: dict[str, str] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        """Return the descriptor as a manifest lists it, annotations sorted."""
        item: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": str(self.digest),
            "size": self.size,
        }
        if self.annotations:
            item["annotations"] = dict(sorted(self.annotations.items()))
        return item


@dataclass(frozen=True)
class Manifest:
    """An image manifest: config descriptor and layer descriptors."""

    media_type: str
    config: Descriptor
    layers: list[Descriptor]


@dataclass(frozen=True)
class Index:
    """An OCI index or Docker manifest list."""

    media_type: str
    manifests: list[Descriptor]


def parse_json(body: bytes, subject: str) -> dict[str, Any]:
    """Decode a JSON object, raising InvalidResponse that names ``subject``."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        preview = body[:60].decode("utf-8", "replace").strip()
        raise InvalidResponse(
            f"{subject} is not JSON (starts with {preview!r})"
        ) from None
    if not isinstance(document, dict):
        raise InvalidResponse(f"{subject} is not a JSON object")
    return document


def media_type_of(document: dict[str, Any], header_type: str) -> str:
    """Return the document's own media type, else the Content-Type header's."""
    declared = document.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    if "manifests" in document:
        return OCI_INDEX
    if "layers" in document and header_type not in MANIFEST_TYPES:
        return OCI_MANIFEST
    return header_type


def parse_manifest(document: dict[str, Any], subject: str) -> Manifest:
    """Read the config and layers of a manifest document."""
    if document.get("schemaVersion") == 1 or "fsLayers" in document:
        raise InvalidResponse(
            f"{subject} is a Docker schema 1 manifest, and schema 1 manifests "
            "are not supported",
            hint="re-push the image with a current docker or skopeo, which "
            "write schema 2 or OCI manifests",
        )
    config = document.get("config")
    if not isinstance(config, dict):
        raise _malformed(f"{subject} has no config descriptor")
    layers = document.get("layers")
    if not isinstance(layers, list):
        raise _malformed(f"{subject} has no list of layers")

    return Manifest(
        media_type_of(document, OCI_MANIFEST),
        _descriptor(config, f"config descriptor of {subject}"),
        [
            _descriptor(item, f"layer {number} of {subject}")
            for number, item in enumerate(layers, 1)
        ],
    )


def parse_index(document: dict[str, Any], subject: str) -> Index:
    """Read the entries of an index or manifest list."""
    entries = document.get("manifests")
    if not isinstance(entries, list):
        raise _malformed(f"{subject} has no list of manifests")
    return Index(
        media_type_of(document, OCI_INDEX),
        [
            _descriptor(item, f"entry {number} of {subject}")
            for number, item in enumerate(entries, 1)
        ],
    )


def image_platform(
    config: dict[str, Any], index: Index | None, digest: Digest
) -> Platform | None:
    """Return the platform of image manifest ``digest``: its index entry's, else its config's.

    A config may lack the variant its index entry names, and the entry is
    what a pull matched and what ``ctr import --platform`` filters on.
    """
    if index is not None:
        for entry in index.manifests:
            if entry.digest == digest and entry.platform is not None:
                return entry.platform
    return Platform.from_config(config)


def parse_diff_ids(document: dict[str, Any], subject: str) -> list[Digest]:
    """Read ``rootfs.diff_ids`` from an image config."""
    rootfs = document.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list):
        raise _malformed(f"{subject} has no rootfs.diff_ids")
    parsed = []
    for text in diff_ids:
        if not isinstance(text, str):
            raise _malformed(f"{subject} has an invalid diff_id {text!r}")
        try:
            parsed.append(Digest.parse(text))
        except ValueError as error:
            raise _malformed(f"{subject} has an invalid diff_id ({error})") from None
    return parsed


def check_layer_types(manifest: Manifest, image: str) -> None:
    """Raise InvalidResponse for the first layer that is not a tar apparate unpacks."""
    for number, layer in enumerate(manifest.layers, 1):
        if layer.media_type not in LAYER_TYPES:
            subject = f"layer {number} ({layer.digest}) of {image}"
            raise unsupported_layer_type(layer.media_type, subject)


def unsupported_layer_type(media_type: str, subject: str) -> InvalidResponse:
    """Build the error for a layer of ``media_type``, which apparate cannot unpack."""
    return InvalidResponse(
        f"{subject} has the media type {media_type!r}, which is not supported",
        hint="apparate reads tar layers that are plain, gzip or zstd compressed",
    )


def _descriptor(item: object, subject: str) -> Descriptor:
    """Read one descriptor; ``subject`` names it in errors (``layer 2 of ...``)."""
    if not isinstance(item, dict):
        raise _malformed(f"{subject} is not a JSON object")
    if not isinstance(item.get("digest"), str):
        raise _malformed(f"{subject} has no digest")
    try:
        digest = Digest.parse(item["digest"])
    except ValueError as error:
        raise _malformed(f"{subject} has an invalid digest ({error})") from None
    if "size" not in item:
        raise _malformed(f"{subject} has no size")
    size = item["size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _malformed(f"{subject} has an invalid size {size!r}")
    media_type = item.get("mediaType", "")
    if not isinstance(media_type, str):
        raise _malformed(f"{subject} has an invalid media type {media_type!r}")
    annotations = item.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(
        isinstance(value, str) for value in annotations.values()
    ):
        raise _malformed(f"{subject} has invalid annotations")

    platform = None
    if isinstance(item.get("platform"), dict):
        spec = item["platform"]
        platform = Platform.normalised(
            str(spec.get("os", "")),
            str(spec.get("architecture", "")),
            str(spec.get("variant", "")),
        )
    return Descriptor(media_type, digest, size, platform, dict(annotations))


def _malformed(message: str) -> InvalidResponse:
    return InvalidResponse(
        message,
        hint="the registry serves a malformed image; re-push it with a current "
        "docker or skopeo",
    )


def as_oci_manifest(document: dict[str, Any]) -> bytes:
    """Rewrite a Docker schema 2 manifest with OCI media types.

    Config and layer blobs stay byte for byte the same; only the manifest,
    and so its digest, changes. Tools that read OCI layouts (skopeo 1.9
    among them) list only entries of OCI media types.
    """
    converted = json.loads(json.dumps(document))
    converted["mediaType"] = OCI_MANIFEST
    for item in [converted["config"], *converted["layers"]]:
        item["mediaType"] = DOCKER_TO_OCI.get(item["mediaType"], item["mediaType"])
    return json.dumps(converted, separators=(",", ":")).encode()
