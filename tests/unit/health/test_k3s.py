"""The k3s check: absent, stopped, its API and this node, with the real kubectl and a fake API."""

from __future__ import annotations

from pathlib import Path

from agentd.health.k3s import check_k3s
from tests.support.fakekube import FakeCluster
from tests.support.standins import set_unit_state
from tests.unit.health.sandbox import SERVER, inputs, needs_kubectl


def test_k3s_absent_is_said_once(tmp_path: Path) -> None:
    found = check_k3s(inputs(tmp_path))
    assert [(f.code, f.severity) for f in found] == [("k3s.absent", "info")]
    wanted = {"components": {"k3s": {"state": "present", "role": "server"}}}
    found = check_k3s(inputs(tmp_path, wanted))
    assert [(f.code, f.severity, f.fix) for f in found] == [("k3s.missing", "error", "converge")]


@needs_kubectl
def test_a_healthy_k3s_server_has_nothing_to_say_about_k3s(server: Path) -> None:
    found = check_k3s(inputs(server, SERVER))
    assert found == []


@needs_kubectl
def test_a_stopped_k3s_is_one_finding_not_a_cascade(server: Path) -> None:
    set_unit_state(server, "k3s.service", "failed")
    found = check_k3s(inputs(server, SERVER))
    assert [(f.code, f.fix) for f in found] == [("k3s.inactive", "restart:k3s")]
    assert found[0].message == "k3s.service is failed: the cluster checks are skipped"


@needs_kubectl
def test_the_api_not_answering(server: Path, cluster: FakeCluster) -> None:
    cluster.stop()
    try:
        found = check_k3s(inputs(server, SERVER))
    finally:
        cluster.start()
    assert [f.code for f in found] == ["k3s.api-unreachable"]
    assert "was refused" in found[0].message


@needs_kubectl
def test_a_node_that_is_not_ready(server: Path, cluster: FakeCluster) -> None:
    cluster.set_node_ready(
        "edge-1", False, reason="KubeletNotReady", message="container runtime network not ready"
    )
    found = check_k3s(inputs(server, SERVER))
    assert [f.code for f in found] == ["k3s.node-not-ready"]
    assert "container runtime network not ready" in found[0].message


@needs_kubectl
def test_a_node_the_cluster_does_not_know(server: Path) -> None:
    inp = inputs(server, SERVER)
    inp.node_name = "edge-9"
    found = check_k3s(inp)
    assert [f.code for f in found] == ["k3s.node-missing"]
    assert 'nodes "edge-9" not found' in found[0].message
