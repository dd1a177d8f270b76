"""Importer faults: misbehaving daemons played by a fake Engine API and a fake ctr.

The fake docker listens on a unix socket in the test's folder and responds
as dockerd 20.10 does, including HTTP 200 with ``errorDetail`` lines. The
fake ctr is a shell script first on PATH.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import socketserver
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from apparate.digest import Digest
from apparate.errors import (
    DaemonPermissionDenied,
    DaemonRejected,
    DaemonUnreachable,
    ImageImportError,
    UsageError,
)
from apparate.importers import containerd as containerd_importer
from apparate.importers import daemon_layers
from apparate.importers import docker as docker_importer
from apparate.importers.containerd import import_command
from apparate.importers.docker import load_errors, uses_containerd_store
from apparate.importers.image import find_stored, load_content
from apparate.importers.run import check_target, chosen_target, import_stored
from apparate.importers.sockets import (
    SocketState,
    _permission_hint,
    probe_socket,
    require_socket,
)
from apparate.importers.target import Daemons
from apparate.store.layout import Store
from tests.unit.test_import_archive import REFERENCE, make_store, read_tar

APPARATE = str(Path(sys.executable).with_name("apparate"))
OTHER_REFERENCE = "registry.example/team/app:v1-arm64"


@dataclass
class FakeDocker:
    """What the fake Engine API received, and how it responds to a load."""

    load_status: int = 200
    load_lines: list[dict[str, object]] = field(
        default_factory=lambda: [{"stream": "Loaded image: x\n"}]
    )
    images: set[str] = field(default_factory=set)
    close_during_load: bool = False
    info: dict[str, object] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    loaded: bytes = b""
    # The message of a 400 response to a tag request, or None for success.
    tag_error: str | None = None
    # How many loads to reject with an errorDetail line before accepting one.
    loads_to_reject: int = 0
    # The body of every load, in order.
    loads: list[bytes] = field(default_factory=list)


def _handler(fake: FakeDocker) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            fake.requests.append(f"GET {self.path}")
            if self.path == "/_ping":
                self._send(200, b"OK", "text/plain")
            elif self.path == "/info":
                self._json(200, fake.info)
            elif self.path.startswith("/images/"):
                image_id = self.path.split("/")[2]
                if image_id in fake.images:
                    self._json(200, {"Id": image_id})
                else:
                    self._json(404, {"message": f"No such image: {image_id}"})
            else:
                self._json(404, {"message": "page not found"})

        def do_POST(self) -> None:
            fake.requests.append(f"POST {self.path}")
            if self.path.startswith("/images/load"):
                self._load()
            elif "/tag?" in self.path and fake.tag_error is not None:
                self._json(400, {"message": fake.tag_error})
            else:
                self._send(201, b"", "text/plain")

        def _load(self) -> None:
            if fake.close_during_load:
                self.rfile.read(4096)
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            fake.loaded = self._read_chunked()
            fake.loads.append(fake.loaded)
            if fake.loads_to_reject:
                fake.loads_to_reject -= 1
                error = "failed to register layer: EOF"
                self._json(200, {"errorDetail": {"message": error}, "error": error})
                return
            if fake.load_status != 200:
                self._json(fake.load_status, {"message": "archive rejected"})
                return
            lines = b"".join(
                json.dumps(line).encode() + b"\r\n" for line in fake.load_lines
            )
            self._send(200, lines, "application/json")

        def _read_chunked(self) -> bytes:
            body = bytearray()
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return bytes(body)
                body += self.rfile.read(size)
                self.rfile.readline()

        def _json(self, status: int, document: object) -> None:
            self._send(status, json.dumps(document).encode(), "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def fake_docker(tmp_path: Path) -> Iterator[tuple[FakeDocker, Daemons]]:
    fake = FakeDocker()
    path = str(tmp_path / "docker.sock")
    server = _Server(path, _handler(fake))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake, Daemons(docker_host=f"unix://{path}")
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def store(tmp_path: Path):
    return make_store(tmp_path / "store")


def test_docker_load_streams_archive_with_tag(fake_docker, store):
    fake, daemons = fake_docker
    image_store, facts = store
    image_id = str(facts["config"].digest)
    fake.load_lines = [{"stream": f"Loaded image: {REFERENCE}\n"}]

    def load_then_list() -> None:
        fake.images.add(image_id)

    result = _after_load(fake, load_then_list, lambda: import_stored(
        image_store, REFERENCE, "docker", daemons))  # fmt: skip

    assert result.target == "docker"
    assert result.name == REFERENCE
    assert result.image_id == image_id
    entries = read_tar(fake.loaded)
    assert json.loads(entries["manifest.json"])[0]["RepoTags"] == [REFERENCE]
    assert result.bytes_sent == len(fake.loaded)


def _after_load(fake: FakeDocker, action: Callable[[], None], run: Callable):
    """Run the import; ``action`` runs once the fake has received the load."""
    original = fake.load_lines

    class Lines(list):
        def __iter__(self):
            action()
            return iter(original)

    fake.load_lines = Lines(original)
    return run()


def test_docker_image_already_held_is_only_tagged(fake_docker, store):
    fake, daemons = fake_docker
    image_store, facts = store
    fake.images.add(str(facts["config"].digest))

    result = import_stored(image_store, REFERENCE, "docker", daemons)

    assert result.bytes_sent == 0
    assert "only tagged" in result.note
    tag_requests = [r for r in fake.requests if "/tag?" in r]
    query = "repo=registry.example%2Fteam%2Fapp&tag=v1"
    assert tag_requests == [f"POST /images/{facts['config'].digest}/tag?{query}"]
    assert not any("/images/load" in r for r in fake.requests)


def test_docker_digest_pull_loads_without_tag(fake_docker, tmp_path):
    fake, daemons = fake_docker
    reference = "registry.example/team/app@sha256:" + "ab" * 32
    image_store, facts = make_store(tmp_path / "digest-store", reference)
    image_id = str(facts["config"].digest)

    result = _after_load(fake, lambda: fake.images.add(image_id), lambda: (
        import_stored(image_store, reference, "docker", daemons)))  # fmt: skip

    assert result.name is None
    assert f"{reference} names it by digest" in result.note
    assert json.loads(read_tar(fake.loaded)["manifest.json"])[0]["RepoTags"] == []


def test_docker_tagged_image_by_digest_untagged(fake_docker, store):
    """An image pulled by tag and imported by its digest gets no 'pulled' note."""
    fake, daemons = fake_docker
    image_store, facts = store
    reference = f"registry.example/team/app@{facts['manifest'].digest}"
    image_id = str(facts["config"].digest)

    result = _after_load(fake, lambda: fake.images.add(image_id), lambda: (
        import_stored(image_store, reference, "docker", daemons)))  # fmt: skip

    assert result.name is None
    assert f"{reference} names it by digest" in result.note
    assert "pulled" not in result.note


IPV6_REFERENCE = "[::1]:5000/team/app:v1"
INVALID_NAME = "invalid reference format"


def test_docker_ipv6_image_loads_untagged(fake_docker, tmp_path):
    fake, daemons = fake_docker
    image_store, facts = make_store(tmp_path / "ipv6-store", IPV6_REFERENCE)
    image_id = str(facts["config"].digest)
    fake.load_lines = [
        {"errorDetail": {"message": INVALID_NAME}, "error": INVALID_NAME}
    ]

    result = _after_load(fake, lambda: fake.images.add(image_id), lambda: (
        import_stored(image_store, IPV6_REFERENCE, "docker", daemons)))  # fmt: skip

    assert result.name is None
    assert result.image_id == image_id
    assert "IPv6 address" in result.note


def test_docker_held_ipv6_image_untagged(fake_docker, tmp_path):
    fake, daemons = fake_docker
    image_store, facts = make_store(tmp_path / "ipv6-store", IPV6_REFERENCE)
    fake.images.add(str(facts["config"].digest))
    fake.tag_error = INVALID_NAME

    result = import_stored(image_store, IPV6_REFERENCE, "docker", daemons)

    assert result.name is None
    assert "IPv6 address" in result.note


def test_docker_ipv6_load_without_image_fails(fake_docker, tmp_path):
    fake, daemons = fake_docker
    image_store, _ = make_store(tmp_path / "ipv6-store", IPV6_REFERENCE)
    fake.load_lines = [
        {"errorDetail": {"message": INVALID_NAME}, "error": INVALID_NAME}
    ]

    with pytest.raises(DaemonRejected, match=INVALID_NAME):
        import_stored(image_store, IPV6_REFERENCE, "docker", daemons)


def test_docker_error_in_stream_fails_import(fake_docker, store):
    fake, daemons = fake_docker
    fake.load_lines = [
        {"stream": "Loading layer\n"},
        {"errorDetail": {"message": "archive/tar: invalid tar header"},
         "error": "archive/tar: invalid tar header"},
    ]  # fmt: skip

    with pytest.raises(DaemonRejected, match="invalid tar header") as caught:
        import_stored(store[0], REFERENCE, "docker", daemons)

    assert caught.value.exit_code == 12
    assert "apparate import" in str(caught.value)


def test_docker_disk_full_names_data_root(fake_docker, store):
    fake, daemons = fake_docker
    message = "write /var/lib/docker/tmp/docker-import-1/x: no space left on device"
    fake.load_lines = [{"errorDetail": {"message": message}, "error": message}]

    with pytest.raises(DaemonRejected, match="out of disk space") as caught:
        import_stored(store[0], REFERENCE, "docker", daemons)

    assert "Docker Root Dir" in str(caught.value)


def test_docker_http_error_fails_import(fake_docker, store):
    fake, daemons = fake_docker
    fake.load_status = 500

    with pytest.raises(DaemonRejected, match="HTTP 500: archive rejected"):
        import_stored(store[0], REFERENCE, "docker", daemons)


def test_docker_closing_connection_mid_load(fake_docker, store):
    fake, daemons = fake_docker
    fake.close_during_load = True

    with pytest.raises(DaemonRejected, match="broke off"):
        import_stored(store[0], REFERENCE, "docker", daemons)


def test_docker_containerd_store_gets_oci_archive(fake_docker, store):
    fake, daemons = fake_docker
    fake.info = {"DriverStatus": [["driver-type", "io.containerd.snapshotter.v1"]]}
    image_store, facts = store

    result = import_stored(image_store, REFERENCE, "docker", daemons)

    entries = read_tar(fake.loaded)
    assert "oci-layout" in entries
    assert result.image_id == str(facts["manifest"].digest)


def test_docker_not_running(tmp_path, store):
    daemons = Daemons(docker_host=f"unix://{tmp_path}/missing.sock")

    with pytest.raises(DaemonUnreachable, match="does not exist") as caught:
        import_stored(store[0], REFERENCE, "docker", daemons)

    assert caught.value.exit_code == 12


def test_stale_socket_is_refused(tmp_path):
    path = str(tmp_path / "stale.sock")
    with socket.socket(socket.AF_UNIX) as bound:
        bound.bind(path)

        assert probe_socket(path) is SocketState.REFUSED
        with pytest.raises(DaemonUnreachable, match="refuses connections"):
            require_socket(path, "docker", "DOCKER_HOST")


def test_plain_file_not_a_socket(tmp_path):
    path = tmp_path / "docker.sock"
    path.write_text("not a socket")

    assert probe_socket(str(path)) is SocketState.NOT_SOCKET
    with pytest.raises(DaemonUnreachable, match="docker.sock is not a socket"):
        require_socket(str(path), "docker", "DOCKER_HOST")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to another user")
def test_socket_permission_denied(tmp_path):
    path = str(tmp_path / "private.sock")
    tmp_path.chmod(0o755)
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(path)
        listening.listen()
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)

        outcome = _as_nobody(lambda: require_socket(path, "docker", "DOCKER_HOST"))

    assert outcome == f"{DaemonPermissionDenied.__name__} 12"


def _as_nobody(action: Callable[[], None]) -> str:
    """Run ``action`` in a child process as user nobody (uid 65534); return the error it raised."""
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:
        outcome = "no error"
        try:
            os.setgid(65534)
            os.setuid(65534)
            action()
        except ImageImportError as error:
            outcome = f"{type(error).__name__} {error.exit_code}"
        except BaseException as error:  # noqa: BLE001 - reported to the parent
            outcome = repr(error)
        os.write(writer, outcome.encode())
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        outcome = pipe.read().decode()
    os.waitpid(child, 0)
    return outcome


def test_tcp_docker_host_is_a_usage_error(store):
    with pytest.raises(UsageError, match="unix socket"):
        import_stored(store[0], REFERENCE, "docker", Daemons("tcp://127.0.0.1:2375"))


def test_cli_exit_code_and_one_line_error(fake_docker, store, tmp_path):
    fake, daemons = fake_docker
    fake.load_lines = [{"errorDetail": {"message": "bad layer"}, "error": "bad layer"}]
    env = {**os.environ, "DOCKER_HOST": daemons.docker_host, "HOME": str(tmp_path)}

    done = subprocess.run(
        [APPARATE, "import", "--store", str(store[0].root), REFERENCE, "--into",
         "docker"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip

    assert done.returncode == 12
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: docker rejected {REFERENCE}: bad layer")
    assert "kept in the local store" in lines[0]


def test_cli_import_of_unknown_image(tmp_path, store):
    done = subprocess.run(
        [APPARATE, "import", "--store", str(store[0].root), "example.com/x:y",
         "--into", "oci"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip

    assert done.returncode == 4
    assert "pull it first" in done.stderr


def fake_ctr(folder: Path, script: str) -> None:
    """Put an executable ``ctr`` running ``script`` first on PATH."""
    folder.mkdir(exist_ok=True)
    ctr = folder / "ctr"
    ctr.write_text("#!/bin/sh\n" + script)
    ctr.chmod(0o755)


@pytest.fixture
def containerd_socket(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "containerd.sock")
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(path)
        listening.listen(8)
        yield path


@pytest.mark.parametrize(
    ("output", "error", "text"),
    [
        ("ctr: failed to ingest: write /r/ingest/x: no space left on device",
         DaemonRejected, "free space in containerd's root"),
        ("ctr: unexpected EOF", DaemonRejected, "see containerd's log"),
        ("ctr: connection error: dial unix /x: connect: permission denied",
         DaemonPermissionDenied, "permission denied"),
        ('ctr: failed to dial "/x.sock": context deadline exceeded: connection closed',
         DaemonUnreachable, "is containerd's socket, not docker's"),
    ],
)  # fmt: skip
def test_ctr_failure_is_mapped(
    tmp_path, monkeypatch, store, containerd_socket, output, error, text
):
    fake_ctr(
        tmp_path / "bin", f"head -c 1000 >/dev/null\necho '{output}' >&2\nexit 1\n"
    )
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    daemons = Daemons(containerd_address=containerd_socket)

    with pytest.raises(error, match=text) as caught:
        import_stored(store[0], REFERENCE, "containerd", daemons)

    assert isinstance(caught.value, ImageImportError)


def test_ctr_receives_whole_archive(tmp_path, monkeypatch, store, containerd_socket):
    received = tmp_path / "received.tar"
    arguments = tmp_path / "arguments"
    fake_ctr(tmp_path / "bin", f'echo "$@" > {arguments}\ncat > {received}\n')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    daemons = Daemons(
        containerd_address=containerd_socket, containerd_namespace="k8s.io"
    )

    result = import_stored(store[0], REFERENCE, "containerd", daemons)

    assert result.bytes_sent == received.stat().st_size
    assert "index.json" in read_tar(received.read_bytes())
    assert arguments.read_text().split() == [
        "--address", containerd_socket, "--namespace", "k8s.io", "images", "import",
        "--platform", "linux/amd64", "-",
    ]  # fmt: skip


def test_containerd_not_running(tmp_path, store):
    daemons = Daemons(containerd_address=str(tmp_path / "none.sock"))

    with pytest.raises(DaemonUnreachable, match="containerd is not reachable"):
        import_stored(store[0], REFERENCE, "containerd", daemons)


def test_auto_without_daemons_keeps_the_store(tmp_path, store, monkeypatch):
    monkeypatch.delenv("APPARATE_INTO", raising=False)
    monkeypatch.setenv("APPARATE_CONFIG", os.devnull)
    daemons = Daemons(f"unix://{tmp_path}/d.sock", str(tmp_path / "c.sock"))

    result = import_stored(store[0], REFERENCE, None, daemons)

    assert (result.target, result.requested) == ("oci", "auto")


def test_auto_prefers_docker(fake_docker, store, monkeypatch, containerd_socket):
    fake, daemons = fake_docker
    fake.images.add(str(store[1]["config"].digest))
    monkeypatch.setenv("APPARATE_INTO", "auto")

    result = import_stored(
        store[0], REFERENCE, None,
        Daemons(daemons.docker_host, containerd_socket),
    )  # fmt: skip

    assert result.target == "docker"


def test_import_command_argv():
    assert import_command("ctr", "/c.sock", "ns", "linux/arm64", True) == [
        "ctr", "--address", "/c.sock", "--namespace", "ns", "images", "import",
        "--local", "--platform", "linux/arm64", "-",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("lines", "messages", "error"),
    [
        (['{"stream":"Loaded image: a:b\\n"}'], ["Loaded image: a:b"], None),
        (['{"stream":"x"}', "", '{"errorDetail":{"message":"m"},"error":"m"}'],
         ["x"], "m"),
        (['{"error":"plain"}'], [], "plain"),
        (["<html>"], [], "unreadable answer '<html>'"),
    ],
)  # fmt: skip
def test_load_errors(lines, messages, error):
    assert load_errors(iter(lines)) == (messages, error)


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        ({"DriverStatus": [["driver-type", "io.containerd.snapshotter.v1"]]}, True),
        ({"DriverStatus": [["Backing Filesystem", "extfs"]]}, False),
        ({"DriverStatus": None}, False),
        ({}, False),
    ],
)
def test_uses_containerd_store(info, expected):
    assert uses_containerd_store(info) is expected


def test_cli_daemon_closing_mid_load(fake_docker, store, tmp_path):
    fake, daemons = fake_docker
    fake.close_during_load = True
    env = {**os.environ, "DOCKER_HOST": daemons.docker_host, "HOME": str(tmp_path)}

    done = subprocess.run(
        [APPARATE, "import", "--store", str(store[0].root), REFERENCE, "--into",
         "docker"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip

    assert done.returncode == 12, done.stderr
    assert done.stderr.startswith("error: docker at ")
    assert "broke off the load" in done.stderr


@pytest.mark.parametrize("namespace", ["bad ns!", "a..b", "-a", "a.", "a_b", "x" * 77])
def test_invalid_namespace_is_rejected(namespace):
    daemons = Daemons(containerd_namespace=namespace)

    with pytest.raises(UsageError, match="invalid containerd namespace"):
        check_target("containerd", daemons)


@pytest.mark.parametrize("namespace", ["k8s.io", "a--b.c-d", "moby", "x" * 76])
def test_valid_namespace_is_accepted(namespace):
    check_target("containerd", Daemons(containerd_namespace=namespace))


def test_namespace_unchecked_for_other_targets():
    check_target("oci", Daemons(containerd_namespace="a_b"))


def test_ctr_failure_retry_keeps_options(
    tmp_path, monkeypatch, store, containerd_socket
):
    fake_ctr(tmp_path / "bin", "head -c 1000 >/dev/null\necho 'ctr: EOF' >&2\nexit 1\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    daemons = Daemons(
        containerd_address=containerd_socket, containerd_namespace="k8s.io"
    )

    with pytest.raises(DaemonRejected) as caught:
        import_stored(store[0], REFERENCE, "containerd", daemons)

    assert (
        f"--containerd-address {containerd_socket} --namespace k8s.io"
        in caught.value.hint
    )


@pytest.mark.parametrize(
    ("gid", "mode", "words"),
    [
        (0, 0o660, "run as root, or"),
        (1, 0o660, "member of the group"),
        # Connecting needs write permission, which the group lacks here.
        (1, 0o640, "run as root, or"),
        (1, 0o000, "run as root, or"),
    ],
)
def test_permission_hint_names_socket_group(tmp_path, gid, mode, words):
    path = tmp_path / "daemon.sock"
    path.write_text("")
    os.chown(path, 0, gid)
    path.chmod(mode)

    assert words in _permission_hint(str(path))


def test_into_error_names_settings_file(tmp_path, monkeypatch):
    settings = tmp_path / "settings.toml"
    settings.write_text('into = "dockr"\n')
    monkeypatch.setenv("APPARATE_CONFIG", str(settings))
    monkeypatch.delenv("APPARATE_INTO", raising=False)

    with pytest.raises(UsageError, match=f"'dockr' in into in {settings}"):
        chosen_target(None)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("folder", "is a folder"),
        ("missing/image.tar", "does not exist"),
    ],
)
def test_unusable_archive_path_rejected_first(tmp_path, name, message):
    (tmp_path / "folder").mkdir()

    with pytest.raises(UsageError, match=message):
        check_target(f"docker-archive:{tmp_path / name}", Daemons())


def test_archive_new_file_or_stdout_accepted(tmp_path):
    check_target(f"oci-archive:{tmp_path / 'image.tar'}", Daemons())
    check_target("docker-archive:/dev/stdout", Daemons())


def test_unsearchable_archive_folder_left_to_write(tmp_path, monkeypatch):
    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Path, "is_dir", denied)

    check_target(f"docker-archive:{tmp_path / 'locked' / 'image.tar'}", Daemons())


def test_docker_hang_up_without_sigpipe(tmp_path):
    """A daemon that hangs up at once is reported, not a silent death by SIGPIPE.

    A program calling apparate may restore SIGPIPE's default action, which
    ends the process when it writes a request to a connection the daemon
    has closed.
    Whether the write comes before or after the close is a race, so the
    child sends the request 40 times.
    """
    path = str(tmp_path / "closing.sock")
    listening = socket.socket(socket.AF_UNIX)
    listening.bind(path)
    listening.listen(64)

    def hang_up() -> None:
        while True:
            try:
                connection, _ = listening.accept()
            except OSError:
                return
            connection.close()

    threading.Thread(target=hang_up, daemon=True).start()
    child = (
        "import signal, sys\n"
        "from apparate.errors import DaemonUnreachable\n"
        "from apparate.importers.docker import DockerEngine\n"
        "signal.signal(signal.SIGPIPE, signal.SIG_DFL)\n"
        "reported = 0\n"
        "for _ in range(40):\n"
        "    engine = DockerEngine(sys.argv[1], 'x', 'retry')\n"
        "    try:\n"
        "        engine.info()\n"
        "    except DaemonUnreachable:\n"
        "        reported += 1\n"
        "    finally:\n"
        "        engine.close()\n"
        "print(reported)\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", child, path],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        listening.close()

    assert (done.returncode, done.stdout.strip()) == (0, "40"), done.stderr


def test_docker_silent_daemon_times_out(tmp_path, store, monkeypatch):
    """A daemon that accepts connections and never responds fails the import."""
    monkeypatch.setattr(docker_importer, "REQUEST_TIMEOUT", 0.5)
    path = str(tmp_path / "silent.sock")
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(path)
        listening.listen(8)
        daemons = Daemons(docker_host=f"unix://{path}")

        with pytest.raises(DaemonUnreachable, match="timed out") as caught:
            import_stored(store[0], REFERENCE, "docker", daemons)

    assert "GET /info" in str(caught.value)
    assert caught.value.exit_code == 12


def test_ctr_stopped_daemon_ends_import(tmp_path, monkeypatch, store):
    """A containerd that stops mid-import fails it, even while ctr keeps waiting."""
    monkeypatch.setattr(containerd_importer, "WATCH_INTERVAL", 0.1)
    path = tmp_path / "containerd.sock"
    # ctr 1.6 can keep waiting for a containerd that was killed, so the fake
    # ctr removes the socket, as if the daemon stopped, and waits too.
    script = (
        'case "$*" in *--help*) exit 0;; esac\n'
        f"head -c 1000 >/dev/null\nrm {path}\nexec sleep 30\n"
    )
    fake_ctr(tmp_path / "bin", script)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    daemons = Daemons(containerd_address=str(path))
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(path))
        listening.listen(8)

        with pytest.raises(DaemonUnreachable, match="stopped during the import"):
            import_stored(store[0], REFERENCE, "containerd", daemons)


def _store_with_other_image(tmp_path: Path) -> tuple[Store, str]:
    """Store the test image and another image of the same layers; return the other's ID."""
    image_store, _ = make_store(tmp_path / "store")
    arm64 = {"os": "linux", "architecture": "arm64"}
    _, other = make_store(tmp_path / "store", OTHER_REFERENCE, platform=arm64)
    return image_store, str(other["config"].digest)


def _load_and_list(fake: FakeDocker, image_store: Store, daemons: Daemons):
    """Import the test image; the fake lists it once it accepts a load."""
    stored = find_stored(image_store, REFERENCE)
    image_id = str(load_content(image_store, stored).config_digest)

    def list_image() -> None:
        fake.images.add(image_id)

    def run():
        return import_stored(image_store, REFERENCE, "docker", daemons)

    return _after_load(fake, list_image, run)


def _layer_sizes(archive: bytes) -> list[int]:
    entries = read_tar(archive)
    return [
        len(entries[name]) for name in json.loads(entries["manifest.json"])[0]["Layers"]
    ]


def test_docker_present_layers_sent_empty(fake_docker, tmp_path):
    fake, daemons = fake_docker
    image_store, other_id = _store_with_other_image(tmp_path)
    fake.images.add(other_id)

    result = _load_and_list(fake, image_store, daemons)

    assert len(fake.loads) == 1
    assert _layer_sizes(fake.loaded) == [0, 0, 0]
    assert result.bytes_sent == len(fake.loaded)
    assert result.note == "docker already had 3 of its 3 layers, which were not sent"


def test_docker_without_sharing_image_gets_all(fake_docker, tmp_path):
    fake, daemons = fake_docker
    image_store, _ = _store_with_other_image(tmp_path)
    fake.images.add(str(Digest.of(b"another config")))

    _load_and_list(fake, image_store, daemons)

    assert all(size > 0 for size in _layer_sizes(fake.loaded))


def test_docker_rejecting_present_layers_gets_all(fake_docker, tmp_path):
    fake, daemons = fake_docker
    image_store, other_id = _store_with_other_image(tmp_path)
    fake.images.add(other_id)
    fake.loads_to_reject = 1

    result = _load_and_list(fake, image_store, daemons)

    assert len(fake.loads) == 2
    assert _layer_sizes(fake.loads[0]) == [0, 0, 0]
    assert all(size > 0 for size in _layer_sizes(fake.loads[1]))
    assert result.bytes_sent == len(fake.loads[0]) + len(fake.loads[1])
    assert "already had" not in result.note


def test_docker_rejecting_whole_archive_not_retried(fake_docker, store):
    fake, daemons = fake_docker
    fake.loads_to_reject = 1

    with pytest.raises(DaemonRejected, match="EOF"):
        import_stored(store[0], REFERENCE, "docker", daemons)

    assert len(fake.loads) == 1


@pytest.mark.parametrize("damaged", ["manifest", "config"])
def test_other_image_damaged_blob_kept(tmp_path, damaged):
    # Comparing layers reads other images' blobs. It must not remove them,
    # because the import did not request those images.
    image_store, _ = make_store(tmp_path / "store")
    arm64 = {"os": "linux", "architecture": "arm64"}
    _, other = make_store(tmp_path / "store", OTHER_REFERENCE, platform=arm64)
    path = image_store.blob_path(other[damaged].digest)
    path.write_bytes(path.read_bytes() + b" ")
    content = load_content(image_store, find_stored(image_store, REFERENCE))

    layers = daemon_layers.shared_layer_blobs(image_store, content)
    bottom = daemon_layers.bottom_layers_in_docker(
        image_store, content, lambda image_id: True
    )

    assert bottom == 0
    if damaged == "manifest":
        assert layers == set()
    assert path.exists()


def test_ctr_retry_counts_both_archives(tmp_path, monkeypatch, containerd_socket):
    image_store, _ = _store_with_other_image(tmp_path)
    content = load_content(image_store, find_stored(image_store, REFERENCE))
    listed = " ".join(str(layer.digest) for layer in content.parsed.layers)
    received = tmp_path / "received"
    received.mkdir()
    # The first import is rejected, as when containerd removed the blobs
    # between the listing and the import.
    script = f"""case "$*" in
*--help*) ;;
*"content ls"*) printf '%s\\n' {listed} ;;
*) count=$(ls {received} | wc -l)
   cat > {received}/$count.tar
   if [ "$count" = 0 ]; then echo 'ctr: content digest not found' >&2; exit 1; fi ;;
esac
"""
    fake_ctr(tmp_path / "bin", script)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    daemons = Daemons(containerd_address=containerd_socket)

    result = import_stored(image_store, REFERENCE, "containerd", daemons)

    sizes = [(received / f"{count}.tar").stat().st_size for count in (0, 1)]
    assert sizes[0] < sizes[1]
    assert result.bytes_sent == sum(sizes)
    assert result.note == "namespace default"


def test_ctr_out_of_space_not_retried(tmp_path, monkeypatch, containerd_socket):
    image_store, _ = _store_with_other_image(tmp_path)
    content = load_content(image_store, find_stored(image_store, REFERENCE))
    listed = " ".join(str(layer.digest) for layer in content.parsed.layers)
    imports = tmp_path / "imports"
    # ctr names the full disk on a line before its last one.
    script = f"""case "$*" in
*--help*) ;;
*"content ls"*) printf '%s\\n' {listed} ;;
*) cat > /dev/null; echo run >> {imports}
   echo 'write /var/lib/containerd/x: no space left on device' >&2
   echo 'ctr: failed to ingest' >&2; exit 1 ;;
esac
"""
    fake_ctr(tmp_path / "bin", script)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    daemons = Daemons(containerd_address=containerd_socket)

    with pytest.raises(DaemonRejected, match="failed to ingest") as caught:
        import_stored(image_store, REFERENCE, "containerd", daemons)

    assert "free space" in str(caught.value)
    assert imports.read_text().splitlines() == ["run"]
