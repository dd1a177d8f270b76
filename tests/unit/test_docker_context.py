"""Which docker daemon the current docker context names, as the docker CLI reads it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from apparate.errors import UsageError
from apparate.importers.docker_context import context_docker_host
from apparate.importers.run import _detect, check_target
from apparate.importers.target import DEFAULT_DOCKER_SOCKET, Daemons


def add_context(config_dir: Path, name: str, host: str | None) -> None:
    """Write a context as 'docker context create' stores it."""
    meta_dir = (
        config_dir
        / "contexts"
        / "meta"
        / hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()
    )
    meta_dir.mkdir(parents=True)
    endpoints = {"docker": {"Host": host, "SkipTLSVerify": False}} if host else {}
    meta = {"Name": name, "Metadata": {}, "Endpoints": endpoints}
    (meta_dir / "meta.json").write_text(json.dumps(meta))


def test_docker_context_variable_names_host(tmp_path):
    add_context(tmp_path, "rootless", "unix:///run/user/1000/docker.sock")
    env = {"DOCKER_CONFIG": str(tmp_path), "DOCKER_CONTEXT": "rootless"}

    assert context_docker_host(env) == ("rootless", "unix:///run/user/1000/docker.sock")


def test_current_context_of_config_file(tmp_path):
    add_context(tmp_path, "lab", "unix:///lab/docker.sock")
    (tmp_path / "config.json").write_text('{"currentContext": "lab"}')

    daemons = Daemons.from_environment({"DOCKER_CONFIG": str(tmp_path)})

    assert daemons.docker_host == "unix:///lab/docker.sock"


def test_docker_host_wins_over_context(tmp_path):
    add_context(tmp_path, "lab", "unix:///lab/docker.sock")
    env = {"DOCKER_CONFIG": str(tmp_path), "DOCKER_CONTEXT": "lab",
           "DOCKER_HOST": "unix:///own.sock"}  # fmt: skip

    assert Daemons.from_environment(env).docker_host == "unix:///own.sock"


@pytest.mark.parametrize("config", [None, "", "{}", '{"currentContext": "default"}'])
def test_no_context_means_default_socket(tmp_path, config):
    if config is not None:
        (tmp_path / "config.json").write_text(config)

    daemons = Daemons.from_environment({"DOCKER_CONFIG": str(tmp_path)})

    assert daemons.docker_host == f"unix://{DEFAULT_DOCKER_SOCKET}"


def test_missing_context_is_an_error(tmp_path):
    env = {"DOCKER_CONFIG": str(tmp_path), "DOCKER_CONTEXT": "gone"}

    with pytest.raises(UsageError, match="docker context 'gone' does not exist"):
        context_docker_host(env)


def test_context_without_endpoint_rejected(tmp_path):
    add_context(tmp_path, "k8s-only", None)
    env = {"DOCKER_CONFIG": str(tmp_path), "DOCKER_CONTEXT": "k8s-only"}

    with pytest.raises(UsageError, match="has no docker endpoint"):
        context_docker_host(env)


def test_broken_context_fails_docker_import(tmp_path, caplog):
    (tmp_path / "config.json").write_text('{"currentContext": "gone"}')

    daemons = Daemons.from_environment({"DOCKER_CONFIG": str(tmp_path)})

    # The default socket may be another daemon than the context meant.
    with pytest.raises(UsageError, match="docker context 'gone' does not exist"):
        daemons.docker_socket()
    with pytest.raises(UsageError, match="docker context 'gone' does not exist"):
        check_target("docker", daemons)
    assert caplog.text == ""


def test_broken_context_unused_is_not_reported(tmp_path, caplog):
    (tmp_path / "config.json").write_text('{"currentContext": "gone"}')

    Daemons.from_environment({"DOCKER_CONFIG": str(tmp_path)})

    assert caplog.text == ""


def test_context_name_not_utf8(tmp_path):
    # A name of bytes that are not UTF-8, as Python reads it from the environment.
    name = b"\xfflab".decode("utf-8", "surrogateescape")
    add_context(tmp_path, name, "unix:///lab/docker.sock")

    daemons = Daemons.from_environment(
        {"DOCKER_CONFIG": str(tmp_path), "DOCKER_CONTEXT": name}
    )

    assert daemons.docker_socket() == "/lab/docker.sock"


def test_remote_context_error_names_context(tmp_path):
    add_context(tmp_path, "remote", "ssh://builder@build-host")
    env = {"DOCKER_CONFIG": str(tmp_path), "DOCKER_CONTEXT": "remote"}
    daemons = Daemons.from_environment(env)

    with pytest.raises(UsageError) as raised:
        daemons.docker_socket()

    assert str(raised.value).startswith(
        "docker context 'remote' (host ssh://builder@build-host) uses ssh://"
    )


def test_broken_context_leaves_docker_out_of_auto(tmp_path, caplog):
    (tmp_path / "config.json").write_text('{"currentContext": "gone"}')
    env = {"DOCKER_CONFIG": str(tmp_path)}
    daemons = Daemons.from_environment(env).with_options(
        str(tmp_path / "no.sock"), None
    )

    target = _detect(daemons)

    assert target.kind == "oci"
    assert "not importing into docker: docker context 'gone'" in caplog.text
