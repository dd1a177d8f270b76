"""Turn registry HTTP error responses and httpx exceptions into apparate errors."""

from __future__ import annotations

import json

import httpx

from apparate.errors import (
    ApparateError,
    AuthRejected,
    AuthRequired,
    InvalidResponse,
    NotFound,
    RateLimited,
    RegistryUnreachable,
    ServerError,
)
from apparate.registry.pace import SlowBody, paced
from apparate.registry.transport import certs_dirs_of

MAX_ERROR_BODY = 16 * 1024


def read_error_detail(response: httpx.Response) -> str:
    """Read the registry's own words from an error body, at most 16 KiB of it.

    Distribution sends ``{"errors": [{"code": ..., "message": ...}]}``;
    anything else is shown as its first line of text.
    """
    body = b""
    try:
        for piece in paced(response.iter_raw()):
            body += piece
            if len(body) >= MAX_ERROR_BODY:
                break
    except httpx.TransportError:
        pass  # the status shows what failed, and the detail is optional
    try:
        errors = json.loads(body).get("errors") or []
        parts = [
            f"{item.get('code', '')}: {item.get('message', '')}".strip(": ")
            for item in errors
            if isinstance(item, dict)
        ]
        if parts:
            return "; ".join(parts)
    except (ValueError, AttributeError):
        pass
    text = body.decode("utf-8", "replace").strip().splitlines()
    return text[0][:200] if text else ""


def login_hint(host: str) -> str:
    """Tell how to give credentials for ``host``."""
    return f"log in with 'docker login {host}' or pass --username and --password-stdin"


def relogin_hint(host: str) -> str:
    """Return the advice for credentials that ``host`` rejected."""
    return (
        f"check the username and password, or log in again with 'docker login {host}'"
    )


def status_error(response: httpx.Response, subject: str) -> ApparateError:
    """Build the error for a non-success response about ``subject``."""
    status = response.status_code
    detail = read_error_detail(response)
    suffix = f" ({detail})" if detail else ""
    host = response.url.netloc.decode()
    if status == 401:
        if "authorization" in response.request.headers:
            return AuthRejected(
                f"{subject}: credentials were rejected (HTTP 401){suffix}",
                hint=relogin_hint(host),
            )
        return AuthRequired(
            f"{subject}: the registry requires authentication{suffix}",
            hint=login_hint(host),
        )
    if status == 403:
        return AuthRejected(
            f"{subject}: access denied (HTTP 403){suffix}",
            hint=relogin_hint(host),
        )
    if status == 404:
        return NotFound(f"{subject} not found (HTTP 404){suffix}")
    if status == 429:
        retry_after = response.headers.get("Retry-After", "").strip()
        wait = ""
        if retry_after:
            unit = " s" if retry_after.isdigit() else ""
            wait = f", retry after {retry_after}{unit}"
        return RateLimited(f"{subject}: too many requests (HTTP 429{wait}){suffix}")
    # HTTP defines the status classes 1xx to 5xx only (RFC 9110, section 15,
    # and IANA's status code registry), so a code such as 999 is an invalid
    # response, not a server failure.
    if 500 <= status <= 599:
        failure = ServerError(f"{subject}: registry error (HTTP {status}){suffix}")
        retry_after = response.headers.get("Retry-After", "").strip()
        if retry_after.isdigit():
            failure.retry_after = float(retry_after)
        return failure
    return InvalidResponse(f"{subject}: unexpected HTTP {status}{suffix}")


def transport_error(error: httpx.HTTPError, host: str, subject: str) -> ApparateError:
    """Translate an httpx exception raised while talking to ``host``.

    The message names the host of the failed request when httpx records it,
    since a token realm or a redirect target may be elsewhere.
    """
    try:
        url: httpx.URL | None = error.request.url
    except RuntimeError:
        url = None
    if isinstance(error, httpx.UnsupportedProtocol) and url is not None:
        return unsupported_redirect(url, host, subject)
    if isinstance(error, httpx.TooManyRedirects):
        return too_many_redirects(url, host, subject)
    if url is not None:
        host = url.netloc.decode() or host
    if isinstance(error, SlowBody):
        return RegistryUnreachable(
            f"{subject}: {host} {error}",
            hint="the registry or the link is overloaded; try again later",
        )
    if isinstance(error, httpx.TimeoutException):
        return RegistryUnreachable(
            f"{subject}: {host} timed out ({type(error).__name__})"
        )
    if isinstance(error, httpx.ConnectError) and "SSL" in str(error):
        return RegistryUnreachable(
            f"{subject}: TLS with {host} failed ({error})",
            hint="for a registry with a private CA, put its certificate in "
            f"{certs_dirs_of()[0]}/{host}/ca.crt; for a plain-HTTP registry "
            f"pass --insecure-registry {host}",
        )
    if isinstance(error, httpx.ConnectError):
        return RegistryUnreachable(
            f"{subject}: cannot connect to {host} ({error})",
            hint="check the registry address and the network",
        )
    return RegistryUnreachable(f"{subject}: connection to {host} failed ({error})")


def too_many_redirects(
    last: httpx.URL | None, host: str, subject: str, limit: int | None = None
) -> InvalidResponse:
    """Build the error for a chain of redirects longer than ``limit``.

    The last target is shown without its query, which may hold a signature.
    """
    more_than = f" (more than {limit})" if limit is not None else ""
    target = f", the last to {last.copy_with(query=None)}" if last else ""
    return InvalidResponse(
        f"{subject}: too many redirects from {host}{more_than}{target}",
        hint="check the registry's storage and proxy settings for a redirect loop",
    )


def invalid_redirect(location: str, host: str, subject: str) -> InvalidResponse:
    """Build the error for a redirect whose Location header is not a valid URL.

    The Location is shown without its query, which may hold a signature.
    """
    location_without_query = location.partition("?")[0][:200]
    return InvalidResponse(
        f"{subject}: invalid redirect from {host} to {location_without_query!r}",
        hint="the registry's Location header is not a URL; check the registry's "
        "storage and proxy settings",
    )


def not_http_error(error: httpx.HTTPError, host: str, subject: str) -> InvalidResponse:
    """Build the error for a port that spoke neither HTTP nor TLS when asked.

    ``error`` is what the plain-HTTP request met, because the https request
    failed in its handshake, which shows the port does not speak TLS.
    """
    detail = str(error).rstrip(".") or type(error).__name__
    return InvalidResponse(
        f"{subject}: {host} did not respond as an HTTP registry ({detail})",
        hint=f"check that {host} is the registry's address and port; apparate "
        "tried plain HTTP and https",
    )


def unsupported_redirect(target: httpx.URL, host: str, subject: str) -> InvalidResponse:
    """Build the error for a redirect to a URL that is not http or https.

    Only the scheme is shown, because httpx 0.29 fills in the request's host
    where a redirect URL has none (``file:///etc/passwd``), so the rest may
    differ from what the registry sent.
    """
    return InvalidResponse(
        f"{subject}: {host} redirected to an unsupported {target.scheme}: URL",
        hint="a registry may redirect only to http:// or https:// URLs; "
        "check the registry's storage settings",
    )
