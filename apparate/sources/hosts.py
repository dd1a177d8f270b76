"""Read containerd's ``hosts.toml`` mirror files.

containerd looks for ``<dir>/<registry>/hosts.toml``, with ``_default`` as a
fallback folder, and tries the ``[host."URL"]`` entries in file order before
the registry itself. An entry serves content when its capabilities include
``pull``, and resolves tags when they include ``resolve``; without a
``capabilities`` key containerd allows both.
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
_IGNORED_KEYS = ("skip_verify", "ca", "client", "header", "dial_timeout")


def hosts_dir(env: Mapping[str, str] = os.environ) -> Path:
    """``APPARATE_HOSTS_DIR``, else containerd's usual ``/etc/containerd/certs.d``."""
    return Path(env.get("APPARATE_HOSTS_DIR") or DEFAULT_HOSTS_DIR)


def read_hosts_mirrors(registry: str, directory: Path | None = None) -> list[Mirror]:
    """Return the mirrors that ``hosts.toml`` lists for ``registry``, in order."""
    directory = directory or hosts_dir()
    for folder in (registry, "_default"):
        path = directory / folder / "hosts.toml"
        try:
            text = path.read_text()
        except FileNotFoundError:
            continue
        except OSError as error:
            log.warning("%s: not read: %s", path, error.strerror)
            return []
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise UsageError(
                f"{path}: invalid TOML: {error}", hint="fix or remove the file"
            ) from None
        return parse_hosts(data, str(path))
    return []


def parse_hosts(data: Mapping[str, Any], where: str) -> list[Mirror]:
    """Turn the ``host`` tables of one ``hosts.toml`` into mirrors."""
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
                "%s: %s of %s not applied by apparate; put CA files in "
                "/etc/docker/certs.d/HOST/ instead", where, ", ".join(ignored), url,
            )  # fmt: skip
        if "://" not in url:
            url = f"https://{url}"
        mirrors.append(
            Mirror(
                url.rstrip("/"),
                resolve="resolve" in capabilities,
                override_path=bool(settings.get("override_path", False)),
            )
        )
    return mirrors
