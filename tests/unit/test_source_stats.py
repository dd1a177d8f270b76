"""The scheme each registry responded on, kept so later pulls try it first."""

import httpx
import respx

from apparate.config import Config
from apparate.reference import Reference
from apparate.registry.credentials import CredentialStore
from apparate.registry.transport import TransportSettings
from apparate.sources.selection import list_sources, open_pool, save_figures
from apparate.store.source_stats import SourceStats

HOST = "127.0.0.1:5000"
PING_HTTPS = f"https://{HOST}/v2/app/manifests/v1"
PING_HTTP = f"http://{HOST}/v2/app/manifests/v1"
DIGEST = "sha256:" + "a" * 64


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


def open_origin(tmp_path):
    reference = Reference.parse(f"{HOST}/app:v1")
    credentials = CredentialStore.from_environment({}, env={"HOME": str(tmp_path)})
    settings = TransportSettings(insecure_registries=frozenset(), certs_dirs=())
    specs = list_sources(reference, [], Config(), tmp_path / "no-hosts")
    return open_pool(
        reference, specs, settings, credentials, 10.0, tmp_path / "apparate.db"
    )


@respx.mock
def test_plain_http_registry_is_asked_there_first(tmp_path):
    respx.head(PING_HTTPS).mock(side_effect=httpx.ConnectError("wrong version"))
    plain = respx.head(PING_HTTP).mock(
        return_value=httpx.Response(200, headers={"Docker-Content-Digest": DIGEST})
    )

    pool = open_origin(tmp_path)
    (origin,) = pool.sources
    assert not origin.client.plain_http_first
    assert str(origin.client.head_manifest("v1")) == DIGEST
    save_figures(pool, tmp_path / "apparate.db")
    pool.close()

    again = open_origin(tmp_path)
    assert again.sources[0].client.plain_http_first
    again.close()
    assert plain.call_count == 1
