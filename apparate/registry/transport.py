"""HTTP settings for one registry: TLS trust, plain HTTP rules, timeouts."""

from __future__ import annotations

import logging
import os
import ssl
import sys
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx

from apparate.errors import InsecureRedirect, UsageError
from apparate.reference import is_loopback

log = logging.getLogger(__name__)

# Docker and podman read a registry's extra CA certificates from
# <dir>/<host[:port]>/*.crt; apparate reads the same folders.
DEFAULT_CERTS_DIRS = ("/etc/docker/certs.d", "/etc/containers/certs.d")
USER_AGENT = "apparate/0.1"


def certs_dirs_of(env: Mapping[str, str] = os.environ) -> tuple[str, ...]:
    """Return the folders of ``HOST/*.crt`` CA files: ``APPARATE_CERTS_D``, else docker's."""
    if env.get("APPARATE_CERTS_D"):
        return tuple(env["APPARATE_CERTS_D"].split(os.pathsep))
    return DEFAULT_CERTS_DIRS


def _insecure_host(entry: str) -> str:
    """Read an insecure registry as docker's daemon does: a host, or an http(s) URL's.

    Raises UsageError for another scheme or a path, which no host matches.
    """
    scheme, separator, rest = entry.partition("://")
    host = entry
    if separator:
        if scheme.lower() not in ("http", "https"):
            raise _invalid_insecure(entry)
        host = rest.rstrip("/")
        log.warning("insecure registry %s: using its host %s", entry, host)
    if not host or "/" in host:
        raise _invalid_insecure(entry)
    return host


def _invalid_insecure(entry: str) -> UsageError:
    return UsageError(
        f"insecure registry {entry!r} must be a host such as registry.example:5000",
        hint="leave out the path, and any scheme other than http:// or https://",
    )


@dataclass(frozen=True)
class TransportSettings:
    """How to reach registries: trusted CAs, which hosts may use plain HTTP."""

    insecure_registries: frozenset[str] = frozenset()
    certs_dirs: tuple[str, ...] = DEFAULT_CERTS_DIRS
    timeout: httpx.Timeout = field(
        default_factory=lambda: httpx.Timeout(30.0, read=60.0)
    )
    max_connections: int = 16
    # (host, CA file) pairs and hosts whose certificate is not checked, both
    # from containerd's hosts.toml.
    extra_ca_files: tuple[tuple[str, str], ...] = ()
    skip_verify: frozenset[str] = frozenset()
    # Also from hosts.toml: (host, certificate file, key file) client
    # certificates, where an empty key file means the key is in the
    # certificate file, and (host, seconds) connect timeouts, 0 for none.
    # Where a host is listed more than once, its first entry counts.
    client_certs: tuple[tuple[str, str, str], ...] = ()
    connect_timeouts: tuple[tuple[str, float], ...] = ()

    @classmethod
    def from_environment(
        cls,
        insecure_registries: Iterable[str] = (),
        env: Mapping[str, str] = os.environ,
    ) -> TransportSettings:
        """Read ``APPARATE_CERTS_D`` and ``APPARATE_INSECURE_REGISTRIES``."""
        listed = [*insecure_registries]
        listed += env.get("APPARATE_INSECURE_REGISTRIES", "").split(",")
        insecure = {_insecure_host(entry.strip()) for entry in listed if entry.strip()}
        return cls(frozenset(insecure), certs_dirs_of(env))

    def allows_plain_http(self, host: str) -> bool:
        """Plain HTTP is allowed for loopback and hosts the user marked insecure."""
        return is_loopback(host) or host in self.insecure_registries

    def ssl_context(self, host: str) -> ssl.SSLContext:
        """Build a TLS context: the system's trust store plus the CA files of ``host``.

        The same context serves a token realm on another host, so a realm
        whose certificate is signed by the registry's CA is trusted too.
        """
        context = _TrustLoadedOnUse()
        if host in self.skip_verify:
            log.debug("not checking the certificate of %s (skip_verify)", host)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        for ca_file in self.ca_files(host):
            log.debug("trusting CA file %s for %s", ca_file, host)
            try:
                context.load_verify_locations(cafile=str(ca_file))
            except (ssl.SSLError, OSError) as error:
                raise UsageError(
                    f"cannot load the CA certificate {ca_file} for {host}: {error}",
                    hint="replace it with a PEM certificate or remove it",
                ) from None
        for name, certificate, key in self.client_certs:
            if name == host:
                _load_client_cert(context, host, certificate, key)
                break
        return context

    def timeout_for(self, host: str) -> httpx.Timeout:
        """Return the timeouts for ``host``: its own connect timeout, if it has one."""
        connect = [seconds for name, seconds in self.connect_timeouts if name == host]
        if not connect:
            return self.timeout
        return httpx.Timeout(
            connect=connect[0] or None, read=self.timeout.read,
            write=self.timeout.write, pool=self.timeout.pool,
        )  # fmt: skip

    def _check_scheme(self, request: httpx.Request) -> None:
        """Reject plain HTTP to a host not allowed it, redirect targets included.

        httpx runs request hooks on every redirect hop, so a registry cannot
        send layer bytes over an unencrypted link by redirecting.
        """
        host = request.url.netloc.decode()
        if request.url.scheme == "http" and not self.allows_plain_http(host):
            raise InsecureRedirect(
                f"refusing plain HTTP to {host} ({request.url.copy_with(query=None)})",
                hint=f"pass --insecure-registry {host} if that host is trusted",
            )

    def ca_files(self, host: str) -> list[Path]:
        found = [Path(path) for name, path in self.extra_ca_files if name == host]
        for certs_dir in self.certs_dirs:
            host_dir = Path(certs_dir) / host
            if host_dir.is_dir():
                found.extend(sorted(host_dir.glob("*.crt")))
        return found

    def client(
        self,
        host: str,
        auth: httpx.Auth | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Client:
        """Build an HTTP/2-capable client for one registry host.

        ``headers`` are sent with every request, redirects included; those
        a request sets itself (``Accept``, ``Range``) take precedence.
        """
        limits = httpx.Limits(
            max_connections=self.max_connections,
            max_keepalive_connections=self.max_connections,
        )
        # HTTP/2 needs TLS with ALPN; the h2 package is only imported where
        # it can be used, since hosts allowed plain HTTP are usually local.
        return httpx.Client(
            event_hooks={"request": [self._check_scheme]},
            http2=not self.allows_plain_http(host),
            verify=self.ssl_context(host),
            timeout=self.timeout_for(host),
            limits=limits,
            auth=auth,
            follow_redirects=True,
            headers={"User-Agent": USER_AGENT, **(headers or {})},
        )


def _load_client_cert(
    context: ssl.SSLContext, host: str, certificate: str, key: str
) -> None:
    """Load the client certificate that ``context`` sends when a server requests one.

    The context serves every connection of ``host``'s client, so a token
    realm or redirect target that requests one receives the certificate
    too, as with containerd's per-host client. An encrypted key raises UsageError at
    once, because OpenSSL would otherwise prompt on the terminal for its
    password.
    """
    files = f"{certificate} (key {key})" if key else certificate
    log.debug("presenting the client certificate %s to %s", files, host)
    try:
        context.load_cert_chain(certificate, key or None, password=_no_password)
    except _EncryptedKey:
        raise UsageError(
            f"the client certificate key {key or certificate} for {host} is encrypted",
            hint="give apparate an unencrypted PEM key, as containerd needs too",
        ) from None
    except (ssl.SSLError, OSError) as error:
        raise UsageError(
            f"cannot load the client certificate {files} for {host}: {error}",
            hint="give a PEM certificate and its PEM key, in one file or as "
            "[certificate, key]",
        ) from None


class _EncryptedKey(Exception):
    """OpenSSL requested the password of an encrypted client certificate key."""


def _no_password() -> bytes:
    raise _EncryptedKey()


class _TrustLoadedOnUse(ssl.SSLContext):
    """A TLS client context that loads the system's trust store at its first use.

    Loading it took 18 ms on a 2-core machine, which a pull from a
    plain-HTTP registry never needs. Otherwise it is set up as
    ``ssl.create_default_context()`` sets up a client context.
    """

    def __new__(cls) -> Self:
        return super().__new__(cls, ssl.PROTOCOL_TLS_CLIENT)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded = False
        # The rest of what create_default_context() sets up. Python 3.13 added
        # the two stricter verify flags (CPython issue 107361).
        keylog = os.environ.get("SSLKEYLOGFILE")
        if keylog and not sys.flags.ignore_environment:
            self.keylog_filename = keylog
        if sys.version_info >= (3, 13):
            self.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN | ssl.VERIFY_X509_STRICT

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        self._load_system_trust()
        return super().wrap_socket(*args, **kwargs)

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        self._load_system_trust()
        return super().wrap_bio(*args, **kwargs)

    def _load_system_trust(self) -> None:
        with self._lock:
            if not self._loaded:
                self.load_default_certs()
                self._loaded = True
