"""User settings from ``config.toml`` in apparate's config directory.

The file is optional; every setting has a default. ``APPARATE_CONFIG`` names
another file. Example::

    into = "containerd"            # where pulls import images: see --into
    max_store_size = "20G"         # gc after each pull down to this size
    stall_timeout = 10             # seconds without a byte before a source is left

    [registries."docker.io"]
    mirrors = [
        "https://mirror.example",
        { url = "http://127.0.0.1:5001", resolve = true },
    ]
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from apparate.errors import UsageError
from apparate.reference import DOCKER_HUB, DOCKER_HUB_ALIASES

DEFAULT_STALL_TIMEOUT = 10.0
# A day: longer waits only hide a dead source, and sockets overflow near 1e10 s.
MAX_STALL_TIMEOUT = 86400.0
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


@dataclass(frozen=True)
class Mirror:
    """A source of one registry's content, by digest only unless ``resolve`` is set."""

    url: str
    resolve: bool = False
    # The URL's path is the API root itself, not a prefix before /v2.
    override_path: bool = False
    # From hosts.toml: CA files to trust for this host, whether to skip
    # checking its certificate, and headers to send it.
    ca_files: tuple[str, ...] = ()
    skip_verify: bool = False
    headers: tuple[tuple[str, str], ...] = ()
    # Also from hosts.toml: client certificates as (certificate file, key
    # file) pairs, where an empty key file means the key is in the
    # certificate file, and the connect timeout in seconds (0 for none).
    client_certs: tuple[tuple[str, str], ...] = ()
    dial_timeout: float | None = None


@dataclass(frozen=True)
class Config:
    """Settings read from ``config.toml``, with defaults for those it omits."""

    into: str | None = None
    max_store_size: int | None = None
    stall_timeout: float = DEFAULT_STALL_TIMEOUT
    mirrors: Mapping[str, tuple[Mirror, ...]] = field(default_factory=dict)
    path: Path | None = None

    def mirrors_of(self, registry: str) -> tuple[Mirror, ...]:
        return self.mirrors.get(registry, ())


def config_path(env: Mapping[str, str] = os.environ) -> Path:
    """``APPARATE_CONFIG``, else ``config.toml`` in the user config directory.

    Only the default file may be missing: a file that ``APPARATE_CONFIG``
    names and that does not exist raises UsageError, as it is likely a typo.
    """
    if env.get("APPARATE_CONFIG"):
        path = Path(env["APPARATE_CONFIG"])
        if not path.exists():
            raise UsageError(
                f"the settings file {path} named by APPARATE_CONFIG does not exist",
                hint="fix the path, or unset APPARATE_CONFIG to use the default file",
            )
        return path
    return platformdirs.user_config_path("apparate") / "config.toml"


def load_config(path: Path | None = None) -> Config:
    """Read the settings file; a missing file gives the defaults."""
    path = path or config_path()
    try:
        # TOML files are UTF-8 regardless of the locale's encoding.
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Config(path=path)
    except OSError as error:
        raise _invalid(path, f"cannot read it: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise _invalid(
            path, f"not UTF-8 text: invalid byte at offset {error.start}"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise _invalid(path, str(error)) from None
    return parse_config(data, path)


def parse_config(data: Mapping[str, Any], path: Path | None = None) -> Config:
    known = {"into", "max_store_size", "stall_timeout", "registries"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise _invalid(path, f"unknown setting {unknown[0]!r}")
    into = data.get("into")
    if into is not None and (not isinstance(into, str) or not into.strip()):
        raise _invalid(path, "into must be a non-empty string")
    size = data.get("max_store_size")
    stall = data.get("stall_timeout", DEFAULT_STALL_TIMEOUT)
    if not _is_positive_number(stall) or stall > MAX_STALL_TIMEOUT:
        raise _invalid(
            path,
            f"stall_timeout must be a positive number of seconds up to "
            f"{MAX_STALL_TIMEOUT:g}, not {stall!r}",
        )
    return Config(
        into=into,
        max_store_size=None if size is None else _size(size, path),
        stall_timeout=float(stall),
        mirrors=_registries(data.get("registries", {}), path),
        path=path,
    )


def parse_size(text: str) -> int:
    """Read a size such as ``500M``, ``20G``, ``1.5GiB`` or ``1000`` (bytes).

    K, M, G and T are powers of 1024 with or without the ``iB``, as in
    docker's ``--memory`` option.
    """
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"not a size: {text!r} (use a number with K, M, G or T)")
    number, unit = match.groups()
    size = float(number) * _UNITS[unit.lower()]
    if not math.isfinite(size):
        raise ValueError(f"size too large: {text.strip()[:32]!r}")
    return int(size)


def _size(value: object, path: Path | None) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        try:
            return parse_size(value)
        except ValueError as error:
            raise _invalid(path, f"max_store_size: {error}") from None
    raise _invalid(path, f'max_store_size must be a size such as "20G", not {value!r}')


def _is_positive_number(value: object) -> bool:
    """Tell whether a TOML value is a finite number above zero, not a boolean."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and value > 0


def _registries(value: object, path: Path | None) -> dict[str, tuple[Mirror, ...]]:
    if not isinstance(value, dict):
        raise _invalid(path, "registries must be a table of registry hosts")
    mirrors: dict[str, tuple[Mirror, ...]] = {}
    for host, settings in value.items():
        _check_registry_key(host, path)
        if not isinstance(settings, dict) or set(settings) - {"mirrors"}:
            raise _invalid(path, f"registries.{host} takes only a mirrors list")
        entries = settings.get("mirrors", [])
        if not isinstance(entries, list):
            raise _invalid(path, f"registries.{host}.mirrors must be a list")
        # References name Docker Hub docker.io, whichever alias they use.
        registry = DOCKER_HUB if host in DOCKER_HUB_ALIASES else host
        mirrors[registry] = mirrors.get(registry, ()) + tuple(
            _mirror(entry, f"registries.{host}.mirrors[{n}]", path)
            for n, entry in enumerate(entries)
        )
    return mirrors


def _check_registry_key(host: str, path: Path | None) -> None:
    """Reject a registries key that no reference's registry could match, such as a URL."""
    if "/" in host or not host:
        raise _invalid(
            path,
            f"registries.{host!r} is not a registry host",
            hint='name the registry as references do, such as "docker.io" or '
            '"registry.example:5000", without a scheme or path',
        )


def _mirror(entry: object, key: str, path: Path | None) -> Mirror:
    """Read one entry of a mirrors list; ``key`` names it in errors."""
    if isinstance(entry, str):
        entry = {"url": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
        raise _invalid(path, f"{key} needs a url")
    if set(entry) - {"url", "resolve"}:
        raise _invalid(path, f"{key} takes only url and resolve")
    url = entry["url"].rstrip("/")
    # Loaded here: the registry client loads httpx, which commands that read
    # only `into` from this file, such as an import into containerd, never use.
    from apparate.registry.client import Endpoint, InvalidEndpoint

    try:
        Endpoint.parse(url)
    except InvalidEndpoint as error:
        raise _invalid(path, f"{key}: {error}", error.hint) from None
    resolve = entry.get("resolve", False)
    if not isinstance(resolve, bool):
        raise _invalid(path, f"{key}.resolve must be true or false, not {resolve!r}")
    return Mirror(url, resolve)


def _invalid(
    path: Path | None, detail: str, hint: str = "fix or remove the file"
) -> UsageError:
    where = str(path) if path else "the configuration"
    return UsageError(f"{where}: {detail}", hint=hint)
