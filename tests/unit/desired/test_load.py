"""Judging a pulled fleet document: merged with the node's files and cut to this node."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agentd.desired.identity import NodeIdentity
from agentd.desired.load import settle_candidate
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
