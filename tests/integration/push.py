"""Push hand-made images to a plain-HTTP test registry over the distribution API.

Tests use it for images no tool would build: a config whose diff_id is
wrong, a layer of several gzip members, a manifest of an odd media type.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from typing import Any

import httpx

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_of(files: dict[str, bytes]) -> bytes:
    """A small tar holding ``files``, deterministic for the same input."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def gzip_members(data: bytes, pieces: int) -> bytes:
    """Compress ``data`` as several concatenated gzip members, as pigz may."""
    step = len(data) // pieces + 1
    return b"".join(
        gzip.compress(data[start : start + step], mtime=0)
        for start in range(0, len(data), step)
    )


@dataclass
class Pusher:
    """Uploads blobs and manifests to ``http://HOST``."""

    host: str

    def blob(self, repository: str, data: bytes) -> dict[str, Any]:
        """Upload a blob in one request; return its descriptor fields."""
        base = f"http://{self.host}"
        with httpx.Client(base_url=base) as client:
            started = client.post(f"/v2/{repository}/blobs/uploads/")
            started.raise_for_status()
            # The upload URL carries state in its query; the digest joins it.
            location = httpx.URL(started.headers["Location"])
            target = location.copy_merge_params({"digest": sha256(data)})
            done = client.put(target, content=data)
            done.raise_for_status()
        return {"digest": sha256(data), "size": len(data)}

    def manifest(
        self, repository: str, tag: str, body: bytes, media_type: str = OCI_MANIFEST
    ) -> str:
        url = f"http://{self.host}/v2/{repository}/manifests/{tag}"
        answer = httpx.put(url, content=body, headers={"Content-Type": media_type})
        answer.raise_for_status()
        return sha256(body)

    def image(
        self,
        repository: str,
        tag: str,
        layers: list[tuple[bytes, bytes]],
        diff_ids: list[str] | None = None,
        layer_type: str = OCI_LAYER_GZIP,
    ) -> str:
        """Push an image of (tar, blob) layers; return its manifest digest.

        ``diff_ids`` overrides the config's list, to make a lying config.
        """
        config = {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {
                "type": "layers",
                "diff_ids": diff_ids or [sha256(tar) for tar, _ in layers],
            },
        }
        config_body = json.dumps(config).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, **self.blob(repository, config_body)},
            "layers": [
                {"mediaType": layer_type, **self.blob(repository, blob)}
                for _, blob in layers
            ],
        }
        return self.manifest(repository, tag, json.dumps(manifest).encode())
