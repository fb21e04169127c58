"""`plan` predicts every refusal `apply` makes (issue 15.2), through the real command line."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from tests.support.mirror import MirrorServer
from tests.support.node import Node, Result
from tests.support.standins import Mirror, desired_document, write_yaml

SETTINGS = "/etc/wasm-edge/agentd.yaml"


@pytest.fixture
def node(sandbox_root: Any) -> Node:
    return Node(sandbox_root)


def crun_doc(mirror: MirrorServer, index: Mirror, arch: str, **kw: Any) -> dict[str, Any]:
    arches = tuple(sorted({arch, "amd64", "arm64"}))
    kw.setdefault("k3s", None)
    return desired_document(mirror.url, index, arches=arches, wasmedge=None, **kw)


def plan(node: Node, doc: dict[str, Any], *args: str) -> Result:
    return node.agentd("plan", "--desired", str(node.desired(doc)), "--detailed-exitcode", *args)


def refusals(res: Result) -> list[tuple[str, str]]:
    return [(r["kind"], r["subject"]) for r in res.json()["refusals"]]


def test_an_older_generation_is_refused_by_plan_exit_3_and_by_apply(
    node: Node, mirror: MirrorServer, mirror_index: Mirror, arch: str
) -> None:
    assert node.apply(crun_doc(mirror, mirror_index, arch, crun="1.15", generation=10)).code == 0
    old = crun_doc(mirror, mirror_index, arch, crun="1.14", generation=2)
    planned = plan(node, old, "--json")
    assert planned.code == 3, planned.stdout
    assert refusals(planned) == [("generation", "desired state")]
    reason = planned.json()["refusals"][0]["reason"]
    assert "desired generation 2 is older than generation 10" in reason
    human = plan(node, old)
    assert human.code == 3
    assert "Refused:" in human.stdout
    assert "generation: desired generation 2 is older than generation 10" in human.stdout
    before = node.tree()
    applied = node.apply(old)
    assert applied.code == 1
    assert reason in applied.stderr  # the very refusal plan printed
    assert node.tree() == before
    assert node.state()["lastRun"]["outcome"] == "refused"
    assert node.state()["lastRun"]["refusals"] == planned.json()["refusals"]
    # Nothing refused, changes pending: 2, as before.
    assert plan(node, crun_doc(mirror, mirror_index, arch, crun="1.14", generation=11)).code == 2


def test_a_suspended_node_is_refused_by_plan_and_by_apply_even_when_nothing_changed(
    node: Node, mirror: MirrorServer, mirror_index: Mirror, arch: str
) -> None:
    doc = crun_doc(mirror, mirror_index, arch)
    assert node.apply(doc).code == 0
    assert node.apply(doc).json()["actions"] == []  # memoised: the next apply is answered
    assert node.apply(doc).json()["cached"] is True  # from the no-op memo
    assert plan(node, doc).code == 0
    node.path("/etc/wasm-edge").mkdir(parents=True, exist_ok=True)
    node.path("/etc/wasm-edge/suspend").touch()
    planned = plan(node, doc, "--json")
    assert planned.code == 3
    assert refusals(planned) == [("suspended", "node")]
    assert "/etc/wasm-edge/suspend exists" in planned.json()["refusals"][0]["reason"]
    applied = node.apply(doc)
    assert applied.code == 1
    assert "convergence is suspended (/etc/wasm-edge/suspend exists)" in applied.stderr
    assert node.state()["lastRun"]["outcome"] == "refused"
    node.path("/etc/wasm-edge/suspend").unlink()
    assert node.apply(doc).code == 0
    assert plan(node, doc).code == 0


def test_a_disruptive_action_held_for_the_window_is_refused_by_plan_and_held_by_apply(
    node: Node, mirror: MirrorServer, mirror_index: Mirror, arch: str
) -> None:
    assert node.apply(crun_doc(mirror, mirror_index, arch, k3s="v1.30.4+k3s1")).code == 0
    opens = (datetime.now(timezone.utc) + timedelta(hours=3)).replace(second=0, microsecond=0)
    window = {"timezone": "UTC", "windows": [{"start": opens.strftime("%H:%M"), "duration": "5m"}]}
    write_yaml(node.path(SETTINGS), {"maintenanceWindow": window})
    upgrade = crun_doc(mirror, mirror_index, arch, k3s="v1.31.2+k3s1", crun="1.14", generation=2)
    planned = plan(node, upgrade, "--json")
    assert planned.code == 3, planned.stdout
    assert refusals(planned) == [("window", "k3s"), ("window", "k3s")]
    until = opens.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert all(until in r["reason"] for r in planned.json()["refusals"])
    # What goes ahead is only what is not disruptive.
    shown = [(a["component"], a["action"]) for a in planned.json()["actions"]]
    assert shown == [("crun", "downgrade")]
    human = plan(node, upgrade)
    assert "x k3s" in human.stdout
    assert "held for the maintenance window" in human.stdout
    applied = node.apply(upgrade)
    assert applied.code == 0, applied.stderr
    result = applied.json()
    assert result["outcome"] == "deferred"
    assert [(a["component"], a["action"]) for a in result["actions"]] == shown
    assert [a["action"] for a in result["deferred"]["actions"]] == ["upgrade", "restart"]
    assert result["refusals"] == planned.json()["refusals"]
    assert node.version_of("/usr/local/bin/k3s").startswith("k3s version v1.30.4+k3s1")
