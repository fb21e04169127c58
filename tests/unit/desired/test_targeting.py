"""Fleet targeting: selectors, staged rollout waves, and what `agentd plan` says about them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agentd.desired.identity import NodeIdentity
from agentd.desired.targeting import in_wave, matches, wave_position
from tests.support.mirror import MirrorServer
from tests.support.node import Node
from tests.support.standins import Mirror, desired_document, write_yaml

NODE = NodeIdentity(
    "c0ffee", "edge-berlin-07", "arm64", "debian 12", {"ring": "prod", "site": "ber"}
)


@pytest.mark.parametrize(
    ("selector", "ok", "why"),
    [
        ({}, True, "no selector: every node"),
        ({"arch": ["arm64", "armv7"]}, True, "the selector matches"),
        ({"arch": ["amd64"]}, False, "arch arm64 is not amd64"),
        ({"hostname": ["edge-berlin-*"]}, True, "the selector matches"),
        ({"hostname": ["edge-paris-*", "core-*"]}, False, "hostname edge-berlin-07 matches none"),
        ({"os": ["debian"]}, True, "the selector matches"),
        ({"os": ["debian 12"]}, True, "the selector matches"),
        ({"os": ["debian 11", "ubuntu"]}, False, "os debian 12 is not debian 11 or ubuntu"),
        ({"labels": {"ring": "prod", "site": "ber"}}, True, "the selector matches"),
        ({"labels": {"ring": "canary"}}, False, "ring=prod, the selector wants ring=canary"),
        ({"labels": {"gpu": "yes"}}, False, "no label gpu, the selector wants gpu=yes"),
    ],
)
def test_selectors(selector: dict[str, Any], ok: bool, why: str) -> None:
    got, reason = matches(selector, NODE)
    assert got is ok
    assert reason.startswith(why)


def test_waves_are_stable_nested_and_reshuffled_by_a_new_key() -> None:
    ids = [f"{i:032x}" for i in range(4000)]
    ten = {i for i in ids if wave_position(i, "crun-1.16") < 0.10}
    thirty = {i for i in ids if wave_position(i, "crun-1.16") < 0.30}
    assert ten <= thirty  # a higher percent is a superset of a lower one
    # The share is what was asked for (binomial spread: 3 sigma of 4000 draws is under 1.5%).
    assert abs(len(ten) / len(ids) - 0.10) < 0.015
    assert abs(len(thirty) / len(ids) - 0.30) < 0.025
    assert {i for i in ids if wave_position(i, "crun-1.16") < 0.10} == ten  # stable
    other = {i for i in ids if wave_position(i, "k3s-1.31") < 0.10}
    overlap = len(ten & other) / len(ten)
    assert overlap < 0.2  # independent draws overlap about 10%


def test_canaries_go_first() -> None:
    canary = NodeIdentity("x", "h", "amd64", "debian 12", {"ring": "canary"})
    ok, why = in_wave({"percent": 0, "key": "k", "canary": {"ring": "canary"}}, canary)
    assert ok
    assert why == "a canary (ring=canary)"
    ok, why = in_wave({"percent": 0, "key": "k", "canary": {"ring": "canary"}}, NODE)
    assert not ok
    assert why.startswith("not in the 0% wave of 'k' yet (position ")


# --- through the command line, with the fleet document's real YAML -------------------------------


def _node_id_in(percent: float, key: str, inside: bool) -> str:
    for i in range(10_000):
        candidate = f"node{i:05d}"
        if (wave_position(candidate, key) < percent / 100) is inside:
            return candidate
    raise AssertionError("no such node id")  # pragma: no cover - 10,000 draws always find one


@pytest.fixture
def fleet(
    sandbox_root: Path, mirror: MirrorServer, mirror_index: Mirror, arch: str
) -> tuple[Node, dict[str, Any], dict[str, Any]]:
    """A node with the fleet document as its desired.yaml, and the crun 1.14 section to roll out."""
    node = Node(sandbox_root)
    doc = desired_document(mirror.url, mirror_index, arches=(arch,), crun="1.15")
    older = desired_document(mirror.url, mirror_index, arches=(arch,), crun="1.14")
    return node, doc, older["components"]["crun"]


def test_a_document_for_other_nodes_brings_nothing_new(
    fleet: tuple[Node, dict[str, Any], dict[str, Any]], arch: str
) -> None:
    node, doc, _ = fleet
    other = "amd64" if arch != "amd64" else "arm64"
    doc["selector"] = {"arch": [other]}
    write_yaml(node.path("/etc/wasm-edge/desired.yaml"), doc)
    res = node.agentd("plan", "--json")
    assert res.code == 0, res.stderr
    plan = res.json()
    assert plan["actions"] == []
    [note] = plan["targeting"]
    assert note["applies"] is False
    assert note["why"] == f"arch {arch} is not {other}"
    human = node.agentd("plan").stdout
    assert f"Targeting: the document of {node.path('/etc/wasm-edge/desired.yaml')}" in human
    assert "does NOT apply" in human


@pytest.mark.parametrize("inside", [True, False])
def test_an_override_rolls_out_to_its_wave(
    fleet: tuple[Node, dict[str, Any], dict[str, Any]], inside: bool
) -> None:
    node, doc, crun_114 = fleet
    doc["overrides"] = [
        {
            "name": "crun-downgrade-test",
            "rollout": {"percent": 25, "key": "crun-1.14"},
            "components": {"crun": crun_114},
        }
    ]
    write_yaml(node.path("/etc/wasm-edge/desired.yaml"), doc)
    write_yaml(
        node.path("/etc/wasm-edge/agentd.yaml"), {"nodeId": _node_id_in(25, "crun-1.14", inside)}
    )
    plan = node.agentd("plan", "--json").json()
    crun = next(a for a in plan["actions"] if a["component"] == "crun")
    assert crun["to"] == ("1.14" if inside else "1.15")
    [note] = plan["targeting"]
    assert note["override"] == "crun-downgrade-test"
    assert note["applies"] is inside
    assert ("in the 25% wave" if inside else "not in the 25% wave") in note["why"]


def test_a_canary_label_takes_the_override_whatever_its_position(
    fleet: tuple[Node, dict[str, Any], dict[str, Any]],
) -> None:
    node, doc, crun_114 = fleet
    doc["overrides"] = [
        {
            "name": "canaries",
            "selector": {"labels": {"site": "ber"}},
            "rollout": {"percent": 0, "key": "crun-1.14", "canary": {"ring": "canary"}},
            "components": {"crun": crun_114},
        }
    ]
    write_yaml(node.path("/etc/wasm-edge/desired.yaml"), doc)
    write_yaml(
        node.path("/etc/wasm-edge/agentd.yaml"), {"labels": {"ring": "canary", "site": "ber"}}
    )
    plan = node.agentd("plan", "--json").json()
    assert next(a for a in plan["actions"] if a["component"] == "crun")["to"] == "1.14"
    write_yaml(node.path("/etc/wasm-edge/agentd.yaml"), {"labels": {"ring": "canary"}})
    plan = node.agentd("plan", "--json").json()
    assert next(a for a in plan["actions"] if a["component"] == "crun")["to"] == "1.15"
    assert plan["targeting"][0]["why"] == "no label site, the selector wants site=ber"


def test_errors_inside_an_override_point_at_its_lines(
    fleet: tuple[Node, dict[str, Any], dict[str, Any]],
) -> None:
    node, doc, _ = fleet
    path = node.path("/etc/wasm-edge/desired.yaml")
    write_yaml(path, doc)
    text = path.read_text() + (
        "overrides:\n  - name: everyone\n    components:\n      crun:\n        version: 1.16\n"
    )
    path.write_text(text)
    res = node.agentd("plan")
    assert res.code == 1
    line = text.splitlines().index("        version: 1.16") + 1
    assert f"{path}:{line}:18: version must be a quoted string" in res.stderr
    # And a rollout without its key is a schema error where the rollout is.
    path.write_text(
        text.replace("version: 1.16", "version: '1.14'") + "    rollout: {percent: 5}\n"
    )
    res = node.agentd("validate")
    assert res.code == 1
    assert "missing field 'key'" in res.stderr
