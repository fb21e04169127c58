"""The health tests' k3s server: the real kubectl against a fake API server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agentd.desired.model import RuntimeClass
from agentd.health.probe import probe_module
from agentd.plan import render
from tests.support.fakekube import FakeCluster
from tests.support.standins import set_unit_state, systemctl_binary
from tests.unit.health.sandbox import K3S, PROBE_IMAGE, TEMPLATE, install, k3s_node, unpack_wasmedge

# tests/support/fakekube.py stands in for the Kubernetes API server (and for the kubelet,
# containerd and crun running the probe pod on this node); kubectl is the machine's own;
# systemctl is a stand-in.


@pytest.fixture(scope="module")
def cluster() -> Any:
    with FakeCluster() as fake:
        yield fake


@pytest.fixture
def server(cluster: FakeCluster, tmp_path: Path) -> Path:
    """A k3s server node as agentd leaves it: k3s (running), crun 1.15 with Wasm, WasmEdge,
    the containerd template and the RuntimeClasses, and a kubeconfig for the cluster."""
    root = tmp_path / "node"
    cluster.reset()
    cluster.root = root
    cluster.add_image(PROBE_IMAGE, {"/probe.wasm": probe_module()})
    k3s_node(root)
    unpack_wasmedge(root, "0.14.1")
    install(root, TEMPLATE, render.containerd_template(K3S, "/usr/local/bin/crun"), 0o644)
    classes = [
        RuntimeClass(
            name="crun-wasm", handler="crun-wasm", nodeSelector={"wasm-runtime": "enabled"}
        )
    ]
    install(
        root,
        "/var/lib/rancher/k3s/server/manifests/agentd-runtimeclasses.yaml",
        render.runtimeclass_manifest(classes),
        0o644,
    )
    install(root, "/etc/systemd/system/k3s.service", render.k3s_unit("server"), 0o644)
    install(root, "/etc/resolv.conf", b"nameserver 10.0.0.53\n", 0o644)
    install(root, "/usr/bin/systemctl", systemctl_binary())
    set_unit_state(root, "k3s.service", "active")
    cluster.write_k3s_kubeconfig(root)
    return root
