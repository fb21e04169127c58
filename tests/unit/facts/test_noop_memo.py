"""The no-op digest: an unchanged node skips planning, and any change to a plan input replans."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.support.mirror import MirrorServer
from tests.support.node import Node
from tests.support.standins import Mirror, crun_binary, desired_document, write_yaml


@pytest.fixture
def converged(sandbox_root: Path, mirror: MirrorServer, mirror_index: Mirror, arch: str) -> Node:
    node = Node(sandbox_root)
    doc = desired_document(mirror.url, mirror_index, arches=(arch,))
    assert node.apply(doc).code == 0
    second = node.apply(doc).json()  # a full plan that finds nothing: stores the digest
    assert second["actions"] == []
    assert "cached" not in second
    third = node.apply(doc).json()
    assert third["cached"] is True
    assert third["unchanged"] == second["unchanged"]  # the same reasons, without planning
    return node


def again(node: Node) -> dict[str, Any]:
    res = node.agentd("apply", "--desired", str(node.root.parent / "desired.yaml"), "--json")
    assert res.code == 0, res.stderr
    result: dict[str, Any] = res.json()
    return result


def test_a_config_edited_by_hand_is_put_back(converged: Node) -> None:
    config = converged.path("/etc/rancher/k3s/config.yaml")
    original = config.read_text()
    config.write_text(original + "disable: traefik\n")
    result = again(converged)
    assert "cached" not in result
    assert [(a["component"], a["action"]) for a in result["actions"]] == [
        ("k3s/config", "configure"),
        ("k3s", "restart"),
    ]
    assert config.read_text() == original


def test_a_binary_replaced_behind_agentds_back_is_reinstalled(converged: Node) -> None:
    crun = converged.path("/usr/local/bin/crun")
    crun.write_bytes(crun_binary("1.14"))
    result = again(converged)
    assert ("crun", "downgrade") not in [(a["component"], a["action"]) for a in result["actions"]]
    assert ("crun", "upgrade") in [(a["component"], a["action"]) for a in result["actions"]]
    assert converged.version_of("/usr/local/bin/crun") == "crun version 1.15"


def test_a_deleted_plugin_is_reinstalled(converged: Node) -> None:
    os.unlink(converged.path("/usr/local/lib/wasmedge/libwasmedgePluginWasiNN.so"))
    result = again(converged)
    assert [(a["component"], a["action"]) for a in result["actions"]] == [
        ("wasmedge/plugins/wasi_nn-ggml", "install")
    ]


def test_a_new_desired_document_is_planned(converged: Node) -> None:
    desired = converged.root.parent / "desired.yaml"
    desired.write_text(desired.read_text().replace("generation: 1", "generation: 2"))
    result = again(converged)
    assert "cached" not in result
    assert result["generation"] == 2
    assert converged.state()["lastAppliedGeneration"] == 2


def test_a_distribution_crun_appearing_is_noticed(converged: Node) -> None:
    distro = converged.path("/usr/bin/crun")
    distro.parent.mkdir(parents=True, exist_ok=True)
    distro.write_bytes(crun_binary("1.8.1", wasm=False))
    distro.chmod(0o755)
    result = again(converged)
    # /usr/local/bin comes first in the search order, so nothing changes, but it was looked at
    assert "cached" not in result
    assert result["actions"] == []


# --- the node's identity: targeting decides which overrides apply -------------------------------

SETTINGS = "/etc/wasm-edge/agentd.yaml"


@pytest.fixture
def targeted(sandbox_root: Path, mirror: MirrorServer, mirror_index: Mirror, arch: str) -> Node:
    """A converged node whose own desired.yaml has crun 1.14, and 1.15 for `tier: edge` nodes."""
    node = Node(sandbox_root)
    doc = desired_document(mirror.url, mirror_index, arches=(arch,), crun="1.14")
    newer = desired_document(mirror.url, mirror_index, arches=(arch,), crun="1.15")
    doc["overrides"] = [
        {
            "name": "edge-crun",
            "selector": {"labels": {"tier": "edge"}},
            "components": {"crun": newer["components"]["crun"]},
        }
    ]
    write_yaml(node.path("/etc/wasm-edge/desired.yaml"), doc)
    write_yaml(node.path(SETTINGS), {"labels": {"site": "ber"}})
    node.path("/etc/machine-id").write_text("0f" * 16 + "\n")
    node.path("/etc/os-release").write_text('ID=debian\nVERSION_ID="12"\n')
    assert node.agentd("apply", "--json").code == 0
    assert "cached" not in node.agentd("apply", "--json").json()
    assert node.agentd("apply", "--json").json()["cached"] is True
    return node


def apply_here(node: Node) -> dict[str, Any]:
    res = node.agentd("apply", "--json")
    assert res.code == 0, res.stderr
    result: dict[str, Any] = res.json()
    return result


def test_a_label_that_brings_an_override_is_applied(targeted: Node) -> None:
    # As an operator would: `tier: edge` added to agentd.yaml, plan shows the upgrade, and apply
    # makes it (not "nothing to do" from a digest that never saw the label).
    assert targeted.version_of("/usr/local/bin/crun") == "crun version 1.14"
    write_yaml(targeted.path(SETTINGS), {"labels": {"site": "ber", "tier": "edge"}})
    plan = targeted.agentd("plan", "--json").json()
    assert ("crun", "upgrade") in [(a["component"], a["action"]) for a in plan["actions"]]
    res = targeted.agentd("apply")
    assert res.code == 0, res.stderr
    assert "nothing to do" not in res.stdout
    last = targeted.state()["lastRun"]
    assert "cached" not in last
    assert ("crun", "upgrade") in [(a["component"], a["action"]) for a in last["actions"]]
    assert targeted.version_of("/usr/local/bin/crun") == "crun version 1.15"


@pytest.mark.parametrize(
    ("path", "content"),
    [
        pytest.param(SETTINGS, "labels: {site: par}\n", id="label"),
        pytest.param(SETTINGS, "labels: {site: ber}\nhostname: edge-7\n", id="hostname"),
        pytest.param(SETTINGS, "labels: {site: ber}\nnodeId: node-7\n", id="nodeId"),
        pytest.param("/etc/machine-id", "7e" * 16 + "\n", id="machine-id"),
        pytest.param("/etc/os-release", 'ID=debian\nVERSION_ID="13"\n', id="os-release"),
    ],
)
def test_every_identity_input_is_planned_again(targeted: Node, path: str, content: str) -> None:
    targeted.path(path).write_text(content)
    result = apply_here(targeted)
    assert "cached" not in result
    assert result["actions"] == []
    assert apply_here(targeted)["cached"] is True  # the new identity is memoised in turn


def test_a_no_op_apply_loads_no_planner_detector_or_health_check(converged: Node) -> None:
    # The digest answers for an unchanged node: nothing that plans, detects, checks or validates
    # may be imported on the way (a module imported lazily at run time counts too). Found when
    # the metrics step imported every health check module and the no-op grew 15%.
    res = converged.agentd(
        "apply",
        "--desired",
        str(converged.root.parent / "desired.yaml"),
        "--json",
        env={"PYTHONPROFILEIMPORTTIME": "1"},
    )
    assert res.code == 0, res.stderr
    assert res.json()["cached"] is True
    loaded = {
        line.rsplit("|", 1)[1].strip()
        for line in res.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "agentd.run" in loaded
    slow_path = ("agentd.plan", "agentd.health", "agentd.converge", "agentd.facts.detect")
    heavy = ("pydantic", "yaml", "structlog", "requests", "psutil")
    assert sorted(m for m in loaded if m.startswith(slow_path) or m.split(".")[0] in heavy) == []
