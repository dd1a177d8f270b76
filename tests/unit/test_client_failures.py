"""The registry client against servers that break HTTP, stall or send unusual responses.

Misbehaving servers run on 127.0.0.1, since httpx must parse what they send.
Well-formed but unusual responses are played by respx.
"""

import hashlib
import http.server
import logging
import socket
import threading
import time

import httpx
import pytest
import respx

from apparate.digest import Digest
from apparate.errors import (
    AuthRejected,
    InvalidResponse,
    RegistryUnreachable,
    ServerError,
    TransferFailed,
    TransferTimedOut,
    TruncatedBody,
)
from apparate.manifest import Descriptor
from apparate.reference import Reference
from apparate.registry import client as client_module
from apparate.registry.client import RegistryClient
from apparate.registry.credentials import CredentialStore
from apparate.registry.transport import TransportSettings

BLOB = bytes(range(256)) * 40
BLOB_DIGEST = Digest("sha256", hashlib.sha256(BLOB).hexdigest())
DESCRIPTOR = Descriptor("application/octet-stream", BLOB_DIGEST, len(BLOB))


def open_client(
    tmp_path,
    host: str,
    plain_first: bool = True,
    read_timeout: float | None = None,
    pauses: list[float] | None = None,
) -> RegistryClient:
    credentials = CredentialStore.from_environment({}, env={"HOME": str(tmp_path)})
    return RegistryClient(
        Reference.parse(f"{host}/app:v1"),
        TransportSettings(certs_dirs=()),
        credentials,
        sleep=(pauses if pauses is not None else []).append,
        read_timeout=read_timeout,
        plain_http_first=plain_first,
    )


@pytest.fixture
def serve():
    """Start HTTP servers on 127.0.0.1 with a handler class, and return their host."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(handler: type) -> str:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        servers.append(server)
        return f"127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def redirecting_to(location: str) -> type:
    """Build a handler that redirects every GET to ``location``."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.send_response(307)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


MALFORMED_LOCATIONS = {
    "digest": "sha256:abc",
    "unclosed bracket": "http://[bad",
    "port out of range": "http://127.0.0.1:99999/blob",
    "port not a number": "http://127.0.0.1:http/blob",
}


@pytest.mark.parametrize(
    "location", MALFORMED_LOCATIONS.values(), ids=MALFORMED_LOCATIONS
)
def test_blob_malformed_redirect_is_invalid(tmp_path, serve, location):
    host = serve(redirecting_to(location))
    subject = f"layer {BLOB_DIGEST} of {host}/app:v1"

    client = open_client(tmp_path, host)
    with client, pytest.raises(InvalidResponse) as caught:
        client.fetch_blob(DESCRIPTOR, lambda data: None, subject)

    message = str(caught.value)
    assert f"invalid redirect from {host}" in message
    assert f"{host}/app:v1" in message
    assert "%5b" not in message
    assert caught.value.exit_code == 8


@pytest.mark.parametrize(
    "location", MALFORMED_LOCATIONS.values(), ids=MALFORMED_LOCATIONS
)
def test_manifest_malformed_redirect_is_invalid(tmp_path, serve, location):
    host = serve(redirecting_to(location))

    client = open_client(tmp_path, host)
    with client, pytest.raises(InvalidResponse) as caught:
        client.get_manifest("v1", None)

    assert f"{host}/app:v1: invalid redirect from {host}" in str(caught.value)


def test_redirect_location_query_not_shown(tmp_path, serve):
    host = serve(redirecting_to("sha256:abc?signature=secret"))

    client = open_client(tmp_path, host)
    with client, pytest.raises(InvalidResponse) as caught:
        client.fetch_blob(DESCRIPTOR, lambda data: None, "blob x")

    assert "secret" not in str(caught.value)


class SilentBody(http.server.BaseHTTPRequestHandler):
    """Sends a blob's headers, then no byte of its body."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        ranged = "Range" in self.headers
        self.send_response(206 if ranged else 200)
        if ranged:
            self.send_header("Content-Range", f"bytes 0-99/{len(BLOB)}")
        self.send_header("Content-Length", "100" if ranged else str(len(BLOB)))
        self.end_headers()
        self.wfile.flush()
        time.sleep(2)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_silent_blob_times_out_as_unreachable(tmp_path, serve, caplog):
    host = serve(SilentBody)
    pauses: list[float] = []
    client = open_client(tmp_path, host, read_timeout=0.1, pauses=pauses)

    with client, pytest.raises(TransferTimedOut) as caught:
        client.fetch_blob(DESCRIPTOR, lambda data: None, "blob x")

    error = caught.value
    assert isinstance(error, RegistryUnreachable)
    assert isinstance(error, TruncatedBody)
    assert error.exit_code == 6
    assert "timed out 2 times" in str(error)
    assert "no data for 0.1 s" in str(error)
    assert "ended early" not in str(error)
    assert pauses == [0.5]
    retries = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(retries) == 1
    assert "attempt 1 stopped at byte 0" in retries[0].getMessage()
    assert "trying again in 0.5 s" in retries[0].getMessage()


def test_silent_range_times_out_as_unreachable(tmp_path, serve):
    host = serve(SilentBody)
    client = open_client(tmp_path, host, read_timeout=0.1)

    with client, pytest.raises(TransferTimedOut) as caught:
        client.fetch_range(DESCRIPTOR, 0, 100, lambda offset, data: None, "blob x")

    assert "timed out 2 times, last at byte 0 of range 0-99" in str(caught.value)
    assert caught.value.exit_code == 6


class StallingAfterPiece(http.server.BaseHTTPRequestHandler):
    """Sends the first 2,000 bytes of each requested range, then nothing more."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        ranged = "Range" in self.headers
        start = int(self.headers["Range"][6:].split("-")[0]) if ranged else 0
        self.send_response(206 if ranged else 200)
        if ranged:
            self.send_header(
                "Content-Range", f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}"
            )
        self.send_header("Content-Length", str(len(BLOB) - start))
        self.end_headers()
        self.wfile.write(BLOB[start : start + 2000])
        self.wfile.flush()
        time.sleep(2)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_timeouts_after_progress_keep_going(tmp_path, serve, caplog, monkeypatch):
    # Only timeouts in a row without a byte mean a hung server. The default
    # read timeouts (60 s, and 10 s with mirrors) are as long as the quiet
    # time between retry warnings, or longer.
    monkeypatch.setattr(client_module, "QUIET_SECONDS", 0.0)
    host = serve(StallingAfterPiece)
    pauses: list[float] = []
    client = open_client(tmp_path, host, read_timeout=0.1, pauses=pauses)
    received: list[bytes] = []

    with client:
        client.fetch_blob(DESCRIPTOR, received.append, "blob x")

    assert b"".join(received) == BLOB
    assert pauses == []
    # Each wait of a whole read timeout is worth a word all the same.
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 5
    assert "(no data for 0.1 s); trying again" in warnings[0].getMessage()


@respx.mock
def test_dropped_transfer_fails_once_with_failover(tmp_path):
    url = f"https://registry.example/v2/app/blobs/{BLOB_DIGEST}"
    respx.get(url).mock(side_effect=httpx.ReadError("reset"))
    client = open_client(tmp_path, "registry.example", plain_first=False)

    with client, pytest.raises(TruncatedBody) as caught:
        client.fetch_blob(DESCRIPTOR, lambda data: None, "blob x", failover=True)

    assert "the transfer failed once" in str(caught.value)
    assert isinstance(caught.value, TransferFailed)
    assert not isinstance(caught.value, TransferTimedOut)
    # A dropped connection is a network failure, as a timed-out one is.
    assert caught.value.exit_code == 6


class RawServer:
    """A TCP server on 127.0.0.1 that reads a request, sends ``reply`` and closes.

    It speaks neither HTTP nor TLS properly, whichever the client tries.
    """

    def __init__(self, reply: bytes = b"") -> None:
        self.reply = reply
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.host = f"127.0.0.1:{self.port}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            with connection:
                try:
                    self.respond(connection)
                except OSError:
                    pass

    def respond(self, connection: socket.socket) -> None:
        """Read the request and send ``reply``; subclasses respond otherwise."""
        connection.recv(65536)
        connection.sendall(self.reply)

    def close(self) -> None:
        self._listener.close()


NOT_HTTP_REPLIES = {
    "huge header": b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n",
    "banner": b"SSH-2.0-OpenSSH_9.2\r\n",
    "immediate close": b"",
    "HTTP/0.9 body": b"hello world\n",
}


@pytest.mark.parametrize("reply", NOT_HTTP_REPLIES.values(), ids=NOT_HTTP_REPLIES)
@pytest.mark.parametrize("plain_first", [True, False], ids=["plain", "https"])
def test_non_http_port_reported_plainly(tmp_path, reply, plain_first):
    server = RawServer(reply)
    try:
        client = open_client(tmp_path, server.host, plain_first=plain_first)
        with client, pytest.raises(InvalidResponse) as caught:
            client.get_manifest("v1", None)
    finally:
        server.close()

    message = str(caught.value)
    assert f"{server.host} did not respond as an HTTP registry" in message
    assert "TLS" not in message
    assert "certs.d" not in message
    assert caught.value.exit_code == 8


def test_huge_header_names_the_cause(tmp_path):
    server = RawServer(NOT_HTTP_REPLIES["huge header"])
    try:
        client = open_client(tmp_path, server.host)
        with client, pytest.raises(InvalidResponse, match="Receive buffer too long"):
            client.get_manifest("v1", None)
    finally:
        server.close()


STATUS_CASES = {
    "non-standard 999": (999, InvalidResponse, 8),
    "non-standard 600": (600, InvalidResponse, 8),
    "unknown 4xx": (418, InvalidResponse, 8),
    "5xx": (503, ServerError, 11),
    "highest 5xx": (599, ServerError, 11),
}


@pytest.mark.parametrize("status, error, code", STATUS_CASES.values(),
                         ids=STATUS_CASES)  # fmt: skip
@respx.mock
def test_status_maps_to_error(tmp_path, status, error, code):
    respx.get("https://registry.example/v2/app/manifests/v1").mock(
        return_value=httpx.Response(status)
    )
    client = open_client(tmp_path, "registry.example", plain_first=False)

    with client, pytest.raises(error) as caught:
        client.get_manifest("v1", None)

    assert type(caught.value) is error
    assert caught.value.exit_code == code
    assert f"HTTP {status}" in str(caught.value)


@respx.mock
def test_forbidden_names_host_to_log_in(tmp_path):
    respx.get("https://registry.example:5000/v2/app/manifests/v1").mock(
        return_value=httpx.Response(403)
    )
    client = open_client(tmp_path, "registry.example:5000", plain_first=False)

    with client, pytest.raises(AuthRejected) as caught:
        client.get_manifest("v1", None)

    assert "docker login registry.example:5000" in str(caught.value)
    assert "HOST" not in str(caught.value)


def test_retry_warnings_within_quiet_time_go_to_verbose(tmp_path, serve, caplog):
    # As when an outage meets many ranges of a delta pull at once.
    caplog.set_level(logging.INFO, logger="apparate")
    host = serve(StallingAfterPiece)
    client = open_client(tmp_path, host, read_timeout=0.1, pauses=[])

    with client:
        client.fetch_blob(DESCRIPTOR, lambda data: None, "blob x")

    retries = [r for r in caplog.records if "trying again" in r.getMessage()]
    assert len(retries) == 5
    assert [r.levelno for r in retries] == [logging.WARNING] + [logging.INFO] * 4
