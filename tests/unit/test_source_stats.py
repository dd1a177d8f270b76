"""The scheme each registry responded on, kept so later pulls try it first."""

import sqlite3

import httpx
import pytest
import respx

from apparate.config import Config
from apparate.reference import Reference
from apparate.registry.client import Endpoint, RegistryClient
from apparate.registry.credentials import CredentialStore
from apparate.registry.transport import TransportSettings
from apparate.sources.pool import MIRROR, ORIGIN, Source
from apparate.sources.selection import (
    SourceSpec,
    list_sources,
    measure_sources,
    open_pool,
    save_figures,
)
from apparate.store.source_stats import SourceStats

HOST = "127.0.0.1:5000"
INSECURE = "registry.lan:5000"
DIGEST = "sha256:" + "a" * 64
FOUND = httpx.Response(200, headers={"Docker-Content-Digest": DIGEST})


def manifest_url(scheme: str, host: str) -> str:
    return f"{scheme}://{host}/v2/app/manifests/v1"


def test_scheme_kept_is_read_back_and_replaced(tmp_path):
    stats = SourceStats(tmp_path / "apparate.db")
    try:
        assert stats.scheme(HOST) is None
        stats.save_scheme(HOST, "http")
        assert stats.scheme(HOST) == "http"
        stats.save_scheme(HOST, "https")
        assert stats.scheme(HOST) == "https"
    finally:
        stats.close()


def open_origin(tmp_path, host: str = HOST):
    reference = Reference.parse(f"{host}/app:v1")
    credentials = CredentialStore.from_environment({}, env={"HOME": str(tmp_path)})
    settings = TransportSettings(
        insecure_registries=frozenset({INSECURE}), certs_dirs=()
    )
    specs = list_sources(reference, [], Config(), tmp_path / "no-hosts")
    return open_pool(
        reference, specs, settings, credentials, 10.0, tmp_path / "apparate.db"
    )


def head_once(tmp_path, host: str) -> str | None:
    """Ask the origin for the manifest digest, keep the figures; return the scheme."""
    pool = open_origin(tmp_path, host)
    try:
        (origin,) = pool.sources
        assert str(origin.client.head_manifest("v1")) == DIGEST
        save_figures(pool, tmp_path / "apparate.db")
        return origin.client.scheme
    finally:
        pool.close()


def asks_plain_first(tmp_path, host: str) -> bool:
    pool = open_origin(tmp_path, host)
    try:
        return pool.sources[0].client.plain_http_first
    finally:
        pool.close()


@respx.mock
def test_loopback_registry_is_asked_on_plain_http_first(tmp_path):
    secure = respx.head(manifest_url("https", HOST)).mock(return_value=FOUND)
    plain = respx.head(manifest_url("http", HOST)).mock(return_value=FOUND)

    assert head_once(tmp_path, HOST) == "http"

    assert (plain.call_count, secure.call_count) == (1, 0)


@respx.mock
def test_loopback_tls_registry_then_https_first(tmp_path):
    # A TLS port responds to plain HTTP with 400, as Go servers do.
    respx.head(manifest_url("http", HOST)).mock(return_value=httpx.Response(400))
    respx.head(manifest_url("https", HOST)).mock(return_value=FOUND)

    assert head_once(tmp_path, HOST) == "https"

    assert not asks_plain_first(tmp_path, HOST)


@respx.mock
def test_insecure_registry_is_always_asked_on_https_first(tmp_path):
    secure = respx.head(manifest_url("https", INSECURE)).mock(
        side_effect=httpx.ConnectError("wrong version number")
    )
    respx.head(manifest_url("http", INSECURE)).mock(return_value=FOUND)

    assert head_once(tmp_path, INSECURE) == "http"

    # A registry whose TLS failed once is not left on plain HTTP, even with
    # a row in the store's database that names plain http.
    stats = SourceStats(tmp_path / "apparate.db")
    stats.save_scheme(INSECURE, "http")
    stats.close()
    assert not asks_plain_first(tmp_path, INSECURE)
    assert secure.call_count == 1


def test_insecure_registry_url_gives_its_host(caplog):
    settings = TransportSettings.from_environment(
        ["http://mirror.example:5000"],
        env={"APPARATE_INSECURE_REGISTRIES": "a.example"},
    )

    assert settings.insecure_registries == {"mirror.example:5000", "a.example"}
    assert "using its host mirror.example:5000" in caplog.text


@respx.mock
def test_probes_send_the_hosts_toml_headers(tmp_path):
    probes = respx.get("https://mirror.lan/v2/").mock(return_value=httpx.Response(401))
    respx.get("https://registry.lan/v2/").mock(return_value=httpx.Response(401))
    reference = Reference.parse("registry.lan/app:v1")
    mirror = SourceSpec(
        Endpoint.parse("https://mirror.lan"), MIRROR, False, "hosts.toml",
        headers=(("X-Mirror-Token", "secret"),),
    )  # fmt: skip
    [origin] = list_sources(reference, [], Config(), tmp_path / "no-hosts")
    credentials = CredentialStore.from_environment({}, env={"HOME": str(tmp_path)})
    settings = TransportSettings(certs_dirs=())

    pool = open_pool(reference, [mirror, origin], settings, credentials, 10.0)
    pool.close()

    assert probes.calls
    assert all(
        call.request.headers.get("X-Mirror-Token") == "secret" for call in probes.calls
    )


# Each row: how another connection locks the database, then the warning.
def mirror_and_origin(
    tmp_path, settings: TransportSettings, resolve: bool
) -> list[Source]:
    """Make sources for a mirror.lan and the origin registry.lan, over https."""
    reference = Reference.parse("registry.lan/app:v1")
    credentials = CredentialStore.from_environment({}, env={"HOME": str(tmp_path)})
    sources = []
    for host, role in (("mirror", MIRROR), ("registry", ORIGIN)):
        endpoint = Endpoint(f"{host}.lan", "https")
        client = RegistryClient(reference, settings, credentials, endpoint=endpoint)
        sources.append(Source(endpoint, role, resolve, client))
    return sources


LOCKED_DATABASE_CASES = {
    "writes blocked": ("IMMEDIATE", "source figures not kept"),
    "reads blocked": ("EXCLUSIVE", "source figures not read"),
}


@pytest.mark.parametrize("lock, warning", LOCKED_DATABASE_CASES.values(),
                         ids=LOCKED_DATABASE_CASES)  # fmt: skip
@respx.mock
def test_locked_figures_still_rank_probed_sources(
    tmp_path, monkeypatch, caplog, lock, warning
):
    monkeypatch.setattr("apparate.store.source_stats.BUSY_TIMEOUT_SECONDS", 0.1)
    respx.get(url__regex=r"https://\w+\.lan/v2/").mock(return_value=httpx.Response(401))
    settings = TransportSettings(certs_dirs=())
    sources = mirror_and_origin(tmp_path, settings, resolve=True)
    stats = SourceStats(tmp_path / "apparate.db")
    holder = sqlite3.connect(tmp_path / "apparate.db")
    holder.execute(f"BEGIN {lock}")

    try:
        unreached = measure_sources(sources, settings, stats)
    finally:
        holder.close()
        stats.close()
        for source in sources:
            source.client.close()

    assert unreached == []
    assert all(source.measure.reachable for source in sources)
    assert warning in caplog.text


@pytest.mark.parametrize("resolve", [True, False])
@respx.mock
def test_unreached_mirror_warning(tmp_path, resolve):
    respx.get("https://mirror.lan/v2/").mock(side_effect=httpx.ConnectError("refused"))
    respx.get("https://registry.lan/v2/").mock(return_value=httpx.Response(401))
    settings = TransportSettings(certs_dirs=())
    sources = mirror_and_origin(tmp_path, settings, resolve)

    try:
        unreached = measure_sources(sources, settings, None)
    finally:
        for source in sources:
            source.client.close()

    assert len(unreached) == 1
    assert "mirror https://mirror.lan could not be reached" in unreached[0]
    assert ("does not resolve tags" in unreached[0]) == resolve
    assert "serves content only when no other source is left" in unreached[0]
