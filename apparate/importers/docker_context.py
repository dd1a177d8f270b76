"""The docker host of the current docker context, chosen as the docker CLI chooses it.

``DOCKER_HOST`` wins. Otherwise ``DOCKER_CONTEXT``, else ``currentContext`` in
docker's ``config.json``, names a context whose endpoint is stored in
``contexts/meta/<sha256 of the name>/meta.json`` beside that file. The
context ``default`` means docker's own default socket.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from apparate.errors import UsageError
from apparate.registry.credentials import docker_config_path

DEFAULT_CONTEXT = "default"


def context_docker_host(env: Mapping[str, str]) -> tuple[str, str] | None:
    """Return the current context's name and docker host, or None for the default.

    Raises UsageError for a context that is named but missing or unreadable.
    """
    config_path = docker_config_path(env)
    if config_path is None:
        return None
    name = env.get("DOCKER_CONTEXT") or _current_context(config_path)
    if not name or name == DEFAULT_CONTEXT:
        return None
    # The bytes docker hashes, even for a name that is not UTF-8.
    identity = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()
    meta_path = config_path.parent / "contexts" / "meta" / identity / "meta.json"
    meta = _read_json(meta_path, f"docker context {name!r}")
    if meta is None:
        raise UsageError(
            f"docker context {name!r} does not exist: {meta_path} is missing",
            hint="pick a context 'docker context ls' lists, or set DOCKER_HOST",
        )
    endpoints = meta.get("Endpoints")
    docker = endpoints.get("docker") if isinstance(endpoints, dict) else None
    host = docker.get("Host") if isinstance(docker, dict) else None
    if not isinstance(host, str) or not host:
        raise UsageError(
            f"docker context {name!r} in {meta_path} has no docker endpoint",
            hint="fix the context with 'docker context update', or set DOCKER_HOST",
        )
    return name, host


def _current_context(config_path: Path) -> str | None:
    """Return ``currentContext`` of docker's config file, if it sets one."""
    config = _read_json(config_path, "docker's config file")
    value = config.get("currentContext") if config else None
    return value if isinstance(value, str) else None


def _read_json(path: Path, subject: str) -> dict[str, Any] | None:
    """Read a JSON object, or return None when the file is missing or empty."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise UsageError(
            f"cannot read {subject} {path}: {error}", hint="fix or remove the file"
        ) from None
    if not text.strip():
        return None
    try:
        data = json.loads(text)
    except ValueError as error:
        raise UsageError(
            f"cannot read {subject} {path}: {error}", hint="fix or remove the file"
        ) from None
    if not isinstance(data, dict):
        raise UsageError(
            f"{subject} {path} is not a JSON object", hint="fix or remove the file"
        )
    return data
