"""Read containerd's ``hosts.toml`` mirror files.

containerd looks for ``<dir>/<registry>/hosts.toml`` (``host_port_`` first
for a registry with a port), with ``_default`` as a fallback folder, and
tries the ``[host."URL"]`` entries in file order before the registry itself. An entry serves content when its capabilities include
``pull``, and resolves tags when they include ``resolve``; without a
``capabilities`` key containerd allows both. An entry's ``ca`` files
(relative paths start at the file's folder), ``skip_verify`` and ``header``
table apply to that host.
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from apparate.config import Mirror
from apparate.errors import UsageError

log = logging.getLogger(__name__)

DEFAULT_HOSTS_DIR = "/etc/containerd/certs.d"
DEFAULT_CAPABILITIES = ("pull", "resolve")
# Keys of a host entry that apparate does not apply; a warning lists them.
_IGNORED_KEYS = ("client", "dial_timeout")
# Keys applied to host entries, though not at the file's top level.
_TLS_KEYS = ("ca", "skip_verify", "header")


def hosts_dir(env: Mapping[str, str] = os.environ) -> Path:
    """``APPARATE_HOSTS_DIR``, else containerd's usual ``/etc/containerd/certs.d``."""
    return Path(env.get("APPARATE_HOSTS_DIR") or DEFAULT_HOSTS_DIR)


def read_hosts_mirrors(registry: str, directory: Path | None = None) -> list[Mirror]:
    """Return the mirrors that ``hosts.toml`` lists for ``registry``, in order."""
    directory = directory or hosts_dir()
    # containerd stops at the first folder that exists, hosts.toml or not.
    found = [folder for folder in _folders(registry) if (directory / folder).is_dir()]
    for folder in found[:1]:
        path = directory / folder / "hosts.toml"
        try:
            text = path.read_text()
        except FileNotFoundError:
            if any((directory / folder).glob("*.crt")):
                log.warning(
                    "%s: certificate files without hosts.toml are not read by "
                    "apparate; put them in /etc/docker/certs.d/%s/",
                    directory / folder, registry,
                )  # fmt: skip
            return []
        except OSError as error:
            log.warning("%s: not read: %s", path, error.strerror)
            return []
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise UsageError(
                f"{path}: invalid TOML: {error}", hint="fix or remove the file"
            ) from None
        return parse_hosts(data, str(path), path.parent)
    return []


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
) -> list[Mirror]:
    """Turn the ``host`` tables of one ``hosts.toml`` into mirrors.

    Relative ``ca`` paths are read from ``folder``, the file's own.
    """
    top_level = [key for key in ("server", *_TLS_KEYS, *_IGNORED_KEYS) if key in data]
    if top_level:
        log.warning(
            "%s: top-level %s not applied by apparate; the registry itself is "
            "reached as the image reference names it", where, ", ".join(top_level),
        )  # fmt: skip
    hosts = data.get("host", {})
    if not isinstance(hosts, dict):
        raise UsageError(
            f"{where}: host must be a table", hint="fix or remove the file"
        )
    mirrors = []
    for url, settings in hosts.items():
        if not isinstance(settings, dict):
            raise UsageError(
                f"{where}: host.{url!r} must be a table", hint="fix or remove the file"
            )
        capabilities = settings.get("capabilities", DEFAULT_CAPABILITIES)
        if "pull" not in capabilities:
            continue
        ignored = [key for key in _IGNORED_KEYS if key in settings]
        if ignored:
            log.warning(
                "%s: %s of %s not applied by apparate",
                where, ", ".join(ignored), url,
            )  # fmt: skip
        if "://" not in url:
            url = f"https://{url}"
        subject = f"{where}: host.{url!r}"
        mirrors.append(
            Mirror(
                url.rstrip("/"),
                resolve="resolve" in capabilities,
                override_path=bool(settings.get("override_path", False)),
                ca_files=_ca_files(settings.get("ca", ()), folder, subject),
                skip_verify=_flag(settings.get("skip_verify", False), subject),
                headers=_headers(settings.get("header", {}), subject),
            )
        )
    return mirrors


def _ca_files(value: Any, folder: Path | None, subject: str) -> tuple[str, ...]:
    """Read ``ca``: one path or a list of paths."""
    paths = [value] if isinstance(value, str) else value
    if not isinstance(paths, list | tuple) or not all(
        isinstance(path, str) for path in paths
    ):
        raise _invalid(f"{subject}: ca must be a path or a list of paths")
    return tuple(
        str(folder / path) if folder and not Path(path).is_absolute() else path
        for path in paths
    )


def _flag(value: Any, subject: str) -> bool:
    if not isinstance(value, bool):
        raise _invalid(f"{subject}: skip_verify must be true or false")
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
        headers.append((name, ", ".join(values)))
    return tuple(headers)


def _invalid(message: str) -> UsageError:
    return UsageError(message, hint="fix or remove the file")
