"""Import targets: parse ``--into``, pick one, and find the daemons' sockets.

Everything here is pure: the caller probes the sockets and passes the
results in, so the choice of target is tested with tables of cases.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from apparate.errors import UsageError
from apparate.importers.docker_context import context_docker_host

AUTO = "auto"
DOCKER = "docker"
CONTAINERD = "containerd"
OCI = "oci"
DOCKER_ARCHIVE = "docker-archive"
OCI_ARCHIVE = "oci-archive"
DAEMON_KINDS = (DOCKER, CONTAINERD)
FILE_KINDS = (DOCKER_ARCHIVE, OCI_ARCHIVE)
TARGET_HELP = "docker, containerd, oci, docker-archive:FILE, oci-archive:FILE or auto"

DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock"
DOCKER_HOST = "DOCKER_HOST"
DEFAULT_CONTAINERD_SOCKET = "/run/containerd/containerd.sock"
DEFAULT_NAMESPACE = "default"
# containerd's rule for namespace names (its identifiers package): labels of
# letters and digits joined by runs of "-", labels joined by single dots, at
# most 76 characters. Its pattern also lets a ":" come before a run of "-".
_LABEL = r"[A-Za-z0-9]+(?::?-+[A-Za-z0-9]+)*"
_NAMESPACE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_NAMESPACE_MAX = 76


@dataclass(frozen=True)
class ImportTarget:
    """An import destination: a kind, plus a file for the archive kinds."""

    kind: str
    path: Path | None = None

    def __str__(self) -> str:
        return f"{self.kind}:{self.path}" if self.path else self.kind


def parse_target(text: str, given_by: str = "--into") -> ImportTarget:
    """Parse an import target; archive paths are made absolute, as the summary shows them.

    ``given_by`` names where the text came from, for error messages.
    """
    kind, colon, path = text.strip().partition(":")
    if kind in FILE_KINDS:
        if not path:
            raise UsageError(
                f"{given_by} {text}: name the file, as in {kind}:image.tar"
            )
        return ImportTarget(kind, Path(os.path.abspath(path)))
    if colon or kind not in (AUTO, DOCKER, CONTAINERD, OCI):
        raise UsageError(
            f"unknown import target {text!r} in {given_by}: use {TARGET_HELP}"
        )
    return ImportTarget(kind)


def requested_target(
    explicit: str | None,
    env: Mapping[str, str],
    configured: str | None,
    settings_file: str = "config.toml",
) -> ImportTarget:
    """Return the target asked for: the option, else APPARATE_INTO, else config.

    ``settings_file`` is where ``configured`` was read, which errors name.
    """
    sources = (
        (explicit, "--into"),
        (env.get("APPARATE_INTO"), "APPARATE_INTO"),
        (configured, f"into in {settings_file}"),
    )
    for text, given_by in sources:
        if text:
            return parse_target(text, given_by)
    return ImportTarget(AUTO)


def detected_target(docker_answers: bool, containerd_answers: bool) -> ImportTarget:
    """Pick the target of ``auto``: docker, else containerd, else the store."""
    if docker_answers:
        return ImportTarget(DOCKER)
    if containerd_answers:
        return ImportTarget(CONTAINERD)
    return ImportTarget(OCI)


@dataclass(frozen=True)
class Daemons:
    """How to reach docker and containerd.

    ``docker_host`` is a ``DOCKER_HOST`` value; only ``unix://`` is served.
    ``docker_host_source`` names where it was set, for error messages, and
    ``docker_context_error`` why docker's current context cannot be used:
    the docker CLI exits with an error then, so no other socket is tried.
    """

    docker_host: str = f"unix://{DEFAULT_DOCKER_SOCKET}"
    containerd_address: str = DEFAULT_CONTAINERD_SOCKET
    containerd_namespace: str = DEFAULT_NAMESPACE
    docker_host_source: str = DOCKER_HOST
    docker_context_error: UsageError | None = None

    @classmethod
    def from_environment(cls, env: Mapping[str, str] = os.environ) -> Daemons:
        """Read how to reach the daemons from the environment.

        docker: DOCKER_HOST, else docker's current context. containerd:
        CONTAINERD_ADDRESS and CONTAINERD_NAMESPACE.
        """
        containerd = {
            "containerd_address": env.get("CONTAINERD_ADDRESS")
            or cls.containerd_address,
            "containerd_namespace": env.get("CONTAINERD_NAMESPACE")
            or cls.containerd_namespace,
        }
        if env.get(DOCKER_HOST):
            return cls(docker_host=env[DOCKER_HOST], **containerd)
        try:
            context = context_docker_host(env)
        except UsageError as error:
            # Most pulls never reach docker, so the error waits until one does.
            return cls(docker_context_error=error, **containerd)
        if context is None:
            return cls(**containerd)
        name, host = context
        return cls(
            docker_host=host,
            docker_host_source=f"docker context {name!r}",
            **containerd,
        )

    def docker_socket(self) -> str:
        """Return docker's socket path, raising UsageError for a host apparate cannot reach.

        A broken docker context raises its error: the default socket may
        belong to another daemon than the one the context names.
        """
        if self.docker_context_error is not None:
            raise self.docker_context_error
        return docker_socket(self.docker_host, self.docker_host_source)

    def containerd_options(self) -> str:
        """Return the command-line options that reach this containerd, if not the defaults."""
        options = ""
        if self.containerd_address != DEFAULT_CONTAINERD_SOCKET:
            options += f" --containerd-address {self.containerd_address}"
        if self.containerd_namespace != DEFAULT_NAMESPACE:
            options += f" --namespace {self.containerd_namespace}"
        return options

    def with_options(
        self, containerd_address: str | None, containerd_namespace: str | None
    ) -> Daemons:
        """Return a copy with the command-line options applied over the environment."""
        return dataclasses.replace(
            self,
            containerd_address=containerd_address or self.containerd_address,
            containerd_namespace=containerd_namespace or self.containerd_namespace,
        )


def check_namespace(namespace: str) -> None:
    """Raise UsageError for a namespace containerd would reject."""
    if len(namespace) > _NAMESPACE_MAX or not _NAMESPACE.fullmatch(namespace):
        raise UsageError(
            f"invalid containerd namespace {namespace!r}: use letters and "
            "digits, joined by '-' or single '.', at most "
            f"{_NAMESPACE_MAX} characters"
        )


def docker_socket(docker_host: str, source: str = DOCKER_HOST) -> str:
    """Return the socket path of a ``DOCKER_HOST`` value, raising for other schemes.

    ``source`` names where the value was set: DOCKER_HOST or a docker context.
    """
    named = f"DOCKER_HOST={docker_host}" if source == DOCKER_HOST else (
        f"{source} (host {docker_host})"
    )  # fmt: skip
    scheme, separator, rest = docker_host.partition("://")
    if not separator:
        raise UsageError(f"{named} is not a URL such as unix:///PATH")
    if scheme != "unix":
        raise UsageError(
            f"{named} uses {scheme}://, but apparate reaches docker only through "
            "a unix socket",
            hint="point DOCKER_HOST at unix:///PATH of the daemon's socket, or use "
            "--into docker-archive:FILE and 'docker load -i FILE'",
        )
    if not rest.startswith("/"):
        raise UsageError(f"{named} must name an absolute socket path")
    return rest


def containerd_socket(address: str) -> str:
    """Return the socket path of a containerd address (``unix://`` is optional)."""
    return address.removeprefix("unix://")
