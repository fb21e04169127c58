"""state.json's records: the same JSON as ever, and a field of the wrong type is a StateError."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agentd.core.paths import Paths
from agentd.state.records import Block, Deferred, Noop, OwedRestart, Watch
from agentd.state.store import AgentState, InventoryEntry, StateError, load_state, save_state
from tests.support.node import Node

RESTART = {"component": "k3s", "action": "restart", "reason": "k3s.service: config changed"}


def full_state() -> AgentState:
    return AgentState(
        last_applied_generation=3,
        last_run={"kind": "apply", "outcome": "deferred", "generation": 3},
        inventory={"crun": InventoryEntry("1.15", "ab" * 32, ["/usr/local/bin/crun"])},
        noop=Noop("d" * 64, {"kind": "apply", "actions": []}),
        deferred=Deferred([RESTART], "2030-01-01T02:00:00Z", "daily 02:00+1h (UTC)"),
        pending_restart=OwedRestart("k3s.service", "config changed", "2029-12-31T12:00:00Z"),
        watch={"crun": Watch("2029-12-31T12:00:00Z", 1.9e9, 3, "1.14", "1.15", True)},
        blocked={"wasmedge": Block(3, "0.14.1", "0.13.5", "wasmedge fails", "2029-12-31T13:00Z")},
    )


def test_the_records_keep_state_jsons_keys(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    save_state(paths, full_state())
    doc = json.loads(paths.state_file.read_text())
    assert doc["pendingRestart"] == {
        "unit": "k3s.service",
        "causes": "config changed",
        "since": "2029-12-31T12:00:00Z",
    }
    assert doc["deferred"] == {
        "actions": [RESTART],
        "until": "2030-01-01T02:00:00Z",
        "window": "daily 02:00+1h (UTC)",
    }
    assert doc["watch"]["crun"] == {
        "since": "2029-12-31T12:00:00Z",
        "until": 1.9e9,
        "generation": 3,
        "from": "1.14",
        "to": "1.15",
        "healthyBefore": True,
    }
    assert doc["blocked"]["wasmedge"] == {
        "generation": 3,
        "version": "0.14.1",
        "restored": "0.13.5",
        "reason": "wasmedge fails",
        "at": "2029-12-31T13:00Z",
    }
    assert doc["noop"] == {"digest": "d" * 64, "result": {"kind": "apply", "actions": []}}
    assert paths.state_file.stat().st_mode & 0o777 == 0o600
    assert load_state(paths) == full_state()


def test_no_state_file_is_no_state(tmp_path: Path) -> None:
    assert load_state(Paths(tmp_path)) is None


def test_an_older_state_file_without_the_newer_fields_loads(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    paths.state_file.parent.mkdir(parents=True)
    paths.state_file.write_text(json.dumps({"stateVersion": 1, "lastAppliedGeneration": 2}))
    state = load_state(paths)
    assert state == AgentState(last_applied_generation=2)


def _corrupt(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (("lastAppliedGeneration",), "3", "state.lastAppliedGeneration"),
        (("lastAppliedGeneration",), True, "state.lastAppliedGeneration"),
        (("lastRun",), [], "state.lastRun"),
        (("inventory", "crun", "files"), "/usr/local/bin/crun", "inventory.crun.files"),
        (("inventory", "crun", "version"), 1.15, "inventory.crun.version"),
        (("noop", "digest"), None, "noop.digest"),
        (("deferred", "actions"), {"k3s": "restart"}, "deferred.actions"),
        (("deferred", "actions"), ["restart"], "deferred.actions[0]"),
        (("pendingRestart", "unit"), 7, "pendingRestart.unit"),
        (("watch", "crun", "until"), "tomorrow", "watch.crun.until"),
        (("watch", "crun", "healthyBefore"), 1, "watch.crun.healthyBefore"),
        (("watch", "crun"), "1.15", "watch.crun"),
        (("blocked", "wasmedge", "generation"), "3", "blocked.wasmedge.generation"),
        (("blocked",), [], "blocked"),
        (("counters",), {"runs": 3}, "state.counters"),
    ],
)
def test_a_field_of_the_wrong_type_is_a_corrupt_state_file(
    tmp_path: Path, path: tuple[str, ...], value: Any, named: str
) -> None:
    paths = Paths(tmp_path)
    save_state(paths, full_state())
    doc = _corrupt(json.loads(paths.state_file.read_text()), path, value)
    paths.state_file.write_text(json.dumps(doc))
    with pytest.raises(StateError, match="move it aside") as caught:
        load_state(paths)
    assert named in str(caught.value)


@pytest.mark.parametrize("text", ["{not json", "[]", "\xff"])
def test_a_state_file_that_is_no_json_object_is_corrupt(tmp_path: Path, text: str) -> None:
    paths = Paths(tmp_path)
    paths.state_file.parent.mkdir(parents=True)
    paths.state_file.write_bytes(text.encode("latin-1"))
    with pytest.raises(StateError, match="is corrupt"):
        load_state(paths)


def test_status_shows_every_record(sandbox_root: Path) -> None:
    save_state(Paths(sandbox_root), full_state())
    res = Node(sandbox_root).agentd("status")
    assert res.code == 0, res.stderr
    assert (
        "waiting for the maintenance window (daily 02:00+1h (UTC)), opens 2030-01-01T02:00:00Z:\n"
        "  restart k3s: k3s.service: config changed\n"
    ) in res.stdout
    assert "k3s restart owed since 2029-12-31T12:00:00Z: config changed\n" in res.stdout
    assert "watching crun (1.14 -> 1.15) for a rollback window\n" in res.stdout
    assert (
        "rolled back wasmedge 0.14.1 -> 0.13.5 at 2029-12-31T13:00Z "
        "(not retried for generation 3): wasmedge fails\n"
    ) in res.stdout
