"""Probe a daemon's unix socket and turn a failed connection into an error."""

from __future__ import annotations

import contextlib
import enum
import errno
import grp
import os
import signal
import socket
import stat
from collections.abc import Iterator

from apparate.errors import DaemonPermissionDenied, DaemonUnreachable

CONNECT_TIMEOUT = 3.0


class SocketState(enum.Enum):
    ACCEPTS = "accepts connections"
    MISSING = "does not exist"
    REFUSED = "refuses connections"
    DENIED = "is not open to this user"
    TIMED_OUT = "does not accept connections in time"
    NOT_SOCKET = "is not a socket"


def probe_socket(path: str, timeout: float = CONNECT_TIMEOUT) -> SocketState:
    """Connect to a unix socket and close it again; return what happened."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout)
        try:
            connection.connect(path)
        except (FileNotFoundError, NotADirectoryError):
            return SocketState.MISSING
        except PermissionError:
            return SocketState.DENIED
        except TimeoutError:
            return SocketState.TIMED_OUT
        except OSError as error:
            if error.errno in (errno.ECONNREFUSED, errno.ENOTSOCK):
                # Linux also rejects a connection to a file that is not a socket.
                return (
                    SocketState.REFUSED if _is_socket(path) else SocketState.NOT_SOCKET
                )
            raise DaemonUnreachable(f"cannot connect to {path}: {error}") from None
    return SocketState.ACCEPTS


def _is_socket(path: str) -> bool:
    """Tell whether ``path`` is a socket. A path that cannot be read counts as one."""
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return True


@contextlib.contextmanager
def broken_pipes_raise() -> Iterator[None]:
    """Make writes to a closed pipe or socket raise BrokenPipeError in this thread.

    Python ignores SIGPIPE, and so does the command line, but a program
    that uses apparate's API may restore its default action, which ends
    the process. A daemon that closes its end while apparate streams an
    archive must give an error message instead. The signal is blocked in
    this thread only and any pending one is consumed before the old mask
    returns.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGPIPE})
    try:
        yield
    finally:
        signal.sigtimedwait({signal.SIGPIPE}, 0)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def require_socket(path: str, daemon: str, setting: str) -> None:
    """Raise an error explaining why ``daemon`` cannot be reached at ``path``.

    ``setting`` names how the user points apparate at another socket.
    """
    state = probe_socket(path)
    if state is SocketState.ACCEPTS:
        return
    message = f"{daemon} is not reachable: its socket {path} {state.value}"
    if state is SocketState.DENIED:
        raise DaemonPermissionDenied(message, hint=_permission_hint(path))
    raise DaemonUnreachable(
        message,
        hint=f"start {daemon}, or set {setting} to its socket, or pick another "
        "--into target; the image is kept in the local store",
    )


def _permission_hint(path: str) -> str:
    """Say who may use the socket at ``path``: root, or its group's members.

    Connecting needs write permission on the socket, so the group is named
    only when its members have it.
    """
    try:
        status = os.stat(path)
        group = grp.getgrgid(status.st_gid).gr_name
    except (OSError, KeyError):
        group = "root"
    else:
        if not status.st_mode & stat.S_IWGRP:
            group = "root"
    other_target = "pick another --into target; the image is kept in the local store"
    if group == "root":
        return f"run as root, or {other_target}"
    return (
        f"run as root or as a member of the group {group}, which owns {path}, "
        f"or {other_target}"
    )
