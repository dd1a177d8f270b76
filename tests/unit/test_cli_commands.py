"""Commands as a new user first meets them: the help and an empty store."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from apparate.cli.main import app, import_interrupted
from apparate.digest import Digest
from apparate.importers import files
from apparate.importers.target import ImportTarget
from apparate.store.chunk_index import INDEX_FILE
from apparate.store.history import PullHistory
from apparate.store.layout import Store
from tests.unit.test_history import old_database
from tests.unit.test_history import result as pull_result
from tests.unit.test_import_archive import REFERENCE as ARCHIVE_REFERENCE
from tests.unit.test_import_archive import make_store
from tests.unit.test_store_gc import add_image


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def run_program(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed entry point, which ``run`` wraps, as a shell would."""
    env = {**os.environ, "COLUMNS": "80"}
    return subprocess.run(
        [sys.executable, "-m", "apparate.cli.main", *args],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip


def test_no_arguments_prints_help():
    done = run_program()

    assert done.returncode == 0
    assert done.stdout.startswith("Usage: ")
    assert "Commands:" in done.stdout
    assert done.stderr == ""


def test_reader_gone_ends_quietly():
    """A closed pipe ends the command as SIGPIPE ends Unix tools, without a word."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "apparate.cli.main", "--version"],
            stdout=writer, stderr=subprocess.PIPE, check=False,
        )  # fmt: skip
    finally:
        os.close(writer)

    assert done.returncode == 141
    assert done.stderr == b""


def test_archive_on_stdout_full_stderr(tmp_path):
    """With the archive on standard output, the summary goes to standard
    error, whose write errors fail the command as standard output's do."""
    image_store, _ = make_store(tmp_path / "store")
    with open(tmp_path / "image.tar", "wb") as archive, open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "apparate.cli.main", "import", "-q",
             "--store", str(image_store.root), "--into",
             "docker-archive:/dev/stdout", ARCHIVE_REFERENCE],
            stdout=archive, stderr=full, check=False,
        )  # fmt: skip

    assert done.returncode == 1
    assert (tmp_path / "image.tar").stat().st_size > 0


@pytest.mark.parametrize("kind", ["docker-archive", "oci-archive"])
def test_interrupted_archive_import_writes_nothing(tmp_path, monkeypatch, kind):
    image_store, _ = make_store(tmp_path / "store")
    archive = tmp_path / "image.tar"

    def interrupt(output, pieces):
        output.write(next(pieces))
        raise KeyboardInterrupt

    monkeypatch.setattr(files, "_write_all", interrupt)
    done = run("import", "--store", str(image_store.root),
               "--into", f"{kind}:{archive}", ARCHIVE_REFERENCE)  # fmt: skip

    assert done.exit_code == 130
    assert f"no partial archive was written to {archive}" in done.output
    assert "may have received" not in done.output
    assert sorted(tmp_path.iterdir()) == [tmp_path / "store"]


def test_interrupted_import_names_target(tmp_path):
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    stored = "interrupted; the image is kept in the local store"

    to_pipe = import_interrupted(ImportTarget("docker-archive", pipe))

    assert to_pipe == f"{stored}, and {pipe} may have received part of the archive"
    assert import_interrupted(ImportTarget("docker")) == (
        f"{stored}, and docker may have received it already"
    )
    assert import_interrupted(ImportTarget("auto")) == (
        f"{stored}, and the target may have received it already"
    )
    assert import_interrupted(ImportTarget("oci")) == stored


def test_help_shows_whole_command_summaries():
    done = run_program("--help")

    commands = done.stdout.split("Commands:", 1)[1].splitlines()
    assert done.returncode == 0
    assert len([line for line in commands if line.strip()]) == 8
    assert [line for line in commands if line.endswith("...")] == []


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_images_before_first_pull(tmp_path, kind):
    store = tmp_path / "store"
    if kind == "empty":
        store.mkdir()

    listed = run("images", "--store", str(store))
    as_json = run("images", "--json", "--store", str(store))
    stats = run("stats", "--store", str(store))
    collected = run("gc", "--dry-run", "--json", "--store", str(store))
    collected_for_real = run("gc", "--store", str(store))

    assert listed.exit_code == 0, listed.output
    header = ["REFERENCE", "DIGEST", "PLATFORM", "SIZE", "LAST", "USED"]
    assert listed.output.split() == header
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output) == []
    assert stats.exit_code == 0, stats.output
    assert collected.exit_code == 0, collected.output
    assert json.loads(collected.output)["bytes_freed"] == 0
    assert collected_for_real.exit_code == 0, collected_for_real.output
    assert not store.exists() or list(store.iterdir()) == []


def test_images_json_has_index_digest(tmp_path):
    store = Store(tmp_path / "store")
    manifest = add_image(store, "example.com/app:v1", [b"layer"])
    index = Digest.of(b"index")
    store.tag("example.com/app:v1", store.images()[0].descriptor, source_index=index)
    add_image(store, "example.com/app:v2", [b"layer"])
    store.close()

    listed = run("images", "--json", "--store", str(store.root))

    assert listed.exit_code == 0, listed.output
    picked, single = json.loads(listed.output)
    assert picked["digest"] == str(manifest)
    assert picked["index_digest"] == str(index)
    assert single["digest"] == str(manifest)
    assert single["index_digest"] is None


def test_stats_json_rounds_recent_seconds(tmp_path):
    store = tmp_path / "store"
    Store(store).close()
    history = PullHistory(store / INDEX_FILE)
    try:
        pulled = pull_result("example.com/app:v1", 400)
        history.record(dataclasses.replace(pulled, seconds=2.123456), now=100.0)
    finally:
        history.close()

    listed = run("stats", "--json", "--store", str(store))

    assert listed.exit_code == 0, listed.output
    [recent] = json.loads(listed.output)["recent"]
    assert recent["seconds"] == 2.123


def test_images_of_folder_that_is_no_store(tmp_path):
    (tmp_path / "notes.txt").write_text("not a store")

    listed = run("images", "--store", str(tmp_path))

    assert listed.exit_code == 10
    assert f"no store at {tmp_path}" in listed.output


def test_pull_store_error_names_image(tmp_path):
    (tmp_path / "notes.txt").write_text("not a store")

    pulled = run("pull", "--store", str(tmp_path), "127.0.0.1:9/app:v1")

    assert pulled.exit_code == 10
    assert pulled.output.startswith(f"error: 127.0.0.1:9/app:v1: {tmp_path} is not")


@pytest.mark.parametrize("args", [["--version"], ["images", "--json"]])
def test_full_standard_output_is_one_error_line(tmp_path, args):
    # As `apparate images --json > summary.json` on a full disk.
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "apparate.cli.main", *args,
             *(["--store", str(tmp_path / "store")] if len(args) > 1 else [])],
            stdout=full, stderr=subprocess.PIPE, text=True, check=False,
        )  # fmt: skip

    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "error: cannot write to standard output: No space left on device"
    ]


def test_closed_standard_output_is_one_error_line():
    done = subprocess.run(
        [sys.executable, "-m", "apparate.cli.main", "--version"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        check=False, preexec_fn=lambda: os.close(1),
    )  # fmt: skip

    assert done.returncode == 1
    assert done.stderr.splitlines() == ["error: standard output is closed"]


@pytest.mark.parametrize(
    "command", ["pull", "import", "convert", "images", "rm", "gc", "stats", "sources"]
)
def test_help_shows_no_markup(command):
    done = run(command, "--help")

    assert done.exit_code == 0
    assert "``" not in done.output


def test_stats_of_store_with_old_history(tmp_path):
    store = tmp_path / "store"
    Store(store).close()
    old_database(store / INDEX_FILE)

    listed = run("stats", "--json", "--store", str(store))
    table = run("stats", "--store", str(store))

    assert listed.exit_code == 0, listed.output
    stats = json.loads(listed.output)
    assert (stats["pulls"], stats["bytes_resumed"], stats["bytes_saved"]) == (1, 0, 800)
    assert stats["recent"][0]["bytes_resumed"] == 0
    assert table.exit_code == 0, table.output
    assert "example.com/app:v1" in table.output


@pytest.mark.parametrize("reference", ["127.0.0.1:9/app:v1", "sha256:0123456789ab"])
def test_import_before_first_pull_not_found(tmp_path, reference):
    # rm exits with 4 here too, and a script may pull the image on code 4.
    store = tmp_path / "store"

    imported = run("import", "--into", "oci", "--store", str(store), reference)

    assert imported.exit_code == 4, imported.output
    assert f"not in the local store {store}" in imported.output
    assert not store.exists()
