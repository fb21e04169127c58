"""What the fleet sees of a node: labels and annotations on its k3s node, through the real kubectl
against the fake API server (tests/support/fakekube.py stands in for the Kubernetes API server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agentd.report import node as fleet
from agentd.settings.snapshot import DEFAULTS, AgentConfig
from agentd.system.host import Host
from tests.support.fakekube import FakeCluster
from tests.support.standins import k3s_binary, real_kubectl

pytestmark = pytest.mark.skipif(real_kubectl() is None, reason="no real kubectl")


@pytest.fixture
def cluster() -> Any:
    with FakeCluster() as fake:
        yield fake


def server_root(tmp_path: Path, cluster: FakeCluster) -> Path:
    root = tmp_path / "node"
    k3s = root / "usr/local/bin/k3s"
    k3s.parent.mkdir(parents=True)
    k3s.write_bytes(k3s_binary())
    k3s.chmod(0o755)
    cluster.root = root
    cluster.write_k3s_kubeconfig(root)
    return root


def config() -> AgentConfig:
    raw = {**DEFAULTS, "health": {**DEFAULTS["health"], "nodeName": "edge-1"}}
    return AgentConfig(raw)


def test_the_result_is_published_as_labels_and_annotations(
    tmp_path: Path, cluster: FakeCluster
) -> None:
    root = server_root(tmp_path, cluster)
    result = {
        "generation": 12,
        "outcome": "converged",
        "targeting": [
            {"source": "fleet", "override": "crun-1.16", "applies": True, "why": "in the wave"},
            {"source": "fleet", "override": "gpu-nodes", "applies": False, "why": "no label"},
        ],
    }
    report = fleet.report_of(result, "converged generation 12, 0 findings")
    assert fleet.publish(Host.at(root), config(), report, "2026-11-27T12:00:00Z") is None
    meta = cluster.node("edge-1")["metadata"]
    assert meta["labels"]["agentd.wasm-edge.io/generation"] == "12"
    assert meta["labels"]["agentd.wasm-edge.io/result"] == "converged"
    assert meta["annotations"]["agentd.wasm-edge.io/overrides"] == "crun-1.16"
    assert meta["annotations"]["agentd.wasm-edge.io/message"].startswith("converged generation 12")
    assert meta["annotations"]["agentd.wasm-edge.io/updated"] == "2026-11-27T12:00:00Z"
    # A later failure overwrites them.
    failed = fleet.report_of({"generation": 13, "outcome": "failed"}, "failed: x; retrying in 10s")
    assert fleet.publish(Host.at(root), config(), failed, "2026-11-27T12:05:00Z") is None
    meta = cluster.node("edge-1")["metadata"]
    assert meta["labels"]["agentd.wasm-edge.io/result"] == "failed"
    assert meta["annotations"]["agentd.wasm-edge.io/overrides"] == ""


def test_without_a_kubeconfig_nothing_is_tried(tmp_path: Path, cluster: FakeCluster) -> None:
    root = server_root(tmp_path, cluster)
    (root / "etc/rancher/k3s/k3s.yaml").unlink()
    report = fleet.report_of({"generation": 1, "outcome": "converged"}, "ok")
    why = fleet.publish(Host.at(root), config(), report, "t")
    assert why == "no kubeconfig on this node (a k3s agent has none)"


def test_the_api_down_is_a_reason_not_a_crash(tmp_path: Path, cluster: FakeCluster) -> None:
    root = server_root(tmp_path, cluster)
    cluster.stop()
    report = fleet.report_of({"generation": 1, "outcome": "converged"}, "ok")
    why = fleet.publish(Host.at(root), config(), report, "t")
    assert why is not None
    assert "refused" in why


def test_label_values_stay_valid() -> None:
    report = fleet.report_of({"generation": None, "outcome": "weird outcome!/x"}, "s")
    assert report.labels() == {
        "agentd.wasm-edge.io/generation": "",
        "agentd.wasm-edge.io/result": "weird-outcome-x",
    }


@pytest.mark.parametrize(("generation", "label"), [(2**53, str(2**53)), (10**70, ""), (-3, "")])
def test_the_generation_label_always_fits_63_characters(generation: int, label: str) -> None:
    report = fleet.report_of({"generation": generation, "outcome": "converged"}, "s")
    shown = report.labels()["agentd.wasm-edge.io/generation"]
    assert shown == label
    assert len(shown) <= 63
