"""state.json's records: the same JSON as ever, and a field of the wrong type is a StateError."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from agentd.core.paths import Paths
from agentd.state.holds import Block, OwedRestart, RollbackHold, Watch
from agentd.state.intent import Intent, IntentEntry
from agentd.state.inventory import InventoryEntry
from agentd.state.records import Deferred, Noop, RunResult
from agentd.state.store import AgentState, StateError, load_state, save_state
from tests.support.node import Node

RESTART = {"component": "k3s", "action": "restart", "reason": "k3s.service: config changed"}


def full_state() -> AgentState:
    return AgentState(
        last_applied_generation=3,
        last_run=RunResult(
            "apply",
            "deferred",
            generation=3,
            deferred=Deferred([RESTART], "2030-01-01T02:00:00Z", "daily 02:00+1h (UTC)"),
        ),
        inventory={"crun": InventoryEntry("1.15", "ab" * 32, ["/usr/local/bin/crun"])},
        noop=Noop("d" * 64, RunResult("apply", "converged", actions=[])),
        deferred=Deferred([RESTART], "2030-01-01T02:00:00Z", "daily 02:00+1h (UTC)"),
        pending_restart=OwedRestart("k3s.service", "config changed", "2029-12-31T12:00:00Z"),
        watch={"crun": Watch("2029-12-31T12:00:00Z", 1.9e9, 3, "1.14", "1.15", True)},
        blocked={"wasmedge": Block(3, "0.14.1", "0.13.5", "wasmedge fails", "2029-12-31T13:00Z")},
        rollback_holds={"crun": RollbackHold("2029-12-31T14:00:00Z", "1.15", "1.14")},
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
    assert doc["rollbackHolds"]["crun"] == {
        "since": "2029-12-31T14:00:00Z",
        "away": "1.15",
        "restored": "1.14",
        "awaySha256": None,
    }
    assert doc["noop"] == {
        "digest": "d" * 64,
        "result": {"kind": "apply", "outcome": "converged", "actions": []},
    }
    assert doc["lastRun"] == {
        "kind": "apply",
        "generation": 3,
        "outcome": "deferred",
        "deferred": {
            "actions": [RESTART],
            "until": "2030-01-01T02:00:00Z",
            "window": "daily 02:00+1h (UTC)",
        },
    }
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
        (("lastRun", "outcome"), None, "lastRun.outcome"),
        (("lastRun", "generation"), "3", "lastRun.generation"),
        (("lastRun", "actions"), {"crun": "install"}, "lastRun.actions"),
        (("lastRun", "actions"), ["install"], "lastRun.actions[0]"),
        (("lastRun", "durationMs"), "12 ms", "lastRun.durationMs"),
        (("lastRun", "deferred", "until"), 7, "lastRun.deferred.until"),
        (("noop", "result", "kind"), 1, "noop.result.kind"),
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
        (("rollbackHolds", "crun", "since"), None, "rollbackHolds.crun.since"),
        (("rollbackHolds",), [], "rollbackHolds"),
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
    assert (
        "held by rollback since 2029-12-31T14:00:00Z: crun at 1.14 while the desired state "
        "names 1.15 (agentd rollback --release crun)\n"
    ) in res.stdout


# A converged apply as `apply --json` prints it and state.json keeps it (every key it can have
# but the ones only a failed, deferred or rollback run has).
APPLY = {
    "kind": "apply",
    "generation": 7,
    "arch": "amd64",
    "outcome": "converged",
    "dryRun": False,
    "cached": True,
    "startedAt": "2029-12-31T12:00:00Z",
    "sources": ["/etc/wasm-edge/desired.yaml"],
    "fleet": {"generation": 7, "origin": "abc123", "signedBy": None},
    "actions": [{"component": "crun", "action": "install", "reason": "r", "status": "done"}],
    "unchanged": [{"component": "k3s", "reason": "v1.30.4+k3s1 already installed"}],
    "timings": {"detect": 1.5, "plan": 0.2},
    "warnings": ["a warning"],
    "targeting": [{"source": "fleet", "override": None, "applies": True, "why": "no selector"}],
    "downloads": [{"component": "crun", "cached": False, "bytes": 3, "sha256": "ab" * 32}],
    "serviceCalls": ["systemctl restart k3s.service"],
    "error": "a step failed",
    "problems": ["f.yaml:1:1: bad"],
    "pull": {"outcome": "updated"},
    "finishedAt": "2029-12-31T12:00:01Z",
    "durationMs": 812.5,
}


def test_a_run_result_keeps_its_json_keys() -> None:
    result = RunResult.from_json(APPLY)
    assert result.to_json() == APPLY
    assert list(result.to_json()) == list(APPLY)  # and their order
    assert (result.outcome, result.generation, result.service_calls) == (
        "converged",
        7,
        ["systemctl restart k3s.service"],
    )
    assert result.succeeded
    # The no-op memo keeps what the plan said, not when, how long, or what the run fetched.
    assert result.memo().to_json() == {
        k: APPLY[k]
        for k in (
            "kind",
            "generation",
            "arch",
            "outcome",
            "dryRun",
            "sources",
            "fleet",
            "actions",
            "unchanged",
            "warnings",
            "targeting",
        )
    }


def test_a_failed_runs_result_has_only_its_keys() -> None:
    failed = {
        "kind": "apply",
        "outcome": "failed",
        "startedAt": "2029-12-31T12:00:00Z",
        "sources": [],
        "error": "the desired state is invalid (1 error)",
        "problems": ["f.yaml:1:1: bad"],
    }
    result = RunResult.from_json(failed)
    assert not result.succeeded
    assert result.to_json() == failed


@pytest.mark.parametrize(
    ("doc", "named"),
    [
        ({"outcome": "converged"}, "lastRun.kind"),
        ({"kind": "apply", "outcome": "converged", "dryRun": "no"}, "lastRun.dryRun"),
        ({"kind": "apply", "outcome": "converged", "timings": []}, "lastRun.timings"),
        ({"kind": "apply", "outcome": "converged", "unchanged": ["k3s"]}, "lastRun.unchanged[0]"),
    ],
)
def test_a_run_result_of_the_wrong_shape_is_refused(doc: dict[str, Any], named: str) -> None:
    with pytest.raises(TypeError, match=re.escape(named)):
        RunResult.from_json(doc)


def test_the_intent_holds_typed_inventory_entries_and_keeps_its_json(tmp_path: Path) -> None:
    before = InventoryEntry("1.14", "ab", ["/usr/local/bin/crun"])
    after = InventoryEntry("1.15", "cd", ["/usr/local/bin/crun"])
    entry = IntentEntry("upgrade", "1.14", "1.15", before, after)
    doc = Intent(2, {"crun": entry}).to_json()
    assert doc["components"]["crun"]["inventoryBefore"] == before.to_json()
    assert doc["components"]["crun"]["inventoryAfter"] == after.to_json()
    assert Intent.from_json(doc) == Intent(2, {"crun": entry})
    paths = Paths(tmp_path)
    save_state(paths, AgentState(installing=Intent(2, {"crun": entry})))
    state = json.loads(paths.state_file.read_text())
    state["installing"]["components"]["crun"]["inventoryAfter"]["files"] = "/usr/local/bin/crun"
    paths.state_file.write_text(json.dumps(state))
    with pytest.raises(
        StateError, match=re.escape("installing.components.crun.inventoryAfter.files")
    ):
        load_state(paths)
