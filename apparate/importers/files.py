"""Write an archive to a file atomically: a temporary file, then a rename.

A path that is a pipe, a terminal or another device, such as /dev/stdout
or a FIFO, is written to directly, as skopeo does. A symbolic link to a
file is followed, so the link stays.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from apparate.errors import ArchiveWriteFailed

# Names a temporary archive as apparate's, so a sweep touches no other file.
_TEMPORARY_MARK = ".apparate-"


def write_archive(path: Path, pieces: Iterator[bytes], reference: str) -> int:
    """Write ``pieces`` to ``path``; return the bytes written.

    The archive appears under its name only once complete, so a reader never
    sees half of one, and a failed write leaves any earlier file in place.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as error:
        raise _failed(error, path, reference) from None
    if mode is not None and not stat.S_ISREG(mode):
        return _write_stream(path, pieces, reference)
    # Replacing a link would cut it; the file it points to is replaced instead.
    path = Path(os.path.realpath(path)) if path.is_symlink() else path
    prefix = f".{path.name}{_TEMPORARY_MARK}"
    _remove_abandoned(path.parent, prefix)
    try:
        handle, temporary = tempfile.mkstemp(prefix=prefix, dir=path.parent)
    except OSError as error:
        raise _failed(error, path, reference) from None
    written = 0
    try:
        # Locked until renamed, so a sweep by another import leaves it alone.
        with os.fdopen(handle, "wb") as output:
            fcntl.flock(output, fcntl.LOCK_EX)
            os.fchmod(output.fileno(), 0o666 & ~_UMASK)
            for piece in pieces:
                output.write(piece)
                written += len(piece)
            output.flush()
            os.fsync(output.fileno())
            os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise _failed(error, path, reference) from None
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


def _write_stream(path: Path, pieces: Iterator[bytes], reference: str) -> int:
    """Write ``pieces`` into a pipe or device in place; return the bytes written."""
    written = 0
    try:
        with open(path, "wb") as output:
            for piece in pieces:
                output.write(piece)
                written += len(piece)
    except OSError as error:
        raise _failed(error, path, reference) from None
    return written


def _failed(error: OSError, path: Path, reference: str) -> ArchiveWriteFailed:
    retry = f"retry with 'apparate import {reference} --into ...:FILE'"
    reason = error.strerror or str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return ArchiveWriteFailed(
            f"cannot write the archive of {reference} to {path}: the disk is full",
            hint=f"free space or pick another folder, then {retry}; the image "
            "is kept in the local store",
        )
    return ArchiveWriteFailed(
        f"cannot write the archive of {reference} to {path}: {reason}",
        hint=f"check the folder and its permissions, then {retry}; the image "
        "is kept in the local store",
    )


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once at import, because setting the mask is not safe while other
# threads create files.
_UMASK = _read_umask()
