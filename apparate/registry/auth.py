"""Registry authentication as an httpx auth flow: challenge, token, retry.

A request first goes out bare, or with a cached token for its host. When the
registry responds with 401, the flow reads the ``WWW-Authenticate`` challenge:

* Bearer: get a token from the challenge's realm, with Basic credentials or
  an identity token when the credential store has them, and resend the
  request with it. Tokens are cached per realm, service and scopes.
* Basic: resend the request with the host's credentials. A registry gets
  credentials only after a Basic challenge. Otherwise they go only to the
  token realm that its Bearer challenge names.

The flow does no I/O of its own. Token requests are yielded to the client,
which sends them through the same transport as every other request, and the
flow reads only the token responses' bodies, so blob bodies still stream.

NOTE: httpx raises a connection error on a token request from
``Client.send`` and closes the flow, so this module cannot translate it. The
caller sees an ``httpx.TransportError`` whose ``request`` is the token
request, and translates it to RegistryUnreachable naming that host.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from apparate.errors import (
    AuthError,
    AuthRejected,
    AuthRequired,
    InvalidResponse,
    RateLimited,
    RegistryError,
    RegistryUnreachable,
)
from apparate.registry.challenge import Challenge, parse_challenges
from apparate.registry.credentials import Credentials, CredentialStore
from apparate.registry.errors import login_hint, relogin_hint
from apparate.registry.pace import Pace

log = logging.getLogger(__name__)

CLIENT_ID = "apparate"
# The distribution token spec's lifetime when a response omits expires_in.
DEFAULT_TOKEN_LIFETIME = 60.0
# A token is not reused in its last seconds, where it could expire in flight.
EXPIRY_MARGIN = 5.0
# Each round handles one 401 response. The bound stops a registry that
# changes its challenge every time from looping a request forever.
MAX_ROUNDS = 4
MAX_TOKEN_RESPONSE_BYTES = 1024 * 1024
# Registries and token servers explain a refusal in one of these JSON fields.
_DETAIL_FIELDS = ("details", "error_description", "message", "error")

TokenKey = tuple[str, str, tuple[str, ...]]
"""The realm, service and scopes that a token was issued for."""


@dataclass(frozen=True)
class _Token:
    """A cached bearer token and its expiry on the injected clock.

    ``with_credentials`` records whether credentials were sent to get it, so a
    401 to the token means rejected credentials rather than missing ones.
    """

    value: str
    expires_at: float
    with_credentials: bool


@dataclass
class _Attempt:
    """The authentication state of one request: what the flow has sent."""

    token: _Token | None = None
    token_key: TokenKey | None = None
    sent_basic: bool = False
    reauthenticated: bool = False
    rounds: int = 0

    @property
    def used_credentials(self) -> bool:
        return self.sent_basic or bool(self.token and self.token.with_credentials)


@dataclass(frozen=True)
class _Send:
    """A request for the client to send, and whether to read its body."""

    request: httpx.Request
    read_body: bool = False


_Flow = Generator[_Send, httpx.Response, None]


class RegistryAuth(httpx.Auth):
    """Authenticate requests to OCI registries for one image.

    The flow may send a request more than once, so it suits only requests
    without a body, such as GET and HEAD. The caller's request is never
    changed: each retry is a copy with its own ``Authorization``.
    """

    def __init__(
        self,
        credentials: CredentialStore,
        scopes: list[str],
        image: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._credentials = credentials
        self._scopes = tuple(scopes)
        self._image = image
        self._clock = clock
        self._tokens: dict[TokenKey, _Token] = {}
        self._host_token_keys: dict[str, TokenKey] = {}
        self._basic_hosts: set[str] = set()

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        """Run the flow, reading the bodies of token responses only."""
        flow = self._flow(request)
        try:
            step = next(flow)
            while True:
                response = yield step.request
                if step.read_body:
                    _read_token_body(response)
                step = flow.send(response)
        except StopIteration:
            return
        finally:
            flow.close()

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """Run the flow for an async client, reading token responses only."""
        flow = self._flow(request)
        try:
            step = next(flow)
            while True:
                response = yield step.request
                if step.read_body:
                    await _aread_token_body(response)
                step = flow.send(response)
        except StopIteration:
            return
        finally:
            flow.close()

    def _flow(self, request: httpx.Request) -> _Flow:
        host = _registry_host(request.url)
        attempt = _Attempt()
        response = yield _Send(self._first_request(request, host, attempt))
        while response.status_code == 401:
            retry = yield from self._handle_401(request, response, host, attempt)
            response = yield _Send(retry)

    def _first_request(
        self, request: httpx.Request, host: str, attempt: _Attempt
    ) -> httpx.Request:
        """Add the authorization the host is known to need: Basic or a cached token."""
        if host in self._basic_hosts:
            credentials = self._credentials.lookup(host)
            if credentials is not None and credentials.password:
                attempt.sent_basic = True
                return _with_authorization(request, _basic_value(credentials))
        key = self._host_token_keys.get(host)
        token = self._valid_token(key) if key else None
        if token is None:
            return request
        log.debug("reusing the cached token for %s", host)
        attempt.token, attempt.token_key = token, key
        return _with_authorization(request, f"Bearer {token.value}")

    def _handle_401(
        self,
        request: httpx.Request,
        response: httpx.Response,
        host: str,
        attempt: _Attempt,
    ) -> Generator[_Send, httpx.Response, httpx.Request]:
        """Handle one 401 response and return the request to send next."""
        attempt.rounds += 1
        if attempt.rounds > MAX_ROUNDS:
            detail = f"it responded with 401 {MAX_ROUNDS} times in a row"
            raise self._rejection(host, attempt, detail)
        challenge = self._choose_challenge(response, host, attempt)
        if challenge.scheme == "basic":
            return self._basic_request(request, host, attempt)

        token = yield from self._bearer_token(challenge, request, host, attempt)
        return _with_authorization(request, f"Bearer {token.value}")

    def _choose_challenge(
        self, response: httpx.Response, host: str, attempt: _Attempt
    ) -> Challenge:
        """Pick the Bearer challenge, else the Basic one, from a 401."""
        try:
            headers = response.headers.get_list("WWW-Authenticate")
            challenges = parse_challenges(headers)
        except ValueError as error:
            raise InvalidResponse(
                f"registry {host} responded to a request for {self._image} with an "
                f"invalid challenge: {error}"
            ) from None
        for scheme in ("bearer", "basic"):
            for challenge in challenges:
                if challenge.scheme == scheme:
                    return challenge
        raise self._unsupported(host, attempt, challenges)

    def _basic_request(
        self, request: httpx.Request, host: str, attempt: _Attempt
    ) -> httpx.Request:
        if attempt.sent_basic:
            raise self._rejection(host, attempt, "HTTP 401 to Basic authentication")
        self._basic_hosts.add(host)
        credentials = self._credentials.lookup(host)
        if credentials is None or not credentials.password:
            raise self._required(host, "it asks for Basic authentication")

        log.debug("%s asked for Basic authentication", host)
        attempt.sent_basic = True
        return _with_authorization(request, _basic_value(credentials))

    def _bearer_token(
        self,
        challenge: Challenge,
        request: httpx.Request,
        host: str,
        attempt: _Attempt,
    ) -> Generator[_Send, httpx.Response, _Token]:
        """Return a token for the challenge, from the cache or the realm."""
        key = self._token_key(challenge, host)
        if key == attempt.token_key:
            self._prepare_reauthentication(challenge, key, host, attempt)
        token = self._valid_token(key)
        if token is None:
            token = yield from self._fetch_token(key, request, host)

        self._host_token_keys[host] = key
        attempt.token, attempt.token_key = token, key
        return token

    def _prepare_reauthentication(
        self, challenge: Challenge, key: TokenKey, host: str, attempt: _Attempt
    ) -> None:
        """Drop a token the registry called expired, once per request.

        Any other 401 to a token issued for the very scopes in the challenge
        means that the token does not grant access.
        """
        error = challenge.params.get("error", "")
        if error == "insufficient_scope" and attempt.used_credentials:
            # The credentials were accepted: the token grants less than needed.
            scope = challenge.params.get("scope", "") or "the access needed"
            raise AuthRejected(
                f"registry {host} denied {scope} for {self._image} to the "
                "credentials given (insufficient_scope); the repository may "
                "also not exist",
                hint="use credentials with that access to the repository "
                f"('docker login {host}' or --username), or another repository",
            )
        if error != "invalid_token" or attempt.reauthenticated:
            # Docker Hub also responds this way for a repository that does
            # not exist, so the message names both causes.
            detail = (
                f"HTTP 401 to the bearer token ({error or 'no error code'}); "
                "the repository may also not exist"
            )
            raise self._rejection(host, attempt, detail)
        log.debug("%s called the token invalid; getting a new one", host)
        attempt.reauthenticated = True
        # Another request may already have replaced the token that was sent.
        if self._tokens.get(key) == attempt.token:
            self._tokens.pop(key, None)

    def _token_key(self, challenge: Challenge, host: str) -> TokenKey:
        realm = challenge.params.get("realm", "")
        if not _is_http_url(realm):
            raise InvalidResponse(
                f"registry {host} sent a Bearer challenge for {self._image} "
                f"with an invalid realm {realm!r}"
            )
        # A challenge names what this one request needs and may leave out
        # the source of a cross-repository mount. So the client's own scopes
        # are requested too, as containerd's GetTokenScopes merges them.
        challenged = challenge.params.get("scope", "").split()
        scopes = _merged_scopes([*challenged, *self._scopes])
        return realm, challenge.params.get("service", ""), scopes

    def _valid_token(self, key: TokenKey) -> _Token | None:
        token = self._tokens.get(key)
        if token is None or self._clock() >= token.expires_at - EXPIRY_MARGIN:
            return None
        return token

    def _fetch_token(
        self, key: TokenKey, request: httpx.Request, host: str
    ) -> Generator[_Send, httpx.Response, _Token]:
        """Get a token from the realm and cache it."""
        credentials = self._credentials.lookup(host)
        token_request = self._token_request(key, credentials, request, host)
        started = self._clock()
        log.debug("requesting a token from %s for %s", key[0], " ".join(key[2]))

        response = yield _Send(token_request, read_body=True)
        with_credentials = credentials is not None
        self._check_token_status(response, key[0], host, with_credentials)
        token = self._parse_token(response, key[0], host, with_credentials, started)
        self._tokens[key] = token
        return token

    def _token_request(
        self,
        key: TokenKey,
        credentials: Credentials | None,
        request: httpx.Request,
        host: str,
    ) -> httpx.Request:
        """Build the token request: GET, or POST with an identity token.

        Only ``Accept`` and the client's ``User-Agent`` are sent along, never
        the original request's ``Range`` or ``Accept``.
        """
        realm, service, scopes = key
        headers = {"Accept": "application/json"}
        if "User-Agent" in request.headers:
            headers["User-Agent"] = request.headers["User-Agent"]
        if credentials is not None:
            self._check_realm_encrypted(realm, request, host)
        if credentials is not None and credentials.identity_token:
            form = _refresh_form(credentials.identity_token, service, scopes)
            return httpx.Request("POST", realm, headers=headers, data=form)

        if credentials is not None:
            headers["Authorization"] = _basic_value(credentials)
        params: dict[str, Any] = {"service": service} if service else {}
        params["scope"] = list(scopes)
        url = httpx.URL(realm).copy_merge_params(params)
        return httpx.Request("GET", url, headers=headers)

    def _check_realm_encrypted(
        self, realm: str, request: httpx.Request, host: str
    ) -> None:
        """Reject a plain-HTTP realm for an HTTPS registry before credentials go."""
        if request.url.scheme == "https" and httpx.URL(realm).scheme == "http":
            raise InvalidResponse(
                f"registry {host} sent the plain-HTTP token realm {realm} for "
                f"{self._image}; apparate does not send its credentials unencrypted",
                hint="ask the registry's operator to serve the realm over HTTPS",
            )

    def _check_token_status(
        self, response: httpx.Response, realm: str, host: str, with_credentials: bool
    ) -> None:
        status = response.status_code
        if response.is_success:
            return
        detail = _error_detail(response)
        problem = f"token endpoint {realm} responded with HTTP {status}{detail}"
        if status in (401, 403) and with_credentials:
            raise self._rejected(host, problem)
        if status in (401, 403):
            raise self._required(host, problem)
        if status == 429:
            raise RateLimited(f"getting a token for {self._image}: {problem}")
        if status >= 500:
            raise RegistryError(f"getting a token for {self._image}: {problem}")
        raise InvalidResponse(f"getting a token for {self._image}: {problem}")

    def _parse_token(
        self,
        response: httpx.Response,
        realm: str,
        host: str,
        with_credentials: bool,
        started: float,
    ) -> _Token:
        """Read the token and its lifetime; messages never show the body."""
        body = _json_object(response)
        if body is None:
            content_type = response.headers.get("Content-Type", "no content type")
            raise InvalidResponse(
                f"token endpoint {realm} of registry {host} responded with a body "
                f"that is not a JSON object ({content_type})"
            )
        value = body.get("token") or body.get("access_token")
        if not isinstance(value, str) or not value:
            raise InvalidResponse(
                f"token endpoint {realm} of registry {host} responded without "
                'a "token" or "access_token"'
            )
        # The lifetime counts from when the request left, which is never
        # later than issued_at, and a wall-clock issued_at cannot be compared
        # with the monotonic clock anyway.
        lifetime = _lifetime(body.get("expires_in"))
        return _Token(value, started + lifetime, with_credentials)

    def _rejection(self, host: str, attempt: _Attempt, detail: str) -> AuthError:
        """Build the error for a 401 to what the flow sent."""
        if not attempt.used_credentials:
            return self._required(host, detail)
        return self._rejected(host, detail)

    def _rejected(self, host: str, detail: str) -> AuthRejected:
        return AuthRejected(
            f"registry {host} rejected the credentials for {self._image}: {detail}",
            hint=relogin_hint(host),
        )

    def _required(self, host: str, detail: str) -> AuthRequired:
        return AuthRequired(
            f"registry {host} requires credentials for {self._image}: {detail}",
            hint=login_hint(host),
        )

    def _unsupported(
        self, host: str, attempt: _Attempt, challenges: list[Challenge]
    ) -> AuthError:
        if not challenges:
            detail = "HTTP 401 without a WWW-Authenticate challenge"
            return self._rejection(host, attempt, detail)
        schemes = ", ".join(challenge.scheme for challenge in challenges)
        return AuthRequired(
            f"registry {host} asks for {schemes} authentication for "
            f"{self._image}, which apparate does not support",
            hint="apparate supports the Bearer and Basic schemes",
        )


def _registry_host(url: httpx.URL) -> str:
    """Return ``host[:port]`` as docker's config keys spell it."""
    return url.netloc.decode("ascii")


def _merged_scopes(scopes: list[str]) -> tuple[str, ...]:
    """Join scopes of one resource into one scope with all their actions.

    ``repository:a:pull`` and ``repository:a:pull,push`` become
    ``repository:a:pull,push``. Resources keep the order they first appear
    in. A scope not of the form TYPE:NAME:ACTIONS is only deduplicated.
    """
    actions: dict[str, list[str]] = {}
    for scope in scopes:
        resource, _, listed = scope.rpartition(":")
        if ":" not in resource:
            resource, listed = scope, ""
        known = actions.setdefault(resource, [])
        known += [a for a in listed.split(",") if a and a not in known]
    return tuple(
        f"{resource}:{','.join(listed)}" if listed else resource
        for resource, listed in actions.items()
    )


def _with_authorization(request: httpx.Request, value: str) -> httpx.Request:
    """Copy a bodiless request with its ``Authorization`` header set."""
    headers = request.headers.copy()
    headers["Authorization"] = value
    return httpx.Request(
        request.method,
        request.url,
        headers=headers,
        stream=request.stream,
        extensions=request.extensions,
    )


def _basic_value(credentials: Credentials) -> str:
    pair = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


def _refresh_form(
    identity_token: str, service: str, scopes: tuple[str, ...]
) -> dict[str, str]:
    """Build the OAuth2 refresh-token form; scopes are space-separated there."""
    form = {"grant_type": "refresh_token", "refresh_token": identity_token}
    if service:
        form["service"] = service
    if scopes:
        form["scope"] = " ".join(scopes)
    form["client_id"] = CLIENT_ID
    return form


def _is_http_url(text: str) -> bool:
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL:
        return False
    return url.scheme in ("http", "https") and bool(url.host)


def _lifetime(expires_in: Any) -> float:
    """Return a token's lifetime in seconds, 60 when missing or invalid."""
    valid = isinstance(expires_in, int | float) and not isinstance(expires_in, bool)
    if valid and expires_in > 0:
        return float(expires_in)
    return DEFAULT_TOKEN_LIFETIME


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _error_detail(response: httpx.Response) -> str:
    """Return the server's short reason for a refusal, if its body has one."""
    body = _json_object(response) or {}
    for name in _DETAIL_FIELDS:
        value = body.get(name)
        if isinstance(value, str) and value:
            return f" ({value[:200]})"
    return ""


def _read_token_body(response: httpx.Response) -> None:
    _bound_token_body(response)
    try:
        response.read()
    except httpx.TransportError as error:
        raise _unreadable(response, error) from None


async def _aread_token_body(response: httpx.Response) -> None:
    _bound_token_body(response)
    try:
        await response.aread()
    except httpx.TransportError as error:
        raise _unreadable(response, error) from None


def _bound_token_body(response: httpx.Response) -> None:
    """Make reading a token response fail when it is too large or too slow.

    httpx reads a body without a declared length whole, however large, and
    waits on a trickling one forever.
    """
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > MAX_TOKEN_RESPONSE_BYTES:
        raise _token_too_large(response, length)
    response.stream = _TokenStream(response)


class _TokenStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A token response's raw body, checked in size and speed as it arrives."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self._stream = response.stream
        self._pace = Pace()
        self._size = 0

    def __iter__(self) -> Iterator[bytes]:
        assert isinstance(self._stream, httpx.SyncByteStream)
        for piece in self._stream:
            self._check(piece)
            yield piece

    async def __aiter__(self) -> AsyncIterator[bytes]:
        assert isinstance(self._stream, httpx.AsyncByteStream)
        async for piece in self._stream:
            self._check(piece)
            yield piece

    def close(self) -> None:
        assert isinstance(self._stream, httpx.SyncByteStream)
        self._stream.close()

    async def aclose(self) -> None:
        assert isinstance(self._stream, httpx.AsyncByteStream)
        await self._stream.aclose()

    def _check(self, piece: bytes) -> None:
        self._pace.arrived(len(piece))
        self._size += len(piece)
        if self._size > MAX_TOKEN_RESPONSE_BYTES:
            raise _token_too_large(
                self._response, f"more than {MAX_TOKEN_RESPONSE_BYTES}"
            )


def _token_too_large(response: httpx.Response, size: str) -> InvalidResponse:
    return InvalidResponse(
        f"token endpoint {response.request.url.host} responded with {size} "
        f"bytes, over the {MAX_TOKEN_RESPONSE_BYTES}-byte limit"
    )


def _unreadable(response: httpx.Response, error: Exception) -> RegistryUnreachable:
    return RegistryUnreachable(
        f"reading the token from {response.request.url.host} failed: {error}"
    )
