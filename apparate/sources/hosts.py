"""Read containerd's ``hosts.toml`` mirror files.

containerd looks for ``<dir>/<registry>/hosts.toml`` (``host_port_`` first
for a registry with a port), with ``_default`` as a fallback folder, and
tries the ``[host."URL"]`` entries in file order before the registry itself.
An entry serves content when its capabilities include ``pull``, and resolves
tags when they include ``resolve``; without a ``capabilities`` key
containerd allows both.

These keys apply to the host of an entry, or at the file's top level to the
registry itself:

- ``ca``: CA files to trust, one path or a list.
- ``client``: client certificates for mutual TLS. The value is one PEM file
  holding the certificate and its unencrypted key, a list of such files, or
  a list of ``[certificate, key]`` pairs, where an empty key path means the
  key is in the certificate file. Python's ssl module cannot pick among
  several certificates by the CAs a server accepts, as Go does, so apparate
  presents the first and warns about the rest.
- ``skip_verify``: do not check the host's certificate.
- ``header``: a table of headers sent with every request to the host.
- ``dial_timeout``: a Go duration such as ``"500ms"`` or ``"1m30s"`` that
  bounds connecting to the host. In apparate it bounds the TLS handshake
  too, as httpx's connect timeout does, and ``"0"`` means no limit.

Relative paths start at the file's folder, as containerd reads them.

The top-level ``server`` is where the registry itself is reached, after the
entries, in place of ``https://<registry>`` (``registry-1.docker.io`` for
docker.io). Without a scheme it is https. Its path, if any, is a prefix
before ``/v2``, or the API root itself with a top-level ``override_path``,
as in containerd. Tags resolve there, since it is the registry, but the
image keeps the name the reference gives it. Credentials from Docker's
config are looked up under the server's host, as containerd does, and
``--username`` credentials, given for the image's registry, go to the
server too.

A ``server`` with a query, fragment or user name, or with a scheme other
than http and https, is rejected, because containerd would drop those parts
or fail at the first request.

A ``proxy`` key, and top-level ``capabilities`` that leave out ``pull`` or
``resolve``, are not applied, and a warning names them: apparate always
pulls and resolves tags at the registry itself.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apparate.config import Mirror
from apparate.errors import UsageError
from apparate.registry.client import Endpoint, InvalidEndpoint
from apparate.registry.transport import certs_dirs_of

log = logging.getLogger(__name__)

DEFAULT_HOSTS_DIR = "/etc/containerd/certs.d"
DEFAULT_CAPABILITIES = ("pull", "resolve")
KNOWN_CAPABILITIES = ("pull", "resolve", "push")
# Keys that apparate does not apply at either level. A warning lists them.
_IGNORED_KEYS = ("proxy",)
# Top-level keys that set how the registry itself is reached.
_ORIGIN_KEYS = (
    "server", "override_path", "ca", "client", "skip_verify", "header",
    "dial_timeout",
)  # fmt: skip
# Units of Go's time.ParseDuration, in seconds.
_DURATION_UNITS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3,
    "s": 1.0, "m": 60.0, "h": 3600.0,
}  # fmt: skip
_DURATION_PART = re.compile(r"([0-9]+\.?[0-9]*|\.[0-9]+)([^0-9.]*)", re.ASCII)
# Go's durations are int64 nanoseconds.
_MAX_DURATION_SECONDS = (2**63 - 1) / 1e9
# A connection attempt waits at most a day, whatever hosts.toml sets.
MAX_DIAL_SECONDS = 86400.0
# RFC 9110's token characters, and a value of printable ASCII, spaces and tabs.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")


@dataclass(frozen=True)
class HostsFile:
    """The settings of one ``hosts.toml``: its mirrors and the registry's own."""

    mirrors: tuple[Mirror, ...] = ()
    # The top-level settings, or None when the file has none. The url is
    # the server's, or empty when the file has no server key, so that the
    # registry is reached where the reference names it.
    origin: Mirror | None = None
    # The file's path, or empty when no hosts.toml applies.
    path: str = ""


def hosts_dir(env: Mapping[str, str] = os.environ) -> Path:
    """``APPARATE_HOSTS_DIR``, else containerd's usual ``/etc/containerd/certs.d``."""
    return Path(env.get("APPARATE_HOSTS_DIR") or DEFAULT_HOSTS_DIR)


def read_hosts(registry: str, directory: Path | None = None) -> HostsFile:
    """Read the ``hosts.toml`` that applies to ``registry``, if there is one."""
    directory = directory or hosts_dir()
    # containerd stops at the first folder that exists, hosts.toml or not.
    folder = next(
        (name for name in _folders(registry) if (directory / name).is_dir()), None
    )
    if folder is None:
        return HostsFile()
    path = directory / folder / "hosts.toml"
    try:
        # TOML files are UTF-8 regardless of the locale's encoding.
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if any(path.parent.glob("*.crt")):
            log.warning(
                "%s: certificate files without hosts.toml are not read by "
                "apparate; put them in %s/%s/",
                path.parent, certs_dirs_of()[0], registry,
            )  # fmt: skip
        return HostsFile()
    except OSError as error:
        log.warning("%s: not read: %s", path, error.strerror)
        return HostsFile()
    except UnicodeDecodeError as error:
        raise _invalid(
            f"{path}: not UTF-8 text: invalid byte at offset {error.start}"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise _invalid(f"{path}: invalid TOML: {error}") from None
    hosts = parse_hosts(data, str(path), path.parent)
    return dataclasses.replace(hosts, path=str(path))


def _folders(registry: str) -> list[str]:
    """Return the folders containerd looks in, in its order.

    A registry with a port is looked up as ``host_port_`` first, since
    ``:`` is awkward in file names, then as ``host:port``.
    """
    host, colon, port = registry.rpartition(":")
    folders = [f"{host}_{port}_"] if colon and host and "]" not in port else []
    return [*folders, registry, "_default"]


def parse_hosts(
    data: Mapping[str, Any], where: str, folder: Path | None = None
) -> HostsFile:
    """Read one ``hosts.toml``: its ``host`` tables and its top-level settings.

    ``where`` names the file in errors. Relative paths are read from
    ``folder``, the file's own.
    """
    hosts = data.get("host", {})
    if not isinstance(hosts, dict):
        raise _invalid(f"{where}: host must be a table")
    mirrors = []
    for url, settings in hosts.items():
        if not isinstance(settings, dict):
            raise _invalid(f"{where}: host.{url!r} must be a table")
        mirror = _parse_mirror(url, settings, where, folder)
        if mirror is not None:
            mirrors.append(mirror)
    return HostsFile(tuple(mirrors), _parse_origin(data, where, folder))


def _parse_mirror(
    url: str, settings: Mapping[str, Any], where: str, folder: Path | None
) -> Mirror | None:
    """Read one ``host`` table, or return None when it does not serve pulls.

    The URL is checked first, so that no message or log line shows a key
    that contains credentials.
    """
    if "://" not in url:
        url = f"https://{url}"
    try:
        Endpoint.parse(url)
    except InvalidEndpoint as error:
        raise _invalid(f"{where}: invalid host entry: {error}", error.hint) from None
    capabilities = _capabilities(settings, f"{where}: host.{url!r}")
    if "pull" not in capabilities:
        return None
    ignored = _ignored_keys(settings)
    if ignored:
        log.warning("%s: %s of %s not applied by apparate", where, ignored, url)
    subject = f"{where}: host.{url!r}"
    return Mirror(
        url.rstrip("/"),
        resolve="resolve" in capabilities,
        override_path=_flag(settings, "override_path", subject),
        **_host_settings(settings, subject, folder),
    )


def _parse_origin(
    data: Mapping[str, Any], where: str, folder: Path | None
) -> Mirror | None:
    """Read the top-level keys, which apply to the registry itself."""
    ignored = _ignored_keys(data)
    if ignored:
        log.warning("%s: top-level %s not applied by apparate", where, ignored)
    capabilities = _capabilities(data, where)
    if not {"pull", "resolve"} <= set(capabilities):
        log.warning(
            "%s: top-level capabilities %s not applied by apparate, which "
            "always pulls and resolves tags at the registry itself",
            where, list(capabilities),
        )  # fmt: skip
    if not any(key in data for key in _ORIGIN_KEYS):
        return None
    override_path = _flag(data, "override_path", where)
    server = data.get("server")
    return Mirror(
        "" if server is None else _server_url(server, override_path, where),
        resolve=True,
        override_path=override_path,
        **_host_settings(data, where, folder),
    )


def _capabilities(settings: Mapping[str, Any], subject: str) -> list[str]:
    """Read ``capabilities`` in lower case, rejecting unknown ones as containerd does."""
    value = settings.get("capabilities", list(DEFAULT_CAPABILITIES))
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _invalid(f'{subject}: capabilities must be a list such as ["pull"]')
    capabilities = [capability.lower() for capability in value]
    unknown = [c for c in capabilities if c not in KNOWN_CAPABILITIES]
    if unknown:
        raise _invalid(
            f"{subject}: unknown capability {unknown[0]!r}",
            hint=f"use one or more of {', '.join(KNOWN_CAPABILITIES)}",
        )
    return capabilities


def _ignored_keys(settings: Mapping[str, Any]) -> str:
    return ", ".join(key for key in _IGNORED_KEYS if key in settings)


def _host_settings(
    settings: Mapping[str, Any], subject: str, folder: Path | None
) -> dict[str, Any]:
    """Read the TLS, header and timeout keys that an entry and the top level share."""
    return {
        "ca_files": _ca_files(settings.get("ca", ()), folder, subject),
        "skip_verify": _flag(settings, "skip_verify", subject),
        "headers": _headers(settings.get("header", {}), subject),
        "client_certs": _client_certs(settings.get("client", ()), folder, subject),
        "dial_timeout": _dial_timeout(settings.get("dial_timeout", ""), subject),
    }


def _server_url(value: Any, override_path: bool, where: str) -> str:
    """Read ``server``, a base URL whose scheme is https when it has none."""
    if not isinstance(value, str) or not value.strip("/ "):
        raise _invalid(f'{where}: server must be a URL such as "https://host:5000"')
    url = value if "://" in value else f"https://{value}"
    try:
        Endpoint.parse(url, override_path)
    except InvalidEndpoint as error:
        raise _invalid(f"{where}: server is invalid: {error}", error.hint) from None
    return url.rstrip("/")


def _ca_files(value: Any, folder: Path | None, subject: str) -> tuple[str, ...]:
    """Read ``ca``: one path or a list of paths."""
    paths = [value] if isinstance(value, str) else value
    if not isinstance(paths, list | tuple) or not all(
        isinstance(path, str) for path in paths
    ):
        raise _invalid(f"{subject}: ca must be a path or a list of paths")
    return tuple(_in_folder(path, folder) for path in paths)


def _client_certs(
    value: Any, folder: Path | None, subject: str
) -> tuple[tuple[str, str], ...]:
    """Read ``client``: a file, a list of files, or a list of [cert, key] pairs.

    Return (certificate, key) pairs, where an empty key means the key is in
    the certificate file.
    """
    entries = [value] if isinstance(value, str) else value
    if not isinstance(entries, list | tuple):
        raise _invalid(
            f"{subject}: client must be a path, a list of paths or a list of "
            "[certificate, key] pairs"
        )
    pairs = []
    for entry in entries:
        if isinstance(entry, str) and entry:
            pairs.append((_in_folder(entry, folder), ""))
        elif _is_path_pair(entry):
            certificate, key = entry
            key = _in_folder(key, folder) if key else ""
            pairs.append((_in_folder(certificate, folder), key))
        else:
            raise _invalid(
                f"{subject}: client entry {entry!r} must be a path or a "
                "[certificate, key] pair of paths"
            )
    if len(pairs) > 1:
        log.warning(
            "%s: client lists %d certificates, but apparate presents only the "
            "first, %s", subject, len(pairs), pairs[0][0],
        )  # fmt: skip
    return tuple(pairs)


def _is_path_pair(entry: Any) -> bool:
    return (
        isinstance(entry, list)
        and len(entry) == 2
        and all(isinstance(path, str) for path in entry)
        and bool(entry[0])
    )


def _in_folder(path: str, folder: Path | None) -> str:
    """Resolve a relative path against the hosts.toml folder, as containerd does."""
    return str(folder / path) if folder and not Path(path).is_absolute() else path


def _flag(settings: Mapping[str, Any], key: str, subject: str) -> bool:
    value = settings.get(key, False)
    if not isinstance(value, bool):
        raise _invalid(f"{subject}: {key} must be true or false")
    return value


def _headers(value: Any, subject: str) -> tuple[tuple[str, str], ...]:
    """Read a ``header`` table: each name to one value or a list of values."""
    if not isinstance(value, dict):
        raise _invalid(f"{subject}: header must be a table")
    headers = []
    for name, values in value.items():
        values = [values] if isinstance(values, str) else values
        if not isinstance(values, list) or not all(
            isinstance(item, str) for item in values
        ):
            raise _invalid(f"{subject}: header {name!r} must be text or a list")
        # HTTP joins repeated header fields with commas.
        joined = ", ".join(values)
        if not _HEADER_NAME.fullmatch(name):
            raise _invalid(f"{subject}: {name!r} is not a valid header name")
        if not _HEADER_VALUE.fullmatch(joined):
            raise _invalid(
                f"{subject}: header {name!r} has a value with characters other "
                "than printable ASCII"
            )
        headers.append((name, joined))
    return tuple(headers)


def _dial_timeout(value: Any, subject: str) -> float | None:
    """Read ``dial_timeout`` in seconds. An empty string leaves the default."""
    if not isinstance(value, str):
        raise _invalid(f'{subject}: dial_timeout must be a string such as "3s"')
    if not value:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError as error:
        raise _invalid(
            f"{subject}: dial_timeout {value!r} is invalid: {error}",
            hint='write it as a Go duration such as "500ms", "3s" or "1m30s"',
        ) from None
    # Python's sockets cannot wait as long as Go's durations reach.
    return min(seconds, MAX_DIAL_SECONDS)


def parse_duration(text: str) -> float:
    """Read a Go duration such as ``500ms``, ``3s`` or ``1m30s``, in seconds.

    The syntax is that of Go's ``time.ParseDuration``: numbers, each with a
    unit of ns, us (or µs), ms, s, m or h, and a bare ``0``. A negative
    duration raises ValueError, since no timeout can be negative.
    """
    body = text.removeprefix("+")
    if body.startswith("-"):
        raise ValueError("a timeout cannot be negative")
    if body == "0":
        return 0.0
    if not body:
        raise ValueError("no number")
    seconds = 0.0
    position = 0
    while position < len(body):
        part = _DURATION_PART.match(body, position)
        if part is None:
            raise ValueError(f"no number before {body[position:]!r}")
        number, unit = part.groups()
        if not unit:
            raise ValueError(f"no unit after {number}")
        if unit not in _DURATION_UNITS:
            raise ValueError(f"unknown unit {unit!r}")
        seconds += float(number) * _DURATION_UNITS[unit]
        position = part.end()
    if seconds > _MAX_DURATION_SECONDS:
        raise ValueError("over Go's largest duration, about 2562047h")
    return seconds


def _invalid(message: str, hint: str = "fix or remove the file") -> UsageError:
    return UsageError(message, hint=hint)
