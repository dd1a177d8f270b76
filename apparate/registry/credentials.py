"""Find registry credentials the way the docker CLI does.

Sources, first match wins:

1. credentials given on the command line for that host;
2. the helper named in ``credHelpers`` for the host, else the ``credsStore``
   helper, run as ``docker-credential-NAME get``;
3. the ``auths`` entries of the Docker config file, used only when neither
   kind of helper is configured.

The config file is ``$DOCKER_CONFIG/config.json``, else
``$HOME/.docker/config.json``. Docker Hub's credentials live under the key
``https://index.docker.io/v1/`` whichever of its host names is asked for.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from apparate.errors import CredentialsUnavailable

log = logging.getLogger(__name__)

DOCKER_HUB_KEY = "https://index.docker.io/v1/"
DOCKER_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
HELPER_PREFIX = "docker-credential-"
# Helpers signal a missing entry with this message (docker-credential-helpers'
# ErrCredentialsNotFound) and a non-zero exit status.
NOT_FOUND_MESSAGE = "credentials not found"
# Docker's helper protocol marks an identity (refresh) token with this username.
TOKEN_USERNAME = "<token>"


@dataclass(frozen=True)
class Credentials:
    """A username and password, or an identity token, for one registry.

    The secrets are left out of ``repr`` so that they cannot reach a log.
    """

    username: str
    password: str = field(repr=False)
    identity_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class _DockerConfig:
    """The credential settings of one Docker config file."""

    path: Path | None = None
    auths: dict[str, Any] = field(default_factory=dict)
    cred_helpers: dict[str, str] = field(default_factory=dict)
    creds_store: str = ""


class CredentialStore:
    """Credentials per registry host from the command line and Docker's config.

    The config file is read and helpers are run on the first lookup that
    needs them, so a broken config only matters for registries that ask for
    credentials. Each host's result, or the error of its failed lookup, is
    cached for the life of the store, so a failing helper runs once per host.
    """

    def __init__(
        self,
        explicit: Mapping[str, Credentials],
        config_path: Path | None,
        env: Mapping[str, str],
    ) -> None:
        self._explicit = dict(explicit)
        self._config_path = config_path
        self._env = env
        self._config: _DockerConfig | None = None
        self._found: dict[str, Credentials | None] = {}
        self._failed: dict[str, CredentialsUnavailable] = {}

    @classmethod
    def from_environment(
        cls,
        explicit: dict[str, Credentials] | None = None,
        env: Mapping[str, str] = os.environ,
    ) -> CredentialStore:
        """Build a store over ``explicit`` and the Docker config that env selects."""
        return cls(explicit or {}, docker_config_path(env), env)

    def reaching(self, registry: str, server: str) -> CredentialStore:
        """Return a store that also gives ``registry``'s explicit credentials to ``server``.

        ``server`` is the host where the registry is reached, such as the
        ``server`` of ``hosts.toml``. Credentials from Docker's config stay
        keyed by the host they were saved for. The new store shares this
        one's cache of lookups, so a helper still runs once per host.
        """
        explicit = dict(self._explicit)
        for key, credentials in self._explicit.items():
            if same_registry(key, registry):
                explicit.setdefault(server, credentials)
        shared = copy.copy(self)
        shared._explicit = explicit
        return shared

    def lookup(self, host: str) -> Credentials | None:
        """Return the credentials for a registry host (``host[:port]``), if any.

        Raises CredentialsUnavailable when the config file is malformed or a
        configured helper is missing or fails.
        """
        for key, credentials in self._explicit.items():
            if same_registry(key, host):
                return credentials
        if host in self._failed:
            raise self._failed[host].with_traceback(None)
        if host not in self._found:
            try:
                self._found[host] = self._lookup_config(host)
            except CredentialsUnavailable as error:
                self._failed[host] = error
                raise
        return self._found[host]

    def _lookup_config(self, host: str) -> Credentials | None:
        config = self._load_config()
        server = server_address(host)
        helper = _find(config.cred_helpers, server) or config.creds_store
        if helper:
            return _run_helper(helper, server, self._env)
        entry = _find(config.auths, server)
        if entry is None:
            log.debug("no credentials for %s in %s", host, config.path)
            return None
        return _entry_credentials(entry, server, config.path)

    def _load_config(self) -> _DockerConfig:
        if self._config is None:
            self._config = _read_config(self._config_path)
        return self._config


def docker_config_path(env: Mapping[str, str]) -> Path | None:
    """Return where docker reads its config file, or None without HOME."""
    if env.get("DOCKER_CONFIG"):
        return Path(env["DOCKER_CONFIG"]) / "config.json"
    if env.get("HOME"):
        return Path(env["HOME"]) / ".docker" / "config.json"
    return None


def server_address(host: str) -> str:
    """Return the key docker stores a registry's credentials under."""
    if hostname(host) in DOCKER_HUB_HOSTS:
        return DOCKER_HUB_KEY
    return host


def hostname(key: str) -> str:
    """Reduce a config key (``https://host:port/v1/``) to ``host:port``."""
    if "://" in key:
        key = urlsplit(key).netloc or key
    return key.split("/", 1)[0].lower()


def same_registry(key: str, host: str) -> bool:
    """Tell whether a config key and a host name the same registry."""
    key_host, other = hostname(key), hostname(host)
    if key_host in DOCKER_HUB_HOSTS and other in DOCKER_HUB_HOSTS:
        return True
    return key_host == other


def _find(entries: Mapping[str, Any], server: str) -> Any:
    """Return the entry for server: its exact key first, then any matching key."""
    if server in entries:
        return entries[server]
    for key, entry in entries.items():
        if same_registry(key, server):
            return entry
    return None


def _read_config(path: Path | None) -> _DockerConfig:
    """Read the credential settings of a Docker config file, if it exists."""
    if path is None:
        return _DockerConfig(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return _DockerConfig(path)
    except (OSError, UnicodeDecodeError) as error:
        raise CredentialsUnavailable(f"cannot read Docker config {path}: {error}")
    if not text.strip():
        return _DockerConfig(path)
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise CredentialsUnavailable(
            f"Docker config {path} is not valid JSON: {error.msg} "
            f"at line {error.lineno}, column {error.colno}"
        ) from None
    return _parse_config(document, path)


def _parse_config(document: Any, path: Path) -> _DockerConfig:
    if not isinstance(document, dict):
        raise _malformed(path, "the top level is not a JSON object")
    auths = _field(document, "auths", {})
    helpers = _field(document, "credHelpers", {})
    store = _field(document, "credsStore", "")
    if not isinstance(auths, dict):
        raise _malformed(path, '"auths" is not an object')
    if not isinstance(helpers, dict) or not _all_strings(helpers.values()):
        raise _malformed(path, '"credHelpers" is not an object of helper names')
    if not isinstance(store, str):
        raise _malformed(path, '"credsStore" is not a string')
    return _DockerConfig(path, auths, helpers, store)


def _entry_credentials(entry: Any, key: str, path: Path | None) -> Credentials | None:
    """Build credentials from one ``auths`` entry, or None when it is empty."""
    if not isinstance(entry, dict):
        raise _malformed(path, f'"auths" entry {key!r} is not an object')
    fields = ("auth", "username", "password", "identitytoken")
    if not _all_strings(entry.get(name) or "" for name in fields):
        raise _malformed(path, f'"auths" entry {key!r} has a field that is not text')
    username = entry.get("username") or ""
    password = entry.get("password") or ""
    if entry.get("auth"):
        username, password = _decode_auth(entry["auth"], key, path)
    identity_token = entry.get("identitytoken") or None
    if not (username or password or identity_token):
        return None
    return Credentials(username, password, identity_token)


def _decode_auth(auth: str, key: str, path: Path | None) -> tuple[str, str]:
    """Split a base64 ``user:password`` value; the error never shows it."""
    try:
        decoded = base64.b64decode(auth, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise _malformed(path, f'"auth" of {key!r} is not base64 text') from None
    username, colon, password = decoded.partition(":")
    if not colon:
        raise _malformed(path, f'"auth" of {key!r} is not of the form user:password')
    # Docker trims NUL padding that some tools leave after the password.
    return username, password.strip("\x00")


def _run_helper(name: str, server: str, env: Mapping[str, str]) -> Credentials | None:
    """Ask ``docker-credential-NAME get`` for the credentials of server.

    Like docker, this sets no timeout, because a helper may wait for the user
    to unlock a keychain.
    """
    program = HELPER_PREFIX + name
    executable = shutil.which(program, path=env.get("PATH", os.defpath))
    if executable is None:
        raise CredentialsUnavailable(
            f"credential helper {program} for {server} was not found on PATH"
        )
    log.debug("asking %s for the credentials of %s", program, server)
    try:
        result = subprocess.run(
            [executable, "get"],
            input=server,
            capture_output=True,
            text=True,
            env=dict(env),
            check=False,
        )
    except OSError as error:
        raise CredentialsUnavailable(
            f"credential helper {program} for {server} could not run: {error}"
        ) from None
    return _read_helper_result(result, program, server)


def _read_helper_result(
    result: subprocess.CompletedProcess[str], program: str, server: str
) -> Credentials | None:
    """Turn a helper's exit status and output into credentials."""
    if result.returncode != 0:
        # A failing helper prints an error, not credentials, so its first
        # line is safe to show.
        output = (result.stdout.strip() or result.stderr.strip()).splitlines()
        first_line = output[0][:200] if output else ""
        if NOT_FOUND_MESSAGE in first_line.lower():
            log.debug("%s has no credentials for %s", program, server)
            return None
        raise CredentialsUnavailable(
            f"credential helper {program} failed for {server} "
            f"(exit status {result.returncode}): {first_line}"
        )
    return _parse_helper_output(result.stdout, program, server)


def _parse_helper_output(output: str, program: str, server: str) -> Credentials | None:
    """Parse ``{"Username": ..., "Secret": ...}``; errors never show the output."""
    try:
        answer = json.loads(output)
    except json.JSONDecodeError:
        answer = None
    if not isinstance(answer, dict) or not _all_strings(
        answer.get(name) or "" for name in ("Username", "Secret")
    ):
        raise CredentialsUnavailable(
            f"credential helper {program} returned output for {server} "
            'that is not a JSON object with text "Username" and "Secret"'
        )
    username, secret = answer.get("Username") or "", answer.get("Secret") or ""
    if not secret:
        return None
    if username == TOKEN_USERNAME:
        return Credentials("", "", identity_token=secret)
    return Credentials(username, secret)


def _field(document: dict[str, Any], name: str, default: Any) -> Any:
    value = document.get(name)
    return default if value is None else value


def _all_strings(values: Any) -> bool:
    return all(isinstance(value, str) for value in values)


def _malformed(path: Path | None, problem: str) -> CredentialsUnavailable:
    return CredentialsUnavailable(f"Docker config {path} is malformed: {problem}")
