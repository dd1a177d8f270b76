"""The settings file: only the default one may be missing."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from apparate.cli.main import app
from apparate.config import config_path, load_config
from apparate.errors import UsageError

# Port 9 (discard) has no registry: a command that got as far as a request
# would fail with a network error, not a usage error.
SOURCE = "127.0.0.1:9/team/app:v1"


def test_named_settings_file_must_exist(tmp_path):
    missing = tmp_path / "nonexist.toml"

    with pytest.raises(UsageError, match="named by APPARATE_CONFIG does not exist"):
        config_path({"APPARATE_CONFIG": str(missing)})

    done = CliRunner().invoke(
        app, ["pull", "--store", str(tmp_path / "store"), SOURCE],
        env={"APPARATE_CONFIG": str(missing)},
    )  # fmt: skip
    assert done.exit_code == 2
    assert str(missing) in done.output


def test_default_settings_file_may_be_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))

    path = config_path({})
    config = load_config(path)

    assert not path.exists()
    assert config.max_store_size is None
