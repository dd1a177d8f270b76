"""Load a stored image into docker through the Engine API on its unix socket.

``POST /images/load`` receives a docker-archive streamed from the store. The
daemon returns HTTP 200 at once and reports failures later, as JSON lines
with ``errorDetail``, so every line is read and checked. An image whose ID
(the config digest) docker already has is only tagged, and the bottom
layers it shares with a stored image that docker has are not sent again.

Engines that keep images in containerd (the containerd image store of
Docker 24 and later, the default from Docker 29) report the snapshotter
driver in ``GET /info``; they load OCI archives, which keep the registry's
manifest digest, so they get one.

NOTE: only dockerd 20.10 (Debian 12) was tried. The OCI archive path for the
containerd image store is tested against a fake Engine API only, and such an
engine might need the ``platform`` query of API 1.48 for a multi-platform
index whose other platforms are absent.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx

from apparate.errors import (
    NO_SPACE,
    DaemonOutOfSpace,
    DaemonRejected,
    DaemonUnreachable,
)
from apparate.importers.archive import (
    SentBytes,
    docker_members,
    oci_members,
    stream_tar,
)
from apparate.importers.daemon_layers import bottom_layers_in_docker, left_out_note
from apparate.importers.image import StoredContent, retry_command
from apparate.importers.sizes import LayerSizes
from apparate.importers.sockets import broken_pipes_raise, require_socket
from apparate.importers.target import DOCKER
from apparate.result import ImportResult
from apparate.store.layout import Store

log = logging.getLogger(__name__)

CONTAINERD_SNAPSHOTTER_DRIVER = "io.containerd.snapshotter.v1"
TIMEOUT = httpx.Timeout(30.0, read=None, write=None)
# Seconds to wait for the response to a request other than the load, whose
# response comes only once docker has unpacked the image. The limit is an
# estimate: these requests take milliseconds on a working daemon.
REQUEST_TIMEOUT = 60.0
REQUEST_TIMEOUTS = httpx.Timeout(30.0, read=REQUEST_TIMEOUT)


def uses_containerd_store(info: dict[str, Any]) -> bool:
    """Tell from ``GET /info`` whether the engine keeps images in containerd."""
    for pair in info.get("DriverStatus") or []:
        if isinstance(pair, list) and len(pair) == 2 and pair[0] == "driver-type":
            return str(pair[1]) == CONTAINERD_SNAPSHOTTER_DRIVER
    return False


def load_errors(lines: Iterator[str]) -> tuple[list[str], str | None]:
    """Read the JSON stream of ``/images/load``: its messages and first error."""
    messages: list[str] = []
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            return messages, f"unreadable answer {line[:200]!r}"
        if not isinstance(record, dict):
            continue
        detail = record.get("errorDetail")
        if detail or record.get("error"):
            if isinstance(detail, dict) and detail.get("message"):
                return messages, str(detail["message"])
            return messages, str(record.get("error") or detail)
        if record.get("stream"):
            messages.append(str(record["stream"]).strip())
    return messages, None


class DockerEngine:
    """A small client of the Engine API on a unix socket, for one image.

    ``reference`` is the image being imported, which error messages name.
    """

    def __init__(self, socket: str, reference: str, retry: str) -> None:
        """``retry`` is the command that imports the image again."""
        self.socket = socket
        self.reference = reference
        self._retry_command = retry
        # The Engine API is plain HTTP on the socket, so loading the TLS
        # trust store, about 20 ms of every import, is left out.
        self._client = httpx.Client(
            transport=httpx.HTTPTransport(uds=self.socket, verify=False),
            base_url="http://docker",
            timeout=TIMEOUT,
        )

    def close(self) -> None:
        self._client.close()

    def info(self) -> dict[str, Any]:
        answer = self._request("GET", "/info")
        try:
            document = answer.json()
        except ValueError:
            document = None
        return document if isinstance(document, dict) else {}

    def has_image(self, image_id: str) -> bool:
        answer = self._request("GET", f"/images/{image_id}/json", missing_ok=True)
        return answer.status_code != 404

    def tag(self, image_id: str, repository: str, tag: str) -> None:
        self._request(
            "POST", f"/images/{image_id}/tag", params={"repo": repository, "tag": tag}
        )

    def load(self, archive: Iterator[bytes]) -> list[str]:
        """Stream an archive to ``/images/load``; raise DaemonRejected on errors."""
        headers = {"Content-Type": "application/x-tar"}
        try:
            with broken_pipes_raise(), self._client.stream(
                "POST", "/images/load", params={"quiet": "1"}, content=archive,
                headers=headers,
            ) as answer:  # fmt: skip
                if answer.status_code != 200:
                    answer.read()
                    self._check(answer)
                messages, error = load_errors(answer.iter_lines())
        except httpx.TransportError as error:
            raise DaemonRejected(
                f"docker at {self.socket} broke off the load of {self.reference}: "
                f"{error or type(error).__name__}",
                hint="see the daemon's log for why; " + self._retry,
            ) from None
        if error:
            raise self._rejected(error)
        return messages

    @property
    def _retry(self) -> str:
        return (
            "the image is kept in the local store, so retry with "
            f"'{self._retry_command}'"
        )

    def _request(
        self, method: str, path: str, missing_ok: bool = False, **kwargs: Any
    ) -> httpx.Response:
        try:
            # A daemon that hangs up before the request is written must not
            # end the process by SIGPIPE, if a calling program turned it on.
            with broken_pipes_raise():
                answer = self._client.request(
                    method, path, timeout=REQUEST_TIMEOUTS, **kwargs
                )
        except httpx.TimeoutException:
            raise DaemonUnreachable(
                f"docker at {self.socket} sent no response to {method} {path} while "
                f"importing {self.reference}: timed out after {REQUEST_TIMEOUT:g} s",
                hint="check the daemon with 'docker info' and see its log, or pick "
                "another --into target; " + self._retry,
            ) from None
        except httpx.TransportError as error:
            raise DaemonUnreachable(
                f"docker at {self.socket} sent no response to {method} {path} while "
                f"importing {self.reference}: {error or type(error).__name__}"
            ) from None
        if not (missing_ok and answer.status_code == 404):
            self._check(answer)
        return answer

    def _check(self, answer: httpx.Response) -> None:
        if answer.is_success:
            return
        try:
            message = str(answer.json().get("message") or answer.text)
        except (ValueError, AttributeError):
            message = answer.text[:200]
        request = answer.request
        raise self._rejected(
            f"{request.method} {request.url.path} failed with HTTP "
            f"{answer.status_code}: {message}"
        )

    def _rejected(self, message: str) -> DaemonRejected:
        if NO_SPACE in message:
            return DaemonOutOfSpace(
                f"docker ran out of disk space loading {self.reference}: {message}",
                hint="free space where docker keeps its data ('Docker Root Dir' in "
                "'docker info'); " + self._retry,
            )
        return DaemonRejected(
            f"docker rejected {self.reference}: {message}", hint=self._retry
        )


def import_into_docker(
    store: Store, content: StoredContent, socket: str, requested: str
) -> ImportResult:
    """Hand a stored image to docker at ``socket``; return its name and image ID there."""
    started = time.monotonic()
    reference = str(content.reference)
    engine = DockerEngine(socket, reference, retry_command(store, reference, DOCKER))
    try:
        require_socket(engine.socket, "docker", "DOCKER_HOST")
        if uses_containerd_store(engine.info()):
            return _load_oci(engine, store, content, requested, started)
        return _load_docker(engine, store, content, requested, started)
    finally:
        engine.close()


def _load_docker(
    engine: DockerEngine,
    store: Store,
    content: StoredContent,
    requested: str,
    started: float,
) -> ImportResult:
    reference = content.reference
    image_id = str(content.config_digest)
    name = f"{reference.name}:{content.tag}" if content.tag else None
    note = "" if name else _untagged_note(content)
    if engine.has_image(image_id):
        log.info("%s: docker already has image %s, not loading it", reference, image_id)
        if content.tag:
            try:
                engine.tag(image_id, reference.name, content.tag)
            except DaemonRejected as error:
                if not _unnameable(content, error):
                    raise
                name, note = None, _unnameable_note(content, loaded=False)
            else:
                note = "docker already held this image ID, so it was only tagged"
        else:
            note = f"docker already held this image ID; it was {note}"
        return ImportResult(
            DOCKER, requested, name, image_id, 0, time.monotonic() - started, note
        )

    counter = SentBytes()
    left_out = 0
    try:
        messages, left_out = _load_new_layers(engine, store, content, counter)
    except DaemonRejected as error:
        # docker 20.10 creates the image before it reads the tag, so
        # only the tag is missing then.
        if not (_unnameable(content, error) and engine.has_image(image_id)):
            raise
        name, note = None, _unnameable_note(content, loaded=True)
        messages = [str(error)]
    log.info("%s: %s", reference, "; ".join(messages) or "loaded")
    if not engine.has_image(image_id):
        raise DaemonRejected(
            f"docker finished loading {reference} but has no image {image_id}",
            hint="see the daemon's log; the image is kept in the local store",
        )
    layers_note = left_out_note("docker", left_out, len(content.diff_ids))
    return ImportResult(
        DOCKER, requested, name, image_id, counter.total,
        time.monotonic() - started, "; ".join(part for part in (note, layers_note) if part),
    )  # fmt: skip


def _load_new_layers(
    engine: DockerEngine, store: Store, content: StoredContent, counter: SentBytes
) -> tuple[list[str], int]:
    """Load a docker-archive without the bottom layers docker already has.

    Return docker's messages and how many layers were left out. docker
    rejects such an archive if it no longer has those layers when it reads
    it, as when their image was removed meanwhile, so the whole archive is
    sent then.
    """
    present = bottom_layers_in_docker(store, content, engine.has_image)
    try:
        return _load_archive(engine, store, content, present, counter), present
    except DaemonRejected as error:
        out_of_space = isinstance(error, DaemonOutOfSpace)
        if not present or out_of_space or _unnameable(content, error):
            raise
        log.warning(
            "%s: docker rejected the archive without the layers it had (%s), "
            "so the whole image is sent", content.reference, error.message,
        )  # fmt: skip
        return _load_archive(engine, store, content, 0, counter), 0


def _load_archive(
    engine: DockerEngine,
    store: Store,
    content: StoredContent,
    present: int,
    counter: SentBytes,
) -> list[str]:
    """Stream a docker-archive whose ``present`` bottom layers are left empty."""
    sizes = LayerSizes(store)
    try:
        members = docker_members(store, content, sizes, present)
    finally:
        sizes.close()
    with contextlib.closing(stream_tar(members)) as archive:
        return engine.load(counter.counted(archive))


def _load_oci(
    engine: DockerEngine,
    store: Store,
    content: StoredContent,
    requested: str,
    started: float,
) -> ImportResult:
    """Load an OCI archive into an engine that keeps its images in containerd."""
    reference = str(content.reference)
    counter = SentBytes()
    with contextlib.closing(
        stream_tar(oci_members(store, content, reference))
    ) as archive:
        messages = engine.load(counter.counted(archive))
    log.info("%s: %s", reference, "; ".join(messages) or "loaded")
    return ImportResult(
        DOCKER, requested, reference, str(content.top.digest), counter.total,
        time.monotonic() - started, "docker keeps its images in containerd",
    )  # fmt: skip


def _unnameable(content: StoredContent, error: DaemonRejected) -> bool:
    """Tell whether docker rejected the image's name because its registry is an IPv6 address.

    docker 20.10's reference grammar has no IPv6 hosts, so it rejects a
    name such as ``[::1]:5000/app:v1`` as an invalid reference format.
    """
    registry = content.reference.registry
    return registry.startswith("[") and "invalid reference format" in str(error)


def _unnameable_note(content: StoredContent, loaded: bool) -> str:
    done = "loaded without a tag" if loaded else "already held and left without a tag"
    return (
        f"{done} because this docker cannot name images of "
        f"{content.reference.registry}, an IPv6 address; refer to it by its image ID"
    )


def _untagged_note(content: StoredContent) -> str:
    return (
        f"loaded without a tag because {content.reference} names it by digest, "
        "and docker names loaded images only by tags; refer to it by its image ID"
    )
