"""Tests for the registry auth flow against a mocked registry and token server."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import respx

from apparate.errors import (
    ApparateError,
    AuthRejected,
    AuthRequired,
    InvalidResponse,
    RateLimited,
    RegistryError,
    RegistryUnreachable,
)
from apparate.registry.auth import RegistryAuth
from apparate.registry.credentials import Credentials, CredentialStore

HOST = "registry.test"
MANIFEST_URL = f"https://{HOST}/v2/library/alpine/manifests/latest"
BLOB_URL = f"https://{HOST}/v2/library/alpine/blobs/sha256:abc"
REALM = "https://auth.test:8443/token"
SERVICE = "registry.test"
SCOPE = "repository:library/alpine:pull"
IMAGE = "registry.test/library/alpine:latest"
PASSWORD = "hunter2-secret"
BASIC = "Basic " + base64.b64encode(f"ann:{PASSWORD}".encode()).decode()


class FakeClock:
    """A monotonic clock that moves only when a test sets ``now``."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ChunkStream(httpx.SyncByteStream):
    """A response body that records whether anyone read it."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.read = False

    def __iter__(self) -> Iterator[bytes]:
        self.read = True
        yield from self.chunks


class BrokenStream(httpx.SyncByteStream):
    """A response body whose connection drops."""

    def __iter__(self) -> Iterator[bytes]:
        raise httpx.ReadError("connection reset")
        yield b""


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        yield router


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_auth(
    credentials: Credentials | None = None,
    clock: Callable[[], float] | None = None,
    scopes: list[str] | None = None,
) -> RegistryAuth:
    explicit = {HOST: credentials} if credentials else {}
    store = CredentialStore.from_environment(explicit, env={})
    return RegistryAuth(store, scopes or [SCOPE], IMAGE, clock=clock or FakeClock())


def bearer(realm: str = REALM, scope: str | None = SCOPE, error: str = "") -> str:
    challenge = f'Bearer realm="{realm}",service="{SERVICE}"'
    if scope:
        challenge += f',scope="{scope}"'
    if error:
        challenge += f',error="{error}"'
    return challenge


def registry(
    mock: respx.MockRouter,
    accepted: set[str],
    challenge: str | Callable[[httpx.Request], str] | None = None,
    url: str = MANIFEST_URL,
) -> respx.Route:
    """Serve url to requests whose Authorization is accepted, else return 401."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.headers.get("Authorization") in accepted:
            return httpx.Response(200, text="manifest")
        text = challenge(request) if callable(challenge) else challenge or bearer()
        return httpx.Response(401, headers={"WWW-Authenticate": text})

    return mock.get(url).mock(side_effect=handle)


def token_server(mock: respx.MockRouter, *answers: Any) -> respx.Route:
    """Return these responses to token requests in turn, a dict as JSON."""
    responses = [
        httpx.Response(200, json=answer) if isinstance(answer, dict) else answer
        for answer in answers
    ]
    route = mock.route(host="auth.test", port=8443, path="/token")
    return route.mock(side_effect=responses)


def get(auth: RegistryAuth, url: str = MANIFEST_URL) -> httpx.Response:
    with httpx.Client(auth=auth) as client:
        return client.get(url)


def authorization(route: respx.Route, index: int) -> str | None:
    return route.calls[index].request.headers.get("Authorization")


def test_bearer_flow(mock: respx.MockRouter) -> None:
    manifest = registry(mock, {"Bearer tok-1"}, bearer(scope=None))
    tokens = token_server(mock, {"token": "tok-1", "expires_in": 300})
    scopes = [SCOPE, "repository:library/busybox:pull"]
    headers = {"Accept": "application/vnd.oci.image.index.v1+json", "Range": "bytes=0-"}

    with httpx.Client(auth=make_auth(scopes=scopes)) as client:
        response = client.get(MANIFEST_URL, headers=headers)

    assert response.status_code == 200
    assert manifest.call_count == 2
    assert authorization(manifest, 0) is None
    assert authorization(manifest, 1) == "Bearer tok-1"
    assert manifest.calls[1].request.headers["Range"] == "bytes=0-"
    token_request = tokens.calls[0].request
    assert token_request.method == "GET"
    assert token_request.url.params["service"] == SERVICE
    assert token_request.url.params.get_list("scope") == scopes
    assert token_request.headers["Accept"] == "application/json"
    assert "Range" not in token_request.headers
    assert "Authorization" not in token_request.headers


def test_bearer_uses_challenge_scope(mock: respx.MockRouter) -> None:
    scope = "repository:library/alpine:pull,push"
    registry(mock, {"Bearer tok-1"}, bearer(scope=scope))
    tokens = token_server(mock, {"token": "tok-1"})

    with httpx.Client(auth=make_auth()) as client:
        client.get(MANIFEST_URL)

    assert tokens.calls[0].request.url.params.get_list("scope") == [scope]


def test_bearer_adds_configured_scopes_to_challenge(mock: respx.MockRouter) -> None:
    # A challenge may name only the destination of a mount, but the token
    # must still grant pull on the repository the blob is mounted from.
    destination = "repository:team/app:pull,push"
    source = "repository:team/base:pull"
    registry(mock, {"Bearer tok-1"}, bearer(scope=destination))
    tokens = token_server(mock, {"token": "tok-1"})
    auth = make_auth(scopes=["repository:team/app:push,pull", source])

    with httpx.Client(auth=auth) as client:
        client.get(MANIFEST_URL)

    scopes = tokens.calls[0].request.url.params.get_list("scope")
    assert scopes == [destination, source]


@pytest.mark.parametrize(
    ("scopes", "merged"),
    [
        (["repository:a:pull", "repository:a:push"], ["repository:a:pull,push"]),
        (["repository:a:pull", "repository:a:pull"], ["repository:a:pull"]),
        (["repository:a:pull", "repository:b:pull"],
         ["repository:a:pull", "repository:b:pull"]),
        (["repository:h:5000/a:pull", "repository:h:5000/a:delete"],
         ["repository:h:5000/a:pull,delete"]),
        (["registry:catalog:*", "odd", "odd"], ["registry:catalog:*", "odd"]),
    ],
)  # fmt: skip
def test_bearer_merges_scopes_per_resource(
    mock: respx.MockRouter, scopes: list[str], merged: list[str]
) -> None:
    registry(mock, {"Bearer tok-1"}, bearer(scope=" ".join(scopes)))
    tokens = token_server(mock, {"token": "tok-1"})
    auth = make_auth(scopes=[scopes[0]])

    with httpx.Client(auth=auth) as client:
        client.get(MANIFEST_URL)

    assert tokens.calls[0].request.url.params.get_list("scope") == merged


def test_bearer_prefers_bearer_over_basic(mock: respx.MockRouter) -> None:
    challenge = f'Basic realm="{HOST}", {bearer()}'
    manifest = registry(mock, {"Bearer tok-1"}, challenge)
    tokens = token_server(mock, {"token": "tok-1"})

    with httpx.Client(auth=make_auth(Credentials("ann", PASSWORD))) as client:
        response = client.get(MANIFEST_URL)

    assert response.status_code == 200
    assert tokens.call_count == 1
    assert authorization(manifest, 1) == "Bearer tok-1"


@pytest.mark.parametrize(
    ("realm", "registry_url"),
    [
        pytest.param("https://auth.test:8443/token", MANIFEST_URL, id="other-port"),
        pytest.param(
            "https://auth.test:8443/token?account=ann", MANIFEST_URL, id="query"
        ),
        pytest.param(
            "http://127.0.0.1:5001/token",
            "http://127.0.0.1:5000/v2/library/alpine/manifests/latest",
            id="plain-http-loopback",
        ),
    ],
)
def test_bearer_realm_elsewhere(
    mock: respx.MockRouter, realm: str, registry_url: str
) -> None:
    manifest = registry(mock, {"Bearer tok-1"}, bearer(realm=realm), url=registry_url)
    url = httpx.URL(realm)
    route = mock.route(host=url.host, port=url.port, path=url.path)
    tokens = route.mock(return_value=httpx.Response(200, json={"token": "tok-1"}))

    with httpx.Client(auth=make_auth()) as client:
        response = client.get(registry_url)

    assert response.status_code == 200
    assert manifest.call_count == 2
    params = tokens.calls[0].request.url.params
    for name, value in url.params.items():
        assert params[name] == value
    assert params["service"] == SERVICE


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"token": "tok-1"}, id="token"),
        pytest.param({"access_token": "tok-1"}, id="access-token"),
        pytest.param({"token": "tok-1", "access_token": "tok-1"}, id="both"),
        pytest.param(
            {"token": "tok-1", "issued_at": "2024-01-01T00:00:00Z"}, id="issued-at"
        ),
    ],
)
def test_bearer_token_fields(mock: respx.MockRouter, body: dict[str, str]) -> None:
    manifest = registry(mock, {"Bearer tok-1"})
    token_server(mock, body)

    with httpx.Client(auth=make_auth()) as client:
        response = client.get(MANIFEST_URL)

    assert response.status_code == 200
    assert authorization(manifest, 1) == "Bearer tok-1"


def test_bearer_token_reused(mock: respx.MockRouter) -> None:
    manifest = registry(mock, {"Bearer tok-1"})
    blob = registry(mock, {"Bearer tok-1"}, url=BLOB_URL)
    tokens = token_server(mock, {"token": "tok-1", "expires_in": 300})

    with httpx.Client(auth=make_auth()) as client:
        client.get(MANIFEST_URL)
        client.get(BLOB_URL)
        client.get(MANIFEST_URL)

    assert tokens.call_count == 1
    assert blob.call_count == 1
    assert authorization(blob, 0) == "Bearer tok-1"
    assert manifest.call_count == 3


@pytest.mark.parametrize(
    ("body", "later", "expected_fetches"),
    [
        pytest.param({"token": "tok", "expires_in": 300}, 200.0, 1, id="300s-at-200s"),
        pytest.param({"token": "tok", "expires_in": 300}, 301.0, 2, id="300s-at-301s"),
        pytest.param({"token": "tok"}, 30.0, 1, id="default-60s-at-30s"),
        pytest.param({"token": "tok"}, 61.0, 2, id="default-60s-at-61s"),
        pytest.param({"token": "tok", "expires_in": "x"}, 61.0, 2, id="invalid-60s"),
    ],
)
def test_bearer_token_expiry(
    mock: respx.MockRouter,
    clock: FakeClock,
    body: dict[str, Any],
    later: float,
    expected_fetches: int,
) -> None:
    registry(mock, {"Bearer tok"})
    tokens = token_server(mock, body, body)

    with httpx.Client(auth=make_auth(clock=clock)) as client:
        client.get(MANIFEST_URL)
        clock.now += later
        response = client.get(MANIFEST_URL)

    assert response.status_code == 200
    assert tokens.call_count == expected_fetches


def invalid_token_after_first(request: httpx.Request) -> str:
    sent = request.headers.get("Authorization")
    return bearer(error="invalid_token") if sent else bearer()


def test_bearer_invalid_token_reauthenticates(mock: respx.MockRouter) -> None:
    manifest = registry(mock, {"Bearer tok-2"}, invalid_token_after_first)
    tokens = token_server(mock, {"token": "tok-1"}, {"token": "tok-2"})

    with httpx.Client(auth=make_auth()) as client:
        response = client.get(MANIFEST_URL)

    assert response.status_code == 200
    assert tokens.call_count == 2
    assert [authorization(manifest, i) for i in range(3)] == [
        None,
        "Bearer tok-1",
        "Bearer tok-2",
    ]


def test_bearer_invalid_token_twice_raises(mock: respx.MockRouter) -> None:
    manifest = registry(mock, set(), invalid_token_after_first)
    tokens = token_server(mock, {"token": "tok-1"}, {"token": "tok-2"})
    auth = make_auth(Credentials("ann", PASSWORD))

    with pytest.raises(AuthRejected) as caught:
        get(auth)

    assert tokens.call_count == 2
    assert manifest.call_count == 3
    assert HOST in str(caught.value)
    assert "invalid_token" in str(caught.value)


def test_bearer_cached_token_expired_on_server(
    mock: respx.MockRouter, clock: FakeClock
) -> None:
    accepted = {"Bearer tok-1"}
    manifest = registry(mock, accepted, invalid_token_after_first)
    tokens = token_server(mock, {"token": "tok-1"}, {"token": "tok-2"})

    with httpx.Client(auth=make_auth(clock=clock)) as client:
        client.get(MANIFEST_URL)
        accepted.clear()
        accepted.add("Bearer tok-2")
        response = client.get(MANIFEST_URL)

    assert response.status_code == 200
    assert tokens.call_count == 2
    assert authorization(manifest, 2) == "Bearer tok-1"
    assert authorization(manifest, 3) == "Bearer tok-2"


def test_bearer_anonymous_denied_requires_auth(mock: respx.MockRouter) -> None:
    registry(mock, set(), bearer(error="insufficient_scope"))
    token_server(mock, {"token": "anonymous"})

    with pytest.raises(AuthRequired) as caught:
        get(make_auth())

    assert IMAGE in str(caught.value)
    assert HOST in str(caught.value)
    assert "insufficient_scope" in str(caught.value)


def test_insufficient_scope_is_denied_access(mock: respx.MockRouter) -> None:
    registry(mock, set(), bearer(error="insufficient_scope"))
    token_server(mock, {"token": "pull-only"})

    with pytest.raises(AuthRejected) as caught:
        get(make_auth(Credentials("ann", PASSWORD)))

    message = str(caught.value)
    assert f"denied {SCOPE} for {IMAGE} to the credentials given" in message
    assert "insufficient_scope" in message
    assert "rejected the credentials" not in message


def test_bearer_sends_basic_to_realm(mock: respx.MockRouter) -> None:
    registry(mock, {"Bearer tok-1"})
    tokens = token_server(mock, {"token": "tok-1"})

    with httpx.Client(auth=make_auth(Credentials("ann", PASSWORD))) as client:
        client.get(MANIFEST_URL)

    assert authorization(tokens, 0) == BASIC


def test_bearer_identity_token_posts_form(mock: respx.MockRouter) -> None:
    registry(mock, {"Bearer tok-1"})
    tokens = token_server(mock, {"access_token": "tok-1"})
    credentials = Credentials("", "", identity_token="refresh-me")

    with httpx.Client(auth=make_auth(credentials)) as client:
        response = client.get(MANIFEST_URL)

    assert response.status_code == 200
    token_request = tokens.calls[0].request
    assert token_request.method == "POST"
    assert "Authorization" not in token_request.headers
    form = httpx.QueryParams(token_request.content.decode())
    assert form["grant_type"] == "refresh_token"
    assert form["refresh_token"] == "refresh-me"
    assert form["service"] == SERVICE
    assert form["scope"] == SCOPE
    assert form["client_id"] == "apparate"


@pytest.mark.parametrize(
    ("status", "credentials", "error"),
    [
        pytest.param(401, Credentials("ann", PASSWORD), AuthRejected, id="401-creds"),
        pytest.param(403, Credentials("ann", PASSWORD), AuthRejected, id="403-creds"),
        pytest.param(401, None, AuthRequired, id="401-anonymous"),
        pytest.param(429, None, RateLimited, id="429"),
        pytest.param(503, None, RegistryError, id="503"),
        pytest.param(404, None, InvalidResponse, id="404"),
    ],
)
def test_token_endpoint_status(
    mock: respx.MockRouter,
    status: int,
    credentials: Credentials | None,
    error: type[ApparateError],
) -> None:
    registry(mock, {"Bearer tok-1"})
    body = {"details": "incorrect username or password"}
    token_server(mock, httpx.Response(status, json=body))

    with pytest.raises(error) as caught:
        get(make_auth(credentials))

    assert type(caught.value) is error
    assert REALM in str(caught.value)
    assert f"HTTP {status}" in str(caught.value)
    assert PASSWORD not in str(caught.value)


@pytest.mark.parametrize(
    ("response", "problem"),
    [
        pytest.param(
            httpx.Response(200, html="<html>login</html>"),
            "not a JSON object",
            id="html",
        ),
        pytest.param(httpx.Response(200, json=["tok"]), "not a JSON object", id="list"),
        pytest.param(
            httpx.Response(200, json={"expires_in": 60}), "without", id="none"
        ),
        pytest.param(httpx.Response(200, json={"token": 5}), "without", id="number"),
    ],
)
def test_token_response_invalid(
    mock: respx.MockRouter, response: httpx.Response, problem: str
) -> None:
    registry(mock, {"Bearer tok-1"})
    token_server(mock, response)

    with pytest.raises(InvalidResponse) as caught:
        get(make_auth())

    assert REALM in str(caught.value)
    assert problem in str(caught.value)


def test_token_response_too_large(mock: respx.MockRouter) -> None:
    registry(mock, {"Bearer tok-1"})
    headers = {"Content-Length": str(2 * 1024 * 1024)}
    token_server(mock, httpx.Response(200, headers=headers, stream=ChunkStream([])))

    with pytest.raises(InvalidResponse, match="over the 1048576-byte limit"):
        get(make_auth())


def test_token_response_too_large_without_length(mock: respx.MockRouter) -> None:
    registry(mock, {"Bearer tok-1"})
    stream = ChunkStream([b"x" * 65536] * 17)
    token_server(mock, httpx.Response(200, stream=stream))

    with pytest.raises(InvalidResponse, match="more than 1048576 bytes"):
        get(make_auth())


def test_token_response_trickling(
    mock: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("apparate.registry.pace.WINDOW_SECONDS", 0.0)
    registry(mock, {"Bearer tok-1"})
    stream = ChunkStream([b'{"token"', b': "tok-1"}'])
    token_server(mock, httpx.Response(200, stream=stream))

    with pytest.raises(RegistryUnreachable, match="auth.test.*least speed"):
        get(make_auth())


def test_token_response_read_fails(mock: respx.MockRouter) -> None:
    registry(mock, {"Bearer tok-1"})
    token_server(mock, httpx.Response(200, stream=BrokenStream()))

    with pytest.raises(RegistryUnreachable, match="auth.test"):
        get(make_auth())


def test_token_endpoint_unreachable_names_realm(mock: respx.MockRouter) -> None:
    # httpx raises connection errors from Client.send, outside the flow; the
    # caller translates them using the failed request's host.
    registry(mock, {"Bearer tok-1"})
    token_server(mock, httpx.ConnectError("connection refused"))

    with pytest.raises(httpx.ConnectError) as caught:
        get(make_auth())

    assert caught.value.request.url.host == "auth.test"


@pytest.mark.parametrize(
    "realm",
    [
        pytest.param("", id="missing"),
        pytest.param("/token", id="relative"),
        pytest.param("ftp://auth.test/token", id="ftp"),
    ],
)
def test_bearer_invalid_realm(mock: respx.MockRouter, realm: str) -> None:
    registry(mock, set(), f'Bearer realm="{realm}",service="{SERVICE}"')

    with pytest.raises(InvalidResponse, match="invalid realm"):
        get(make_auth())


def test_bearer_plain_http_realm_keeps_credentials(mock: respx.MockRouter) -> None:
    registry(mock, set(), bearer(realm="http://auth.test:8080/token"))
    tokens = mock.route(host="auth.test", port=8080).respond(json={"token": "t"})

    with pytest.raises(InvalidResponse, match="plain-HTTP token realm"):
        get(make_auth(Credentials("ann", PASSWORD)))

    assert tokens.call_count == 0


def test_basic_only_after_challenge(mock: respx.MockRouter) -> None:
    manifest = registry(mock, {BASIC}, f'Basic realm="{HOST}"')
    blob = registry(mock, {BASIC}, f'Basic realm="{HOST}"', url=BLOB_URL)

    with httpx.Client(auth=make_auth(Credentials("ann", PASSWORD))) as client:
        first = client.get(MANIFEST_URL)
        second = client.get(BLOB_URL)

    assert first.status_code == 200
    assert second.status_code == 200
    assert authorization(manifest, 0) is None
    assert authorization(manifest, 1) == BASIC
    assert blob.call_count == 1
    assert authorization(blob, 0) == BASIC


def test_basic_never_sent_unasked(mock: respx.MockRouter) -> None:
    manifest = mock.get(MANIFEST_URL).respond(200, text="public")

    with httpx.Client(auth=make_auth(Credentials("ann", PASSWORD))) as client:
        client.get(MANIFEST_URL)
        client.get(MANIFEST_URL)

    assert authorization(manifest, 0) is None
    assert authorization(manifest, 1) is None


def test_basic_without_credentials(mock: respx.MockRouter) -> None:
    registry(mock, {BASIC}, f'Basic realm="{HOST}"')

    with pytest.raises(AuthRequired) as caught:
        get(make_auth())

    assert IMAGE in str(caught.value)
    assert HOST in str(caught.value)
    assert f"docker login {HOST}" in str(caught.value)


def test_basic_rejected(mock: respx.MockRouter) -> None:
    manifest = registry(mock, set(), f'Basic realm="{HOST}"')

    with pytest.raises(AuthRejected) as caught:
        get(make_auth(Credentials("ann", PASSWORD)))

    assert manifest.call_count == 2
    assert PASSWORD not in str(caught.value)
    assert BASIC.split()[1] not in str(caught.value)


def test_basic_rejected_hint_checks_password(mock: respx.MockRouter) -> None:
    # The credentials were given already, so the hint must not ask for them.
    registry(mock, set(), f'Basic realm="{HOST}"')

    with pytest.raises(AuthRejected) as caught:
        get(make_auth(Credentials("ann", PASSWORD)))

    assert caught.value.hint.startswith("check the username and password")
    assert f"docker login {HOST}" in caught.value.hint


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        pytest.param({}, "without a WWW-Authenticate challenge", id="no-challenge"),
        pytest.param({"WWW-Authenticate": "Negotiate"}, "negotiate", id="unsupported"),
    ],
)
def test_401_without_usable_challenge(
    mock: respx.MockRouter, headers: dict[str, str], problem: str
) -> None:
    mock.get(MANIFEST_URL).respond(401, headers=headers)

    with pytest.raises(AuthRequired) as caught:
        get(make_auth())

    assert problem in str(caught.value)


def test_401_invalid_challenge(mock: respx.MockRouter) -> None:
    mock.get(MANIFEST_URL).respond(401, headers={"WWW-Authenticate": 'Bearer realm="'})

    with pytest.raises(InvalidResponse, match="invalid challenge"):
        get(make_auth())


def test_flow_streams_registry_body(mock: respx.MockRouter) -> None:
    body = ChunkStream([b"layer-", b"bytes"])

    def handle(request: httpx.Request) -> httpx.Response:
        if request.headers.get("Authorization") == "Bearer tok-1":
            return httpx.Response(200, stream=body)
        return httpx.Response(401, headers={"WWW-Authenticate": bearer()})

    mock.get(BLOB_URL).mock(side_effect=handle)
    token_server(mock, {"token": "tok-1"})

    with httpx.Client(auth=make_auth()) as client:
        request = client.build_request("GET", BLOB_URL)
        response = client.send(request, stream=True)
        assert body.read is False
        assert response.read() == b"layer-bytes"
        response.close()

    assert "Authorization" not in request.headers


def test_flow_async_client(mock: respx.MockRouter) -> None:
    manifest = registry(mock, {"Bearer tok-1"})
    token_server(mock, {"token": "tok-1"})

    async def pull() -> httpx.Response:
        async with httpx.AsyncClient(auth=make_auth()) as client:
            return await client.get(MANIFEST_URL)

    response = asyncio.run(pull())

    assert response.status_code == 200
    assert authorization(manifest, 1) == "Bearer tok-1"


def test_flow_logs_no_secrets(
    mock: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    registry(mock, {"Bearer tok-secret"}, invalid_token_after_first)
    token_server(mock, {"token": "tok-first"}, {"token": "tok-secret"})
    caplog.set_level(logging.DEBUG, logger="apparate")

    with httpx.Client(auth=make_auth(Credentials("ann", PASSWORD))) as client:
        client.get(MANIFEST_URL)

    assert caplog.records
    for secret in (PASSWORD, BASIC.split()[1], "tok-first", "tok-secret"):
        assert secret not in caplog.text
