"""A TCP forwarder on 127.0.0.1 that slows a link down: replies paced, requests delayed."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

PIECE = 16 * 1024


@contextmanager
def throttled(
    target_port: int, bytes_per_second: int = 0, request_delay: float = 0.0
) -> Iterator[int]:
    """Forward a new local port to ``target_port``; yield the new port.

    Replies are paced at ``bytes_per_second`` (0: not paced), and each piece
    of a request waits ``request_delay`` seconds, which adds a round trip
    without capping the throughput of replies.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    thread = threading.Thread(
        target=_accept,
        args=(listener, target_port, bytes_per_second, request_delay, stop),
        daemon=True,
    )
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()
        thread.join(5)


def _accept(
    listener: socket.socket,
    target_port: int,
    rate: int,
    delay: float,
    stop: threading.Event,
) -> None:
    listener.settimeout(0.2)
    while not stop.is_set():
        try:
            client, _ = listener.accept()
        except (TimeoutError, OSError):
            continue
        try:
            upstream = socket.create_connection(("127.0.0.1", target_port))
        except OSError:
            client.close()
            continue
        pumps = ((client, upstream, 0, delay), (upstream, client, rate, 0.0))
        for source, sink, pace, wait in pumps:
            threading.Thread(
                target=_pump, args=(source, sink, pace, wait, stop), daemon=True
            ).start()


def _pump(
    source: socket.socket,
    sink: socket.socket,
    rate: int,
    delay: float,
    stop: threading.Event,
) -> None:
    # At low rates, smaller pieces come several times a second, so a paced
    # reply never goes a whole second without data.
    piece = min(PIECE, max(1024, rate // 8)) if rate else PIECE
    try:
        while not stop.is_set() and (data := source.recv(piece)):
            if delay:
                time.sleep(delay)
            sink.sendall(data)
            if rate:
                time.sleep(len(data) / rate)
    except OSError:
        pass
    finally:
        # Each pump closes both ends, so the pair goes away when either side does.
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            end.close()
