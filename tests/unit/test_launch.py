"""The apparate command's entry point: Ctrl-C while it loads, and SIGTERM."""

import signal
import socket
import subprocess
import sys
from pathlib import Path

from apparate.cli import launch, main

# Raises KeyboardInterrupt where importing the command line takes its time,
# as Ctrl-C then does.
INTERRUPTED_IMPORT = """
import sys

class Interrupting:
    def find_spec(self, name, path=None, target=None):
        if name == "apparate.cli.main":
            raise KeyboardInterrupt
        return None

sys.meta_path.insert(0, Interrupting())
from apparate.cli.launch import run
run()
"""


def test_ctrl_c_while_loading_is_one_line():
    done = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_IMPORT],
        capture_output=True,
        text=True,
        check=False,
    )

    assert done.returncode == 130
    assert done.stderr == "error: interrupted\n"


def test_entry_point_loads_nothing_heavy():
    code = "import sys, apparate.cli.launch; print('httpx' in sys.modules)"

    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )

    assert done.stdout.strip() == "False"


def test_sigterm_stops_like_ctrl_c(tmp_path):
    # A registry that accepts the connection and never responds, so the pull waits.
    server = socket.create_server(("127.0.0.1", 0))
    host = f"127.0.0.1:{server.getsockname()[1]}"
    command = [str(Path(sys.executable).with_name("apparate")), "pull",
               "--store", str(tmp_path / "store"), f"{host}/app:v1"]  # fmt: skip
    pulling = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        connection, _ = server.accept()
        pulling.send_signal(signal.SIGTERM)
        _, errors = pulling.communicate(timeout=30)
    finally:
        server.close()

    assert pulling.returncode == 143
    assert errors.startswith("error: interrupted; nothing unverified was tagged")
    connection.close()


def test_interrupt_outside_error_wrapper_reported(monkeypatch, capsys):
    # typer turns an interrupt while printing a command's output into 130.
    monkeypatch.setattr(main, "app", lambda **options: 130)
    monkeypatch.setattr(launch, "_terminated", True)
    monkeypatch.setitem(main.state, "interrupt_reported", False)
    exits: list[int] = []
    monkeypatch.setattr(main, "_exit_now", exits.append)

    main.run()

    assert exits == [143]
    assert capsys.readouterr().err == "error: interrupted\n"
