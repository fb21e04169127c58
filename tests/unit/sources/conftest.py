"""Fixtures the source tests share: a sandbox node, a fleet repository, a git daemon serving it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fleet import FleetRepo, GitDaemon
from tests.support.node import Node


@pytest.fixture
def node(sandbox_root: Path) -> Node:
    return Node(sandbox_root)


@pytest.fixture
def repo(tmp_path: Path) -> FleetRepo:
    return FleetRepo(tmp_path / "fleet")


@pytest.fixture
def git_server(repo: FleetRepo) -> Iterator[GitDaemon]:
    with GitDaemon(repo.served) as server:
        yield server
