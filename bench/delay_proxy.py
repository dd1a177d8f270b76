"""Forward TCP connections to one upstream address, adding a fixed delay.

The shaped-link benchmark runs this inside the client's network namespace:
clients connect to 127.0.0.1, and the proxy forwards to the registry in the
server's namespace. Kernel queueing (``tc ... tbf``) limits the bandwidth,
and this proxy adds the latency, since this kernel has no ``netem``.

The delay is per round trip: each direction delays its data by half of
``--rtt-ms``, so a request and its response are late by ``--rtt-ms`` in
total. A new connection's first bytes also wait one round trip, for the TCP
handshake a real link would cost. Data is stamped when it arrives and
written once its stamp is due, while newer data keeps arriving, so the
delay does not limit throughput.

TCP between the proxy and the registry still runs over the short round trip
of the veth pair, so slow start ramps up faster than on a real 20 ms path.
A real link would therefore penalise a tool that opens more connections or
sends more requests more than these figures do.

On start it waits for the upstream to accept a connection, listens on a free
port, and prints ``{"port": N}``. Each line ``count`` on standard input is
answered with the bytes forwarded so far, as
``{"down": N, "up": N, "connections": N}``; the end of standard input stops
the proxy, so it never outlives the benchmark that started it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

READ_SIZE = 1 << 16
QUEUED_READS = 4096
CONNECT_TIMEOUT = 30.0


@dataclass
class Counters:
    """Bytes written towards the client (down) and the upstream (up)."""

    down: int = 0
    up: int = 0
    connections: int = 0

    def as_json(self) -> str:
        return json.dumps(
            {"down": self.down, "up": self.up, "connections": self.connections}
        )


class DelayProxy:
    """Accept connections and forward each to ``upstream`` with the delay."""

    def __init__(self, upstream: tuple[str, int], rtt: float) -> None:
        self.upstream = upstream
        self.rtt = rtt
        self.counters = Counters()
        self.handlers: set[asyncio.Task[None]] = set()

    async def handle(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        """Forward one client connection; ``close`` can cancel it."""
        handler = asyncio.current_task()
        if handler is None:
            raise RuntimeError("the delay proxy runs connections in tasks")
        self.handlers.add(handler)
        try:
            await self.forward(client_reader, client_writer)
        except asyncio.CancelledError:
            # Cancelled by ``close``: ending quietly keeps asyncio from logging
            # the cancellation as an error of the connection's callback.
            pass
        finally:
            self.handlers.discard(handler)
            client_writer.close()

    async def forward(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        accepted = asyncio.get_running_loop().time()
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                *self.upstream
            )
        except OSError:
            return
        self.counters.connections += 1
        # The handshake of a real link costs one round trip before any data.
        not_before = accepted + self.rtt

        def close_both() -> None:
            client_writer.close()
            upstream_writer.close()

        try:
            await asyncio.gather(
                self.pump(client_reader, upstream_writer, not_before, close_both, True),
                self.pump(
                    upstream_reader, client_writer, not_before, close_both, False
                ),
            )
        finally:
            upstream_writer.close()

    async def close(self) -> None:
        """End every open connection and wait for its tasks to finish."""
        handlers = list(self.handlers)
        for handler in handlers:
            handler.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    async def pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        not_before: float,
        close_both: Callable[[], None],
        upstream: bool,
    ) -> None:
        """Copy ``reader`` to ``writer``, each piece half a round trip late.

        The end of ``reader`` is passed on as an end of ``writer``; a failed
        write closes both connections, so the other direction ends too.
        """
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUED_READS)
        receiving = asyncio.create_task(self.receive(reader, queue, not_before))
        try:
            await self.send(queue, writer, upstream=upstream)
        except OSError:
            close_both()
        finally:
            receiving.cancel()
            await asyncio.gather(receiving, return_exceptions=True)

    async def receive(
        self,
        reader: asyncio.StreamReader,
        queue: asyncio.Queue[tuple[float, bytes]],
        not_before: float,
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await reader.read(READ_SIZE)
            except OSError:
                data = b""
            due = max(loop.time(), not_before) + self.rtt / 2
            await queue.put((due, data))
            if not data:
                return

    async def send(
        self,
        queue: asyncio.Queue[tuple[float, bytes]],
        writer: asyncio.StreamWriter,
        *,
        upstream: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            if upstream:
                self.counters.up += len(data)
            else:
                self.counters.down += len(data)
            await writer.drain()


def wait_for_upstream(host: str, port: int, timeout: float) -> None:
    """Return once ``host:port`` accepts a TCP connection."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def answer_counts(
    counters: Counters, loop: asyncio.AbstractEventLoop, finished: asyncio.Event
) -> None:
    """Print the byte counts for each ``count`` line on stdin, then set ``finished``."""
    for line in sys.stdin:
        if line.strip() == "count":
            print(counters.as_json(), flush=True)
    loop.call_soon_threadsafe(finished.set)


async def serve(proxy: DelayProxy) -> None:
    """Listen until standard input ends, forwarding each connection."""
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(json.dumps({"port": port}), flush=True)

    finished = asyncio.Event()
    arguments = (proxy.counters, asyncio.get_running_loop(), finished)
    threading.Thread(target=answer_counts, args=arguments, daemon=True).start()
    async with server:
        await finished.wait()
    await proxy.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--upstream", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--rtt-ms", type=float, default=20.0)
    args = parser.parse_args(argv)
    host, _, port = args.upstream.rpartition(":")
    wait_for_upstream(host, int(port), CONNECT_TIMEOUT)
    proxy = DelayProxy((host, int(port)), args.rtt_ms / 1000)
    try:
        asyncio.run(serve(proxy))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
