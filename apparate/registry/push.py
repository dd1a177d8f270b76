"""Write blobs and manifests to a repository over the OCI distribution API."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import httpx

from apparate.digest import Digest
from apparate.errors import InvalidResponse
from apparate.manifest import ACCEPTED_TYPES, Descriptor
from apparate.reference import Reference
from apparate.registry.client import RegistryClient
from apparate.registry.credentials import CredentialStore
from apparate.registry.errors import status_error, transport_error
from apparate.registry.transport import TransportSettings

log = logging.getLogger(__name__)

UPLOAD_PIECE = 1 << 20


class RegistryWriter(RegistryClient):
    """A client that may also push to its reference's repository.

    ``mount_from`` names repositories on the same registry whose blobs may
    be mounted instead of uploaded; their pull scope is requested too.
    """

    def __init__(
        self,
        reference: Reference,
        settings: TransportSettings,
        credentials: CredentialStore,
        mount_from: tuple[str, ...] = (),
    ) -> None:
        scopes = [f"repository:{reference.repository}:pull,push"]
        scopes += [f"repository:{name}:pull" for name in mount_from]
        super().__init__(reference, settings, credentials, scopes=scopes)

    def check_push_access(self) -> None:
        """Start an upload session, so a rejected push fails before any work.

        Raises the error the registry gave the session's start. The session
        is left for the registry to expire: cancelling it needs the delete
        action, which a token for pull and push lacks.
        """
        self._start_upload(f"push to {self.image}")

    def blob_exists(self, descriptor: Descriptor) -> bool:
        """Check with HEAD whether the repository already has the blob."""
        path = self._path(f"blobs/{descriptor.digest}")
        return self._exists(path, {}, f"blob {descriptor.digest} of {self.image}")

    def manifest_exists(self, digest: Digest) -> bool:
        """Check with HEAD whether the repository has the manifest ``digest``."""
        path = self._path(f"manifests/{digest}")
        headers = {"Accept": ", ".join(ACCEPTED_TYPES)}
        return self._exists(path, headers, f"manifest {digest} of {self.image}")

    def _exists(self, path: str, headers: dict[str, str], subject: str) -> bool:
        with (
            self._translated(subject),
            self._stream("HEAD", path, headers, subject) as response,
        ):
            if response.status_code == 404:
                return False
            if response.status_code != 200:
                raise status_error(response, subject)
        return True

    def mount_blob(self, descriptor: Descriptor, source_repository: str) -> str | None:
        """Ask the registry to link a blob from another repository.

        Returns None when it did. A registry that cannot mount the blob
        starts an upload session instead (202, as the OCI distribution spec
        allows), and the session's URL is returned for ``upload_blob``.
        """
        params = httpx.QueryParams(
            mount=str(descriptor.digest), **{"from": source_repository}
        )
        path = self._path(f"blobs/uploads/?{params}")
        subject = f"mount of blob {descriptor.digest} into {self.image}"
        with (
            self._translated(subject),
            self._stream("POST", path, {}, subject) as response,
        ):
            if response.status_code == 201:
                return None
            if response.status_code != 202:
                raise status_error(response, subject)
            return self._upload_location(response, subject)

    def upload_blob(
        self, descriptor: Descriptor, path: Path, location: str | None = None
    ) -> None:
        """Upload a stored blob in one PUT, streamed from its file.

        ``location`` is an upload session already started, as ``mount_blob``
        returns; without it, a new session is started.
        """
        subject = f"upload of blob {descriptor.digest} to {self.image}"
        location = location or self._start_upload(subject)
        target = httpx.URL(location).copy_merge_params(
            {"digest": str(descriptor.digest)}
        )
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(descriptor.size),
        }
        with (
            self._translated(subject),
            self._stream(
                "PUT", str(target), headers, subject, _FileBody(path)
            ) as response,
        ):
            if response.status_code != 201:
                raise status_error(response, subject)
        log.info("%s: %d bytes", subject, descriptor.size)

    def put_manifest(self, tag: str, body: bytes, media_type: str) -> Digest:
        """Store a manifest or index under ``tag`` (or its digest)."""
        digest = Digest.of(body)
        subject = f"manifest {digest} of {self.image}"
        path = self._path(f"manifests/{tag}")
        headers = {"Content-Type": media_type}
        with (
            self._translated(subject),
            self._stream("PUT", path, headers, subject, body) as response,
        ):
            if response.status_code != 201:
                raise status_error(response, subject)
            echoed = response.headers.get("Docker-Content-Digest")
        if echoed and echoed != str(digest):
            raise InvalidResponse(
                f"{subject}: the registry stored it as {echoed}",
                hint="the registry rewrote the manifest; use another registry",
            )
        return digest

    def _start_upload(self, subject: str) -> str:
        path = self._path("blobs/uploads/")
        with (
            self._translated(subject),
            self._stream("POST", path, {}, subject) as response,
        ):
            if response.status_code != 202:
                raise status_error(response, subject)
            return self._upload_location(response, subject)

    def _upload_location(self, response: httpx.Response, subject: str) -> str:
        """Resolve a 202's ``Location`` against the URL that sent it.

        The location may be relative, and may point at another host.
        """
        location = response.headers.get("Location")
        if not location:
            raise InvalidResponse(
                f"{subject}: registry {self.host} sent no upload location"
            )
        try:
            url = response.url.join(location)
        except httpx.InvalidURL as error:
            # The query is left out because it may contain a signature.
            raise InvalidResponse(
                f"{subject}: registry {self.host} sent the invalid upload location "
                f"{location.partition('?')[0]!r} ({error})"
            ) from None
        if url.scheme not in ("http", "https"):
            raise InvalidResponse(
                f"{subject}: registry {self.host} sent an upload location with "
                f"the unsupported scheme {url.scheme}:"
            )
        return str(url)

    def _translated(self, subject: str) -> AbstractContextManager[None]:
        return _read_errors_translated(self.host, subject)


@contextmanager
def _read_errors_translated(host: str, subject: str) -> Iterator[None]:
    """Turn read errors, which a pull would retry, into apparate errors."""
    try:
        yield
    except httpx.HTTPError as error:
        raise transport_error(error, host, subject) from None


class _FileBody:
    """A request body read from a file, readable again if the request is resent.

    httpx refuses to resend a generator, as after a 401 or a redirect, but
    an object whose ``__iter__`` starts over can be sent again.
    """

    def __init__(self, path: Path) -> None:
        self._path = path

    def __iter__(self) -> Iterator[bytes]:
        with open(self._path, "rb") as blob:
            while piece := blob.read(UPLOAD_PIECE):
                yield piece
