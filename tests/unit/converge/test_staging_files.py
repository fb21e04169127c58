"""What removing a WasmEdge agentd did not record removes: the files really there."""

from __future__ import annotations

from pathlib import Path

from agentd.converge.staging import Stager
from agentd.plan.model import Action
from agentd.state.store import AgentState
from agentd.system.host import Host


def _put(root: Path, node_path: str) -> None:
    target = root / node_path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"x")


def test_an_unrecorded_wasmedge_is_removed_by_the_files_it_has(tmp_path: Path) -> None:
    """Debian's WasmEdge build has no wasmedgec (`wasmedge compile` does its job): a WasmEdge
    made of those bytes in /usr/local has none either, and none is listed."""
    for path in (
        "/usr/local/bin/wasmedge",
        "/usr/local/lib/libwasmedge.so.0",
        "/usr/local/include/wasmedge/wasmedge.h",
    ):
        _put(tmp_path, path)
    stager = Stager(Host.at(tmp_path), AgentState(), tmp_path / "work")
    ops = stager.ops(Action("wasmedge", "remove", "state: absent"), None)
    assert sorted(o.path for o in ops) == [
        "/usr/local/bin/wasmedge",
        "/usr/local/include/wasmedge/wasmedge.h",
        "/usr/local/lib/libwasmedge.so.0",
    ]
    _put(tmp_path, "/usr/local/bin/wasmedgec")  # an upstream build that has it
    ops = stager.ops(Action("wasmedge", "remove", "state: absent"), None)
    assert "/usr/local/bin/wasmedgec" in [o.path for o in ops]
