"""Write an archive to a file atomically: a temporary file, then a rename.

A path that is a pipe, a terminal or another device, such as a FIFO, is
written to directly, as skopeo does. So is a path naming one of this
process's open files, such as /dev/stdout redirected to a file: the
archive goes where the descriptor points, at its offset. A symbolic link
to a file is followed, so the link stays.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from apparate.errors import ArchiveWriteFailed, UsageError
from apparate.importers.sockets import broken_pipes_raise
from apparate.store.layout import locked_temporary_file

# Names a temporary archive as apparate's, so a sweep touches no other file.
_TEMPORARY_MARK = ".apparate-"
# Paths of an open file descriptor, the process's own when it is self.
_DESCRIPTOR_PATH = re.compile(r"/(?:dev/fd|proc/(self|thread-self|\d+)/fd)/(\d+)")
# Symbolic links followed, at most, looking for a descriptor's path (Linux's limit).
_MAX_LINKS = 40


def writes_to_stdout(path: Path) -> bool:
    """Return whether ``path`` names this process's standard output."""
    return _own_descriptor(path) == 1


def _own_descriptor(path: Path) -> int | None:
    """Return the descriptor number if ``path`` names one of this process's open files.

    /dev/stdout and /dev/fd/N are links to /proc/self/fd/N, whose own
    link leads to the file the descriptor points to, not to its offset.
    """
    current = os.path.abspath(path)
    for _ in range(_MAX_LINKS):
        match = _DESCRIPTOR_PATH.fullmatch(current)
        if match is not None:
            owner = match.group(1)
            if owner is None or owner in ("self", "thread-self"):
                return int(match.group(2))
            return int(match.group(2)) if int(owner) == os.getpid() else None
        try:
            target = os.readlink(current)
        except OSError:
            return None
        current = os.path.normpath(os.path.join(os.path.dirname(current), target))
    return None


def written_in_place(path: Path) -> bool:
    """Tell whether an archive for ``path`` is written to it directly, not renamed into place.

    That is so for a pipe, a device or one of this process's open files,
    whose reader may receive part of an archive.
    """
    if _own_descriptor(path) is not None:
        return True
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        # A missing file is created by the rename. Another failure stops the write.
        return False


def check_archive_path(path: Path) -> None:
    """Raise UsageError when no archive can be written at ``path``.

    Checked before a pull, so that a folder or a missing folder named by
    mistake fails before any byte is fetched, not after the whole pull.
    """
    if _own_descriptor(path) is not None:
        return
    try:
        is_folder, parent_exists = path.is_dir(), path.parent.is_dir()
    except OSError:
        # A folder this user cannot search: the write reports it, with the
        # command to retry.
        return
    if is_folder:
        raise UsageError(
            f"the archive path {path} is a folder",
            hint=f"name a file in it, such as {path / 'image.tar'}",
        )
    if not parent_exists:
        raise UsageError(
            f"the folder {path.parent} of the archive path does not exist",
            hint="create it first, or name a file in an existing folder",
        )


def write_archive(
    path: Path, pieces: Iterator[bytes], reference: str, retry: str
) -> int:
    """Write ``pieces`` to ``path``; return the bytes written.

    The archive appears under its name only once complete, so a reader never
    sees half of one, and a failed write leaves any earlier file in place.
    ``retry`` is the command that writes the archive again, which errors name.
    """
    try:
        # A reader of a pipe that exits, such as a failing `docker load`,
        # must fail the import rather than end the process by SIGPIPE, if a
        # calling program turned it on.
        with broken_pipes_raise():
            return _write(path, pieces)
    except OSError as error:
        raise _failed(error, path, reference, retry) from None


def _write(path: Path, pieces: Iterator[bytes]) -> int:
    descriptor = _own_descriptor(path)
    if descriptor is not None:
        with os.fdopen(os.dup(descriptor), "wb") as output:
            return _write_all(output, pieces)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        # A pipe or a device.
        with open(path, "wb") as output:
            return _write_all(output, pieces)
    # Replacing a link would cut it; the file it points to is replaced instead.
    path = Path(os.path.realpath(path)) if path.is_symlink() else path
    prefix = f".{path.name}{_TEMPORARY_MARK}"
    _remove_abandoned(path.parent, prefix)
    # Locked until renamed, so a sweep by another import leaves it alone.
    output, temporary = locked_temporary_file(path.parent, prefix)
    try:
        with output:
            os.fchmod(output.fileno(), 0o666 & ~_UMASK)
            written = _write_all(output, pieces)
            output.flush()
            os.fsync(output.fileno())
            os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return written


def _remove_abandoned(folder: Path, prefix: str) -> None:
    """Delete temporary archives that a killed import left, which no process locks."""
    for leftover in folder.glob(f"{glob.escape(prefix)}*"):
        with contextlib.suppress(OSError), open(leftover, "rb") as file:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            leftover.unlink()


def _write_all(output: BinaryIO, pieces: Iterator[bytes]) -> int:
    written = 0
    for piece in pieces:
        output.write(piece)
        written += len(piece)
    return written


def _failed(
    error: OSError, path: Path, reference: str, retry: str
) -> ArchiveWriteFailed:
    again = f"retry with '{retry}'"
    reason = error.strerror or str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return ArchiveWriteFailed(
            f"cannot write the archive of {reference} to {path}: the disk is full",
            hint=f"free space or pick another folder, then {again}; the image "
            "is kept in the local store",
        )
    if error.errno == errno.EPIPE:
        return ArchiveWriteFailed(
            f"cannot write the archive of {reference} to {path}: the reader "
            "of the pipe exited",
            hint=f"see the reader's error, then {again}; the image is kept in "
            "the local store",
        )
    return ArchiveWriteFailed(
        f"cannot write the archive of {reference} to {path}: {reason}",
        hint=f"check the folder and its permissions, then {again}; the image "
        "is kept in the local store",
    )


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once at import, because setting the mask is not safe while other
# threads create files.
_UMASK = _read_umask()
