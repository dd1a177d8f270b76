"""Command-line options rejected up front, before any request or store write."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from apparate.cli.main import app, state

DIGEST = "sha256:" + "a" * 64
# Port 9 (discard) has no registry: a command that got as far as a request
# would fail with a network error, not a usage error.
SOURCE = "127.0.0.1:9/team/app:v1"


def run(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize("level", ["23", "99", "-131073"])
def test_convert_rejects_compress_level(tmp_path, level):
    store = tmp_path / "store"

    done = run("convert", "--compress-level", level, "--store", str(store),
               SOURCE, "127.0.0.1:9/team/app:v1-chunked")  # fmt: skip

    assert done.exit_code == 2
    assert "-131072 to 22" in done.output
    assert not store.exists()


def test_convert_rejects_digest_destination(tmp_path):
    store = tmp_path / "store"

    done = run("convert", "--store", str(store), SOURCE,
               f"127.0.0.1:9/team/app@{DIGEST}")  # fmt: skip

    assert done.exit_code == 2
    assert "must be a tag" in done.output
    assert not store.exists()


def test_convert_rejects_tag_and_digest_destination(tmp_path):
    done = run("convert", "--store", str(tmp_path / "store"), SOURCE,
               f"127.0.0.1:9/team/app:v2@{DIGEST}")  # fmt: skip

    assert done.exit_code == 2
    assert "must be a tag" in done.output


@pytest.mark.parametrize("command", ["pull", "import"])
def test_quiet_and_json_rejected(tmp_path, command):
    done = run(command, "--quiet", "--json", "--store", str(tmp_path / "s"), SOURCE)

    assert done.exit_code == 2
    assert "--quiet" in done.output
    assert "--json" in done.output


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_stats_rejects_limit_below_one(tmp_path, limit):
    done = run("stats", "--limit", limit, "--store", str(tmp_path / "s"))

    assert done.exit_code == 2
    assert "--limit" in done.output


def test_gc_max_size_help_states_unit():
    done = run("gc", "--help")

    assert "1024" in done.output


@pytest.mark.parametrize("host", ["svn://foo:5000", "foo:5000/v2", "http://foo/v2"])
def test_insecure_registry_url_rejected(tmp_path, host):
    done = run("pull", "--insecure-registry", host, "--store",
               str(tmp_path / "store"), SOURCE)  # fmt: skip

    assert done.exit_code == 2
    assert f"insecure registry '{host}' must be a host" in done.output


@pytest.mark.parametrize("option", ["--namespace", "--containerd-address"])
def test_empty_containerd_option_rejected(tmp_path, option):
    done = run("pull", option, "", "--store", str(tmp_path / "store"), SOURCE)

    assert done.exit_code == 2
    assert f"{option} is empty" in done.output


@pytest.mark.parametrize("command", [["pull", SOURCE], ["images"], ["gc"], ["stats"]])
def test_empty_store_option_rejected(tmp_path, monkeypatch, command):
    # `--store "$STORE"` with STORE unset would otherwise create a store in the
    # current folder.
    monkeypatch.chdir(tmp_path)

    done = run(command[0], "--store", "", *command[1:])

    assert done.exit_code == 2
    assert "--store" in done.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", sorted(c.name for c in app.registered_commands))
def test_every_command_takes_debug(command):
    # The README lists --debug for all commands, after the command name too.
    done = run(command, "--help")

    assert "--debug" in done.output


def test_stats_debug_shows_traceback(tmp_path, monkeypatch):
    # --debug lasts for the whole process, so monkeypatch resets it afterwards.
    monkeypatch.setitem(state, "debug", False)
    store = tmp_path / "store"
    store.write_text("not a folder")

    done = run("stats", "--debug", "--store", str(store))

    assert done.exit_code == 10
    assert "traceback" in done.output


@pytest.mark.parametrize(
    ("command", "receiver"),
    [
        ("pull", "image's registry, never sent to its mirrors"),
        ("convert", "SOURCE and DESTINATION"),
    ],
)
def test_username_help_names_registries(command, receiver):
    # As the README states, pull sends credentials to the image's registry
    # only, never to its mirrors.
    done = run(command, "--help")

    assert receiver in " ".join(done.output.split())


def test_import_help_names_digest():
    # import takes a digest or a unique prefix of it, as rm does.
    done = run("import", "--help")

    assert "unique prefix of the digest" in " ".join(done.output.split())
