"""Start the real `docker-registry` (CNCF distribution 2.8) for tests.

Kinds:
- `plain`: plain HTTP, no auth.
- `basic`: htpasswd basic auth over plain HTTP (distribution does not demand
  TLS for it).
- `token`: TLS and bearer tokens from a `TokenServer` on another port.
- `redirect`: plain HTTP whose blob GETs and HEADs return a 307 to an nginx
  serving the storage folder, which honours Range.
- `tls`: https without auth.
- `mtls`: https that requires a client certificate of the test bed's CA
  (distribution's `http.tls.clientcas`), without auth.

A registry starts either empty or holding the samples: a copy of registry
storage into which the sample layouts were pushed once with skopeo and which
is cached next to the samples.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from . import certs
from .nginx import Nginx
from .ocibuild import DOCKER_MANIFEST
from .procs import ServerProcess, free_port, wait_for_http
from .samples import SAMPLE_TAGS, SampleImage, Samples, ensure_samples, locked
from .tokenserver import TokenServer

log = logging.getLogger(__name__)

REGISTRY_BINARY = "docker-registry"
KINDS = ("plain", "basic", "token", "redirect", "proxy", "tls", "mtls")
TEST_USERNAME = "tester"
TEST_PASSWORD = "apparate-test-password"
TOKEN_SERVICE = "apparate-test-registry"
TOKEN_ISSUER = "apparate-test-token-server"
SEED_STORAGE = "registry-storage"
SEED_STAMP = "registry-storage.json"
ZSTD_MAGIC = bytes.fromhex("28b52ffd")
MANIFEST_ACCEPT = (
    "application/vnd.oci.image.index.v1+json, "
    "application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.docker.distribution.manifest.v2+json"
)


class RegistryUnavailable(RuntimeError):
    """The docker-registry binary is not installed."""


@dataclass
class RegistryHandle:
    """A running registry and what a client needs to reach it.

    `certs_dir` is a docker-style certs.d folder with `<host:port>/ca.crt` for
    the registry and, for `token`, for the token server. It is empty for the
    plain-HTTP kinds, whose `ca_file` is None. The `tls` kind serves over
    https without auth. The `mtls` kind also requires the client certificate
    `client_cert`, whose PEM files a test hands to the client.
    """

    kind: str
    host: str
    url: str
    username: str | None
    password: str | None
    certs_dir: Path
    ca_file: Path | None
    storage_dir: Path
    workdir: Path
    token_server: TokenServer | None = None
    redirect_target: str | None = None
    proxy_of: str | None = None
    client_cert: certs.KeyPair | None = None
    _stoppers: list[Any] = field(default_factory=list, repr=False)

    @property
    def tls(self) -> bool:
        return self.ca_file is not None

    def stop(self) -> None:
        """Stop the registry and its helpers, most recently started first."""
        while self._stoppers:
            stopper = self._stoppers.pop()
            stopper.stop()


def registry_binary() -> str | None:
    return shutil.which(REGISTRY_BINARY)


def blob_path(storage_dir: Path, digest: str) -> Path:
    """Path of a blob's data in distribution's filesystem storage."""
    algorithm, _, hex_digest = digest.partition(":")
    return (
        storage_dir / "docker" / "registry" / "v2" / "blobs" / algorithm
        / hex_digest[:2] / hex_digest / "data"
    )  # fmt: skip


def start_registry(
    kind: str,
    workdir: Path,
    *,
    populated: bool = True,
    samples: Samples | None = None,
    storage_from: Path | None = None,
    proxy_of: str | None = None,
) -> RegistryHandle:
    """Start a registry of `kind` with its files in `workdir`.

    With `populated`, it contains the samples under `samples/...`, and the
    samples and the cached storage are built first if missing. With
    `storage_from`, it starts with a copy of that registry storage instead.
    The `proxy` kind is a pull-through cache of the registry at `proxy_of`.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown registry kind {kind!r}; expected one of {KINDS}")
    binary = registry_binary()
    if binary is None:
        raise RegistryUnavailable(
            f"{REGISTRY_BINARY} is not installed; install the Debian package "
            "docker-registry"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    storage = workdir / "storage"
    if storage.exists():
        raise FileExistsError(
            f"{storage} already exists; start the registry in an empty folder"
        )
    if kind == "proxy" and not proxy_of:
        raise ValueError("a proxy registry needs proxy_of, the URL it caches")
    if storage_from is not None:
        subprocess.run(["cp", "-a", str(storage_from), str(storage)], check=True)
    elif populated and kind != "proxy":
        seed = ensure_seed_storage(samples or ensure_samples())
        subprocess.run(["cp", "-a", str(seed), str(storage)], check=True)
    else:
        storage.mkdir()
    handle = RegistryHandle(
        kind=kind,
        host="",
        url="",
        username=None,
        password=None,
        certs_dir=workdir / "certs.d",
        ca_file=None,
        storage_dir=storage,
        workdir=workdir,
        proxy_of=proxy_of,
    )
    handle.certs_dir.mkdir(exist_ok=True)
    try:
        _launch(handle, binary)
    except BaseException:
        handle.stop()
        raise
    return handle


def _launch(handle: RegistryHandle, binary: str) -> None:
    port = free_port()
    handle.host = f"127.0.0.1:{port}"
    config: dict[str, Any] = {
        "version": "0.1",
        "log": {"level": "info", "formatter": "text"},
        "storage": {
            "filesystem": {"rootdirectory": str(handle.storage_dir)},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {
            "addr": handle.host,
            "secret": secrets.token_hex(16),
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        },
    }
    scheme = "http"
    if handle.kind == "basic":
        _configure_basic(handle, config)
    elif handle.kind == "token":
        _configure_token(handle, config)
        scheme = "https"
    elif handle.kind == "redirect":
        _configure_redirect(handle, config)
    elif handle.kind == "proxy":
        config["proxy"] = {"remoteurl": handle.proxy_of}
    elif handle.kind in ("tls", "mtls"):
        _configure_tls(handle, config)
        scheme = "https"
    handle.url = f"{scheme}://{handle.host}"

    # JSON is valid YAML, and it needs no quoting rules of its own.
    config_path = handle.workdir / "config.yml"
    config_path.write_text(json.dumps(config, indent=2))
    process = ServerProcess(
        f"docker-registry ({handle.kind})",
        [binary, "serve", str(config_path)],
        handle.workdir / "registry.log",
    )
    handle._stoppers.append(process)
    verify: ssl.SSLContext | bool = False
    if handle.ca_file:
        verify = certs.client_context(handle.ca_file)
        if handle.client_cert:
            pair = handle.client_cert
            verify.load_cert_chain(pair.cert_path, pair.key_path)
    wait_for_http(handle.url + "/v2/", process, verify=verify)
    log.info("registry %s (%s) ready, pid %d", handle.url, handle.kind, process.pid)


def _configure_basic(handle: RegistryHandle, config: dict[str, Any]) -> None:
    htpasswd = shutil.which("htpasswd")
    if htpasswd is None:
        raise RuntimeError(
            "htpasswd is not installed; install the Debian package apache2-utils"
        )
    # distribution's htpasswd support reads bcrypt entries only (-B).
    line = subprocess.run(
        [htpasswd, "-Bbn", TEST_USERNAME, TEST_PASSWORD],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    htpasswd_path = handle.workdir / "htpasswd"
    htpasswd_path.write_text(line + "\n")
    config["auth"] = {
        "htpasswd": {"realm": "apparate-test-registry", "path": str(htpasswd_path)}
    }
    handle.username = TEST_USERNAME
    handle.password = TEST_PASSWORD


def _configure_token(handle: RegistryHandle, config: dict[str, Any]) -> None:
    pki = handle.workdir / "pki"
    ca = certs.create_ca(pki)
    server = certs.issue_server_cert(ca, pki, "registry")
    token_tls = certs.issue_server_cert(ca, pki, "token-server")
    signer = certs.issue_signing_cert(ca, pki, "token-signer")
    token_server = TokenServer(
        username=TEST_USERNAME,
        password=TEST_PASSWORD,
        service=TOKEN_SERVICE,
        issuer=TOKEN_ISSUER,
        signer=signer,
        tls=token_tls,
    )
    token_server.start()
    handle._stoppers.append(token_server)

    handle.token_server = token_server
    handle.ca_file = ca.cert_path
    handle.username = TEST_USERNAME
    handle.password = TEST_PASSWORD
    certs.install_ca(handle.certs_dir, handle.host, ca.cert_path)
    certs.install_ca(handle.certs_dir, token_server.host, ca.cert_path)

    config["http"]["tls"] = {
        "certificate": str(server.cert_path),
        "key": str(server.key_path),
    }
    config["auth"] = {
        "token": {
            "realm": token_server.realm,
            "service": TOKEN_SERVICE,
            "issuer": TOKEN_ISSUER,
            "rootcertbundle": str(ca.cert_path),
        }
    }


def _configure_tls(handle: RegistryHandle, config: dict[str, Any]) -> None:
    """Serve over https with a certificate of the test bed's own CA, no auth.

    The `mtls` kind also rejects clients without a certificate of that CA.
    """
    pki = handle.workdir / "pki"
    ca = certs.create_ca(pki)
    server = certs.issue_server_cert(ca, pki, "registry")
    handle.ca_file = ca.cert_path
    certs.install_ca(handle.certs_dir, handle.host, ca.cert_path)
    config["http"]["tls"] = {
        "certificate": str(server.cert_path),
        "key": str(server.key_path),
    }
    if handle.kind == "mtls":
        handle.client_cert = certs.issue_client_cert(ca, pki, "client")
        config["http"]["tls"]["clientcas"] = [str(ca.cert_path)]


def _configure_redirect(handle: RegistryHandle, config: dict[str, Any]) -> None:
    nginx = Nginx(handle.storage_dir, handle.workdir / "nginx")
    handle._stoppers.append(nginx)
    handle.redirect_target = nginx.url
    config["middleware"] = {
        "storage": [{"name": "redirect", "options": {"baseurl": nginx.url}}]
    }


def ensure_seed_storage(samples: Samples) -> Path:
    """Return registry storage holding every sample, pushing them if needed.

    The cache is valid while its stamp matches the samples' digests. skopeo runs
    with `--preserve-digests`, which also stops its blob-info cache from
    substituting gzip blobs for the zstd ones, and the result is checked.
    """
    directory = samples.directory
    with locked(directory):
        stamp_path = directory / SEED_STAMP
        storage = directory / SEED_STORAGE
        if stamp_path.exists() and storage.is_dir():
            stamp = json.loads(stamp_path.read_text())
            if stamp.get("content_id") == samples.content_id:
                return storage
        started = time.monotonic()
        build = directory / ".seed-build"
        shutil.rmtree(build, ignore_errors=True)
        handle = start_registry("plain", build, populated=False)
        try:
            _push_samples(handle, samples)
            _verify_samples(handle, samples)
        finally:
            handle.stop()
        shutil.rmtree(storage, ignore_errors=True)
        (build / "storage").rename(storage)
        shutil.rmtree(build)
        stamp_path.write_text(json.dumps({"content_id": samples.content_id}) + "\n")
        log.info(
            "pushed the samples into %s in %.0f s", storage, time.monotonic() - started
        )
        return storage


def _push_samples(handle: RegistryHandle, samples: Samples) -> None:
    for tag in SAMPLE_TAGS:
        image = samples.images[tag]
        source = samples.oci_reference(tag)
        if image.media_type == DOCKER_MANIFEST:
            source = "dir:" + str(_docker_dir(samples, image, handle.workdir / tag))
        argv = [
            "skopeo", "copy", "--quiet", "--all", "--preserve-digests",
            "--dest-tls-verify=false", "--dest-no-creds",
            source, f"docker://{handle.host}/{image.reference}",
        ]  # fmt: skip
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed:\n{result.stderr}")


def _docker_dir(samples: Samples, image: SampleImage, folder: Path) -> Path:
    """Lay out a Docker-manifest sample in skopeo's `dir:` format.

    skopeo's `oci:` transport only reads OCI manifests from a layout, so the
    schema2 manifest goes through `dir:`: a version file, `manifest.json` and
    each blob under its bare hex digest (hard links to the layout's blobs).
    """
    folder.mkdir(parents=True)
    (folder / "version").write_text("Directory Transport Version: 1.1\n")
    manifest_bytes = _layout_blob(samples, image.digest).read_bytes()
    (folder / "manifest.json").write_bytes(manifest_bytes)
    manifest = json.loads(manifest_bytes)
    for descriptor in [manifest["config"], *manifest["layers"]]:
        hex_digest = descriptor["digest"].split(":", 1)[1]
        os.link(_layout_blob(samples, descriptor["digest"]), folder / hex_digest)
    return folder


def _layout_blob(samples: Samples, digest: str) -> Path:
    return samples.layout / "blobs" / "sha256" / digest.split(":", 1)[1]


def _verify_samples(handle: RegistryHandle, samples: Samples) -> None:
    """Check every tag's digest, and that the zstd layers really are zstd."""
    with httpx.Client(base_url=handle.url, timeout=30) as client:
        for tag in SAMPLE_TAGS:
            image = samples.images[tag]
            name, _, reference = image.reference.partition(":")
            response = client.get(
                f"/v2/{name}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT}
            )
            response.raise_for_status()
            served = response.headers.get("Docker-Content-Digest")
            if served != image.digest:
                raise RuntimeError(
                    f"registry serves {image.reference} as {served}, "
                    f"but the layout has {image.digest}"
                )
            if tag == "base:v1-zstd":
                _verify_zstd_layers(handle, response.json())


def _verify_zstd_layers(handle: RegistryHandle, manifest: dict[str, Any]) -> None:
    for layer in manifest["layers"]:
        if not layer["mediaType"].endswith("+zstd"):
            raise RuntimeError(
                f"zstd sample layer {layer['digest']} has media type "
                f"{layer['mediaType']}; expected a +zstd layer type"
            )
        with open(blob_path(handle.storage_dir, layer["digest"]), "rb") as blob:
            if blob.read(4) != ZSTD_MAGIC:
                raise RuntimeError(
                    f"zstd sample layer {layer['digest']} is not zstd data in the "
                    f"registry storage {handle.storage_dir}; rebuild with "
                    "scripts/build-samples --force"
                )
