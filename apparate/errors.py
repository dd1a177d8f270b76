"""Errors raised by apparate.

Every error names its subject (an image, a registry or a file), what failed
and what to do next. Third-party exceptions are translated where they enter
the package, so callers catch only these::

    ApparateError
    ├── UsageError                 bad input from the user
    │   └── InvalidReference
    ├── AuthError
    │   ├── AuthRequired           no credentials for a registry that asks
    │   ├── AuthRejected           credentials or token refused
    │   └── CredentialsUnavailable config.json or credential helper unusable
    ├── NotFound                   manifest, tag or blob missing
    ├── PlatformNotFound
    ├── RegistryError              the registry could not serve the request
    │   ├── RegistryUnreachable    connection failed, kept dropping or timed out
    │   ├── ServerError            HTTP 5xx
    │   ├── RateLimited
    │   └── InvalidResponse        HTML for JSON, oversize manifest, bad status
    │       └── InsecureRedirect   a redirect to plain HTTP
    ├── VerificationError          bytes that do not match their digest
    │   ├── DigestMismatch
    │   ├── DiffIDMismatch
    │   ├── TruncatedBody
    │   │   └── TransferFailed     every attempt failed (a RegistryUnreachable too)
    │   │       └── TransferTimedOut  every attempt timed out
    │   └── ChunkedLayerError      a chunked layer that cannot be used
    │       ├── ChunkTableCorrupt  footer or table damaged or inconsistent
    │       ├── UnsupportedChunkFormat
    │       └── ChunkCorrupt       a frame that does not give its chunk
    ├── StoreError                 the local store cannot be read or written
    └── ImageImportError           a stored image could not be handed on
        ├── DaemonUnreachable      docker or containerd is not running
        ├── DaemonPermissionDenied its socket refuses this user
        ├── DaemonRejected         the daemon refused or failed the archive
        └── ArchiveWriteFailed     an archive file could not be written

The CLI maps each class to its own exit code through ``exit_code``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class ApparateError(Exception):
    """Base of every error apparate raises on purpose."""

    exit_code = 1
    hint = ""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        if not self.hint:
            return self.message
        return f"{self.message}: {self.hint}"


class UsageError(ApparateError):
    exit_code = 2


class InvalidReference(UsageError):
    hint = "write it as [HOST[:PORT]/]NAME[:TAG][@DIGEST], e.g. debian:bookworm"


class AuthError(ApparateError):
    exit_code = 3


class AuthRequired(AuthError):
    hint = "log in with 'docker login' or pass --username and --password-stdin"


class AuthRejected(AuthError):
    hint = "check the username and password, or log in again with 'docker login'"


class CredentialsUnavailable(AuthError):
    hint = (
        "fix the Docker config file or credential helper, "
        "or pass --username and --password-stdin"
    )


class NotFound(ApparateError):
    exit_code = 4
    hint = "check the name and tag, and that your credentials can read it"


class PlatformNotFound(ApparateError):
    exit_code = 5
    hint = "pick one of the listed platforms with --platform OS/ARCH[/VARIANT]"


class RegistryError(ApparateError):
    exit_code = 6
    hint = "check the registry address and try again"


class RegistryUnreachable(RegistryError):
    pass


class ServerError(RegistryError):
    """The registry failed (HTTP 5xx).

    ``retry_after`` is the wait in seconds that its Retry-After header asked
    for, when it gave one as a number.
    """

    exit_code = 11
    hint = "the registry failed; try again later"
    retry_after: float | None = None


class RateLimited(RegistryError):
    exit_code = 7
    hint = "wait before pulling again, or log in to get a higher limit"


class InvalidResponse(RegistryError):
    exit_code = 8
    hint = "check that the address points at an OCI registry"


class InsecureRedirect(InvalidResponse):
    pass


class VerificationError(ApparateError):
    exit_code = 9
    hint = "the source served wrong bytes; nothing was stored, try again later"


class DigestMismatch(VerificationError):
    pass


class DiffIDMismatch(VerificationError):
    hint = "the image config and its layers disagree; rebuild or re-push the image"


class TruncatedBody(VerificationError):
    hint = "the connection ended early; try again"


class TransferFailed(TruncatedBody, RegistryUnreachable):
    """A body given up after every attempt to resume it failed.

    It is a TruncatedBody, so the bytes received are kept and a pull with
    mirrors goes on at another source, and a RegistryUnreachable, so it
    exits with that code: no byte was wrong, the connection kept failing.
    """

    exit_code = RegistryUnreachable.exit_code
    hint = "the registry or the link kept dropping the connection; try again later"


class TransferTimedOut(TransferFailed):
    """A body that stopped arriving, and every attempt to resume it timed out."""

    hint = "the registry or the link is overloaded or down; try again later"


class ChunkedLayerError(VerificationError):
    hint = "the layer is pulled whole instead where possible"


class ChunkTableCorrupt(ChunkedLayerError):
    pass


class UnsupportedChunkFormat(ChunkedLayerError):
    hint = "upgrade apparate, or pull the layer whole"


class ChunkCorrupt(ChunkedLayerError):
    pass


# SQLite's messages for a database file that is damaged or not a database.
_DAMAGED_DATABASE = ("file is not a database", "database disk image is malformed")


class StoreError(ApparateError):
    """The local store could not be read or written.

    ``errno`` is the operating system's error number, when one caused it.
    """

    exit_code = 10
    hint = "check the store directory's permissions and free space"
    errno: int | None = None

    def __init__(self, message: str, hint: str | None = None) -> None:
        if hint is None and any(sign in message for sign in _DAMAGED_DATABASE):
            hint = (
                "the store's database apparate.db is damaged: move it aside and "
                "run the command again; the images stay, the pull history and "
                "the chunk index start empty"
            )
        super().__init__(message, hint)


class ImageImportError(ApparateError):
    """A pulled image could not be handed to docker, containerd or a file.

    The image stays in the local store, so ``apparate import`` can retry.
    """

    exit_code = 12
    hint = "the image is kept in the local store; retry with 'apparate import'"
    # The result of the pull whose import failed, for its summary: the
    # image was stored all the same.
    pulled: Any = None


class DaemonUnreachable(ImageImportError):
    hint = (
        "start the daemon or pick another --into target; the image is kept in "
        "the local store, so 'apparate import' can retry"
    )


class DaemonPermissionDenied(ImageImportError):
    hint = (
        "run as root or as a member of the socket's group (such as docker), or "
        "pick another --into target; the image is kept in the local store"
    )


class DaemonRejected(ImageImportError):
    pass


class DaemonOutOfSpace(DaemonRejected):
    """A daemon that ran out of disk space while it took in an image."""


# The words docker and ctr use for a full disk in their error messages.
NO_SPACE = "no space left on device"


class ArchiveWriteFailed(ImageImportError):
    hint = (
        "free space or pick another folder, then retry with 'apparate import'; "
        "the image is kept in the local store"
    )


def reason_for_warning(
    error: Exception, subject: str, source_names: Iterable[str] = ()
) -> str:
    """Return an error's message for a warning that names ``subject`` first.

    The subject goes from the start of the message, and so does the hint,
    which advises on a command that fails while the warning's goes on.
    ``source_names`` are the ways of writing a source that the warning names
    itself, such as its URL and host: "SUBJECT from SOURCE" then goes whole.
    """
    message = error.message if isinstance(error, ApparateError) else str(error)
    for name in source_names:
        for separator in (": ", " "):
            prefix = f"{subject} from {name}{separator}"
            if message.startswith(prefix):
                return message.removeprefix(prefix)
    if message.startswith(f"{subject}: "):
        return message.removeprefix(f"{subject}: ")
    # "LAYER from HOST: ..." keeps the source it names.
    return message.removeprefix(f"{subject} ")
