"""Write OCI image layouts from root filesystem folders.

Layer tars are written deterministically: entries sorted by path, owner names
dropped in favour of numeric ids, and mtimes clamped to a fixed time, so equal
folders give equal tars. Ownership, modes, symlinks, hard links and device
nodes are kept as the folder has them.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
REF_NAME = "org.opencontainers.image.ref.name"

COPY_BUFFER = 1 << 20
GZIP_LEVEL = 6
ZSTD_LEVEL = 3


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: what a manifest or index points to."""

    media_type: str
    digest: str
    size: int

    def to_json(self, **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        body.update(extra)
        return body


@dataclass(frozen=True)
class LayerBlob:
    """A compressed layer blob and the diff_id of the tar inside it."""

    digest: str
    size: int
    diff_id: str
    compression: str


class _HashingWriter:
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, target: BinaryIO) -> None:
        self.target = target
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.target.write(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.target.flush()

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha256.hexdigest()


def _walk_sorted(root: Path, relative: str = "") -> Iterator[str]:
    """Yield the paths below `root`, each folder before its sorted entries."""
    folder = root / relative if relative else root
    for name in sorted(os.listdir(folder)):
        path = f"{relative}/{name}" if relative else name
        yield path
        full = root / path
        if full.is_dir() and not full.is_symlink():
            yield from _walk_sorted(root, path)


def write_layer_tar(
    root: Path,
    out: BinaryIO,
    *,
    mtime_clamp: int,
    exclude: Callable[[str], bool] = lambda path: False,
) -> str:
    """Write the tree under `root` as a PAX tar to `out`; return its diff_id.

    `exclude` receives paths relative to `root` without a leading slash, and
    an excluded folder is skipped with all its contents.
    """
    writer = _HashingWriter(out)
    skipped: list[str] = []
    with tarfile.open(fileobj=writer, mode="w", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for path in _walk_sorted(root):
            if any(path.startswith(prefix + "/") for prefix in skipped):
                continue
            if exclude(path):
                skipped.append(path)
                continue
            _add_entry(tar, root / path, path, mtime_clamp)
    return writer.digest


def _add_entry(tar: tarfile.TarFile, full: Path, path: str, mtime_clamp: int) -> None:
    info = tar.gettarinfo(str(full), arcname=path)
    if info is None:  # sockets cannot be stored in a tar
        return
    info.mtime = min(int(info.mtime), mtime_clamp)
    info.uname = ""
    info.gname = ""
    if info.isreg():
        with open(full, "rb") as source:
            tar.addfile(info, source)
    else:
        tar.addfile(info)


class OciLayout:
    """An OCI image layout folder: `oci-layout`, `index.json`, `blobs/sha256`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.blobs = path / "blobs" / "sha256"
        self.blobs.mkdir(parents=True, exist_ok=True)
        (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')

    def blob_path(self, digest: str) -> Path:
        algorithm, _, hex_digest = digest.partition(":")
        return self.path / "blobs" / algorithm / hex_digest

    def put_bytes(self, data: bytes, media_type: str) -> Descriptor:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        target = self.blob_path(digest)
        if not target.exists():
            temporary = target.with_name(target.name + ".tmp")
            temporary.write_bytes(data)
            temporary.replace(target)
        return Descriptor(media_type, digest, len(data))

    def put_json(self, body: dict[str, Any], media_type: str) -> Descriptor:
        return self.put_bytes(_json_bytes(body), media_type)

    def put_stream(self, write: Callable[[BinaryIO], None]) -> tuple[str, int]:
        """Store the bytes that `write` produces; return their digest and size."""
        with tempfile.NamedTemporaryFile(dir=self.blobs, delete=False) as handle:
            writer = _HashingWriter(handle)
            try:
                write(writer)  # type: ignore[arg-type]
            except BaseException:
                os.unlink(handle.name)
                raise
        os.replace(handle.name, self.blob_path(writer.digest))
        return writer.digest, writer.size

    def compress_layer(
        self, tar_path: Path, diff_id: str, compression: str
    ) -> LayerBlob:
        """Compress the tar at `tar_path` with "gzip" or "zstd" into a blob."""

        def write(out: BinaryIO) -> None:
            with open(tar_path, "rb") as source:
                if compression == "gzip":
                    # filename="" and mtime=0 keep the gzip header reproducible.
                    with gzip.GzipFile(
                        filename="", mode="wb", fileobj=out, mtime=0,
                        compresslevel=GZIP_LEVEL,
                    ) as compressed:  # fmt: skip
                        shutil.copyfileobj(source, compressed, COPY_BUFFER)
                elif compression == "zstd":
                    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
                    size = os.fstat(source.fileno()).st_size
                    compressor.copy_stream(source, out, size=size)
                else:
                    raise ValueError(f"unknown layer compression {compression!r}")

        digest, size = self.put_stream(write)
        return LayerBlob(digest, size, diff_id, compression)

    def write_index_json(self, refs: list[tuple[str, Descriptor]]) -> None:
        """Write `index.json` naming each descriptor by its ref name."""
        manifests = [
            descriptor.to_json(annotations={REF_NAME: name})
            for name, descriptor in refs
        ]
        body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        (self.path / "index.json").write_bytes(_json_bytes(body))


def _json_bytes(body: dict[str, Any]) -> bytes:
    return json.dumps(body, indent=2).encode() + b"\n"


def layer_media_type(compression: str, manifest_type: str) -> str:
    if manifest_type == DOCKER_MANIFEST:
        if compression != "gzip":
            raise ValueError("Docker schema2 manifests only carry gzip layers")
        return DOCKER_LAYER_GZIP
    return {"gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD}[compression]


def write_image(
    layout: OciLayout,
    config: dict[str, Any],
    layers: list[LayerBlob],
    *,
    manifest_type: str = OCI_MANIFEST,
    annotations: dict[str, str] | None = None,
) -> Descriptor:
    """Store an image config and its manifest; return the manifest descriptor.

    The config's `rootfs.diff_ids` is set from `layers`, so it always matches
    the tars inside the blobs.
    """
    config = dict(config)
    config["rootfs"] = {
        "type": "layers",
        "diff_ids": [layer.diff_id for layer in layers],
    }
    config_type = DOCKER_CONFIG if manifest_type == DOCKER_MANIFEST else OCI_CONFIG
    config_descriptor = layout.put_json(config, config_type)
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": config_descriptor.to_json(),
        "layers": [
            Descriptor(
                layer_media_type(layer.compression, manifest_type),
                layer.digest,
                layer.size,
            ).to_json()
            for layer in layers
        ],
    }
    if annotations and manifest_type == OCI_MANIFEST:
        manifest["annotations"] = annotations
    return layout.put_json(manifest, manifest_type)


def write_platform_index(
    layout: OciLayout, entries: list[tuple[Descriptor, dict[str, str]]]
) -> Descriptor:
    """Store an OCI index listing one manifest per platform."""
    manifests = [
        descriptor.to_json(platform=platform) for descriptor, platform in entries
    ]
    body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    return layout.put_json(body, OCI_INDEX)
