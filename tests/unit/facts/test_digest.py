"""The no-op digest sees every file detection's answer depends on, wherever WasmEdge looks."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentd.core.paths import Paths
from agentd.facts.digest import planning_inputs_digest

NODE = {"nodeId": "n1", "hostname": "edge-1", "arch": "amd64", "os": "debian 13", "labels": {}}


def _digest(root: Path) -> str:
    return planning_inputs_digest(Paths(root), [], NODE, {})


@pytest.mark.parametrize(
    "node_path",
    [
        # Debian's WasmEdge: its library and its plugin directory (walked recursively).
        "/usr/lib/x86_64-linux-gnu/libwasmedge.so.0",
        "/usr/lib/aarch64-linux-gnu/wasmedge/nested/libwasmedgePluginX.so",
        # agentd's upstream layout, and an unpacked tarball's ../plugin.
        "/usr/local/lib/libwasmedge.so.0",
        "/usr/local/lib/wasmedge/libwasmedgePluginWasiNN.so",
        "/usr/local/plugin/libwasmedgePluginWasiNN.so",
        # Which libwasmedge a binary without RUNPATH finds.
        "/etc/ld.so.cache",
        "/usr/bin/crun",
    ],
)
def test_a_file_detection_depends_on_changes_the_digest(tmp_path: Path, node_path: str) -> None:
    before = _digest(tmp_path)
    target = tmp_path / node_path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"\x7fELF")
    after = _digest(tmp_path)
    assert after != before
    assert _digest(tmp_path) == after  # and nothing else moves it


def test_an_unrelated_file_does_not(tmp_path: Path) -> None:
    before = _digest(tmp_path)
    other = tmp_path / "usr/lib/x86_64-linux-gnu/libc.so.6"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"\x7fELF")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/hostname").write_text("edge-1\n")
    assert _digest(tmp_path) == before
