"""Shared fixtures: a stand-in release mirror, a real HTTP server over it, a sandbox root."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.mirror import MirrorServer
from tests.support.standins import Mirror, build_mirror, node_arch

__all__ = ["node_arch"]


@pytest.fixture(scope="session")
def mirror_index(tmp_path_factory: pytest.TempPathFactory) -> Mirror:
    """Two versions of every component, built once per session: tests must not modify it."""
    return build_mirror(
        tmp_path_factory.mktemp("mirror"),
        k3s_versions=("v1.30.4+k3s1", "v1.31.2+k3s1"),
        crun_versions=("1.14", "1.15"),
        wasmedge_versions=("0.13.5", "0.14.1"),
        plugins=("wasi_nn-ggml", "wasi_crypto"),
        arches=("amd64", "arm64", "armv7"),
    )


@pytest.fixture(scope="session")
def mirror_dir(mirror_index: Mirror) -> Path:
    """The directory the session's stand-in mirror lives in (see `mirror_index`)."""
    return mirror_index.root


@pytest.fixture
def mirror(mirror_dir: Path) -> Iterator[MirrorServer]:
    """A real HTTP server over `mirror_dir` for one test, with no faults and an empty log."""
    with MirrorServer(mirror_dir) as server:
        yield server


@pytest.fixture
def sandbox_root(tmp_path: Path) -> Path:
    """An empty directory to pass as --root: every host path is taken under it."""
    root = tmp_path / "root"
    root.mkdir()
    return root


@pytest.fixture
def arch() -> str:
    """This machine's architecture as releases name it (amd64, arm64, armv7)."""
    return node_arch()
