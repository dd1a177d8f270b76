"""The local store: an OCI image layout that skopeo and podman can read.

Blobs are written under ``ingest/`` and renamed into ``blobs/`` only after
the caller verified them, and ``index.json`` is replaced atomically under a
lock, so a killed pull leaves no half-written blob and no dangling tag.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import itertools
import json
import logging
import os
import tempfile
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import platformdirs

from apparate.digest import Digest
from apparate.errors import StoreError
from apparate.manifest import OCI_INDEX, Descriptor

log = logging.getLogger(__name__)

REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
# The registry's own manifest and index digests, kept for importers that must
# show the image under its registry digest when the tagged manifest differs.
SOURCE_MANIFEST = "dev.apparate.source-manifest"
SOURCE_INDEX = "dev.apparate.source-index"
LAYOUT_VERSION = {"imageLayoutVersion": "1.0.0"}
PARTIAL_PREFIX = "partial-"
# Partial files of a whole download and of a blob rebuilt from chunks.
DELTA_PARTIAL = "delta-"
# The ranges already written into a partial rebuild are listed in a file
# named after it with this suffix.
JOURNAL_SUFFIX = ".ranges"
PARTIAL_KINDS = ("", DELTA_PARTIAL)
# A pull waiting for another one's blob logs a warning after the first
# figure, and stops waiting when the other pull wrote nothing for the second.
# A command waiting for the store's lock logs a warning after the first too.
WAIT_NOTICE_SECONDS = 2.0
STALLED_WRITER_SECONDS = 60.0
PARTIAL_MAX_AGE = 7 * 24 * 3600
# Every open Store locks this file shared, and gc locks it exclusively.
USERS_LOCK = ".users.lock"
_LOCK_POLL_SECONDS = 0.1
# Error numbers of a store this process cannot write, such as a read-only
# mount or the directory of another user.
_READ_ONLY_ERRORS = (errno.EROFS, errno.EACCES, errno.EPERM)
_INVALID_ENTRY_HINT = (
    "remove a tagged entry with 'apparate rm' and its name; remove any other "
    "from index.json, or fix it with the tool that wrote it"
)
_DAMAGED_INDEX_HINT = (
    "fix the file, or move it aside and pull the images again, which reuses "
    "the blobs still stored"
)
# The parts of an OCI image layout, and whether each is a directory.
_LAYOUT_PARTS = {
    "blobs": True,
    "blobs/sha256": True,
    "ingest": True,
    "index.json": False,
    "oci-layout": False,
}

# The files at the top of a store before its oci-layout file is written: a
# store whose creation was stopped early is finished, not refused. A new
# ext4 volume's lost+found does not make its root a folder of other files.
_STORE_NAMES = frozenset(
    [*_LAYOUT_PARTS, ".lock", USERS_LOCK, "apparate.db", "apparate.db-wal",
     "apparate.db-shm", "apparate.db-journal", "lost+found"]
)  # fmt: skip


@dataclass(frozen=True)
class StoredImage:
    """One tagged entry of ``index.json``."""

    reference: str
    descriptor: Descriptor
    source_manifest: Digest
    source_index: Digest | None


class BlobWriter:
    """A blob being written; it becomes visible only through ``commit``.

    ``existing`` counts bytes kept from an earlier pull, which only a
    ResumableWriter has.
    """

    existing = 0

    def __init__(self, store: Store, digest: Digest, name: str | None = None) -> None:
        """``name`` is what error messages call the blob, by default its digest."""
        self._store = store
        self.digest = digest
        self.name = name or f"blob {digest}"
        self.size = 0
        self.committed = False
        with _store_errors(f"cannot create a file in {store.ingest_dir}"):
            self._file, self._path = locked_temporary_file(
                store.ingest_dir, f"{digest.hex[:16]}-"
            )

    def write(self, data: bytes) -> None:
        with _store_errors(f"cannot write {self.name} to {self._path}"):
            self._file.write(data)
        self.size += len(data)

    @property
    def path(self) -> Path:
        """The partial file; call ``flush`` before reading back what ``write`` wrote."""
        return self._path

    def flush(self) -> None:
        """Write out the bytes that ``write`` still buffers."""
        with _store_errors(f"cannot write {self.name} to {self._path}"):
            self._file.flush()

    def write_at(self, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset``; safe from several threads at once.

        A writer is filled either with ``write`` or with ``write_at``, never
        both, since ``write`` buffers.
        """
        with _store_errors(f"cannot write {self.name} to {self._path}"):
            view = memoryview(data)
            while view:
                written = os.pwrite(self._file.fileno(), view, offset)
                view, offset = view[written:], offset + written

    def commit(self, digest: Digest | None = None) -> None:
        """Move the verified blob into ``blobs/``; only call after verifying.

        ``digest`` names a blob whose digest was not known when writing began.

        The rename happens while the file is still locked, so a sweep by
        another process cannot take it for an abandoned one.
        """
        self.digest = digest or self.digest
        with _store_errors(f"cannot store {self.name}"):
            self._file.flush()
            os.fchmod(self._file.fileno(), 0o666 & ~_UMASK)
            os.fsync(self._file.fileno())
            os.replace(self._path, self._store.blob_path(self.digest))
            self._file.close()
        self.committed = True
        self._store.note_committed(self.digest)

    def discard(self) -> None:
        # Unlinked while still locked: a resumable partial closed first could
        # be opened and locked by another pull, whose file would then vanish.
        try:
            self._path.unlink(missing_ok=True)
        finally:
            # Bytes still buffered belong to a file that is gone, so failing
            # to write them, as on a full disk, does not matter.
            with contextlib.suppress(OSError):
                self._file.close()


class ResumableWriter(BlobWriter):
    """A blob download that a later pull can finish after this one was killed.

    Its file is ``ingest/partial-<hex>``; ``existing`` bytes are already
    there from an earlier attempt. They are unverified: the caller hashes
    them again before going on, and discards the file if the blob fails.
    """

    def __init__(
        self, store: Store, digest: Digest, file: BinaryIO, path: Path
    ) -> None:
        self._store = store
        self.digest = digest
        self.name = f"blob {digest}"
        self.committed = False
        self._file, self._path = file, path
        self._file.seek(0, os.SEEK_END)
        self.existing = self._file.tell()
        self.size = self.existing

    def existing_pieces(self, piece_size: int = 1 << 20) -> Iterator[bytes]:
        """Yield the bytes already in the file, from the start, through the lock."""
        offset = 0
        while offset < self.existing:
            length = min(piece_size, self.existing - offset)
            piece = os.pread(self._file.fileno(), length, offset)
            if not piece:
                return
            offset += len(piece)
            yield piece

    def restart(self) -> None:
        """Drop the bytes kept from an earlier pull and start from nothing."""
        with _store_errors(f"cannot truncate {self._path}"):
            self._file.truncate(0)
        self.existing = self.size = 0

    def release(self) -> None:
        """Keep the partial file for a later pull, and let others use it.

        A file without a byte would only wait for gc, so it is removed,
        while still locked, as ``discard`` does.
        """
        if self._file.closed:
            # The writer was discarded already, as when its bytes failed verification.
            return
        with _store_errors(f"cannot write {self.name} to {self._path}"):
            try:
                self._file.flush()
                if os.fstat(self._file.fileno()).st_size == 0:
                    self._path.unlink(missing_ok=True)
                    journal_of(self._path).unlink(missing_ok=True)
            finally:
                self._file.close()


class StoredElsewhere(Exception):
    """Another process stored the blob while this one got ready to write it."""


def _open_partial(path: Path) -> tuple[BinaryIO, Path] | None:
    """Open and lock a partial download; return None if another process has it.

    Another process may commit or sweep the file between the open and the
    lock, so the locked file must still be the one at the path.
    """
    for _ in range(10):
        # Not O_APPEND: on Linux pwrite ignores its offset on such files.
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        file = os.fdopen(handle, "r+b")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.close()
            return None
        try:
            if os.stat(path).st_ino == os.fstat(file.fileno()).st_ino:
                return file, path
        except FileNotFoundError:
            pass
        file.close()
    return None


def locked_temporary_file(directory: Path, prefix: str) -> tuple[BinaryIO, Path]:
    """Create and lock a new file in ``directory``, its name starting with ``prefix``.

    The lock marks the file as in use: a file that no process has locked is
    left over from a killed pull, and the next sweep deletes it. A sweep may
    delete the file between its creation and the lock, so the locked file
    is checked to still be the one at its path.
    """
    while True:
        handle, name = tempfile.mkstemp(prefix=prefix, dir=directory)
        file = os.fdopen(handle, "wb")
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            if os.stat(name).st_ino == os.fstat(handle).st_ino:
                return file, Path(name)
        except FileNotFoundError:
            pass
        file.close()


def _size_of(path: Path) -> int:
    """Return the bytes a file holds on disk, which grow as a rebuild fills holes."""
    try:
        return path.stat().st_blocks * 512
    except OSError:
        return 0


def _locked_elsewhere(path: Path) -> bool:
    """Tell whether another open file holds the lock of a partial download."""
    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(handle)
    return False


@contextlib.contextmanager
def _store_errors(action: str) -> Iterator[None]:
    """Raise StoreError for operating-system errors, such as a full disk."""
    try:
        yield
    except OSError as error:
        failure = StoreError(f"{action}: {error.strerror or error}")
        failure.errno = error.errno
        raise failure from None


class Store:
    """An OCI image layout directory plus apparate's working folders."""

    def __init__(
        self,
        root: Path,
        *,
        create: bool = True,
        read_only: bool = False,
        hold: bool = False,
    ) -> None:
        """Open the store at ``root``, creating it unless ``create`` is false.

        Without ``create`` nothing is written on opening, not even the sweep
        of ``ingest/``, and a missing store raises StoreError. A
        ``read_only`` store writes nothing at all: a missing one reads as
        empty, and a damaged blob is left in place. A store opened with
        ``create`` or ``hold`` is held shared until ``close``, so gc and rm
        wait for its user.
        """
        # Absolute, as summaries and messages show it.
        self.root = Path(os.path.abspath(root))
        self.ingest_dir = self.root / "ingest"
        self._users_fd: int | None = None
        # Blobs this process verified and committed, so exports need not hash
        # them again.
        self._committed_here: set[Digest] = set()
        self._absent = False
        self._read_only = read_only
        # References of invalid entries that rm removes, left out when the
        # index is read.
        self._hidden: set[str] = set()
        self._check_layout()
        if not create:
            if not (self.root / "index.json").is_file():
                if read_only:
                    self._absent = True
                    return
                raise StoreError(
                    f"no store at {self.root}",
                    hint="check --store or APPARATE_STORE, or pull an image first",
                )
            if hold:
                with _store_errors(f"cannot lock {self.root / USERS_LOCK}"):
                    self._hold_shared()
            return
        self.check_writable()
        try:
            self._create()
            self._hold_shared()
        except OSError as error:
            raise StoreError(
                f"cannot create the store at {self.root}: {error}"
            ) from None

    def check_writable(self) -> None:
        """Raise StoreError if the store exists but this process cannot write to it.

        SQLite would report it later as "unable to open database file".
        """
        if not self.root.is_dir() or os.access(self.root, os.W_OK):
            return
        read_only_mount = os.statvfs(self.root).f_flag & os.ST_RDONLY
        reason = "a read-only file system" if read_only_mount else "permission denied"
        raise StoreError(
            f"the store {self.root} is not writable: {reason}",
            hint="give a writable --store, or 'apparate images' and 'import' "
            "read this one as it is",
        )

    def _check_layout(self) -> None:
        """Raise StoreError if a part of the layout exists with the wrong type.

        Parts that are missing are left to ``_create``, or count as empty.
        """
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(
                f"the store {self.root} is not a directory",
                hint="give another --store, or move the file aside",
            )
        for name, directory in _LAYOUT_PARTS.items():
            path = self.root / name
            if path.exists() and path.is_dir() != directory:
                kind = "a directory" if directory else "a file"
                raise StoreError(
                    f"the store {self.root} is damaged: {path} is not {kind}, "
                    "as an OCI image layout needs",
                    hint=f"move {path} aside and pull the images again",
                )

    def _hold_shared(self) -> None:
        """Lock the users file shared for as long as this object lives.

        Blobs a pull has stored but not tagged yet are unreferenced, so gc
        waits until no other process has the store open. The lock goes with
        the object, or earlier with ``close``.

        NOTE: a Store that only a reference cycle keeps alive keeps the lock
        until Python's cycle collector frees it, so long-running callers
        should ``close`` stores they are done with.
        """
        fd = self._open_users_lock()
        if fd is None:
            return
        self._release = weakref.finalize(self, os.close, fd)
        _lock_shared(fd, self.root)
        self._users_fd = fd

    def _open_users_lock(self) -> int | None:
        """Open the users file, or return None when this process cannot write the store.

        A store on a read-only mount, or of another user, has no users file
        unless a pull made one earlier. This process can only read such a
        store, and any write it tries fails, so it goes without the lock. At
        worst a dry run of gc then lists blobs that a running pull of the
        store's owner has not tagged yet.
        """
        path = self.root / USERS_LOCK
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        except OSError as error:
            if error.errno not in _READ_ONLY_ERRORS:
                raise
        try:
            # flock needs no write access, so an existing file is still locked.
            return os.open(path, os.O_RDONLY)
        except OSError:
            log.debug("cannot create %s, so the store is read without locking", path)
            return None

    def close(self) -> None:
        """Stop holding the store open, so gc need not wait for this object."""
        if self._users_fd is not None:
            self._release()
            self._users_fd = None

    @contextlib.contextmanager
    def exclusive(self, wait: float) -> Iterator[None]:
        """Hold the store alone: no other open Store exists meanwhile.

        Waits up to ``wait`` seconds for other processes to close the store,
        then raises StoreError. Another Store object of this process on the
        same directory counts as another user.
        """
        own = self._users_fd
        with _store_errors(f"cannot lock {self.root / USERS_LOCK}"):
            fd = self._open_users_lock() if own is None else own
        if fd is None:
            yield
            return
        try:
            _lock_alone(fd, wait, self.root)
            yield
        finally:
            if own is None:
                os.close(fd)
            else:
                fcntl.flock(fd, fcntl.LOCK_SH)

    def _create(self) -> None:
        self._check_not_foreign()
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        self.ingest_dir.mkdir(exist_ok=True)
        layout_file = self.root / "oci-layout"
        index_file = self.root / "index.json"
        leftovers = list(self.root.glob(f".{layout_file.name}-*"))
        if leftovers or not layout_file.exists() or not index_file.exists():
            with self._locked():
                # Every writer of oci-layout takes the lock, so a temporary
                # copy found here was left by a process killed while writing.
                for leftover in self.root.glob(f".{layout_file.name}-*"):
                    leftover.unlink(missing_ok=True)
                if not layout_file.exists():
                    _write_atomically(layout_file, json.dumps(LAYOUT_VERSION).encode())
                if not index_file.exists():
                    self._write_index([])
        self._sweep_ingest()

    def _check_not_foreign(self) -> None:
        """Raise StoreError when the folder contains files that are not a store's."""
        if (self.root / "oci-layout").exists() or not self.root.is_dir():
            return
        foreign = sorted(
            entry.name
            for entry in self.root.iterdir()
            if entry.name not in _STORE_NAMES and not entry.name.startswith(".oci-")
        )
        if foreign:
            raise StoreError(
                f"{self.root} is not a store, and it contains other files such as "
                f"{foreign[0]}",
                hint="give a new or empty folder with --store or APPARATE_STORE",
            )

    def _sweep_ingest(self) -> None:
        """Delete partial blobs that no running process holds.

        Resumable downloads (``partial-*``) are kept for a later pull to
        finish, unless they are older than ``PARTIAL_MAX_AGE`` or their blob
        is stored already, as after a pull killed right after its commit.
        A journal goes with its partial file, and alone once that is gone.
        """
        now = time.time()
        for path in self.ingest_dir.iterdir():
            if path.name.endswith(JOURNAL_SUFFIX):
                continue
            with contextlib.suppress(OSError), open(path, "rb") as partial:
                resumable = path.name.startswith(PARTIAL_PREFIX)
                if (
                    resumable
                    and now - path.stat().st_mtime < PARTIAL_MAX_AGE
                    and not self.blob_of_partial_stored(path)
                ):
                    continue
                fcntl.flock(partial, fcntl.LOCK_EX | fcntl.LOCK_NB)
                path.unlink()
                journal_of(path).unlink(missing_ok=True)
        # A pull creates a partial file before its journal and deletes the
        # journal after it, so a journal without its partial file is of no use.
        for journal in self.ingest_dir.glob(f"{PARTIAL_PREFIX}*{JOURNAL_SUFFIX}"):
            if not journal.with_name(journal.name[: -len(JOURNAL_SUFFIX)]).exists():
                with contextlib.suppress(OSError):
                    journal.unlink()

    def blob_of_partial_stored(self, partial: Path) -> bool:
        """Tell whether the blob a partial download is for is in ``blobs/``."""
        digest = Digest.parse_or_none(f"sha256:{partial.name[-64:]}")
        return digest is not None and self.has_blob(digest)

    def note_committed(self, digest: Digest) -> None:
        self._committed_here.add(digest)

    def committed_here(self, digest: Digest) -> bool:
        """Tell whether this process verified and committed the blob itself."""
        return digest in self._committed_here

    def blob_path(self, digest: Digest) -> Path:
        return self.root / "blobs" / digest.algorithm / digest.hex

    def has_blob(self, digest: Digest, size: int | None = None) -> bool:
        try:
            stat = self.blob_path(digest).stat()
        except FileNotFoundError:
            return False
        return size is None or stat.st_size == size

    def read_blob(self, digest: Digest) -> bytes:
        try:
            return self.blob_path(digest).read_bytes()
        except OSError as error:
            raise StoreError(
                f"cannot read blob {digest} from the store: {error}"
            ) from None

    def read_intact_blob(self, digest: Digest, remove: bool = True) -> bytes | None:
        """Read a small blob and check it; a damaged copy gives None.

        A damaged copy is removed, so the next pull fetches it again, unless
        ``remove`` is False, as for a blob of an image nobody requested.
        """
        body = self.read_blob(digest)
        if digest.matches(body):
            return body
        if not remove:
            log.debug("blob %s in the store %s is damaged", digest, self.root)
            return None
        if self._read_only:
            log.warning(
                "blob %s in the store %s is damaged; the next pull fetches it",
                digest, self.root,
            )  # fmt: skip
        else:
            self.remove_damaged_blob(digest)
        return None

    def remove_damaged_blob(self, digest: Digest) -> None:
        """Remove a blob whose bytes no longer match its digest, so a pull fetches it."""
        log.warning(
            "blob %s in the store %s is damaged (its bytes do not match its "
            "digest); removed it", digest, self.root,
        )  # fmt: skip
        with _store_errors(f"cannot remove the damaged blob {digest}"):
            self.blob_path(digest).unlink(missing_ok=True)

    @contextlib.contextmanager
    def ingest(self, digest: Digest) -> Iterator[BlobWriter]:
        """Yield a writer for a blob; it is dropped unless the caller commits."""
        with _store_errors(f"cannot create {self.blob_path(digest).parent}"):
            self.blob_path(digest).parent.mkdir(parents=True, exist_ok=True)
        writer = BlobWriter(self, digest)
        committed = False
        try:
            yield writer
            committed = writer.committed
        finally:
            if not committed:
                writer.discard()

    def partial_path(self, digest: Digest, kind: str = "") -> Path:
        """Return the file in which an interrupted download of a blob is kept."""
        return self.ingest_dir / f"{PARTIAL_PREFIX}{kind}{digest.hex}"

    def discard_partial(self, path: Path) -> bool:
        """Delete a kept partial download unless another process has it locked.

        Returns whether the file is gone. A file that cannot be deleted is
        left to the sweep of a later command.
        """
        if not path.exists():
            return True
        try:
            opened = _open_partial(path)
            if opened is None:
                return False
            file, _ = opened
            with file:
                path.unlink()
        except OSError as error:
            log.warning("cannot remove %s: %s", path, error.strerror or error)
            return False
        return True

    def wait_for_other_writers(
        self, digest: Digest, size: int, stopped: Callable[[], bool]
    ) -> bool:
        """Wait while another process writes this blob; return whether it is stored.

        Two pulls that share a blob then download it once, the second taking
        the first one's result, or resuming its partial file if it failed.
        The wait ends early when ``stopped()`` turns true, or when the other
        process wrote nothing for ``STALLED_WRITER_SECONDS`` (a suspended
        pull, say): this process then downloads the blob itself.
        """
        partials = [self.partial_path(digest, kind) for kind in PARTIAL_KINDS]
        started = last_growth = time.monotonic()
        written = -1
        warned = False
        while any(_locked_elsewhere(path) for path in partials) and not stopped():
            now = time.monotonic()
            if (current := sum(_size_of(path) for path in partials)) != written:
                written, last_growth = current, now
            if now - last_growth > STALLED_WRITER_SECONDS:
                log.warning(
                    "blob %s: the other pull writing it made no progress for "
                    "%.0f s; downloading it here too", digest, STALLED_WRITER_SECONDS,
                )  # fmt: skip
                break
            if not warned and now - started > WAIT_NOTICE_SECONDS:
                log.warning(
                    "blob %s is being written by another pull into %s; waiting "
                    "for it", digest, self.root,
                )  # fmt: skip
                warned = True
            time.sleep(_LOCK_POLL_SECONDS)
        return self.has_blob(digest, size)

    @contextlib.contextmanager
    def resumable(
        self,
        digest: Digest,
        size: int,
        kind: str = "",
        stopped: Callable[[], bool] = lambda: False,
    ) -> Iterator[BlobWriter]:
        """Yield a writer whose partial file outlives a failed or killed pull.

        ``kind`` keeps files written differently apart: a blob rebuilt from
        ranges has holes, so it must not be resumed as a sequential download.
        Another process may have started writing the blob since the caller
        checked (see ``wait_for_other_writers``): this waits for it again,
        and raises StoredElsewhere when it stored the blob. Only when that
        process stalls, or ``stopped()`` turns true, is the writer an
        ordinary one that starts from nothing.
        """
        path = self.partial_path(digest, kind)
        with _store_errors(f"cannot create a file in {self.ingest_dir}"):
            self.blob_path(digest).parent.mkdir(parents=True, exist_ok=True)
            opened = _open_partial(path)
        while opened is None:
            if self.wait_for_other_writers(digest, size, stopped):
                raise StoredElsewhere(digest)
            if stopped() or _locked_elsewhere(path):
                break
            with _store_errors(f"cannot create a file in {self.ingest_dir}"):
                opened = _open_partial(path)
        if opened is None:
            with self.ingest(digest) as writer:
                yield writer
            return
        if self.has_blob(digest, size):
            # Another process committed it after the caller checked, so the
            # partial file, new or left over, is of no use.
            file, partial = opened
            with contextlib.suppress(OSError):
                partial.unlink()
                journal_of(partial).unlink(missing_ok=True)
            file.close()
            raise StoredElsewhere(digest)
        writer = ResumableWriter(self, digest, *opened)
        if writer.existing > size:
            writer.restart()
        try:
            yield writer
        except BaseException:
            if not writer.committed:
                # The error already raised explains more than a failed close.
                try:
                    writer.release()
                except StoreError as error:
                    log.warning("%s", error)
            raise
        if not writer.committed:
            writer.release()

    def put_blob(self, data: bytes, digest: Digest) -> None:
        """Store a small blob whose digest the caller has already verified."""
        if self.has_blob(digest, len(data)):
            return
        with self.ingest(digest) as writer:
            writer.write(data)
            writer.commit()

    def tag(
        self,
        reference: str,
        descriptor: Descriptor,
        source_manifest: Digest | None = None,
        source_index: Digest | None = None,
    ) -> Digest | None:
        """Point ``reference`` at a manifest whose blobs are all stored.

        ``source_manifest`` is the registry's manifest digest when the tagged
        manifest is a converted copy of it. Returns the digest ``reference``
        pointed at before, or None when it is a new tag.
        """
        annotations = {REF_NAME: reference, CONTAINERD_NAME: reference}
        if source_manifest and source_manifest != descriptor.digest:
            annotations[SOURCE_MANIFEST] = str(source_manifest)
        if source_index:
            annotations[SOURCE_INDEX] = str(source_index)
        entry = {
            "mediaType": descriptor.media_type,
            "digest": str(descriptor.digest),
            "size": descriptor.size,
            "annotations": annotations,
        }
        with _store_errors(f"cannot tag {reference}"), self._locked():
            entries = self._read_index(filtered=False)
            previous = [item for item in entries if _reference_of(item) == reference]
            kept = [item for item in entries if _reference_of(item) != reference]
            self._write_index([*kept, entry])
        return Digest.parse_or_none(previous[0].get("digest")) if previous else None

    def untag(self, references: Iterable[str]) -> list[str]:
        """Remove the entries tagged ``references``; return those that were there."""
        requested = set(references)
        with _store_errors("cannot untag images"), self._locked():
            entries = self._read_index(filtered=False)
            remaining = [
                item for item in entries if _reference_of(item) not in requested
            ]
            removed = [
                reference
                for item in entries
                if (reference := _reference_of(item)) in requested
            ]
            if removed:
                self._write_index(remaining)
        return removed

    def hide_invalid(self, references: Iterable[str]) -> list[str]:
        """Leave the invalid entries tagged ``references`` out of what this object reads.

        Such an entry names no blob gc could keep, so rm can plan without
        it, and removes it with the images it untags. Nothing is written
        here, and writes still see every entry. Returns the references of
        the entries hidden.
        """
        requested = set(references)
        found = [
            reference
            for item in self._read_index()
            if (reference := _reference_of(item)) in requested and _is_invalid(item)
        ]
        self._hidden.update(found)
        return list(dict.fromkeys(found))

    @property
    def hidden_references(self) -> list[str]:
        return sorted(self._hidden)

    def has_reference(self, reference: str) -> bool:
        """Tell whether an image is tagged ``reference`` in the store."""
        return any(_reference_of(item) == reference for item in self._read_index())

    def entries(self) -> list[Descriptor]:
        """Return every entry of ``index.json``, tagged or not.

        Raises StoreError for an invalid entry: the blobs it needs are then
        unknown, so gc must not run.
        """
        entries = []
        for position, item in enumerate(self._read_index()):
            try:
                entries.append(_descriptor(item))
            except ValueError as error:
                raise StoreError(
                    self._invalid_entry(position, error), hint=_INVALID_ENTRY_HINT
                ) from None
        return entries

    def images(self) -> list[StoredImage]:
        """List every tagged image, in the order it was tagged.

        An invalid entry is left out with a warning, so the others can still
        be listed and imported, as docker lists the images it can read.
        """
        images = []
        for position, item in enumerate(self._read_index()):
            try:
                descriptor = _descriptor(item)
                if descriptor.annotations.get(REF_NAME):
                    images.append(_stored_image(descriptor))
            except ValueError as error:
                log.warning(
                    "%s (skipped): %s",
                    self._invalid_entry(position, error), _INVALID_ENTRY_HINT,
                )  # fmt: skip
        return images

    def _invalid_entry(self, position: int, error: ValueError) -> str:
        path = self.root / "index.json"
        return f"{path} lists an invalid entry, manifests[{position}]: {error}"

    def _read_index(self, filtered: bool = True) -> list[Any]:
        """Read the entries of ``index.json``, which may be of any JSON type.

        Unless ``filtered`` is false, as for a rewrite of the file, the
        entries ``hide_invalid`` hid are left out.
        """
        if self._absent:
            return []
        path = self.root / "index.json"
        try:
            body = path.read_bytes()
        except OSError as error:
            raise StoreError(f"cannot read {path}: {error.strerror}") from None
        try:
            document = json.loads(body)
        except ValueError as error:
            raise StoreError(
                f"{path} is damaged: it is not valid JSON ({error})",
                hint=_DAMAGED_INDEX_HINT,
            ) from None
        manifests = document.get("manifests") if isinstance(document, dict) else None
        if not isinstance(manifests, list):
            raise StoreError(
                f"{path} is not an OCI image index: it has no manifests list",
                hint=_DAMAGED_INDEX_HINT,
            )
        if filtered and self._hidden:
            return [item for item in manifests if not _hidden_by(item, self._hidden)]
        return manifests

    def _write_index(self, entries: list[dict[str, Any]]) -> None:
        """Replace ``index.json``. Call it inside ``_locked``."""
        # Temporary copies are left only by a process killed while writing
        # one, since the lock held here rules out a live writer.
        for leftover in self.root.glob(".index.json-*"):
            leftover.unlink(missing_ok=True)
        document = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        body = json.dumps(document, indent=2).encode()
        _write_atomically(self.root / "index.json", body)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / ".lock", "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)


def default_store_path() -> Path:
    """``APPARATE_STORE``, else the user's data directory."""
    configured = os.environ.get("APPARATE_STORE")
    if configured:
        return Path(configured)
    return platformdirs.user_data_path("apparate") / "store"


def journal_of(partial: Path) -> Path:
    """Return the path of a partial rebuild's journal of written ranges."""
    return partial.with_name(partial.name + JOURNAL_SUFFIX)


def not_created(root: Path) -> bool:
    """Tell whether no store was created at ``root``: it is missing or empty.

    A folder that contains other files is left to Store, which reports it.
    """
    try:
        return not any(root.iterdir())
    except FileNotFoundError:
        return True
    except OSError:
        return False


def _read_umask() -> int:
    """Return the process's file mode creation mask (reading means setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once at import, because setting the mask is not safe while layer
# threads create files.
_UMASK = _read_umask()


def _write_atomically(path: Path, data: bytes) -> None:
    handle, name = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as temp:
            # mkstemp creates files only the owner can read; a layout is
            # shared with other tools, so the usual umask applies instead.
            os.fchmod(temp.fileno(), 0o666 & ~_UMASK)
            temp.write(data)
            temp.flush()
            os.fsync(temp.fileno())
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def _hidden_by(item: Any, references: set[str]) -> bool:
    """Tell whether ``item`` is an invalid entry tagged with one of ``references``."""
    return _reference_of(item) in references and _is_invalid(item)


def _is_invalid(item: Any) -> bool:
    """Tell whether ``images`` or ``entries`` would reject an entry."""
    try:
        descriptor = _descriptor(item)
        if descriptor.annotations.get(REF_NAME):
            _stored_image(descriptor)
    except ValueError:
        return True
    return False


def _reference_of(item: Any) -> str | None:
    """Return the reference an entry is tagged with, or None if untagged or invalid."""
    annotations = item.get("annotations") if isinstance(item, dict) else None
    reference = annotations.get(REF_NAME) if isinstance(annotations, dict) else None
    return reference if isinstance(reference, str) and reference else None


def _lock_shared(fd: int, root: Path) -> None:
    """Lock ``fd`` shared, waiting while another process holds the store alone.

    Such a hold (gc, rm, a fit to max_store_size) is usually short, so a
    warning is logged only after ``WAIT_NOTICE_SECONDS``. The wait has no
    limit because the store must not change while it is held. Ctrl-C ends it.
    """
    notice = time.monotonic() + WAIT_NOTICE_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= notice:
                break
            time.sleep(_LOCK_POLL_SECONDS)
    log.warning(
        "the store %s is in use by another apparate process removing images "
        "or blobs (gc, rm or max_store_size); waiting for it to finish", root,
    )  # fmt: skip
    fcntl.flock(fd, fcntl.LOCK_SH)


def _lock_alone(fd: int, wait: float, root: Path) -> None:
    """Lock ``fd`` exclusively, polling for up to ``wait`` seconds.

    The shared lock is dropped first, so two processes that both want the
    store alone cannot wait for each other.
    """
    fcntl.flock(fd, fcntl.LOCK_UN)
    started = time.monotonic()
    warned = False
    for attempt in itertools.count():
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if attempt == 0:
                # Store objects of this process that only a reference cycle
                # keeps alive still hold their shared lock until collected.
                gc.collect()
                continue
            now = time.monotonic()
            if now - started >= wait:
                raise StoreError(
                    f"the store {root} is in use by another apparate process",
                    hint="try again once its pull, import or convert has finished",
                ) from None
            if not warned and now - started >= WAIT_NOTICE_SECONDS:
                log.warning(
                    "the store %s is in use by another apparate process, such "
                    "as a pull, import or convert; waiting up to %.0f s for it "
                    "to finish", root, wait,
                )  # fmt: skip
                warned = True
            time.sleep(_LOCK_POLL_SECONDS)


def _descriptor(item: Any) -> Descriptor:
    """Parse an entry of ``index.json``, raising ValueError that names what is invalid."""
    problem = _entry_problem(item)
    if problem:
        raise ValueError(problem)
    return Descriptor(
        media_type=item.get("mediaType", ""),
        digest=Digest.parse(item["digest"]),
        size=item.get("size", 0),
        annotations=dict(item.get("annotations", {})),
    )


def _entry_problem(item: Any) -> str | None:
    """Return what is wrong with the shape of an entry, or None."""
    if not isinstance(item, dict):
        return f"{json.dumps(item)[:60]} is not a JSON object"
    media_type = item.get("mediaType", "")
    size = item.get("size", 0)
    annotations = item.get("annotations", {})
    if not isinstance(media_type, str):
        return f"its mediaType {media_type!r} is not a string"
    if not isinstance(item.get("digest"), str):
        return "it has no digest string"
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return f"its size {size!r} is not a whole number of bytes"
    if not isinstance(annotations, dict) or not all(
        isinstance(value, str) for value in annotations.values()
    ):
        return "its annotations are not an object of strings"
    return None


def _stored_image(descriptor: Descriptor) -> StoredImage:
    """Describe a tagged entry, raising ValueError for an invalid digest annotation."""
    annotations = descriptor.annotations
    manifest = annotations.get(SOURCE_MANIFEST)
    index = annotations.get(SOURCE_INDEX)
    try:
        source_manifest = Digest.parse(manifest) if manifest else descriptor.digest
        source_index = Digest.parse(index) if index else None
    except ValueError as error:
        raise ValueError(f"its annotations name an invalid digest: {error}") from None
    return StoredImage(
        reference=annotations[REF_NAME],
        descriptor=descriptor,
        source_manifest=source_manifest,
        source_index=source_index,
    )
