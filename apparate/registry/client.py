"""Read manifests and blobs of one repository over the OCI distribution API.

Every body is checked against its digest before it is returned or its last
byte is handed on. Blob downloads resume with ``Range`` after a dropped
connection, including against servers that ignore ranges.
"""

from __future__ import annotations

import contextlib
import logging
import re
import ssl
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Self

import httpx

from apparate.digest import Digest, DigestVerifier, verify_bytes
from apparate.errors import (
    DigestMismatch,
    InvalidResponse,
    RegistryUnreachable,
    ServerError,
    TransferFailed,
    TransferTimedOut,
    TruncatedBody,
)
from apparate.manifest import ACCEPTED_TYPES, MAX_MANIFEST_BYTES, Descriptor
from apparate.reference import Reference, is_loopback
from apparate.registry.auth import RegistryAuth
from apparate.registry.credentials import CredentialStore
from apparate.registry.errors import (
    invalid_redirect,
    not_http_error,
    status_error,
    too_many_redirects,
    transport_error,
    unsupported_redirect,
)
from apparate.registry.pace import SlowBody, paced
from apparate.registry.transport import TransportSettings

log = logging.getLogger(__name__)

MAX_STALLED_ATTEMPTS = 5
# A server silent for a whole read timeout twice in a row is hung, not busy:
# waiting five read timeouts for it held a pull for minutes.
MAX_SILENT_ATTEMPTS = 2
MAX_REDIRECTS = 5
MAX_ATTEMPTS = 20
# Seconds before the first retry without progress; it doubles each time, so
# five attempts in a row span about 7.5 s of outage.
RETRY_PAUSE = 0.5
# Blob bodies are hashed as sent: with zstandard installed httpx would ask for
# zstd and decode it, so the digest would be of other bytes.
IDENTITY = {"Accept-Encoding": "identity"}
# Seconds after a retry warning during which this client's other retries are
# logged with -v only, so an outage met by many ranges at once warns once,
# not once per range and attempt.
QUIET_SECONDS = 10.0
# The maximum wait a 5xx's Retry-After sets before the next attempt.
MAX_RETRY_AFTER = 30.0
# Failures of a busy registry (5xx) that are worth another attempt once it
# served part of a body. A 429 is not, because it requests that the client slow down.
_BUSY = (ServerError,)
_RETRYABLE = (httpx.ReadError, httpx.RemoteProtocolError, httpx.ReadTimeout)
# The maximum time a manifest's body may take to arrive, however slowly it
# trickles.
# Manifests are usually a few kB, which a link of 1 kbit/s delivers in time.
MANIFEST_READ_SECONDS = 60.0
# The reason code at the start of an OpenSSL error message, as in
# "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed".
_SSL_REASON = re.compile(r"\[SSL: (\w+)\]")
# A Content-Range of one range: first and last byte, and the blob's length or *.
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)
# Characters that no host name contains: spaces, and those URLs percent-encode.
_NOT_IN_HOST = re.compile(r'[\s"%<>\\^`{|}]')


@dataclass(frozen=True)
class FetchedManifest:
    """A manifest or index body, verified against ``digest``."""

    body: bytes
    media_type: str
    digest: Digest


@dataclass(frozen=True)
class Endpoint:
    """The location of a registry's API: a host, an optional scheme and a root.

    Without a scheme, https and, where it is allowed, plain http are tried
    (see ``base_urls``). ``api_root`` is ``/v2`` unless a mirror serves it
    under a path.
    """

    host: str
    scheme: str | None = None
    api_root: str = "/v2"

    @classmethod
    def parse(cls, url: str, override_path: bool = False) -> Endpoint:
        """Read a base URL such as ``https://mirror:5000/prefix``.

        The API is at ``<path>/v2``, as containerd's ``hosts.toml`` has it,
        unless the path already ends with ``/v2`` or ``override_path`` makes
        the path the API root itself. Raises InvalidEndpoint for a URL
        without an http or https scheme or a host, with a port outside 1 to
        65535, or with credentials, a query or a fragment. Its message never
        shows those parts, because they may contain a password or a token.
        """
        if not url.strip():
            raise InvalidEndpoint("the URL is empty", hint="give an https:// URL")
        scheme, separator, rest = url.partition("://")
        if not separator:
            scheme, rest = "", url
        # Schemes are case-insensitive (RFC 3986, section 3.1).
        scheme = scheme.lower()
        authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
        path, _, _ = rest[len(authority) :].partition("?")
        path = path.partition("#")[0]
        host = authority.rpartition("@")[2]
        redacted = f"{scheme}{separator}{host}{path}"
        if "@" in authority:
            raise InvalidEndpoint(
                f"the URL of {redacted} contains a user name or password",
                hint=f"remove them from the URL and log in with 'docker login "
                f"{host}', which stores them in docker's config.json",
            )
        if rest != authority + path:
            raise InvalidEndpoint(
                f"the URL of {redacted} contains a query or fragment, which a "
                "registry URL cannot have",
                hint="remove the part from '?' or '#' on",
            )
        if not separator:
            raise InvalidEndpoint(
                f"{redacted!r} has no scheme",
                hint=f"write it as https://{redacted}, or as http://{redacted} "
                "for plain HTTP",
            )
        if scheme not in ("http", "https"):
            raise InvalidEndpoint(
                f"unsupported scheme in {redacted!r}: use https:// or http://"
            )
        _check_host(host, redacted)
        host = _as_requested(scheme, host, redacted)
        path = "/" + path.strip("/") if path.strip("/") else ""
        if not override_path and not path.endswith("/v2"):
            path += "/v2"
        return cls(host, scheme, path)

    def base_urls(
        self, settings: TransportSettings, plain_first: bool = False
    ) -> list[str]:
        """Return the base URLs to try in order.

        ``plain_first`` puts plain http first where it is allowed, as for
        loopback registries.
        """
        if self.scheme:
            return [f"{self.scheme}://{self.host}"]
        if not settings.allows_plain_http(self.host):
            return [f"https://{self.host}"]
        urls = [f"https://{self.host}", f"http://{self.host}"]
        return urls[::-1] if plain_first else urls

    def __str__(self) -> str:
        root = "" if self.api_root == "/v2" else self.api_root.removesuffix("/v2")
        prefix = f"{self.scheme}://" if self.scheme else ""
        return f"{prefix}{self.host}{root}"


def _as_requested(scheme: str, host: str, redacted: str) -> str:
    """Return ``host`` as httpx writes it in requests.

    httpx lower-cases a host name, encodes an international one in its
    ``xn--`` form and drops a default port. The plain-HTTP check compares a
    request's host with the hosts allowed, so both must be written alike.
    """
    try:
        return httpx.URL(f"{scheme}://{host}/").netloc.decode("ascii")
    except (httpx.InvalidURL, UnicodeError):
        raise InvalidEndpoint(f"invalid host {host!r} in {redacted}") from None


class InvalidEndpoint(ValueError):
    """A URL rejected by Endpoint.parse, with a ``hint`` on how to fix it."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint or "write it as https://HOST[:PORT][/PATH]"


def _check_host(host: str, redacted: str) -> None:
    """Raise InvalidEndpoint unless ``host`` is a host name or address and valid port."""
    name, colon, port = host.rpartition(":")
    if not colon or "]" in port:
        name, port = host, ""
    elif not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise InvalidEndpoint(
            f"port {port!r} of {redacted} is not a number from 1 to 65535"
        )
    try:
        parts = urllib.parse.urlsplit(f"http://{host}")
    except ValueError:
        raise InvalidEndpoint(f"invalid host {name!r} in {redacted}") from None
    if not parts.hostname:
        raise InvalidEndpoint(f"no host in {redacted}")
    # httpx would percent-encode these, so requests went to another host name
    # than the one the TLS and plain-HTTP settings are keyed by.
    if _NOT_IN_HOST.search(name) or not name.isprintable():
        raise InvalidEndpoint(f"invalid host {name!r} in {redacted}")


class RegistryClient:
    """A connection to the repository of one reference; close it when done.

    ``endpoint`` serves the repository from elsewhere than the reference's
    registry, as a mirror does. ``read_timeout`` bounds the wait for each
    piece of a body, so a stalled source is left sooner. ``plain_http_first``
    tries plain http before https. By default a loopback registry is asked
    that way, since its traffic never leaves the machine. ``headers`` go with
    every request, as hosts.toml's ``header`` tables set.
    """

    def __init__(
        self,
        reference: Reference,
        settings: TransportSettings,
        credentials: CredentialStore,
        sleep: Callable[[float], None] = time.sleep,
        scopes: list[str] | None = None,
        endpoint: Endpoint | None = None,
        read_timeout: float | None = None,
        plain_http_first: bool | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.reference = reference
        self._sleep = sleep
        self.image = str(reference)
        self.endpoint = endpoint or Endpoint(reference.api_host)
        self.host = self.endpoint.host
        # Sent with every request, to this host and to its probes.
        self.headers = dict(headers or {})
        self._settings = settings
        scopes = scopes or [f"repository:{reference.repository}:pull"]
        auth = RegistryAuth(credentials, scopes, self.image)
        self._http = settings.client(self.host, auth, headers)
        # httpx parses a redirect's Location before it returns the response,
        # even when it does not follow it, and lets InvalidURL escape.
        self._http.event_hooks["response"].append(_check_location)
        if read_timeout is not None:
            limits = self._http.timeout
            self._http.timeout = httpx.Timeout(
                connect=limits.connect, read=read_timeout, write=limits.write,
                pool=limits.pool,
            )  # fmt: skip
        if plain_http_first is None:
            plain_http_first = self.endpoint.scheme is None and is_loopback(self.host)
        self.plain_http_first = plain_http_first
        self._base_url: str | None = None
        # Where each blob's GET was last redirected, so later ranges of the
        # blob go there directly instead of paying the redirect again.
        self._locations: dict[Digest, str] = {}
        self._last_retry_warning: float | None = None

    def _path(self, tail: str) -> str:
        return f"{self.endpoint.api_root}/{self.reference.repository}/{tail}"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def head_manifest(self, lookup: str) -> Digest | None:
        """Return the digest a tag points to, or None when HEAD cannot tell.

        Registries that reject HEAD or omit ``Docker-Content-Digest`` are
        asked again with GET by the caller.
        """
        path = self._path(f"manifests/{lookup}")
        headers = {"Accept": ", ".join(ACCEPTED_TYPES)}
        subject = f"manifest of {self.image}"
        try:
            with self._stream("HEAD", path, headers, subject) as response:
                status = response.status_code
                header = response.headers.get("Docker-Content-Digest", "")
        except _RETRYABLE as error:
            raise transport_error(error, self.host, subject) from None
        if status != 200:
            log.debug("HEAD %s returned %s, falling back to GET", path, status)
        return Digest.parse_or_none(header) if status == 200 else None

    def get_manifest(self, lookup: str, expected: Digest | None) -> FetchedManifest:
        """GET a manifest or index by tag or digest and verify it."""
        path = self._path(f"manifests/{lookup}")
        headers = {"Accept": ", ".join(ACCEPTED_TYPES), **IDENTITY}
        subject = f"manifest {lookup} of {self.image}"
        try:
            with self._stream("GET", path, headers, subject) as response:
                if response.status_code != 200:
                    raise status_error(response, subject)
                body = _read_bounded(
                    response, MAX_MANIFEST_BYTES, subject, MANIFEST_READ_SECONDS
                )
                content_type = response.headers.get("Content-Type", "")
                header = response.headers.get("Docker-Content-Digest", "")
        except _RETRYABLE as error:
            raise transport_error(error, self.host, subject) from None
        media_type = content_type.split(";")[0].strip()

        digest = expected or Digest.parse_or_none(header) or Digest.of(body)
        verify_bytes(body, digest, subject, self.host)
        return FetchedManifest(body, media_type, digest)

    def get_blob_bytes(self, descriptor: Descriptor, limit: int, subject: str) -> bytes:
        """Download a small blob (a config) into memory, verified."""
        if descriptor.size > limit:
            raise InvalidResponse(f"{subject} is {descriptor.size} bytes, over {limit}")
        parts: list[bytes] = []
        self.fetch_blob(descriptor, parts.append, subject)
        return b"".join(parts)

    def fetch_blob(
        self,
        descriptor: Descriptor,
        write: Callable[[bytes], None],
        subject: str,
        verifier: DigestVerifier | None = None,
        failover: bool = False,
        stopped: Callable[[], bool] | None = None,
    ) -> None:
        """Stream a blob into ``write``, resuming after dropped connections.

        Each byte reaches ``write`` once, in order, before the digest can be
        checked, so the caller keeps what it wrote provisional until this
        returns. A transfer that stops making progress, or trickles below
        the least speed of ``pace.paced``, is retried with growing pauses,
        ``MAX_STALLED_ATTEMPTS`` times in a row at most, or
        ``MAX_SILENT_ATTEMPTS`` times when each of them timed out.
        A ``verifier`` that already hashed the blob's first bytes (kept from
        an earlier, interrupted pull) makes the download start after them.
        With ``failover``, the first failed transfer raises TruncatedBody at
        once, so the caller can go on at another source after the bytes
        received. When ``stopped()`` turns true, RangeFetchStopped is raised
        instead of another attempt.
        """
        if verifier is None:
            verifier = DigestVerifier(
                descriptor.digest, subject, self.host, descriptor.size
            )
        use_range = True
        retries = _Retries()
        initial = verifier.bytes_read
        for attempt in range(1, MAX_ATTEMPTS + 1):
            if stopped is not None and stopped():
                raise RangeFetchStopped()
            before = verifier.bytes_read
            slow = timed_out = False
            busy: ServerError | None = None
            try:
                self._fetch_from(descriptor, verifier, write, subject, use_range)
                if verifier.bytes_read >= descriptor.size:
                    break
                failure = "the body ended early"
            except _RangeRejected:
                use_range = False
                continue
            except _RETRYABLE as error:
                slow = isinstance(error, SlowBody)
                timed_out = isinstance(error, httpx.TimeoutException)
                failure = self._describe(error)
            except (RegistryUnreachable, *_BUSY) as error:
                # A registry that cannot be reached, or fails, before this
                # call received any byte is down, not a dropped transfer.
                if verifier.bytes_read == initial:
                    raise
                busy = error if isinstance(error, _BUSY) else None
                failure = error.message

            # A trickle given up as too slow made no progress worth waiting for.
            progressed = verifier.bytes_read > before and not slow
            retries.record(progressed, timed_out)
            where = f"at byte {verifier.bytes_read} of {descriptor.size}"
            if failover or retries.exhausted or attempt == MAX_ATTEMPTS:
                if busy is not None:
                    raise busy
                raise self._transfer_error(subject, retries, attempt, where, failure)
            pause = _pause_for(retries, busy)
            self._retry_later(subject, attempt, where, failure, pause, timed_out)
        verifier.verify()

    def fetch_range(
        self,
        descriptor: Descriptor,
        start: int,
        end: int,
        write: Callable[[int, bytes], None],
        subject: str,
        stopped: Callable[[], bool] | None = None,
        failover: bool = False,
    ) -> None:
        """Fetch bytes ``start`` to ``end`` (exclusive) of a blob with one Range.

        ``write`` receives each piece with its offset in the blob; after a
        dropped connection the request resumes after the last byte written,
        ``MAX_ATTEMPTS`` attempts at most, as for whole blobs.
        A server that responds with the whole blob (200), rejects the range
        (416) or sends a 206 that is not the requested bytes of this blob
        (see ``_range_problem``) does not honour ranges for it: the body is
        not read and RangesUnsupported is raised. When ``stopped()`` turns
        true the fetch ends with RangeFetchStopped. With ``failover``, the
        first failed transfer raises TruncatedBody at once.
        """
        position = [start]

        def track(offset: int, data: bytes) -> None:
            if stopped is not None and stopped():
                raise RangeFetchStopped()
            write(offset, data)
            position[0] = offset + len(data)

        retries = _Retries()
        attempt = 0
        while position[0] < end:
            if stopped is not None and stopped():
                raise RangeFetchStopped()
            attempt += 1
            before = position[0]
            slow = timed_out = False
            busy: ServerError | None = None
            try:
                self._read_range(descriptor, position[0], end, track, subject)
                failure = "the body ended early"
            except _RETRYABLE as error:
                slow = isinstance(error, SlowBody)
                timed_out = isinstance(error, httpx.TimeoutException)
                failure = self._describe(error)
            except (RegistryUnreachable, *_BUSY) as error:
                # Before the range's first byte this means the server is down.
                # After it, a refused reconnect is retried, as for whole blobs.
                if failover or position[0] == start:
                    raise
                busy = error if isinstance(error, _BUSY) else None
                failure = error.message
            if position[0] >= end:
                return
            retries.record(position[0] > before and not slow, timed_out)
            where = f"at byte {position[0]} of range {start}-{end - 1}"
            # Each attempt of a server that drops every connection after a
            # few bytes makes progress, so only a count of attempts ends it.
            if failover or retries.exhausted or attempt >= MAX_ATTEMPTS:
                if busy is not None:
                    raise busy
                raise self._transfer_error(subject, retries, attempt, where, failure)
            pause = _pause_for(retries, busy)
            self._retry_later(subject, attempt, where, failure, pause, timed_out)

    def _describe(self, error: httpx.HTTPError) -> str:
        """Say why a read failed; a plain read timeout gets its length in seconds."""
        read_timeout = self._http.timeout.read
        if type(error) is httpx.ReadTimeout and read_timeout is not None:
            return f"no data for {read_timeout:g} s"
        return str(error) or type(error).__name__

    def _transfer_error(
        self, subject: str, retries: _Retries, attempt: int, where: str, failure: str
    ) -> TruncatedBody:
        """Build the error for a body given up after ``attempt`` attempts."""
        if retries.all_timed_out:
            return TransferTimedOut(
                f"{subject} from {self.host}: the transfer timed out "
                f"{_times(retries.timed_out)}, last {where} ({failure})"
            )
        return TransferFailed(
            f"{subject} from {self.host}: the transfer failed {_times(attempt)}, "
            f"last {where} ({failure})"
        )

    def _retry_later(
        self,
        subject: str,
        attempt: int,
        where: str,
        failure: str,
        pause: float,
        timed_out: bool,
    ) -> None:
        """Report that attempt ``attempt`` stopped, then sleep ``pause`` seconds.

        A dropped connection after progress (no pause) is routine on long
        transfers, so only attempts without progress, and those that waited
        a whole read timeout, warn, at most once in ``QUIET_SECONDS``.
        """
        after = f" in {pause:g} s" if pause else ""
        log.log(
            logging.WARNING if (pause or timed_out) and self._may_warn() else logging.INFO,
            "%s from %s: attempt %d stopped %s (%s); trying again%s",
            subject, self.host, attempt, where, failure, after,
        )  # fmt: skip
        if pause:
            self._sleep(pause)

    def _may_warn(self) -> bool:
        """Tell whether a retry may warn: none did in the last ``QUIET_SECONDS``."""
        now = time.monotonic()
        last = self._last_retry_warning
        if last is not None and now - last < QUIET_SECONDS:
            return False
        self._last_retry_warning = now
        return True

    def _read_range(
        self,
        descriptor: Descriptor,
        start: int,
        end: int,
        write: Callable[[int, bytes], None],
        subject: str,
    ) -> None:
        headers = {**IDENTITY, "Range": f"bytes={start}-{end - 1}"}
        with self._stream_blob(descriptor.digest, headers, subject) as response:
            if response.status_code in (200, 416):
                # Neither body is read: a 200 is the whole blob, and
                # distribution's 416 announces more bytes than it sends.
                raise RangesUnsupported(
                    f"{subject}: {self.endpoint} responded {response.status_code} "
                    "to a range"
                )
            if response.status_code != 206:
                raise status_error(response, subject)
            problem = _range_problem(response, start, descriptor.size)
            if problem is not None:
                # The body is not the requested bytes, or does not say which
                # bytes it is. The server may still serve the whole blob.
                raise RangesUnsupported(
                    f"{subject}: {self.endpoint} responded to a range from byte "
                    f"{start} with {problem}"
                )
            # The bytes after the Content-Range's end are not labelled as any
            # part of the blob; a range that ends early is resumed after it.
            stop = min(end, _range_end(response))
            position = start
            # A body of exactly that length is read to its end, so httpx can
            # reuse the connection; a longer one is cut off.
            exact = response.headers.get("Content-Length") == str(stop - start)
            for piece in paced(response.iter_raw()):
                piece = piece[: stop - position]
                if piece:
                    write(position, piece)
                    position += len(piece)
                if position >= stop and not exact:
                    break

    def _fetch_from(
        self,
        descriptor: Descriptor,
        verifier: DigestVerifier,
        write: Callable[[bytes], None],
        subject: str,
        use_range: bool,
    ) -> None:
        offset = verifier.bytes_read
        if offset >= descriptor.size:
            return
        headers = dict(IDENTITY)
        if offset and use_range:
            headers["Range"] = f"bytes={offset}-"

        with self._stream_blob(descriptor.digest, headers, subject) as response:
            skip = _bytes_to_skip(response, offset, descriptor.size, subject)
            if response.status_code == 200:
                self._check_whole_length(response, descriptor, subject)
            for piece in paced(response.iter_raw()):
                if skip:
                    dropped = min(skip, len(piece))
                    piece, skip = piece[dropped:], skip - dropped
                if not piece:
                    continue
                if verifier.bytes_read + len(piece) > descriptor.size:
                    raise DigestMismatch(
                        f"{subject} from {self.host} is longer than its size of "
                        f"{descriptor.size} bytes"
                    )
                verifier.update(piece)
                write(piece)

    def _check_whole_length(
        self, response: httpx.Response, descriptor: Descriptor, subject: str
    ) -> None:
        """Reject a whole blob whose Content-Length is not the descriptor's size.

        Such a body (an HTML page from a proxy, or another blob) can never
        verify, so it is not read and not retried. It fails verification as
        a body of the wrong length does, so a mirror that sent it is dropped.
        """
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) != descriptor.size:
            raise DigestMismatch(
                f"{subject}: {self.host} sent {length} bytes for blob "
                f"{descriptor.digest} of size {descriptor.size}"
            )

    @contextmanager
    def _stream(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        subject: str,
        content: bytes | Iterable[bytes] | None = None,
        redirects: bool = True,
    ) -> Iterator[httpx.Response]:
        """Send a request and yield the streamed response, closed on exit.

        The first request tries the schemes ``Endpoint.base_urls`` lists, in
        order, and later requests use the one that worked. Read errors that a
        resume can mend are raised as they are; every other httpx error is
        translated.
        """
        try:
            response = self._send(method, path, headers, subject, content, redirects)
        except _InvalidLocation as error:
            raise invalid_redirect(error.location, error.host, subject) from None
        try:
            yield response
        except _RETRYABLE:
            raise
        except httpx.HTTPError as error:
            raise transport_error(error, self.host, subject) from None
        finally:
            response.close()

    @contextmanager
    def _stream_blob(
        self, digest: Digest, headers: dict[str, str], subject: str
    ) -> Iterator[httpx.Response]:
        """GET a blob, following redirects by hand to remember their target.

        A remembered target that no longer serves the blob (signed URLs
        expire) is forgotten, and the registry is asked again.
        """
        location = self._locations.get(digest)
        if location is not None:
            with contextlib.ExitStack() as stack:
                try:
                    response = stack.enter_context(
                        self._stream("GET", location, headers, subject, redirects=False)
                    )
                    problem = f"responded {response.status_code}"
                except (RegistryUnreachable, *_RETRYABLE) as error:
                    response, problem = None, f"failed ({error})"
                if response is not None and response.status_code in (200, 206, 416):
                    yield response
                    return
            log.debug("%s: %s %s, asking the registry again",
                      subject, location, problem)  # fmt: skip
            self._locations.pop(digest, None)
        url = self._path(f"blobs/{digest}")
        for _ in range(MAX_REDIRECTS + 1):
            with self._stream(
                "GET", url, headers, subject, redirects=False
            ) as response:
                target = response.headers.get("Location")
                if not (response.is_redirect and target):
                    if url != self._path(f"blobs/{digest}"):
                        self._locations[digest] = url
                    yield response
                    return
                next_url = response.url.join(target)
                if next_url.scheme not in ("http", "https"):
                    raise unsupported_redirect(
                        next_url, response.url.netloc.decode(), subject
                    )
                url = str(next_url)
                log.debug("%s: redirected to %s", subject, url)
        raise too_many_redirects(httpx.URL(url), self.host, subject, MAX_REDIRECTS)

    def _send(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        subject: str,
        content: bytes | Iterable[bytes] | None = None,
        redirects: bool = True,
    ) -> httpx.Response:
        candidates = [self._base_url] if self._base_url else self._base_urls()
        # A TLS port responds to plain HTTP with 400 (or drops it). When https
        # then fails too, the 400 was the registry's own response. An https
        # failure after the server spoke TLS, for example an untrusted
        # certificate, shows the port is a TLS port, so that failure is
        # reported instead.
        # A port that breaks off a plain-HTTP request and fails the TLS
        # handshake too speaks neither, so the plain-HTTP failure, which
        # shows what the port sent, is reported.
        plain_400: str | None = None
        tls_error: httpx.HTTPError | None = None
        plain_error: httpx.HTTPError | None = None
        for position, base_url in enumerate(candidates):
            last = position + 1 == len(candidates)
            try:
                response = self._send_to(
                    base_url, method, path, headers, content, redirects
                )
            except httpx.HTTPError as error:
                if len(candidates) > 1 and _server_spoke_tls(error):
                    tls_error = error
                if len(candidates) > 1 and _broke_plain_http(error, base_url):
                    plain_error = error
                if not last and _next_scheme_worth_trying(error, base_url):
                    log.debug("%s failed (%s), trying the next scheme", base_url, error)
                    continue
                if tls_error is not None:
                    raise transport_error(tls_error, self.host, subject) from None
                if plain_error is not None and (
                    error is plain_error or _failed_tls_handshake(error)
                ):
                    raise not_http_error(plain_error, self.host, subject) from None
                if plain_400 is None:
                    if isinstance(error, _RETRYABLE):
                        raise  # the caller may resume
                    raise transport_error(error, self.host, subject) from None
                base_url = plain_400
                try:
                    response = self._send_to(
                        base_url, method, path, headers, content, redirects
                    )
                except httpx.HTTPError as error:
                    raise transport_error(error, self.host, subject) from None
            else:
                if _wrong_scheme(response) and tls_error is not None:
                    response.close()
                    raise transport_error(tls_error, self.host, subject) from None
                if _wrong_scheme(response) and not last:
                    log.debug("%s responded 400, trying https", base_url)
                    response.close()
                    plain_400 = base_url
                    continue
            self._base_url = base_url
            return response
        raise AssertionError("no base URL to try")

    def _send_to(
        self,
        base_url: str,
        method: str,
        path: str,
        headers: dict[str, str],
        content: bytes | Iterable[bytes] | None,
        redirects: bool,
    ) -> httpx.Response:
        # Upload locations may be absolute URLs on another host.
        url = path if path.startswith(("https://", "http://")) else base_url + path
        request = self._http.build_request(
            method, url, headers=headers, content=content
        )
        if not url.startswith(base_url + "/"):
            # Only a header set on the client could be here: the auth flow
            # adds credentials per host, after that host asked for them.
            request.headers.pop("Authorization", None)
        return self._http.send(request, stream=True, follow_redirects=redirects)

    def _base_urls(self) -> list[str]:
        return self.endpoint.base_urls(self._settings, self.plain_http_first)

    @property
    def scheme(self) -> str | None:
        """The scheme the registry responded on, once a request went through."""
        return self._base_url.partition("://")[0] if self._base_url else None


@dataclass
class _Retries:
    """Counts of the attempts at one body that made no progress or timed out."""

    stalled: int = 0
    timed_out: int = 0

    def record(self, progressed: bool, timed_out: bool) -> None:
        self.stalled = 0 if progressed else self.stalled + 1
        self.timed_out = self.timed_out + 1 if timed_out else 0

    @property
    def exhausted(self) -> bool:
        silent = min(self.stalled, self.timed_out)
        return self.stalled >= MAX_STALLED_ATTEMPTS or silent >= MAX_SILENT_ATTEMPTS

    @property
    def all_timed_out(self) -> bool:
        """Whether the last attempt and every one since the last progress timed out."""
        return self.timed_out > 0 and self.timed_out >= self.stalled

    @property
    def pause(self) -> float:
        """Seconds before the next attempt: none after progress, then doubling."""
        return RETRY_PAUSE * 2 ** (self.stalled - 1) if self.stalled else 0.0


def _pause_for(retries: _Retries, busy: ServerError | None) -> float:
    """Return the seconds before the next attempt, at least a 5xx's Retry-After.

    The requested wait is capped, so a bad header cannot hold the pull for
    hours.
    """
    requested = busy.retry_after if busy is not None else None
    if requested is None:
        return retries.pause
    return max(retries.pause, min(requested, MAX_RETRY_AFTER))


def _times(count: int) -> str:
    return "once" if count == 1 else f"{count} times"


class RangesUnsupported(Exception):
    """The server does not serve ranges of this blob; its response was not read."""


class RangeFetchStopped(Exception):
    """Another part of the pull failed, so this range was abandoned."""


class _RangeRejected(Exception):
    """The server rejected a resume with 416, or responded to it with other bytes.

    The next try requests the whole blob.
    """


def _bytes_to_skip(
    response: httpx.Response, offset: int, size: int, subject: str
) -> int:
    """Return how many leading bytes of the body were already received.

    Raises _RangeRejected after a 416, or a 206 that is not the blob from
    ``offset`` on, and ApparateError for other failures.
    """
    status = response.status_code
    if status == 200:
        if offset:
            log.debug("%s: server ignored Range, skipping %d bytes", subject, offset)
        return offset
    if status == 206 and offset:
        problem = _range_problem(response, offset, size)
        if problem is not None:
            # Its body is not read; the whole blob, whose length is checked,
            # replaces it.
            log.info("%s: asked for bytes from %d, got %s; asking for the "
                     "whole blob", subject, offset, problem)  # fmt: skip
            raise _RangeRejected()
        return 0
    if status == 416 and offset:
        # Distribution's 416 announces the whole blob's length but sends a
        # short body: it is not read, and closing the response drops the
        # connection instead of waiting for bytes that never come.
        raise _RangeRejected()
    raise status_error(response, subject)


def _range_problem(response: httpx.Response, start: int, size: int) -> str | None:
    """Say why a 206 is not the bytes of a ``size``-byte blob from ``start`` on.

    Returns None for a single range that starts at ``start``, ends inside the
    blob and whose Content-Length, if any, is not longer than the range. A
    shorter body is resumed after its last byte. An encoded body of another
    length than its range contains other bytes, such as a gzip stream of the
    range. A range that goes on past the requested end is accepted: the
    caller cuts off the bytes after it.
    """
    content_range = response.headers.get("Content-Range", "")
    content_type = response.headers.get("Content-Type", "")
    if content_type.split(";")[0].strip().lower() == "multipart/byteranges":
        return f"a multipart body (Content-Range {content_range!r})"
    match = _CONTENT_RANGE.fullmatch(content_range.strip())
    if match is None or int(match[1]) != start:
        return f"Content-Range {content_range!r}"
    length = int(match[2]) - start + 1
    total = match[3]
    if length <= 0 or start + length > size or total not in ("*", str(size)):
        return f"Content-Range {content_range!r} for a blob of {size} bytes"
    declared = response.headers.get("Content-Length", "")
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    encoded = encoding not in ("", "identity")
    if declared.isdigit() and (
        int(declared) > length or (int(declared) != length and encoded)
    ):
        body = f"a {encoding} body" if encoded else "a body"
        return f"{body} of {declared} bytes for Content-Range {content_range!r}"
    return None


def _range_end(response: httpx.Response) -> int:
    """Return where the range of a 206 ``_range_problem`` accepted ends (exclusive)."""
    match = _CONTENT_RANGE.fullmatch(response.headers["Content-Range"].strip())
    assert match is not None
    return int(match[2]) + 1


def _read_bounded(
    response: httpx.Response,
    limit: int,
    subject: str,
    deadline: float,
) -> bytes:
    """Read a small body whole, up to ``limit`` bytes and ``deadline`` seconds.

    The read timeout applies to each read, so a server that sends a byte
    now and then would hold the pull forever without the deadline.
    """
    length = response.headers.get("Content-Length")
    if length and length.isdigit() and int(length) > limit:
        raise InvalidResponse(
            f"{subject} is {length} bytes, over the {limit}-byte limit"
        )
    started = time.monotonic()
    body = bytearray()
    for piece in paced(response.iter_raw()):
        body += piece
        if len(body) > limit:
            raise InvalidResponse(f"{subject} is over the {limit}-byte limit")
        if time.monotonic() - started > deadline:
            raise RegistryUnreachable(
                f"{subject}: timed out after {deadline:g} s with "
                f"{len(body)} bytes received from {response.url.netloc.decode()}",
                hint="the registry or the link is overloaded; try again later",
            )
    return bytes(body)


def _wrong_scheme(response: httpx.Response) -> bool:
    return response.status_code == 400 and response.url.scheme == "http"


def _next_scheme_worth_trying(error: httpx.HTTPError, base_url: str) -> bool:
    """Tell whether a failed first request means the next scheme is worth a try.

    Failures to connect or to agree on TLS do. A dropped connection does only
    on plain http, because a TLS port drops plain requests. On https it is a
    read error, which the caller resumes with the same scheme. A timeout is a
    slow server, not a wrong scheme. Other errors, such as a redirect loop,
    come after the server responded, so its scheme was right.
    """
    if isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout)):
        return True
    plain = base_url.startswith("http://")
    retryable = isinstance(error, _RETRYABLE)
    return plain and retryable and not isinstance(error, httpx.TimeoutException)


def _broke_plain_http(error: httpx.HTTPError, base_url: str) -> bool:
    """Tell whether a plain-HTTP request reached a server but got no valid response."""
    broken = isinstance(error, (httpx.RemoteProtocolError, httpx.ReadError))
    return base_url.startswith("http://") and broken


def _failed_tls_handshake(error: httpx.HTTPError) -> bool:
    """Tell whether an https request failed in a handshake the server did not speak."""
    if not isinstance(error, httpx.ConnectError) or _server_spoke_tls(error):
        return False
    return _ssl_reason(error) is not None


def _server_spoke_tls(error: httpx.HTTPError) -> bool:
    """Tell whether a request failed in TLS after the server responded in TLS.

    Only a certificate problem or a TLS alert from the server shows that,
    for example an untrusted certificate. A plain-HTTP port makes OpenSSL report
    WRONG_VERSION_NUMBER, or an unexpected EOF when the server just closes
    the connection, so those do not count.
    """
    if _caused_by(error, ssl.SSLCertVerificationError):
        return True
    reason = _ssl_reason(error)
    return reason is not None and ("CERTIFICATE" in reason or "ALERT" in reason)


def _ssl_reason(error: httpx.HTTPError) -> str | None:
    """Return OpenSSL's reason code for a failed request, or None when TLS did not fail.

    The reason is read from the ``ssl.SSLError`` that httpx chains, or else
    from the ``[SSL: REASON]`` it copies into its own message.
    """
    cause = _caused_by(error, ssl.SSLError)
    reason = getattr(cause, "reason", None)
    if reason is None:
        match = _SSL_REASON.search(str(error))
        reason = match.group(1) if match else None
    return reason


def _caused_by(error: BaseException, kind: type[BaseException]) -> BaseException | None:
    """Return the first exception of ``kind`` in the chain of ``error``, if any."""
    cause: BaseException | None = error
    seen: set[int] = set()
    # An exception object raised twice can be its own context, so the chain
    # may loop.
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, kind):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


class _InvalidLocation(Exception):
    """A redirect whose Location is not a URL that can be followed."""

    def __init__(self, location: str, host: str) -> None:
        super().__init__(location)
        self.location = location
        self.host = host


def _check_location(response: httpx.Response) -> None:
    """Raise _InvalidLocation for a redirect whose Location is not a valid URL.

    httpx 0.29 accepts some Locations that name no server, such as
    ``http://[bad``, whose bracket it escapes into the host name. Python's
    URL parser rejects those, and a port outside 0 to 65535. A valid URL
    of another scheme, such as ``file:``, is left to the caller to reject.
    """
    if not response.has_redirect_location:
        return
    location = response.headers["Location"]
    try:
        _ = urllib.parse.urlsplit(location).port
        target = httpx.URL(location)
        # As httpx does: an absolute Location without a host keeps the
        # request's host, which fails for one like "sha256:abc".
        if target.scheme and not target.host:
            target.copy_with(host=response.url.host)
    except (httpx.InvalidURL, ValueError):
        raise _InvalidLocation(location, response.url.netloc.decode()) from None
