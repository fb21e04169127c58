"""What the health tests share: nodes built under a sandbox root, their check inputs, k3s."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from agentd.core.paths import Paths
from agentd.facts.detect import detect
from agentd.facts.model import Facts, HostFacts
from agentd.health.findings import CheckInput, Finding
from agentd.health.run import examine
from agentd.settings.snapshot import DEFAULTS, AgentConfig
from agentd.state.store import AgentState
from agentd.system.host import Host
from tests.support.standins import crun_binary, k3s_binary, real_kubectl, wasmedge_tarball

GIB = 1 << 30
HOST = HostFacts(
    arch="amd64",
    os="debian 12",
    kernel="6.1.0-18-amd64",
    cpus=4,
    memory_bytes=16 * GIB,
    disk_free_bytes=60 * GIB,
    cgroup_v2=True,
    disk_total_bytes=100 * GIB,
)


def codes(findings: list[Finding]) -> list[str]:
    return [f.code for f in findings]


def install(root: Path, node_path: str, data: bytes, mode: int = 0o755) -> Path:
    target = root / node_path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    target.chmod(mode)
    return target


def inputs(root: Path, desired: dict[str, Any] | None = None, host: HostFacts = HOST) -> CheckInput:
    """Facts detected for real under `root` (its stand-in binaries run), with a chosen host."""
    paths = Paths(root)
    facts = detect(paths)
    return CheckInput(paths, Facts(host, facts.components), desired, node_name="edge-1")


K3S = "v1.30.4+k3s1"
TEMPLATE = "/var/lib/rancher/k3s/agent/etc/containerd/config.toml.tmpl"


def k3s_node(root: Path) -> None:
    install(root, "/usr/local/bin/k3s", k3s_binary(K3S))
    install(root, "/usr/local/bin/crun", crun_binary("1.15", wasm=True))


def unpack_wasmedge(root: Path, version: str) -> None:
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(wasmedge_tarball(version)), mode="r:gz") as tar:
        for member in tar.getmembers():
            parts = member.name.split("/")
            if len(parts) < 3 or parts[1] not in ("bin", "lib64", "lib"):
                continue
            target = f"/usr/local/{'lib' if parts[1] == 'lib64' else parts[1]}/" + "/".join(
                parts[2:]
            )
            if member.issym():
                link = root / target.lstrip("/")
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(member.linkname)
            elif member.isfile():
                data = tar.extractfile(member)
                assert data is not None
                install(root, target, data.read(), member.mode & 0o755)


needs_kubectl = pytest.mark.skipif(
    real_kubectl() is None, reason="no real kubectl (Debian: apt-get install kubernetes-client)"
)
PROBE_IMAGE = "registry.local/agentd-wasm-probe:1"
SERVER = {
    "components": {
        "k3s": {"state": "present", "role": "server", "version": K3S},
        "crun": {"state": "present", "version": "1.15"},
        "wasmedge": {"state": "present", "version": "0.14.1"},
    },
    "runtimeClasses": [
        {"name": "crun-wasm", "handler": "crun-wasm", "nodeSelector": {"wasm-runtime": "enabled"}}
    ],
}


def config(**health: Any) -> AgentConfig:
    raw = copy.deepcopy(DEFAULTS)
    raw["health"].update(nodeName="edge-1", **health)
    return AgentConfig(raw)


def run_examine(root: Path, *, probe: bool = False) -> Any:
    cfg = config(probe={"image": PROBE_IMAGE if probe else None, "timeout": 20.0})
    return examine(Host.at(root), cfg, SERVER, AgentState())
