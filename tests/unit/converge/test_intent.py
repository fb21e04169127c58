"""The write-ahead intent: what an existing state.json holds loads, and is written back as is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentd.core.paths import Paths
from agentd.state.intent import Intent, Replaced
from agentd.state.store import StateError, load_state, save_state

# `installing` as the agentd before the typed intent wrote it: a killed crun upgrade, and a
# WasmEdge upgrade whose replaced targets hold a file (with its backup) and a symlink.
WRITTEN = {
    "generation": 2,
    "components": {
        "crun": {
            "action": "upgrade",
            "from": "1.14",
            "to": "1.15",
            "inventoryBefore": {
                "version": "1.14",
                "sha256": "ab",
                "files": ["/usr/local/bin/crun"],
            },
            "inventoryAfter": {"version": "1.15", "sha256": "cd", "files": ["/usr/local/bin/crun"]},
            "replaced": [
                {
                    "path": "/usr/local/bin/crun",
                    "kind": "file",
                    "mode": 493,
                    "backup": "/var/lib/wasm-edge/replaced/run-1/0000",
                }
            ],
        },
        "wasmedge": {
            "action": "install",
            "from": None,
            "to": "0.14.1",
            "inventoryBefore": None,
            "inventoryAfter": {"version": "0.14.1", "sha256": "ef", "files": []},
            "replaced": [
                {
                    "path": "/usr/local/lib/libwasmedge.so",
                    "kind": "symlink",
                    "mode": 420,
                    "link": "x",
                },
                {"path": "/usr/local/bin/wasmedge", "kind": "absent", "mode": 420},
            ],
        },
    },
}


def test_an_intent_is_read_and_written_back_byte_for_byte(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    paths.state_dir.mkdir(parents=True)
    raw = json.dumps({"stateVersion": 1, "installing": WRITTEN}, indent=2).encode() + b"\n"
    paths.state_file.write_bytes(raw)
    state = load_state(paths)
    assert state is not None
    assert state.installing is not None
    crun = state.installing.components["crun"]
    assert (crun.action, crun.from_version, crun.to_version) == ("upgrade", "1.14", "1.15")
    assert crun.replaced == [
        Replaced("/usr/local/bin/crun", "file", 493, "/var/lib/wasm-edge/replaced/run-1/0000")
    ]
    assert state.interrupted() == {
        "crun": "an earlier run was interrupted while installing 1.15",
        "wasmedge": "an earlier run was interrupted while installing 0.14.1",
    }
    save_state(paths, state)
    written = json.loads(paths.state_file.read_bytes())["installing"]
    assert json.dumps(written, indent=2) == json.dumps(WRITTEN, indent=2)  # same keys, same order
    assert Intent.from_json(WRITTEN).to_json() == WRITTEN


def test_an_intent_without_its_components_is_a_corrupt_state_file(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    paths.state_dir.mkdir(parents=True)
    paths.state_file.write_text(json.dumps({"installing": {"generation": 2}}))
    with pytest.raises(StateError, match="corrupt"):
        load_state(paths)
