"""Every `--json` command prints exactly one JSON document when it fails too, its errors as
objects with file, line, column, severity and message (issue 15.7)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agentd.cli import exits
from tests.support.node import Node, Result

DIAGNOSTIC_KEYS = {"file", "line", "column", "severity", "message"}
BAD_DESIRED = "apiVersion: agentd/v1\nkind: NodeState\ngeneration: 1\ncomponents:\n  crun: {}\n"
BAD_SETTINGS = "source:\n  url: 5\nbogus: 1\n"


@pytest.fixture
def node(sandbox_root: Path) -> Node:
    return Node(sandbox_root)


def one_document(res: Result) -> dict[str, Any]:
    """stdout is one JSON document (json.loads refuses anything after the first)."""
    assert "Traceback" not in res.stderr, res.stderr
    doc = json.loads(res.stdout)
    assert isinstance(doc, dict)
    return doc


def assert_failure(res: Result, code: int, kind: str) -> dict[str, Any]:
    doc = one_document(res)
    assert res.code == code, res
    assert doc["ok"] is False
    assert doc["exitCode"] == res.code
    assert doc["kind"] == kind
    assert isinstance(doc["error"], str)
    assert doc["error"]
    for d in doc["diagnostics"]:
        assert set(d) == DIAGNOSTIC_KEYS, d
    return doc


def test_plan_and_apply_of_a_missing_file(node: Node, tmp_path: Path) -> None:
    for command in ("plan", "apply"):
        res = node.agentd(command, "--desired", str(tmp_path / "nope.yaml"), "--json")
        doc = assert_failure(res, exits.EXIT_NOINPUT, command)
        assert doc["errorKind"] == "missing-input"
        assert "nope.yaml: no such file" in doc["error"]


def test_plan_and_apply_of_an_invalid_file_locate_each_error(node: Node, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_DESIRED)
    for command in ("plan", "apply"):
        doc = assert_failure(node.agentd(command, "--desired", str(bad), "--json"), 1, command)
        assert doc["errorKind"] == "desired-state"
        assert doc["diagnostics"], doc
        first = doc["diagnostics"][0]
        assert first["file"] == str(bad)
        assert (first["line"], first["severity"]) == (5, "error")
        assert isinstance(first["column"], int)
    # apply's document is the run's own result (nothing from an earlier run).
    assert doc["outcome"] == "failed"


def test_validate_diagnostics_are_objects(node: Node, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_DESIRED)
    res = node.agentd("validate", str(bad), "--arch", "none", "--json")
    doc = one_document(res)
    assert res.code == 1
    assert doc["valid"] is False
    assert doc["files"] == [str(bad)]
    assert [d["line"] for d in doc["diagnostics"]] == [5] * len(doc["errors"])
    assert {d["file"] for d in doc["diagnostics"]} == {str(bad)}
    missing = node.agentd("validate", str(tmp_path / "nope.yaml"), "--json")
    assert assert_failure(missing, exits.EXIT_NOINPUT, "validate")["valid"] is False


def test_settings_and_check_with_broken_settings(node: Node) -> None:
    node.path("/etc/wasm-edge").mkdir(parents=True)
    node.path("/etc/wasm-edge/agentd.yaml").write_text(BAD_SETTINGS)
    for command in ("settings", "check"):
        doc = assert_failure(node.agentd(command, "--json"), 1, command)
        assert doc["errorKind"] == "settings"
        where = {(d["file"], d["line"]) for d in doc["diagnostics"]}
        assert ("/etc/wasm-edge/agentd.yaml", 3) in where, doc


def test_pull_without_a_source(node: Node) -> None:
    doc = assert_failure(node.agentd("pull", "--json"), 1, "pull")
    assert "no source" in doc["error"]


def test_rollback_of_an_unknown_component_suggests_one(node: Node) -> None:
    res = node.agentd("rollback", "crn", "--json")
    doc = assert_failure(res, 1, "rollback")
    assert "did you mean 'crun'?" in doc["error"]
    assert "did you mean 'crun'?" in node.agentd("rollback", "crn").stderr


def test_status_without_state(node: Node) -> None:
    doc = assert_failure(node.agentd("status", "--json"), 1, "status")
    assert doc["errorKind"] == "no-state"


def test_detect_with_a_corrupt_state_file(node: Node) -> None:
    node.path("/var/lib/wasm-edge").mkdir(parents=True)
    node.path("/var/lib/wasm-edge/state.json").write_text("{bad")
    doc = assert_failure(node.agentd("detect", "--json"), 1, "detect")
    assert "corrupt" in doc["error"]


@pytest.mark.parametrize(
    "command", ["plan", "pull", "rollback", "apply", "check", "status", "validate", "detect"]
)
def test_a_usage_error_of_a_json_command_is_a_document_too(node: Node, command: str) -> None:
    given = ["crun"] if command == "rollback" else []  # its one required argument
    res = node.agentd(command, *given, "--json", "--no-such-option")
    doc = assert_failure(res, 64, command)
    assert doc["errorKind"] == "usage"
    assert "--no-such-option" in doc["error"]


def test_diagnostic_parses_the_problem_line_format() -> None:
    assert exits.diagnostic("a/b.yaml:3:7: warning: x: y") == {
        "file": "a/b.yaml",
        "line": 3,
        "column": 7,
        "severity": "warning",
        "message": "x: y",
    }
    assert exits.diagnostic("no place here")["line"] is None
