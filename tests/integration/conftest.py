"""Fixtures shared by the integration tests of apparate itself."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from apparate.convert import ConvertOptions, convert
from tests.testbed.registry import RegistryHandle, start_registry
from tests.testbed.samples import Samples


@pytest.fixture
def isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep this machine's docker config, CA folders, store, settings and daemons out."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("DOCKER_CONFIG", str(home / ".docker"))
    monkeypatch.setenv("APPARATE_CERTS_D", str(tmp_path / "no-certs"))
    monkeypatch.delenv("APPARATE_STORE", raising=False)
    # A docker or containerd of this machine must not receive test images.
    monkeypatch.setenv("APPARATE_INTO", "oci")
    # An empty settings file: a missing one that APPARATE_CONFIG names is an error.
    monkeypatch.setenv("APPARATE_CONFIG", os.devnull)
    monkeypatch.setenv("APPARATE_HOSTS_DIR", str(tmp_path / "no-hosts"))


@pytest.fixture
def private_registry(
    tmp_path: Path, sample_images: Samples
) -> Iterator[RegistryHandle]:
    """A plain registry holding the samples, whose storage a test may damage."""
    handle = start_registry("plain", tmp_path / "registry", samples=sample_images)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def converted(
    registry_plain: RegistryHandle, fresh_registry: RegistryHandle, tmp_path: Path
) -> str:
    """Convert base:v1 and base:v2 into a fresh registry; return the repository."""
    options = ConvertOptions(store=tmp_path / "convert")
    repository = f"{fresh_registry.host}/converted/base"
    for tag in ("v1", "v2"):
        convert(f"{registry_plain.host}/samples/base:{tag}", f"{repository}:{tag}",
                options)  # fmt: skip
    return repository
