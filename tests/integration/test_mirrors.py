"""Delta pulls from the origin registry and a second real registry as mirror.

The origin is reached through a forwarder that adds a round trip, so the
mirror ranks first, as a nearby mirror would. The mirror starts as a copy of
the origin's storage and then misbehaves in the way each test needs. It
lacks the new layer, or its storage is damaged, or a forwarder in front of
it responds 500 or stalls. Or it is a pull-through cache that has not cached
the layer yet.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import apparate
from apparate.config import Config, Mirror
from apparate.convert import ConvertOptions, convert
from apparate.errors import RegistryUnreachable
from apparate.pulling import PullOptions
from apparate.result import PullResult
from tests.integration.faulty import misbehaving
from tests.integration.throttle import throttled
from tests.testbed.registry import RegistryHandle, blob_path, start_registry

pytestmark = [
    pytest.mark.integration,
    pytest.mark.usefixtures("isolated_environment"),
]

APPARATE = str(Path(sys.executable).with_name("apparate"))
STALL_TIMEOUT = 1.0
ORIGIN_DELAY = 0.03


@dataclass
class Origin:
    """A registry holding converted base:v1 and base:v2, and v2's largest layer.

    ``host`` is the slower way to it, which pulls use.
    """

    registry: RegistryHandle
    host: str
    v2_layer: str

    @property
    def repository(self) -> str:
        return f"{self.host}/converted/base"


@pytest.fixture
def origin(converted, fresh_registry) -> Iterator[Origin]:
    repository = converted
    command = ["skopeo", "inspect", "--raw", "--tls-verify=false",
               f"docker://{repository}:v2"]  # fmt: skip
    raw = subprocess.run(command, capture_output=True, text=True, check=True)
    manifest = json.loads(raw.stdout)
    port = int(fresh_registry.host.rpartition(":")[2])
    with throttled(port, request_delay=ORIGIN_DELAY) as slow_port:
        largest = max(manifest["layers"], key=lambda layer: layer["size"])
        yield Origin(fresh_registry, f"127.0.0.1:{slow_port}", largest["digest"])


def start_mirror(origin: Origin, workdir: Path, **kwargs) -> RegistryHandle:
    """Start a second real registry; by default a copy of the origin's storage."""
    if "proxy_of" in kwargs:
        return start_registry("proxy", workdir, populated=False, **kwargs)
    return start_registry("plain", workdir, storage_from=origin.registry.storage_dir)


@pytest.fixture
def mirror(origin, tmp_path) -> Iterator[RegistryHandle]:
    handle = start_mirror(origin, tmp_path / "mirror")
    try:
        yield handle
    finally:
        handle.stop()


def pull_update(origin: Origin, store: Path, mirror_url: str) -> PullResult:
    """Pull v1 from the origin alone, then v2 with the mirror as a source."""
    apparate.pull(f"{origin.repository}:v1", PullOptions(store=store))
    config = Config(
        stall_timeout=STALL_TIMEOUT,
        mirrors={origin.host: (Mirror(f"http://{mirror_url}"),)},
    )
    return apparate.pull(
        f"{origin.repository}:v2", PullOptions(store=store, config=config)
    )


def pull_update_with_hosts_toml(origin: Origin, store: Path) -> PullResult:
    """Pull v1, then v2 with the mirrors the hosts.toml folder names."""
    apparate.pull(f"{origin.repository}:v1", PullOptions(store=store))
    return apparate.pull(
        f"{origin.repository}:v2",
        PullOptions(store=store, config=Config(stall_timeout=STALL_TIMEOUT)),
    )


def assert_correct_image(origin: Origin, store: Path, result: PullResult) -> None:
    inspected = subprocess.run(
        ["skopeo", "inspect", f"oci:{store}:{origin.repository}:v2"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert json.loads(inspected)["Digest"] == str(result.digest)
    for blob in (store / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name


def blob_gets(registry: RegistryHandle, digest: str) -> int:
    """Count the GET requests for one blob in a registry's log."""
    log = (registry.workdir / "registry.log").read_text()
    return sum(
        1
        for line in log.splitlines()
        if "http.request.method=GET" in line and f"/blobs/{digest}" in line
        and "response" in line
    )  # fmt: skip


def test_healthy_mirror_serves_ranges(origin, mirror, tmp_path):
    store = tmp_path / "store"

    result = pull_update(origin, store, mirror.host)

    assert_correct_image(origin, store, result)
    assert result.bytes_by_source.get(f"http://{mirror.host}", 0) > 0
    assert result.warnings == []


@pytest.mark.parametrize("trust", ["ca", "skip_verify", "nothing"])
def test_tls_mirror_from_hosts_toml(origin, tmp_path, trust):
    handle = start_registry(
        "tls", tmp_path / "mirror", storage_from=origin.registry.storage_dir
    )
    folder = tmp_path / "no-hosts" / f"{origin.host.replace(':', '_')}_"
    folder.mkdir(parents=True)
    (folder / "mirror-ca.crt").write_bytes(handle.ca_file.read_bytes())
    settings = {"ca": 'ca = "mirror-ca.crt"', "skip_verify": "skip_verify = true",
                "nothing": ""}[trust]  # fmt: skip
    (folder / "hosts.toml").write_text(
        f'[host."https://{handle.host}"]\ncapabilities = ["pull"]\n{settings}\n'
    )
    store = tmp_path / "store"
    try:
        result = pull_update_with_hosts_toml(origin, store)
    finally:
        handle.stop()

    assert_correct_image(origin, store, result)
    mirror_bytes = result.bytes_by_source.get(f"https://{handle.host}", 0)
    if trust == "nothing":
        # Its certificate is not trusted, so the mirror is left with a warning.
        assert mirror_bytes == 0
        assert any(handle.host in warning for warning in result.warnings)
    else:
        assert mirror_bytes > 0
        assert result.warnings == []


@pytest.mark.parametrize("client", ["pair", "one file", "missing"])
def test_mutual_tls_mirror_from_hosts_toml(origin, tmp_path, client):
    handle = start_registry(
        "mtls", tmp_path / "mirror", storage_from=origin.registry.storage_dir
    )
    folder = tmp_path / "no-hosts" / f"{origin.host.replace(':', '_')}_"
    folder.mkdir(parents=True)
    (folder / "mirror-ca.crt").write_bytes(handle.ca_file.read_bytes())
    pair = handle.client_cert
    (folder / "client.crt").write_bytes(pair.cert_path.read_bytes())
    (folder / "client.pem").write_bytes(
        pair.cert_path.read_bytes() + pair.key_path.read_bytes()
    )
    settings = {"pair": f'client = [["client.crt", "{pair.key_path}"]]',
                "one file": 'client = "client.pem"', "missing": ""}[client]  # fmt: skip
    (folder / "hosts.toml").write_text(
        f'[host."https://{handle.host}"]\ncapabilities = ["pull"]\n'
        f'ca = "mirror-ca.crt"\ndial_timeout = "3s"\n{settings}\n'
    )
    store = tmp_path / "store"
    try:
        result = pull_update_with_hosts_toml(origin, store)
    finally:
        handle.stop()

    assert_correct_image(origin, store, result)
    mirror_bytes = result.bytes_by_source.get(f"https://{handle.host}", 0)
    if client == "missing":
        # The mirror rejects the handshake, so it is left with a warning.
        assert mirror_bytes == 0
        (warning,) = [w for w in result.warnings if handle.host in w]
        assert "may require a client certificate" in warning
    else:
        assert mirror_bytes > 0
        assert result.warnings == []


def test_mirror_lacking_layer_moves_to_origin(origin, tmp_path):
    handle = start_mirror(origin, tmp_path / "mirror")
    try:
        blob_path(handle.storage_dir, origin.v2_layer).unlink()
        store = tmp_path / "store"

        result = pull_update(origin, store, handle.host)
    finally:
        handle.stop()

    assert_correct_image(origin, store, result)
    assert any(handle.host in warning for warning in result.warnings)
    assert result.bytes_by_source.get(origin.host, 0) > 0


def test_mirror_answering_500_moves_to_origin(origin, mirror, tmp_path):
    store = tmp_path / "store"

    with misbehaving(mirror.host, origin.v2_layer, "error") as faulty:
        result = pull_update(origin, store, faulty)

    assert_correct_image(origin, store, result)
    assert any(faulty in warning and "500" in warning for warning in result.warnings)


def test_mirror_stalling_mid_body_moves_to_origin(origin, mirror, tmp_path):
    store = tmp_path / "store"

    with misbehaving(mirror.host, origin.v2_layer, "stall") as faulty:
        result = pull_update(origin, store, faulty)

    assert_correct_image(origin, store, result)
    named = [warning for warning in result.warnings if faulty in warning]
    assert named
    # Each warning names the source once, then the reason.
    assert all(warning.count(faulty) == 1 for warning in named)
    assert all(f": source http://{faulty}" in warning for warning in named)


def test_crawling_mirror_gives_way_to_origin(origin, mirror, tmp_path):
    store = tmp_path / "store"
    port = int(mirror.host.rpartition(":")[2])

    # 16 KiB/s, far slower than the origin.
    with throttled(port, 16 * 1024) as slow_port:
        result = pull_update(origin, store, f"127.0.0.1:{slow_port}")

    assert_correct_image(origin, store, result)
    mirror_bytes = result.bytes_by_source.get(f"http://127.0.0.1:{slow_port}", 0)
    assert mirror_bytes < result.bytes_fetched // 10
    assert any(
        "much slower than another source" in warning for warning in result.warnings
    )


def test_mirror_serving_corrupt_bytes_is_dropped(origin, tmp_path):
    handle = start_mirror(origin, tmp_path / "mirror")
    try:
        data = blob_path(handle.storage_dir, origin.v2_layer)
        damaged = bytearray(data.read_bytes())
        for offset in range(0, len(damaged) - 200_000, 100_000):
            damaged[offset + 50] ^= 0xFF
        data.write_bytes(bytes(damaged))
        store = tmp_path / "store"

        result = pull_update(origin, store, handle.host)
    finally:
        handle.stop()

    assert_correct_image(origin, store, result)
    dropped = [w for w in result.warnings if "dropped" in w and handle.host in w]
    assert dropped
    assert "failed verification" in dropped[0]


def test_pull_through_cache_gets_one_request(origin, tmp_path):
    handle = start_mirror(
        origin, tmp_path / "mirror", proxy_of=f"http://{origin.registry.host}"
    )
    try:
        store = tmp_path / "store"

        result = pull_update(origin, store, handle.host)
        gets = blob_gets(handle, origin.v2_layer)
    finally:
        handle.stop()

    assert_correct_image(origin, store, result)
    assert gets == 1
    refusals = [
        warning
        for warning in result.warnings
        if f"{handle.host} responded 200" in warning and origin.v2_layer in warning
    ]
    # One warning per blob, naming it once, however many ranges were refused.
    assert len(refusals) == 1
    assert refusals[0].count(origin.v2_layer) == 1
    assert result.bytes_by_source.get(f"http://{handle.host}", 0) < 1024 * 1024


def test_redirect_is_followed_once_per_blob(registry_plain, tmp_path):
    registry = start_registry("redirect", tmp_path / "redirect", populated=False)
    try:
        repository = f"{registry.host}/converted/base"
        options = ConvertOptions(store=tmp_path / "convert")
        for tag in ("v1", "v2"):
            convert(f"{registry_plain.host}/samples/base:{tag}",
                    f"{repository}:{tag}", options)  # fmt: skip
        store = tmp_path / "store"
        apparate.pull(f"{repository}:v1", PullOptions(store=store))

        result = apparate.pull(f"{repository}:v2", PullOptions(store=store))
        largest = max(result.layers, key=lambda layer: layer.size)
        gets = blob_gets(registry, str(largest.digest))
    finally:
        registry.stop()

    assert largest.bytes_fetched < largest.size / 2
    assert gets == 1


def closed_port_host() -> str:
    """Return a loopback host:port where nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def test_resolving_mirror_serves_while_origin_is_down(origin, mirror, tmp_path):
    down = closed_port_host()
    config = Config(mirrors={down: (Mirror(f"http://{mirror.host}", resolve=True),)})
    store = tmp_path / "store"

    result = apparate.pull(
        f"{down}/converted/base:v2", PullOptions(store=store, config=config)
    )

    assert set(result.bytes_by_source) == {f"http://{mirror.host}"}
    inspected = subprocess.run(
        ["skopeo", "inspect", f"oci:{store}:{down}/converted/base:v2"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert json.loads(inspected)["Digest"] == str(result.digest)


def test_resolving_mirror_flag_serves_while_origin_is_down(mirror, tmp_path):
    down = closed_port_host()
    store = tmp_path / "store"

    done = subprocess.run(
        [APPARATE, "pull", "--json", "--store", str(store),
         "--resolving-mirror", f"http://{mirror.host}", f"{down}/converted/base:v2"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert set(summary["sources"]) == {f"http://{mirror.host}"}


def test_stale_resolving_mirror_is_named(origin, mirror, tmp_path):
    # The mirror's v2 tag still names v1, as on a mirror that has not synced.
    subprocess.run(
        ["skopeo", "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
         f"docker://{mirror.host}/converted/base:v1",
         f"docker://{mirror.host}/converted/base:v2"],
        capture_output=True, check=True,
    )  # fmt: skip
    command = [APPARATE, "pull", "--store", str(tmp_path / "store"),
               "--resolving-mirror", f"http://{mirror.host}",
               f"{origin.repository}:v2"]  # fmt: skip

    text = subprocess.run(command, capture_output=True, text=True, check=False)
    summary = subprocess.run(
        [*command, "--json"], capture_output=True, text=True, check=False
    )
    by_origin = subprocess.run(
        [APPARATE, "pull", "--json", "--store", str(tmp_path / "store"),
         "--mirror", f"http://{mirror.host}", f"{origin.repository}:v2"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip

    assert text.returncode == 0, text.stderr
    assert f"tag resolved by mirror http://{mirror.host}" in text.stdout
    assert json.loads(summary.stdout)["resolved_by"] == f"http://{mirror.host}"
    assert by_origin.returncode == 0, by_origin.stderr
    assert json.loads(by_origin.stdout)["resolved_by"] is None
    assert (
        json.loads(by_origin.stdout)["digest"] != json.loads(summary.stdout)["digest"]
    )


def test_mirror_without_resolve_needs_the_origin(mirror, tmp_path):
    down = closed_port_host()
    config = Config(mirrors={down: (Mirror(f"http://{mirror.host}"),)})

    with pytest.raises(RegistryUnreachable) as caught:
        apparate.pull(
            f"{down}/converted/base:v2",
            PullOptions(store=tmp_path / "store", config=config),
        )

    # The error explains how the mirror can serve while the registry is down.
    assert f"mirror http://{mirror.host} does not resolve tags" in str(caught.value)
    assert f"pull by digest ({down}/converted/base@sha256:" in str(caught.value)


def test_mirror_serves_digest_pull_origin_down(mirror, tmp_path):
    # A manifest by digest is content, which any pull host may serve.
    down = closed_port_host()
    digest = httpx.head(
        f"http://{mirror.host}/v2/converted/base/manifests/v2",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    ).headers["Docker-Content-Digest"]
    config = Config(mirrors={down: (Mirror(f"http://{mirror.host}"),)})

    result = apparate.pull(
        f"{down}/converted/base@{digest}",
        PullOptions(store=tmp_path / "store", config=config),
    )

    assert str(result.digest) == digest
    assert set(result.bytes_by_source) == {f"http://{mirror.host}"}


def test_sources_ranks_origin_and_mirror(origin, mirror, tmp_path):
    done = subprocess.run(
        [APPARATE, "sources", "--json", "--store", str(tmp_path / "store"),
         "--mirror", f"http://{mirror.host}", f"{origin.repository}:v2"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [row["rank"] for row in rows] == [1, 2]
    assert {row["url"] for row in rows} >= {f"http://{mirror.host}"}
    assert all(row["rtt"] is not None for row in rows)


def test_sources_all_unreachable_fails(tmp_path):
    down = closed_port_host()

    done = subprocess.run(
        [APPARATE, "sources", "--json", "--store", str(tmp_path / "store"),
         f"{down}/samples/base:v1"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip

    assert done.returncode == 6, done.stderr
    assert [row["rtt"] for row in json.loads(done.stdout)] == [None]
    assert done.stderr.startswith(
        f"error: no source of {down}/samples/base:v1 responded"
    )
