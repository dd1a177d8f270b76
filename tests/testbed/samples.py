"""Build the sample images from real Debian content and cache them.

The images live in one OCI image layout under the samples folder
(`APPARATE_SAMPLES_DIR`, default /var/cache/apparate/samples), named by ref
names such as `base:v1`. A stamp file records the recipe they were built
from, so they are rebuilt only when `recipe()` changes.

- `base:v1`: minbase bookworm for linux/amd64 as one gzip layer, plus a small
  app layer under /opt/app.
- `base:v2`: the same rootfs with a few packages installed and a few files
  changed, plus a slightly changed app layer. Every layer is a rebuilt tar,
  so most bytes equal v1's while every blob digest differs.
- `multi:v1`: an OCI index of `base:v1` (linux/amd64) and an arm64 image
  whose rootfs is the first stage of a foreign debootstrap.
- `base:v1-zstd`: the v1 layers compressed with zstd (same diff_ids).
- `base:v1-docker`: the v1 blobs under a Docker schema2 manifest.

Run `python -m tests.testbed.samples` (or scripts/build-samples) to build
them, with root rights, since debootstrap and chroot need them.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import debian
from .ocibuild import (
    DOCKER_MANIFEST,
    Descriptor,
    LayerBlob,
    OciLayout,
    write_image,
    write_layer_tar,
    write_platform_index,
)

log = logging.getLogger(__name__)

DEFAULT_SAMPLES_DIR = "/var/cache/apparate/samples"
SAMPLES_DIR_ENV = "APPARATE_SAMPLES_DIR"
RECIPE_VERSION = 1
SUITE = "bookworm"
V2_PACKAGES = ("curl", "ca-certificates")
# 2025-05-20T00:00:00Z: the clamp for tar mtimes and the images' `created`.
EPOCH = 1747699200
CREATED = "2025-05-20T00:00:00Z"
APP_DATA_SIZE = 1 << 20
REPOSITORY_PREFIX = "samples/"
SAMPLE_TAGS = ("base:v1", "base:v2", "multi:v1", "base:v1-zstd", "base:v1-docker")
STAMP_NAME = "stamp.json"
LAYOUT_NAME = "oci"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def recipe() -> dict[str, Any]:
    """Describe everything that shapes the images; its hash is the cache key."""
    return {
        "version": RECIPE_VERSION,
        "suite": SUITE,
        "variant": "minbase",
        "slim": True,
        "v2_packages": list(V2_PACKAGES),
        "epoch": EPOCH,
        "app_data_size": APP_DATA_SIZE,
        "tags": list(SAMPLE_TAGS),
    }


def recipe_id() -> str:
    encoded = json.dumps(recipe(), sort_keys=True).encode()
    return hashlib.sha256(encoded).hexdigest()[:16]


def samples_dir() -> Path:
    return Path(os.environ.get(SAMPLES_DIR_ENV) or DEFAULT_SAMPLES_DIR)


@dataclass(frozen=True)
class SampleImage:
    """One tagged sample: its top manifest (or index) and layer bytes."""

    tag: str
    media_type: str
    digest: str
    size: int
    layer_bytes: int

    @property
    def repository(self) -> str:
        """The registry repository, such as `samples/base`."""
        return REPOSITORY_PREFIX + self.tag.split(":", 1)[0]

    @property
    def reference(self) -> str:
        """The repository and tag, such as `samples/base:v1`."""
        return REPOSITORY_PREFIX + self.tag


@dataclass(frozen=True)
class Samples:
    """The built sample images and where their OCI layout is."""

    directory: Path
    recipe_id: str
    images: dict[str, SampleImage]

    @property
    def layout(self) -> Path:
        return self.directory / LAYOUT_NAME

    @property
    def content_id(self) -> str:
        """A hash of every tag's digest, which changes with each rebuild."""
        digests = sorted((tag, image.digest) for tag, image in self.images.items())
        return hashlib.sha256(json.dumps(digests).encode()).hexdigest()[:16]

    def oci_reference(self, tag: str) -> str:
        """The skopeo `oci:` reference of a sample, such as `oci:DIR:base:v1`."""
        return f"oci:{self.layout}:{tag}"


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on `directory` so only one process builds in it."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_samples(directory: Path) -> Samples | None:
    """Return the cached samples, or None when missing or from another recipe."""
    stamp_path = directory / STAMP_NAME
    if not stamp_path.exists() or not (directory / LAYOUT_NAME / "index.json").exists():
        return None
    stamp = json.loads(stamp_path.read_text())
    if stamp.get("recipe_id") != recipe_id():
        return None
    images = {
        tag: SampleImage(tag=tag, **body) for tag, body in stamp["images"].items()
    }
    return Samples(directory, stamp["recipe_id"], images)


def ensure_samples(directory: Path | None = None, *, force: bool = False) -> Samples:
    """Return the cached samples, building them first if needed."""
    directory = directory or samples_dir()
    with locked(directory):
        samples = None if force else load_samples(directory)
        if samples is not None:
            return samples
        return build_samples(directory)


def build_samples(directory: Path) -> Samples:
    """Build every sample image into `directory` and write the stamp last."""
    if os.geteuid() != 0:
        raise PermissionError(
            "building the sample images needs root (debootstrap and chroot); "
            f"run scripts/build-samples as root or point {SAMPLES_DIR_ENV} "
            "at a folder holding built samples"
        )
    started = time.monotonic()
    workdir = directory / ".build"
    debian.remove_tree(workdir)
    workdir.mkdir(parents=True)
    try:
        images = _SampleBuilder(workdir, debian.mirror_url()).build()
        debian.remove_tree(directory / LAYOUT_NAME)
        (workdir / LAYOUT_NAME).rename(directory / LAYOUT_NAME)
        stamp = {
            "recipe_id": recipe_id(),
            "recipe": recipe(),
            "images": {
                image.tag: {
                    "media_type": image.media_type,
                    "digest": image.digest,
                    "size": image.size,
                    "layer_bytes": image.layer_bytes,
                }
                for image in images
            },
        }
        (directory / STAMP_NAME).write_text(json.dumps(stamp, indent=2) + "\n")
    finally:
        debian.remove_tree(workdir)
    log.info("built sample images in %.0f s", time.monotonic() - started)
    samples = load_samples(directory)
    assert samples is not None
    return samples


class _SampleBuilder:
    """The steps of one build, all inside `workdir`."""

    def __init__(self, workdir: Path, mirror: str) -> None:
        self.workdir = workdir
        self.mirror = mirror
        self.layout = OciLayout(workdir / LAYOUT_NAME)
        self.logs = workdir.parent / "logs"
        self.logs.mkdir(exist_ok=True)

    def build(self) -> list[SampleImage]:
        amd64 = self.workdir / "rootfs-amd64"
        arm64 = self.workdir / "rootfs-arm64"
        log.info("debootstrap %s from %s for amd64 and arm64", SUITE, self.mirror)
        debian.bootstrap_all(
            [(amd64, "amd64", False), (arm64, "arm64", True)],
            SUITE,
            self.mirror,
            self.logs,
        )
        for root in (amd64, arm64):
            debian.clean_rootfs(root)
            debian.slim_rootfs(root)
        (amd64 / "etc" / "apparate-release").write_text("v1\n")

        v2 = self.workdir / "rootfs-amd64-v2"
        subprocess.run(["cp", "-a", str(amd64), str(v2)], check=True)
        log.info("installing %s into the v2 rootfs", " ".join(V2_PACKAGES))
        debian.install_packages(v2, V2_PACKAGES, self.logs / "apt-v2.log")
        debian.clean_rootfs(v2)
        debian.slim_rootfs(v2)
        _change_v2_files(v2)

        app_v1 = _make_app_tree(self.workdir / "app-v1", "v1")
        app_v2 = _make_app_tree(self.workdir / "app-v2", "v2")
        return self._write_images(amd64, arm64, v2, app_v1, app_v2)

    def _layer(self, root: Path, *compressions: str) -> list[LayerBlob]:
        """Tar `root` once and store one blob per compression."""
        tar_path = self.workdir / "layer.tar"
        with open(tar_path, "wb") as out:
            diff_id = write_layer_tar(root, out, mtime_clamp=EPOCH)
        blobs = [self.layout.compress_layer(tar_path, diff_id, c) for c in compressions]
        log.info(
            "layer %s: %s",
            root.name,
            ", ".join(f"{b.digest[:19]} {b.size}" for b in blobs),
        )
        tar_path.unlink()
        return blobs

    def _write_images(
        self, amd64: Path, arm64: Path, v2: Path, app_v1: Path, app_v2: Path
    ) -> list[SampleImage]:
        rootfs_v1_gzip, rootfs_v1_zstd = self._layer(amd64, "gzip", "zstd")
        app_v1_gzip, app_v1_zstd = self._layer(app_v1, "gzip", "zstd")
        (rootfs_v2,) = self._layer(v2, "gzip")
        (app_v2_gzip,) = self._layer(app_v2, "gzip")
        (rootfs_arm64,) = self._layer(arm64, "gzip")

        v1_layers = [rootfs_v1_gzip, app_v1_gzip]
        zstd_layers = [rootfs_v1_zstd, app_v1_zstd]
        arm64_layers = [rootfs_arm64, app_v1_gzip]
        base_v1 = write_image(self.layout, _config("amd64", "v1"), v1_layers)
        base_v2 = write_image(
            self.layout, _config("amd64", "v2"), [rootfs_v2, app_v2_gzip]
        )
        zstd = write_image(self.layout, _config("amd64", "v1"), zstd_layers)
        docker = write_image(
            self.layout,
            _config("amd64", "v1"),
            v1_layers,
            manifest_type=DOCKER_MANIFEST,
        )
        arm64_image = write_image(self.layout, _config("arm64", "v1"), arm64_layers)
        multi = write_platform_index(
            self.layout,
            [
                (base_v1, {"architecture": "amd64", "os": "linux"}),
                (
                    arm64_image,
                    {"architecture": "arm64", "os": "linux", "variant": "v8"},
                ),
            ],
        )
        named: list[tuple[str, Descriptor, list[LayerBlob]]] = [
            ("base:v1", base_v1, v1_layers),
            ("base:v2", base_v2, [rootfs_v2, app_v2_gzip]),
            ("multi:v1", multi, v1_layers + [rootfs_arm64]),
            ("base:v1-zstd", zstd, zstd_layers),
            ("base:v1-docker", docker, v1_layers),
        ]
        self.layout.write_index_json(
            [(tag, descriptor) for tag, descriptor, _ in named]
        )
        return [
            SampleImage(tag, d.media_type, d.digest, d.size, sum(b.size for b in blobs))
            for tag, d, blobs in named
        ]


def _config(architecture: str, version: str) -> dict[str, Any]:
    """Build an image config; `write_image` fills in `rootfs`."""
    config: dict[str, Any] = {
        "created": CREATED,
        "architecture": architecture,
        "os": "linux",
        "config": {
            "Env": [PATH_ENV],
            "Cmd": ["/opt/app/run.sh"],
            "WorkingDir": "/opt/app",
            "Labels": {"org.opencontainers.image.version": version},
        },
        "history": [
            {
                "created": CREATED,
                "created_by": f"debootstrap --variant=minbase {SUITE}",
            },
            {"created": CREATED, "created_by": "COPY app/ /opt/app/"},
        ],
    }
    if architecture == "arm64":
        config["variant"] = "v8"
    return config


def _change_v2_files(root: Path) -> None:
    """Make the small edits a new release of a base image would carry."""
    (root / "etc" / "apparate-release").write_text("v2\n")
    with open(root / "etc" / "motd", "a") as motd:
        motd.write("\nThis is the v2 sample image of the apparate test bed.\n")
    shutil.rmtree(root / "usr" / "share" / "doc" / "bash")


def _make_app_tree(root: Path, version: str) -> Path:
    """Write /opt/app with a script, a config, a symlink, a hard link and data.

    v2 differs from v1 in its version files and in 4 KiB in the middle of the
    1 MiB data file, the kind of change a delta pull should fetch alone.
    """
    app = root / "opt" / "app"
    (app / "config").mkdir(parents=True)
    (app / "data").mkdir()
    (app / "bin").mkdir()
    (app / "VERSION").write_text(f"{version}\n")
    run = app / "run.sh"
    run.write_text('#!/bin/sh\necho "apparate sample app $(cat /opt/app/VERSION)"\n')
    run.chmod(0o755)
    (app / "bin" / "run").symlink_to("../run.sh")
    settings = app / "config" / "settings.json"
    settings.write_text(json.dumps({"version": version, "workers": 4}) + "\n")
    os.link(settings, app / "config" / "settings.default.json")
    data = bytearray(hashlib.shake_256(b"apparate sample data").digest(APP_DATA_SIZE))
    if version != "v1":
        middle = APP_DATA_SIZE // 2
        data[middle : middle + 4096] = hashlib.shake_256(version.encode()).digest(4096)
    (app / "data" / "table.bin").write_bytes(bytes(data))
    return root


def main(argv: list[str] | None = None) -> int:
    from . import registry

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.add_argument(
        "--no-seed",
        action="store_true",
        help="skip pushing the samples into the cached registry storage",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    started = time.monotonic()
    samples = ensure_samples(force=args.force)
    for image in samples.images.values():
        mib = image.layer_bytes / (1 << 20)
        print(f"{image.reference:24} {image.digest}  layers {mib:6.1f} MiB")
    if args.no_seed:
        print("skipped seeding the registry storage (--no-seed)")
    elif registry.registry_binary() is None:
        print("docker-registry is not installed, so no registry storage was seeded")
    else:
        storage = registry.ensure_seed_storage(samples)
        print(f"registry storage with the samples: {storage}")
    print(
        f"samples in {samples.directory} ready after {time.monotonic() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
