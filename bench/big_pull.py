"""Peak memory of apparate pulling a 1 GB layer: whole, converted, and rebuilt.

A tar of about 1 GB of real files from this machine's /usr (built once, as
``bench.convert`` builds it) is pushed as the uncompressed layer of an image
to a fresh test-bed registry, and ``apparate convert`` writes a converted
copy there. Then, each a fresh process measured by GNU time:

- a pull of the plain image into an empty store: the download, its diff_id
  check and the local pack of its chunks;
- a cold pull of the converted image into an empty store;
- a pull of the converted image into the store that contains the plain one,
  which rebuilds the layer from the local pack's chunks.

It prints seconds, MB fetched and peak RSS of each, and the target of a peak
RSS under 300 MB. Run it through ``scripts/bench big-pull``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from apparate.digest import Digest
from apparate.manifest import Descriptor
from apparate.platform import Platform
from apparate.reference import Reference
from apparate.registry.credentials import CredentialStore
from apparate.registry.push import RegistryWriter
from apparate.registry.transport import TransportSettings
from bench.convert import big_layer
from tests.testbed.registry import start_registry
from tests.testbed.samples import ensure_samples

APPARATE = str(Path(sys.executable).with_name("apparate"))
GNU_TIME = "/usr/bin/time"
TARGET_RSS = 300 * 1000 * 1000
PLAIN_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def push_plain_image(host: str, tar: Path, scratch: Path) -> str:
    """Push an image whose one layer is ``tar``, uncompressed, and return its reference."""
    reference = f"{host}/big/plain:v1"
    digest = file_digest(tar)
    layer = Descriptor(PLAIN_LAYER, digest, tar.stat().st_size)
    host_platform = Platform.host()
    config = json.dumps({
        "architecture": host_platform.architecture,
        "os": host_platform.os,
        "rootfs": {"type": "layers", "diff_ids": [str(digest)]},
    }).encode()  # fmt: skip
    config_path = scratch / "config.json"
    config_path.write_bytes(config)
    config_descriptor = Descriptor(OCI_CONFIG, Digest.of(config), len(config))
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_descriptor.to_json(),
        "layers": [layer.to_json()],
    }).encode()  # fmt: skip
    with RegistryWriter(
        Reference.parse(reference),
        TransportSettings.from_environment(()),
        CredentialStore.from_environment({}),
    ) as writer:
        writer.upload_blob(layer, tar)
        writer.upload_blob(config_descriptor, config_path)
        writer.put_manifest("v1", manifest, OCI_MANIFEST)
    return reference


def file_digest(path: Path) -> Digest:
    with open(path, "rb") as file:
        return Digest("sha256", hashlib.file_digest(file, "sha256").hexdigest())


def timed_pull(
    reference: str, store: Path, env: dict[str, str]
) -> tuple[float, int, int]:
    """Pull in a fresh process, and return its seconds, bytes fetched and peak RSS."""
    with tempfile.NamedTemporaryFile("r") as rss:
        started = time.perf_counter()
        done = subprocess.run(
            [GNU_TIME, "--format", "%M", "--output", rss.name,
             APPARATE, "pull", "--json", "--store", str(store), reference],
            capture_output=True, text=True, env=env, check=False,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"pull of {reference} failed:\n{done.stderr}")
        peak_rss = int(rss.read().split()[-1]) * 1024
    return seconds, int(json.loads(done.stdout)["bytes_fetched"]), peak_rss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    tar = big_layer(ensure_samples().directory)
    scratch = Path(tempfile.mkdtemp(prefix="apparate-big-pull-"))
    env = dict(os.environ, APPARATE_CONFIG=os.devnull, APPARATE_INTO="oci")
    registry = start_registry("plain", scratch / "registry", populated=False)
    try:
        plain = push_plain_image(registry.host, tar, scratch)
        converted = f"{registry.host}/big/converted:v1"
        subprocess.run(
            [APPARATE, "convert", "--json", "--store", str(scratch / "convert"),
             plain, converted],
            capture_output=True, text=True, env=env, check=True,
        )  # fmt: skip
        shutil.rmtree(scratch / "convert")
        rows = [
            ("plain layer, empty store", plain, scratch / "plain"),
            ("converted, empty store", converted, scratch / "cold"),
            ("converted, plain one stored", converted, scratch / "plain"),
        ]
        print(f"registry {registry.host} (loopback); one layer, a "
              f"{tar.stat().st_size / 1e6:.1f} MB tar of /usr files")  # fmt: skip
        print(f"{'scenario':30} {'seconds':>8} {'MB fetched':>11} {'RSS MB':>7}")
        peak = 0
        for name, reference, store in rows:
            seconds, fetched, rss = timed_pull(reference, store, env)
            peak = max(peak, rss)
            print(f"{name:30} {seconds:8.2f} {fetched / 1e6:11.1f} {rss / 1e6:7.0f}")
        verdict = "met" if peak < TARGET_RSS else "NOT MET"
        print(f"\n  {verdict}  peak RSS under {TARGET_RSS / 1e6:.0f} MB for a 1 GB "
              f"layer: {peak / 1e6:.0f} MB")  # fmt: skip
    finally:
        registry.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
