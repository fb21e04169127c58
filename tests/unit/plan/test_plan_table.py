"""plan() as a table: each fixture's inputs in, the whole plan compared with the one written."""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Optional

import pytest
import yaml

from agentd.core.components import MANAGED_CONFIG_PATHS
from agentd.core.errors import DesiredStateError
from agentd.desired.model import DesiredState
from agentd.facts.model import ComponentFacts, Facts, HostFacts, PluginFact
from agentd.plan.diff import plan
from agentd.plan.model import Action, Plan
from agentd.state.inventory import InventoryEntry

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "plan"
# File contents several fixtures share (the renderers' output), named by {file: NAME}.
FILES = FIXTURES / "files"
CASE_KEYS = {"description", "desired", "facts", "inventory", "configs", "force", "expected"}


def _cases() -> list[Any]:
    return [pytest.param(path, id=path.stem) for path in sorted(FIXTURES.glob("*.yaml"))]


def _load(path: Path) -> dict[str, Any]:
    case = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(case, dict), f"{path.name}: a case is a mapping"
    unknown = set(case) - CASE_KEYS
    missing = CASE_KEYS - {"force"} - set(case)
    assert not unknown, f"{path.name}: unknown keys {sorted(unknown)}"
    assert not missing, f"{path.name}: missing keys {sorted(missing)}"
    return case


def _text(value: Any) -> Optional[str]:
    """A file's content as a fixture gives it: text, null (absent) or {file: NAME} in files/."""
    if value is None or isinstance(value, str):
        return value
    assert isinstance(value, dict), f"content must be text, null or {{file: NAME}}: {value!r}"
    assert set(value) == {"file"}, f"content must be text, null or {{file: NAME}}: {value!r}"
    return (FILES / str(value["file"])).read_text(encoding="utf-8")


def _facts(data: dict[str, Any]) -> Facts:
    """The inverse of Facts.to_json (agentd has no reader: facts are only ever detected)."""
    host = data["host"]
    components = {
        name: ComponentFacts(
            installed=c["installed"],
            version=c.get("version"),
            path=c.get("path"),
            managed=c.get("managed", False),
            commit=c.get("commit"),
            features=tuple(c.get("features", ())),
            plugins=tuple(
                PluginFact(p["name"], p["path"], p.get("managed", False), p.get("version"))
                for p in c.get("plugins", ())
            ),
            error=c.get("error"),
        )
        for name, c in data["components"].items()
    }
    facts = Facts(
        host=HostFacts(
            arch=host["arch"],
            os=host["os"],
            kernel=host["kernel"],
            cpus=host["cpus"],
            memory_bytes=host["memoryBytes"],
            disk_free_bytes=host["diskFreeBytes"],
            cgroup_v2=host["cgroupV2"],
            disk_total_bytes=host["diskTotalBytes"],
        ),
        components=components,
        packages=dict(data.get("packages", {})),
    )
    # Written exactly as `agentd detect --json` prints them: nothing misspelt, nothing dropped.
    assert facts.to_json() == data, "facts are not in agentd.facts.model's JSON shape"
    return facts


def _inventory(data: dict[str, Any]) -> dict[str, InventoryEntry]:
    inventory = {name: InventoryEntry.from_json(entry) for name, entry in data.items()}
    assert {k: v.to_json() for k, v in inventory.items()} == data, "inventory as in state.json"
    return inventory


def _configs(data: dict[str, Any]) -> dict[str, Optional[bytes]]:
    """Every path plan() compares, as run.py reads them: a path the fixture omits is absent."""
    unknown = set(data) - set(MANAGED_CONFIG_PATHS)
    assert not unknown, f"not a path agentd manages: {sorted(unknown)}"
    configs: dict[str, Optional[bytes]] = dict.fromkeys(MANAGED_CONFIG_PATHS)
    for path, value in data.items():
        text = _text(value)
        configs[path] = None if text is None else text.encode()
    return configs


def _lines(text: Optional[str]) -> Optional[list[str]]:
    # Line by line, so a failing diff points at the line of a file that differs.
    return None if text is None else text.splitlines(keepends=True)


def _action(a: Action) -> dict[str, Any]:
    out = a.to_json()
    out["phase"] = a.phase
    if a.artifact is not None:
        out["artifact"] = a.artifact.model_dump()
    if a.action == "configure":
        out["content"] = _lines(None if a.content is None else a.content.decode())
    return out


def _plan(p: Plan) -> dict[str, Any]:
    return {**p.to_json(), "actions": [_action(a) for a in p.actions]}


def _expected(case: dict[str, Any]) -> dict[str, Any]:
    actions = []
    for written in case["expected"]["actions"]:
        action = dict(written)
        if "content" in action:
            action["content"] = _lines(_text(action["content"]))
        actions.append(action)
    return {
        "generation": case["desired"]["generation"],
        "arch": case["facts"]["host"]["arch"],
        "actions": actions,
        "unchanged": case["expected"]["unchanged"],
    }


def _diff(expected: dict[str, Any], actual: dict[str, Any]) -> str:
    def dump(value: dict[str, Any]) -> list[str]:
        return json.dumps(value, indent=2, sort_keys=True).splitlines(keepends=True)

    return "".join(difflib.unified_diff(dump(expected), dump(actual), "expected", "plan()"))


@pytest.mark.parametrize("fixture", _cases())
def test_plan_fixture(fixture: Path) -> None:
    case = _load(fixture)
    desired = DesiredState.model_validate(case["desired"])
    inputs = (
        desired,
        _facts(case["facts"]),
        _inventory(case["inventory"]),
        _configs(case["configs"]),
        case.get("force"),
    )
    if "error" in case["expected"]:
        with pytest.raises(DesiredStateError) as raised:
            plan(*inputs)
        assert str(raised.value) == case["expected"]["error"]
        return
    actual = _plan(plan(*inputs))
    expected = _expected(case)
    assert actual == expected, f"{fixture.name}: the plan differs\n{_diff(expected, actual)}"


def test_every_shared_file_is_used() -> None:
    named: set[str] = set()
    for path in sorted(FIXTURES.glob("*.yaml")):
        case = _load(path)
        actions = case["expected"].get("actions", [])
        contents = [*case["configs"].values(), *(a.get("content") for a in actions)]
        named.update(c["file"] for c in contents if isinstance(c, dict))
    assert named == {p.name for p in FILES.iterdir()}
