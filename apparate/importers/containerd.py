"""Import a stored image into containerd with ``ctr images import``.

ctr reads an oci-archive on its standard input, streamed from the store. The
archive contains the registry's own manifest (and index), so ``ctr images ls``
shows the same digest as a plain ``ctr images pull``. containerd 2.x routes
imports through its transfer service unless ``--local`` is given, so that
option is passed where the installed ctr offers it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator

from apparate.digest import Digest
from apparate.errors import (
    NO_SPACE,
    DaemonOutOfSpace,
    DaemonPermissionDenied,
    DaemonRejected,
    DaemonUnreachable,
)
from apparate.importers.archive import SentBytes, oci_members, stream_tar
from apparate.importers.daemon_layers import left_out_note, shared_layer_blobs
from apparate.importers.image import StoredContent, retry_command
from apparate.importers.sockets import (
    SocketState,
    broken_pipes_raise,
    probe_socket,
    require_socket,
)
from apparate.importers.target import (
    CONTAINERD,
    Daemons,
    check_namespace,
    containerd_socket,
)
from apparate.result import ImportResult
from apparate.store.layout import Store

log = logging.getLogger(__name__)

CTR = "ctr"
HELP_TIMEOUT = 30.0
OUTPUT_LIMIT = 64 * 1024
ADDRESS_SETTING = "CONTAINERD_ADDRESS or --containerd-address"
# Seconds between checks that containerd still accepts connections while
# ctr runs, because ctr 1.6 can wait without a timeout for a containerd
# killed mid-import (seen once in about 20 kills, between two blobs).
WATCH_INTERVAL = 2.0


@functools.cache
def ctr_has_local(ctr: str) -> bool:
    """Tell whether ``ctr images import`` offers ``--local`` (containerd 2.x)."""
    try:
        done = subprocess.run(
            [ctr, "images", "import", "--help"],
            capture_output=True, text=True, timeout=HELP_TIMEOUT, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--local" in done.stdout + done.stderr


def import_command(
    ctr: str, address: str, namespace: str, platform: str, local: bool
) -> list[str]:
    """Return the argv of ``ctr images import`` reading an archive from stdin.

    ``--platform`` makes ctr unpack the pulled platform, which need not be
    this machine's. ``--all-platforms`` is left out because the archive contains one platform.
    """
    argv = [ctr, "--address", address, "--namespace", namespace, "images", "import"]
    if local:
        argv.append("--local")
    if platform:
        argv += ["--platform", platform]
    return [*argv, "-"]


def import_into_containerd(
    store: Store, content: StoredContent, daemons: Daemons, requested: str
) -> ImportResult:
    """Stream a stored image into ``ctr images import``; return its name there."""
    started = time.monotonic()
    check_namespace(daemons.containerd_namespace)
    ctr = shutil.which(CTR)
    if ctr is None:
        raise DaemonUnreachable(
            f"cannot import {content.reference} into containerd: ctr is not installed",
            hint="install containerd (Debian package containerd), or pick another "
            "--into target; the image is kept in the local store",
        )
    address = containerd_socket(daemons.containerd_address)
    require_socket(address, "containerd", ADDRESS_SETTING)
    name = str(content.reference)
    argv = import_command(
        ctr, address, daemons.containerd_namespace, content.platform, ctr_has_local(ctr)
    )
    log.debug("running %s", " ".join(argv))
    retry = retry_command(store, name, f"containerd{daemons.containerd_options()}")
    present = blobs_in_containerd(
        ctr, address, daemons.containerd_namespace, shared_layer_blobs(store, content)
    )
    sent = SentBytes()
    try:
        _import(argv, store, content, present, retry, address, sent)
    except DaemonRejected as error:
        if not present or isinstance(error, DaemonOutOfSpace):
            raise
        log.warning(
            "%s: ctr rejected the archive without the layers containerd had (%s), "
            "so the whole image is sent", name, error.message,
        )  # fmt: skip
        # The bytes of the rejected archive count too, as for docker.
        _import(argv, store, content, set(), retry, address, sent)
        present = set()
    layers = len({layer.digest for layer in content.parsed.layers})
    layers_note = left_out_note("containerd", len(present), layers)
    namespace = f"namespace {daemons.containerd_namespace}"
    return ImportResult(
        CONTAINERD, requested, name, str(content.top.digest), sent.total,
        time.monotonic() - started,
        "; ".join(part for part in (namespace, layers_note) if part),
    )  # fmt: skip


def blobs_in_containerd(
    ctr: str, address: str, namespace: str, candidates: set[Digest]
) -> set[Digest]:
    """Return the blobs among ``candidates`` that containerd's ``namespace`` has.

    An empty ``candidates`` runs no ctr command, so an image that shares no
    layer with another stored image costs no extra time.
    """
    if not candidates:
        return set()
    argv = [ctr, "--address", address, "--namespace", namespace, "content", "ls", "-q"]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=HELP_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        log.debug("ctr content ls failed: %s", error)
        return set()
    if done.returncode != 0:
        log.debug("ctr content ls failed: %s", done.stderr.strip())
        return set()
    listed = set(done.stdout.split())
    return {digest for digest in candidates if str(digest) in listed}


def _import(
    argv: list[str],
    store: Store,
    content: StoredContent,
    present: set[Digest],
    retry: str,
    address: str,
    sent: SentBytes,
) -> None:
    """Stream an OCI archive without the ``present`` layers to ctr, adding its bytes to ``sent``."""
    name = str(content.reference)
    members = oci_members(store, content, name, present)
    with contextlib.closing(stream_tar(members)) as archive:
        _run(argv, sent.counted(archive), name, retry, address)


def _run(
    argv: list[str], archive: Iterator[bytes], reference: str, retry: str, address: str
) -> int:
    """Feed ``archive`` to ctr; return the bytes sent, raising if ctr failed.

    ``retry`` is the command that imports the image again, and ``address``
    the socket of containerd, which is watched while ctr runs.
    """
    process = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    output = _Output(process)
    watch = _Watch(process, address)
    try:
        with broken_pipes_raise():
            sent = _feed(process, archive)
        code = process.wait()
    except BaseException:
        # A SIGTERM sent to apparate alone does not reach ctr.
        process.kill()
        process.wait()
        raise
    finally:
        watch.stop()
    text = output.text()
    if watch.lost is not None:
        raise DaemonUnreachable(
            f"containerd at {address} stopped during the import of {reference}: "
            f"its socket {watch.lost.value}",
            hint=f"start containerd again, then retry with '{retry}'; the image "
            "is kept in the local store",
        )
    if code != 0:
        raise _failure(text, reference, retry)
    log.info("%s: %s", reference, text.strip().replace("\n", "; "))
    return sent


def _feed(process: subprocess.Popen[bytes], archive: Iterator[bytes]) -> int:
    """Write ``archive`` to the standard input of ctr, then close it."""
    assert process.stdin is not None
    sent = 0
    try:
        for piece in archive:
            process.stdin.write(piece)
            sent += len(piece)
    except BrokenPipeError:
        # ctr stopped reading because it failed, and its output explains why.
        pass
    finally:
        try:
            process.stdin.close()
        except BrokenPipeError:
            pass
    return sent


def _failure(output: str, reference: str, command: str) -> Exception:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    detail = lines[-1] if lines else "no output"
    retry = f"the image is kept in the local store, so retry with '{command}'"
    message = f"ctr images import failed for {reference}: {detail}"
    lowered = output.lower()
    if NO_SPACE in lowered:
        return DaemonOutOfSpace(
            message, hint=f"free space in containerd's root folder; {retry}"
        )
    if "permission denied" in lowered:
        return DaemonPermissionDenied(message)
    if "connection refused" in lowered or "no such file or directory" in lowered:
        return DaemonUnreachable(message)
    if "failed to dial" in lowered:
        # The socket accepted a connection but did not speak containerd's API.
        return DaemonUnreachable(
            message,
            hint="check that the address is containerd's socket, not docker's or "
            f"another server's; {retry}",
        )
    return DaemonRejected(message, hint=f"see containerd's log; {retry}")


class _Watch:
    """A check on its own thread that containerd still accepts connections while ctr runs.

    When the socket is gone or refuses connections, ctr is killed and
    ``lost`` records the socket's state.
    """

    def __init__(self, process: subprocess.Popen[bytes], address: str) -> None:
        self.lost: SocketState | None = None
        self._process = process
        self._address = address
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._watch, name="containerd-watch", daemon=True
        )
        self._thread.start()

    def _watch(self) -> None:
        while not self._stopped.wait(WATCH_INTERVAL):
            try:
                state = probe_socket(self._address)
            except DaemonUnreachable:
                continue
            if state in (
                SocketState.MISSING,
                SocketState.REFUSED,
                SocketState.NOT_SOCKET,
            ):
                self.lost = state
                log.info(
                    "containerd at %s %s; stopping ctr", self._address, state.value
                )
                self._process.kill()
                return

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()


class _Output:
    """A reader of a process's output on its own thread, so a full pipe cannot block ctr."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self._chunks: list[bytes] = []
        self._thread = threading.Thread(
            target=self._read, args=(process,), name="ctr-output", daemon=True
        )
        self._thread.start()

    def _read(self, process: subprocess.Popen[bytes]) -> None:
        """Keep the last ``OUTPUT_LIMIT`` bytes, where ctr prints its error."""
        assert process.stdout is not None
        kept_bytes = 0
        with process.stdout:
            while data := process.stdout.read(4096):
                self._chunks.append(data)
                kept_bytes += len(data)
                while kept_bytes - len(self._chunks[0]) >= OUTPUT_LIMIT:
                    kept_bytes -= len(self._chunks.pop(0))

    def text(self) -> str:
        """Wait for the end of the output and return it, decoded."""
        self._thread.join()
        return b"".join(self._chunks).decode("utf-8", errors="replace")
