"""Shared fixtures: sample images and real registries from `tests.testbed`.

Registries are session-scoped per kind and start holding the samples under
`samples/base:v1`, `samples/base:v2`, `samples/multi:v1`,
`samples/base:v1-zstd` and `samples/base:v1-docker`. Tests that push use
`fresh_registry`, which is empty and private to the test.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The repository root makes `tests.testbed` importable the same way under
# `pytest` and `python -m pytest`, and as `python -m tests.testbed.serve` does.
REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from tests.testbed.containerd import (
    ContainerdHandle,
    containerd_binary,
    start_containerd,
)
from tests.testbed.registry import (
    RegistryHandle,
    registry_binary,
    start_registry,
)
from tests.testbed.samples import Samples, ensure_samples
from tests.testbed.tokenserver import TokenServer


def _require_registry_binary() -> None:
    if registry_binary() is None:
        pytest.skip(
            "docker-registry is not installed (Debian package docker-registry); "
            "the integration tests need the real registry"
        )


@pytest.fixture(scope="session")
def sample_images() -> Samples:
    """The sample images, built on first use and cached across sessions."""
    return ensure_samples()


def _session_registry(
    kind: str, factory: pytest.TempPathFactory, samples: Samples
) -> Iterator[RegistryHandle]:
    _require_registry_binary()
    handle = start_registry(kind, factory.mktemp(f"registry-{kind}"), samples=samples)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(scope="session")
def registry_plain(
    tmp_path_factory: pytest.TempPathFactory, sample_images: Samples
) -> Iterator[RegistryHandle]:
    """Plain HTTP, no auth, holding the samples."""
    yield from _session_registry("plain", tmp_path_factory, sample_images)


@pytest.fixture(scope="session")
def registry_basic(
    tmp_path_factory: pytest.TempPathFactory, sample_images: Samples
) -> Iterator[RegistryHandle]:
    """htpasswd basic auth over plain HTTP, holding the samples."""
    yield from _session_registry("basic", tmp_path_factory, sample_images)


@pytest.fixture(scope="session")
def registry_token(
    tmp_path_factory: pytest.TempPathFactory, sample_images: Samples
) -> Iterator[RegistryHandle]:
    """TLS and bearer tokens from `token_server`, holding the samples."""
    yield from _session_registry("token", tmp_path_factory, sample_images)


@pytest.fixture(scope="session")
def registry_redirect(
    tmp_path_factory: pytest.TempPathFactory, sample_images: Samples
) -> Iterator[RegistryHandle]:
    """Plain HTTP that redirects blob requests to nginx, holding the samples."""
    yield from _session_registry("redirect", tmp_path_factory, sample_images)


@pytest.fixture
def token_server(registry_token: RegistryHandle) -> Iterator[TokenServer]:
    """The token endpoint of `registry_token`, reset to defaults after the test."""
    server = registry_token.token_server
    assert server is not None
    server.reset()
    try:
        yield server
    finally:
        server.reset()


@pytest.fixture
def fresh_registry(tmp_path: Path) -> Iterator[RegistryHandle]:
    """An empty plain-HTTP registry for one test, to push into."""
    _require_registry_binary()
    handle = start_registry("plain", tmp_path / "registry", populated=False)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(scope="session")
def containerd(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ContainerdHandle]:
    """A real containerd on its own socket, root and state, for the session.

    Tests share it, so each should use its own namespace.
    """
    if containerd_binary() is None:
        pytest.skip(
            "containerd is not installed (Debian package containerd); the "
            "containerd tests need the real daemon"
        )
    handle = start_containerd(tmp_path_factory.mktemp("containerd"))
    try:
        yield handle
    finally:
        handle.stop()
