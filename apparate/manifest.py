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
    try:
        config = _descriptor(document["config"])
        layers = [_descriptor(item) for item in document["layers"]]
        media_type = media_type_of(document, OCI_MANIFEST)
    except (KeyError, TypeError, ValueError) as error:
        raise InvalidResponse(
            f"{subject} is not a valid image manifest: {error}"
        ) from None
    return Manifest(media_type, config, layers)


def parse_index(document: dict[str, Any], subject: str) -> Index:
    """Read the entries of an index or manifest list."""
    try:
        entries = [_descriptor(item) for item in document["manifests"]]
    except (KeyError, TypeError, ValueError) as error:
        raise InvalidResponse(
            f"{subject} is not a valid image index: {error}"
        ) from None
    return Index(media_type_of(document, OCI_INDEX), entries)


def parse_diff_ids(document: dict[str, Any], subject: str) -> list[Digest]:
    """Read ``rootfs.diff_ids`` from an image config."""
    try:
        return [Digest.parse(text) for text in document["rootfs"]["diff_ids"]]
    except (KeyError, TypeError, ValueError) as error:
        raise InvalidResponse(
            f"{subject} has no valid rootfs.diff_ids: {error}"
        ) from None


def _descriptor(item: dict[str, Any]) -> Descriptor:
    size = item["size"]
    if not isinstance(size, int) or size < 0:
        raise ValueError(f"invalid size {size!r}")
    platform = None
    if isinstance(item.get("platform"), dict):
        spec = item["platform"]
        platform = Platform.normalised(
            str(spec.get("os", "")),
            str(spec.get("architecture", "")),
            str(spec.get("variant", "")),
        )
    return Descriptor(
        media_type=str(item.get("mediaType", "")),
        digest=Digest.parse(item["digest"]),
        size=size,
        platform=platform,
        annotations=dict(item.get("annotations") or {}),
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
