"""The Wasm verdict on a k3s server: the node label, the probe pod, its empty logs traced."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentd.plan import render
from tests.support.fakekube import FakeCluster
from tests.support.standins import crun_binary
from tests.unit.health.sandbox import K3S, TEMPLATE, install, needs_kubectl, run_examine


@needs_kubectl
def test_the_node_label_follows_the_wasm_stack(server: Path, cluster: FakeCluster) -> None:
    assert "wasm-runtime" not in cluster.node("edge-1")["metadata"].get("labels", {})
    first = run_examine(server)
    assert first.wasm_ready
    assert first.label == "set"
    assert cluster.node("edge-1")["metadata"]["labels"]["wasm-runtime"] == "enabled"
    assert run_examine(server).label == "unchanged"
    # crun loses its Wasm support: the scheduler must keep Wasm pods away.
    install(server, "/usr/local/bin/crun", crun_binary("1.15", wasm=False))
    broken = run_examine(server)
    assert not broken.wasm_ready
    assert broken.label == "removed"
    assert "wasm-runtime" not in cluster.node("edge-1")["metadata"]["labels"]


@needs_kubectl
def test_the_wasm_pod_probe_on_a_working_node(server: Path, cluster: FakeCluster) -> None:
    run = run_examine(server, probe=True)
    assert [f.code for f in run.findings if f.code.startswith("wasm.")] == []
    assert cluster.pods("default") == []  # the probe pod is deleted afterwards


@needs_kubectl
@pytest.mark.parametrize(
    ("breakage", "cause"),
    [
        ("crun", "because crun has no Wasm support"),
        ("annotations", "because containerd does not pass the Wasm annotations to crun"),
        ("libwasmedge", "because crun cannot load libwasmedge.so.0"),
    ],
)
def test_a_wasm_pod_without_output_is_traced_to_its_real_cause(
    server: Path, breakage: str, cause: str
) -> None:
    if breakage == "crun":
        install(server, "/usr/local/bin/crun", crun_binary("1.15", wasm=False))
    elif breakage == "annotations":
        template = render.containerd_template(K3S, "/usr/local/bin/crun")
        install(server, TEMPLATE, template.replace(b"  pod_annotations", b"  # pod_annotations"))
    else:
        for lib in (server / "usr/local/lib").glob("libwasmedge.so*"):
            lib.unlink()
    run = run_examine(server, probe=True)
    probe = [f for f in run.findings if f.code == "wasm.empty-logs"]
    assert len(probe) == 1, [f.code for f in run.findings]
    assert cause in probe[0].message
    if breakage == "crun":
        # crun ran the .wasm as a native program: its own error is the only log line.
        assert "Exec format error" in probe[0].message
    assert not run.wasm_ready
