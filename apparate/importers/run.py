"""Hand a stored image to the chosen target: ``apparate import`` and pull's end."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from apparate.config import config_path, load_config
from apparate.errors import ApparateError, NotFound, StoreError
from apparate.importers.archive import docker_members, oci_members, stream_tar
from apparate.importers.containerd import import_into_containerd
from apparate.importers.files import check_archive_path, write_archive
from apparate.importers.image import (
    StoredContent,
    find_stored,
    load_content,
    retry_command,
)
from apparate.importers.sizes import LayerSizes
from apparate.importers.sockets import SocketState, probe_socket
from apparate.importers.target import (
    AUTO,
    CONTAINERD,
    DOCKER,
    DOCKER_ARCHIVE,
    OCI,
    OCI_ARCHIVE,
    Daemons,
    ImportTarget,
    check_namespace,
    containerd_socket,
    detected_target,
    requested_target,
)
from apparate.result import ImportResult
from apparate.store.layout import (
    Store,
    StoredImage,
    default_store_path,
    not_created,
)
from apparate.store.usage import mark_used

log = logging.getLogger(__name__)


@dataclass
class ImportOptions:
    """Settings of ``apparate import``; ``into`` None means as configured."""

    store: Path | None = None
    into: str | None = None
    daemons: Daemons = field(default_factory=Daemons.from_environment)


def import_image(reference: str, options: ImportOptions | None = None) -> ImportResult:
    """Import an image that is already in the local store, without fetching."""
    options = options or ImportOptions()
    root = options.store or default_store_path()
    if not_created(root):
        # No image is stored before the first pull, so this is NotFound, as
        # with rm, and not a store error.
        raise NotFound(
            f"{reference} is not in the local store {os.path.abspath(root)}, "
            "which contains no image yet",
            hint=f"pull it first with 'apparate pull {reference}', or check "
            "--store and APPARATE_STORE",
        )
    # Held, so that rm and gc wait before removing the blobs it sends.
    store = Store(root, create=False, hold=True)
    try:
        image = find_stored(store, reference)
        result = _import_found(store, image, options.into, options.daemons)
    finally:
        store.close()
    try:
        mark_used(store.root, image.reference)
    except StoreError as error:
        log.info("%s: last use not recorded: %s", image.reference, error)
    return result


def chosen_target(into: str | None, configured: str | None = None) -> ImportTarget:
    """Return the target asked for by ``into``, APPARATE_INTO or config.toml.

    ``configured`` is config.toml's ``into`` when the caller has read the
    file already; otherwise the file is read only when it decides.
    """
    if configured is None and not into and not os.environ.get("APPARATE_INTO"):
        configured = load_config().into
    settings_file = str(config_path()) if configured else "config.toml"
    return requested_target(into, os.environ, configured, settings_file)


def check_target(into: str | None, daemons: Daemons) -> ImportTarget:
    """Return the requested target (``into``, APPARATE_INTO or config.toml), checked.

    Raises UsageError for a target or DOCKER_HOST that the import would
    reject. The command line calls this before a pull, so a typo fails
    before any byte is fetched.
    """
    target = chosen_target(into)
    if target.kind == DOCKER:
        daemons.docker_socket()
    if target.kind == CONTAINERD:
        check_namespace(daemons.containerd_namespace)
    if target.path is not None:
        check_archive_path(target.path)
    return target


def import_stored(
    store: Store,
    reference: str,
    into: str | None,
    daemons: Daemons,
    configured: str | None = None,
) -> ImportResult:
    """Hand the stored image ``reference`` to the target ``into`` names.

    ``auto`` picks docker when its socket accepts connections, else
    containerd, else leaves the image in the local store only.
    """
    return _import_found(
        store, find_stored(store, reference), into, daemons, configured
    )


def _import_found(
    store: Store,
    image: StoredImage,
    into: str | None,
    daemons: Daemons,
    configured: str | None = None,
) -> ImportResult:
    """Hand a stored image that ``find_stored`` found to the target ``into`` names."""
    result = _import_into_target(store, image, into, daemons, configured)
    return dataclasses.replace(result, reference=image.reference)


def _import_into_target(
    store: Store,
    image: StoredImage,
    into: str | None,
    daemons: Daemons,
    configured: str | None,
) -> ImportResult:
    requested = chosen_target(into, configured)
    target = requested
    if requested.kind == AUTO:
        target = _detect(daemons)
        log.info("%s: importing into %s (detected)", image.reference, target)
    try:
        return _import_into(store, image, target, requested, daemons)
    except KeyboardInterrupt as stop:
        setattr(stop, _INTERRUPTED_TARGET, target)
        raise


# The interrupt's attribute that records the target of the interrupted import.
_INTERRUPTED_TARGET = "apparate_import_target"


def interrupted_target(stop: KeyboardInterrupt) -> ImportTarget | None:
    """Return the target of the import that ``stop`` interrupted, else None.

    A pull interrupted during its import then gets the import's message,
    which names the target that ``auto`` detected.
    """
    target = getattr(stop, _INTERRUPTED_TARGET, None)
    return target if isinstance(target, ImportTarget) else None


def _import_into(
    store: Store,
    image: StoredImage,
    target: ImportTarget,
    requested: ImportTarget,
    daemons: Daemons,
) -> ImportResult:
    content = load_content(store, image)
    started = time.monotonic()
    if target.kind == DOCKER:
        # Loaded here: httpx, which only docker's importer needs, takes longer
        # to load than the rest of an import into containerd or a file.
        from apparate.importers.docker import import_into_docker

        return import_into_docker(
            store, content, daemons.docker_socket(), str(requested)
        )
    if target.kind == CONTAINERD:
        return import_into_containerd(store, content, daemons, str(requested))
    if target.path is not None:
        return _write_file(store, content, target, str(requested), started)
    return ImportResult(
        OCI, str(requested), str(content.reference), str(content.manifest.digest),
        note=f"kept in the local store {store.root} only",
    )  # fmt: skip


def _detect(daemons: Daemons) -> ImportTarget:
    """Probe docker's and containerd's sockets for ``auto``."""
    docker = _answers("docker", daemons.docker_socket)
    containerd = not docker and _answers(
        "containerd", lambda: containerd_socket(daemons.containerd_address)
    )
    return detected_target(docker, containerd)


def _answers(daemon: str, socket_path: Callable[[], str]) -> bool:
    try:
        path = socket_path()
        state = probe_socket(path)
    except ApparateError as error:
        log.warning("not importing into %s: %s", daemon, error)
        return False
    if state is SocketState.DENIED:
        log.warning(
            "not importing into %s: its socket %s %s", daemon, path, state.value
        )
    return state is SocketState.ACCEPTS


def _write_file(
    store: Store,
    content: StoredContent,
    target: ImportTarget,
    requested: str,
    started: float,
) -> ImportResult:
    assert target.path is not None
    reference = str(content.reference)
    if target.kind == OCI_ARCHIVE:
        members = oci_members(store, content, reference)
        image_id = str(content.top.digest)
    else:
        sizes = LayerSizes(store)
        try:
            members = docker_members(store, content, sizes)
        finally:
            sizes.close()
        image_id = str(content.config_digest)
    with contextlib.closing(stream_tar(members)) as archive:
        retry = retry_command(store, reference, f"{target.kind}:FILE")
        written = write_archive(target.path, archive, reference, retry)
    name = reference if target.kind == OCI_ARCHIVE or content.tag else None
    note = ""
    if target.kind == DOCKER_ARCHIVE and not content.tag:
        note = f"written without a tag because {reference} names it by digest"
    return ImportResult(
        str(target), requested, name, image_id, written,
        time.monotonic() - started, note,
    )  # fmt: skip
