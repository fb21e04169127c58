"""Judging a pulled fleet document: merged with the node's files and cut to this node."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agentd.desired.identity import NodeIdentity
from agentd.desired.load import settle_candidate
from agentd.desired.validate import load_and_validate
from agentd.sources.document import Document
from agentd.sources.store import FleetStore
from agentd.system.host import Host


def _candidate(host: Host, arch: str) -> FleetStore:
    """A fleet document valid for every node but those labelled tier=edge: its override for
    them makes k3s an agent with no server to join."""
    doc = {
        "apiVersion": "agentd/v1",
        "kind": "NodeState",
        "generation": 3,
        "components": {
            "crun": {
                "version": "1.15",
                "artifacts": {arch: {"url": "https://m.example/crun", "sha256": "c" * 64}},
            }
        },
        "overrides": [
            {
                "name": "edge-agents",
                "selector": {"labels": {"tier": "edge"}},
                "components": {
                    "k3s": {
                        "version": "v1.30.4+k3s1",
                        "role": "agent",
                        "artifacts": {arch: {"url": "https://m.example/k3s", "sha256": "a" * 64}},
                    }
                },
            }
        ],
    }
    store = FleetStore(host.paths)
    data = yaml.safe_dump(doc).encode()
    store.write_candidate(Document(data, "sha256:test", generation=3), "the fleet document")
    return store


@pytest.mark.parametrize(("labels", "verdict"), [({}, "accepted"), ({"tier": "edge"}, "rejected")])
def test_a_candidate_is_judged_with_the_overrides_that_target_this_node(
    sandbox_root: Path, arch: str, labels: dict[str, str], verdict: str
) -> None:
    host = Host.at(sandbox_root)
    store = _candidate(host, arch)
    node = NodeIdentity("c0ffee", "edge-01", arch, "debian 12", labels)
    settle_candidate(host, node, promote=True)
    assert not store.candidate.is_file()
    seen = store.seen()
    assert seen["verdict"] == verdict
    if verdict == "rejected":
        # The override for this node is what makes it invalid, and the reason says where.
        assert "an agent needs 'server: https://HOST:6443'" in seen["reason"]
        assert store.good_generation() is None
    else:
        assert store.good_generation() == 3


def test_without_promote_a_candidate_valid_for_this_node_is_returned(
    sandbox_root: Path, arch: str
) -> None:
    host = Host.at(sandbox_root)
    store = _candidate(host, arch)
    edge = NodeIdentity("c0ffee", "edge-01", arch, "debian 12", {"tier": "edge"})
    assert settle_candidate(host, edge, promote=False) is None
    other = NodeIdentity("c0ffee", "core-01", arch, "debian 12", {})
    assert settle_candidate(host, other, promote=False) == store.candidate
    assert store.candidate.is_file()  # a plan judges it, only apply or pull settle it


def test_a_drop_in_cannot_set_the_merged_generation(tmp_path: Path) -> None:
    """Only the first source sets the generation: a drop-in's is ignored with a warning, so
    removing the drop-in never leaves the node above its own desired state."""
    main = tmp_path / "desired.yaml"
    main.write_text("apiVersion: agentd/v1\nkind: NodeState\ngeneration: 5\n")
    drop_in = tmp_path / "99-local.yaml"
    drop_in.write_text("generation: 900\n")
    report = load_and_validate([main, drop_in], "amd64", merge_all=True)
    assert report.ok, report.errors
    assert report.state is not None
    assert report.state.generation == 5
    assert report.warnings == [
        f"{drop_in}:1:13: warning: generation 900 is ignored: only the first source "
        "(the fleet document, else desired.yaml) sets the generation (5)"
    ]
    same = tmp_path / "98-same.yaml"
    same.write_text("generation: 5\n")
    assert load_and_validate([main, same], "amd64", merge_all=True).warnings == []


@pytest.mark.parametrize("generation", [2**53 + 1, 10**18, -1])
def test_a_generation_out_of_0_to_2_53_is_invalid(tmp_path: Path, generation: int) -> None:
    path = tmp_path / "desired.yaml"
    path.write_text(f"apiVersion: agentd/v1\nkind: NodeState\ngeneration: {generation}\n")
    report = load_and_validate([path], "amd64", merge_all=True)
    assert report.state is None
    assert report.errors
    assert report.errors[0].startswith(f"{path}:3:13: generation: ")
    path.write_text(f"apiVersion: agentd/v1\nkind: NodeState\ngeneration: {2**53}\n")
    ok = load_and_validate([path], "amd64", merge_all=True)
    assert ok.state is not None
    assert ok.state.generation == 2**53
