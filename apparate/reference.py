"""Image references, parsed and normalised the way docker and kubelet do.

``alpine`` is ``docker.io/library/alpine:latest``. The first path component
is a registry host when it contains ``.`` or ``:``, is ``localhost`` or has
an upper-case letter; otherwise the image lives on Docker Hub.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from apparate.digest import Digest
from apparate.errors import InvalidReference

DOCKER_HUB = "docker.io"
DOCKER_HUB_API_HOST = "registry-1.docker.io"
DOCKER_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io"}
DEFAULT_TAG = "latest"
MAX_NAME_LENGTH = 255

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
# Patterns are used with fullmatch and re.ASCII: `$` would accept a trailing
# newline and `\w` non-ASCII letters, which docker's grammar rejects.
_HOST_NAME = re.compile(rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*", re.ASCII)
_PORT = re.compile(r"[0-9]{1,5}", re.ASCII)
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*", re.ASCII)
_TAG = re.compile(r"\w[\w.-]{0,127}", re.ASCII)


@dataclass(frozen=True)
class Reference:
    """A parsed image reference: registry host, repository, tag and digest.

    ``registry`` is the canonical host (``docker.io`` for Docker Hub) and
    ``repository`` the full path (``library/alpine``). A reference always has
    a tag or a digest; when it has both, the digest decides what is pulled.
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: Digest | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        """Parse and normalise a reference, raising InvalidReference."""
        return _parse(text)

    @property
    def name(self) -> str:
        """The canonical name without tag or digest: ``docker.io/library/alpine``."""
        return f"{self.registry}/{self.repository}"

    @property
    def api_host(self) -> str:
        """The host HTTP requests go to (Docker Hub's API is on another name)."""
        if self.registry == DOCKER_HUB:
            return DOCKER_HUB_API_HOST
        return self.registry

    @property
    def lookup(self) -> str:
        """What to ask the registry for: the digest if known, else the tag."""
        return str(self.digest) if self.digest else (self.tag or DEFAULT_TAG)

    def with_digest(self, digest: Digest) -> Reference:
        return Reference(self.registry, self.repository, self.tag, digest)

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def _parse(text: str) -> Reference:
    if not text or text != text.strip():
        raise InvalidReference(
            f"invalid reference {text!r}: it is empty or starts or ends with whitespace"
        )

    scheme, found, _ = text.partition("://")
    if found and "/" not in scheme:
        # A registry URL given as an image, whose scheme would otherwise be
        # reported as a bad port.
        raise InvalidReference(
            f"invalid reference {text!r}: an image reference has no URL scheme, "
            f"so drop '{scheme}://'"
        )
    remainder, digest = _split_digest(text)
    remainder, tag = _split_tag(text, remainder)
    registry, path = _split_registry(text, remainder)
    _check_path(text, path)

    if registry in DOCKER_HUB_ALIASES:
        registry = DOCKER_HUB
        if "/" not in path:
            path = f"library/{path}"
    if len(registry) + 1 + len(path) > MAX_NAME_LENGTH:
        raise InvalidReference(
            f"invalid reference {text!r}: the name is longer than "
            f"{MAX_NAME_LENGTH} characters"
        )
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry, path, tag, digest)


def _split_digest(text: str) -> tuple[str, Digest | None]:
    if "@" not in text:
        return text, None
    remainder, _, digest_text = text.partition("@")
    try:
        return remainder, Digest.parse(digest_text)
    except ValueError as error:
        raise InvalidReference(f"invalid reference {text!r}: {error}") from None


def _split_tag(text: str, remainder: str) -> tuple[str, str | None]:
    last_slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    if colon <= last_slash:
        return remainder, None
    tag = remainder[colon + 1 :]
    if not _TAG.fullmatch(tag):
        raise InvalidReference(
            f"invalid reference {text!r}: invalid tag {tag!r} (letters, digits, "
            "'_', '.' and '-', at most 128, not starting with '.' or '-')"
        )
    return remainder[:colon], tag


def _split_registry(text: str, remainder: str) -> tuple[str, str]:
    first, slash, rest = remainder.partition("/")
    is_host = (
        any(mark in first for mark in ".:")
        or first == "localhost"
        or first != first.lower()
    )
    if not slash or not is_host:
        return DOCKER_HUB, remainder
    _check_host(text, first)
    return first.lower(), rest


def _check_host(text: str, host: str) -> None:
    name, port = host, None
    if host.startswith("["):
        closing = host.find("]")
        name, after = host[1:closing], host[closing + 1 :]
        if closing < 0 or (after and not after.startswith(":")):
            raise InvalidReference(f"invalid reference {text!r}: bad host {host!r}")
        port = after[1:] if after else None
        try:
            if "%" in name:
                raise ValueError("zone indexes are not allowed")
            ipaddress.IPv6Address(name)
        except ValueError:
            raise InvalidReference(
                f"invalid reference {text!r}: {name!r} is not an IPv6 address"
            ) from None
    else:
        name, _, port_text = host.partition(":")
        port = port_text if ":" in host else None
        if not _HOST_NAME.fullmatch(name):
            raise InvalidReference(f"invalid reference {text!r}: bad host {host!r}")
    if port is not None and not (_PORT.fullmatch(port) and 0 < int(port) < 65536):
        raise InvalidReference(f"invalid reference {text!r}: bad port in {host!r}")


def _check_path(text: str, path: str) -> None:
    if not path:
        raise InvalidReference(f"invalid reference {text!r}: the name is missing")
    for component in path.split("/"):
        if _PATH_COMPONENT.fullmatch(component):
            continue
        if _PATH_COMPONENT.fullmatch(component.lower()):
            raise InvalidReference(
                f"invalid reference {text!r}: repository names must be lowercase"
            )
        raise InvalidReference(
            f"invalid reference {text!r}: invalid name component {component!r}"
        )


def is_loopback(host: str) -> bool:
    """Tell whether a registry host (with optional port) is on this machine."""
    name = host
    if host.startswith("["):
        name = host[1 : host.find("]")]
    elif host.count(":") == 1:
        name = host.partition(":")[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
