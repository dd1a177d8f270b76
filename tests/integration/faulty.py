"""An HTTP forwarder on 127.0.0.1 that makes a real registry misbehave on blobs.

Requests pass through to the registry unchanged, except GETs of one blob:
in ``error`` mode they get a 500, and in ``stall`` mode the body stops after
its first bytes and the connection stays open until the forwarder stops.
In ``silent`` mode, range requests that end before the blob's last byte
get their headers and no body, while the whole blob, and a range to its
end such as a chunk table's, pass through.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STALL_AFTER = 64 * 1024
MAX_STALL_SECONDS = 60.0


@contextmanager
def misbehaving(upstream: str, digest: str, mode: str) -> Iterator[str]:
    """Forward a new local port to the registry at ``upstream`` (host:port).

    Yields the forwarder's host:port. ``mode`` is ``error``, ``stall`` or
    ``silent``.
    """
    if mode not in ("error", "stall", "silent"):
        raise ValueError(f"unknown mode {mode!r}")
    released = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._forward("GET")

        def do_HEAD(self) -> None:
            self._forward("HEAD")

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _forward(self, method: str) -> None:
            faulty = method == "GET" and self.path.endswith(f"/blobs/{digest}")
            if faulty and mode == "error":
                self._fail()
            else:
                self._relay(method, stall=faulty and mode == "stall",
                            silent=faulty and mode == "silent")  # fmt: skip

        def _fail(self) -> None:
            body = json.dumps({"errors": [{"code": "UNKNOWN", "message": "boom"}]})
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def _relay(self, method: str, stall: bool, silent: bool = False) -> None:
            connection = http.client.HTTPConnection(upstream, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
            connection.request(method, self.path, headers=headers)
            response = connection.getresponse()
            self.send_response(response.status)
            for name, value in response.getheaders():
                if name.lower() not in ("connection", "transfer-encoding"):
                    self.send_header(name, value)
            self.end_headers()
            if method == "HEAD":
                connection.close()
                return
            if silent and not _reaches_end(response.getheader("Content-Range")):
                self.wfile.flush()
                released.wait(MAX_STALL_SECONDS)
                self.close_connection = True
            elif stall:
                self.wfile.write(response.read(STALL_AFTER))
                self.wfile.flush()
                released.wait(MAX_STALL_SECONDS)
                self.close_connection = True
            else:
                while piece := response.read(64 * 1024):
                    self.wfile.write(piece)
            connection.close()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        released.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def _reaches_end(content_range: str | None) -> bool:
    """Tell whether a response is the whole blob or a range up to its last byte."""
    if content_range is None:
        return True
    span, _, total = content_range.removeprefix("bytes ").partition("/")
    last = span.partition("-")[2]
    return int(last) + 1 == int(total)
