"""A manual rollback holds until the desired state moves on or it is released (issue 15.5)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.mirror import MirrorServer
from tests.support.node import Node
from tests.support.standins import Mirror, desired_document


@pytest.fixture
def node(sandbox_root: Any) -> Node:
    return Node(sandbox_root)


def crun_doc(
    mirror: MirrorServer, index: Mirror, arch: str, crun: str, generation: int, **kw: Any
) -> dict[str, Any]:
    arches = tuple(sorted({arch, "amd64", "arm64"}))
    kw.setdefault("k3s", None)
    return desired_document(
        mirror.url, index, arches=arches, wasmedge=None, crun=crun, generation=generation, **kw
    )


def crun(node: Node) -> str:
    return node.version_of("/usr/local/bin/crun")


@pytest.fixture
def rolled_back(
    node: Node, mirror: MirrorServer, mirror_index: Mirror, arch: str
) -> dict[str, Any]:
    """crun 1.14 (generation 1), then 1.15 (generation 2), rolled back by hand to 1.14."""
    assert node.apply(crun_doc(mirror, mirror_index, arch, "1.14", 1)).code == 0
    gen2 = crun_doc(mirror, mirror_index, arch, "1.15", 2)
    assert node.apply(gen2).code == 0
    res = node.agentd("rollback", "crun", "--json")
    assert res.code == 0, res.stderr
    assert res.json()["rollback"]["hold"]["away"] == "1.15"
    assert crun(node) == "crun version 1.14"
    return gen2


def test_apply_after_a_rollback_does_not_upgrade_again_and_plan_says_why(
    node: Node, rolled_back: dict[str, Any]
) -> None:
    path = str(node.desired(rolled_back))
    planned = node.agentd("plan", "--desired", path, "--json", "--detailed-exitcode")
    assert planned.code == 3, planned.stdout
    assert planned.json()["actions"] == []
    (refused,) = planned.json()["refusals"]
    assert (refused["kind"], refused["subject"]) == ("rollback-hold", "crun")
    since = node.state()["rollbackHolds"]["crun"]["since"]
    assert f"held by rollback since {since}" in refused["reason"]
    human = node.agentd("plan", "--desired", path).stdout
    assert f"held by rollback since {since}" in human
    for _ in range(3):  # planned, then answered from the no-op memo: the hold stands
        applied = node.apply(rolled_back)
        assert applied.code == 0, applied.stderr
        assert applied.json()["actions"] == []
        assert crun(node) == "crun version 1.14"
    assert node.state()["rollbackHolds"]["crun"]["restored"] == "1.14"
    status = node.agentd("status").stdout
    assert f"held by rollback since {since}: crun at 1.14" in status


def test_the_hold_ends_when_the_desired_state_names_another_version(
    node: Node, mirror: MirrorServer, mirror_index: Mirror, arch: str, rolled_back: dict[str, Any]
) -> None:
    # Generation 3 names 1.15 again: still what was rolled away from, still held.
    assert node.apply(crun_doc(mirror, mirror_index, arch, "1.15", 3)).code == 0
    assert crun(node) == "crun version 1.14"
    # Generation 4 names 1.14: the fleet caught up; the hold ends, nothing to change.
    assert node.apply(crun_doc(mirror, mirror_index, arch, "1.14", 4)).code == 0
    assert node.state()["rollbackHolds"] == {}
    # From then on the desired state is followed again, 1.15 included.
    assert node.apply(crun_doc(mirror, mirror_index, arch, "1.15", 5)).code == 0
    assert crun(node) == "crun version 1.15"


def test_release_ends_the_hold_and_the_next_apply_upgrades(
    node: Node, rolled_back: dict[str, Any]
) -> None:
    assert node.apply(rolled_back).code == 0
    assert node.apply(rolled_back).json()["cached"] is True
    released = node.agentd("rollback", "--release", "crun")
    assert released.code == 0, released.stderr
    assert "released crun: held by rollback since" in released.stdout
    assert node.state()["rollbackHolds"] == {}
    applied = node.apply(rolled_back)
    assert applied.code == 0, applied.stderr
    assert [(a["component"], a["action"]) for a in applied.json()["actions"]] == [
        ("crun", "upgrade")
    ]
    assert crun(node) == "crun version 1.15"
    again = node.agentd("rollback", "--release", "crun")
    assert again.code == 1
    assert "no rollback holds crun (held: none)" in again.stderr


def test_rolling_back_a_first_install_says_it_removed_the_file(
    node: Node, mirror: MirrorServer, mirror_index: Mirror, arch: str
) -> None:
    doc = crun_doc(mirror, mirror_index, arch, "1.15", 1, k3s="v1.30.4+k3s1")
    assert node.apply(doc).code == 0
    res = node.agentd("rollback", "crun")
    assert res.code == 0, res.stderr
    assert "rolled back crun: removed /usr/local/bin/crun (agentd installed it first" in res.stdout
    # crun going away changes what the containerd template can run: k3s is restarted.
    assert "service: systemctl restart k3s.service" in res.stdout
    assert not node.path("/usr/local/bin/crun").exists()
    # The hold keeps apply from installing it again at once.
    assert node.apply(doc).code == 0
    assert not node.path("/usr/local/bin/crun").exists()


def test_rolling_back_a_config_holds_its_content_and_restarts_k3s(
    node: Node, mirror: MirrorServer, mirror_index: Mirror, arch: str
) -> None:
    doc = crun_doc(mirror, mirror_index, arch, "1.15", 1, k3s="v1.30.4+k3s1")
    assert node.apply(doc).code == 0
    config = "/etc/rancher/k3s/config.yaml"
    doc["generation"] = 2
    doc["components"]["k3s"]["config"] = {"node-label": ["zone=a"]}
    assert node.apply(doc).code == 0
    assert "zone=a" in node.read(config)
    res = node.agentd("rollback", "k3s/config", "--json")
    assert res.code == 0, res.stderr
    assert res.json()["serviceCalls"] == ["systemctl restart k3s.service"]
    assert "zone=a" not in node.read(config)
    planned = node.agentd("plan", "--desired", str(node.desired(doc)), "--json")
    assert [(r["kind"], r["subject"]) for r in planned.json()["refusals"]] == [
        ("rollback-hold", "k3s/config")
    ]
    # Nothing else is planned: the k3s restart was only for the held config.
    assert planned.json()["actions"] == []
    doc["generation"] = 3
    doc["components"]["k3s"]["config"] = {"node-label": ["zone=b"]}
    assert node.apply(doc).code == 0
    assert "zone=b" in node.read(config)
    assert node.state()["rollbackHolds"] == {}
