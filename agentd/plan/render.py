"""Pure renderers of the files agentd writes for k3s: config, unit, RuntimeClasses, containerd."""

from __future__ import annotations

from typing import Any

import yaml

from agentd.core.paths import (
    CONTAINERD_TEMPLATES,
    CRUN_WASM_RUNTIME,
    K3S_BIN,
    K3S_UNITS,
    PROBE_RUNTIME_CLASS,
)
from agentd.core.versions import Version, parse_version
from agentd.desired.model import K3s, RuntimeClass

MANAGED_HEADER = (
    "# Managed by agentd (wasm-edge-agentd): local edits are replaced on the next run.\n"
)

POD_ANNOTATIONS = ("module.wasm.image/*", "*.wasm.*", "wasm.*", "run.oci.handler")

# containerd 2 (config version 3) is bundled from these k3s releases on (components.md).
_CONTAINERD2_FROM = {(1, 31): Version("v1.31.6+k3s1"), (1, 32): Version("v1.32.2+k3s1")}


def uses_containerd2(k3s_version: str) -> bool:
    v = parse_version(k3s_version)
    if v is None or len(v.release) < 2:
        return False
    minor = v.release[:2]
    if minor in _CONTAINERD2_FROM:
        return v >= _CONTAINERD2_FROM[minor]
    return minor > (1, 32)


def containerd_template_path(k3s_version: str) -> str:
    """The template file (node path) the given k3s release's containerd reads."""
    return CONTAINERD_TEMPLATES[1] if uses_containerd2(k3s_version) else CONTAINERD_TEMPLATES[0]


def containerd_template(k3s_version: str, crun_path: str) -> bytes:
    """Extend k3s's base template with a crun runtime that passes the Wasm annotations to crun."""
    annotations = ", ".join(f'"{a}"' for a in POD_ANNOTATIONS)
    if uses_containerd2(k3s_version):
        table = f"plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.'{CRUN_WASM_RUNTIME}'"
    else:
        table = f'plugins."io.containerd.grpc.v1.cri".containerd.runtimes."{CRUN_WASM_RUNTIME}"'
    body = (
        '{{ template "base" . }}\n'
        "\n"
        f"[{table}]\n"
        '  runtime_type = "io.containerd.runc.v2"\n'
        f"  pod_annotations = [{annotations}]\n"
        f"[{table}.options]\n"
        f'  BinaryName = "{crun_path}"\n'
        "  SystemdCgroup = true\n"
    )
    return MANAGED_HEADER.encode() + body.encode()


def k3s_config(k3s: K3s) -> bytes:
    """/etc/rancher/k3s/config.yaml: the desired flags, plus role wiring; never a token itself."""
    # validate refuses token keys; dropping them here too keeps a secret out of the file even for
    # a document that skipped validation.
    config: dict[str, Any] = {
        k: v for k, v in k3s.config.items() if k.strip("-+") not in ("token", "agent-token")
    }
    if k3s.tokenFile:
        config["token-file"] = k3s.tokenFile
    if k3s.server:
        config["server"] = k3s.server
    text = yaml.safe_dump(config, default_flow_style=False, sort_keys=True) if config else ""
    return (MANAGED_HEADER + text).encode()


def k3s_unit_name(role: str) -> str:
    return K3S_UNITS[role]


def k3s_unit(role: str) -> bytes:
    """The systemd unit get.k3s.io writes, so agentd-installed nodes look like scripted ones."""
    unit_type = "notify" if role == "server" else "exec"
    command = "server" if role == "server" else "agent"
    name = k3s_unit_name(role)
    return (
        "[Unit]\n"
        "Description=Lightweight Kubernetes\n"
        "Documentation=https://k3s.io\n"
        "Wants=network-online.target\n"
        "After=network-online.target\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
        "\n"
        "[Service]\n"
        f"Type={unit_type}\n"
        f"EnvironmentFile=-/etc/default/%N\n"
        f"EnvironmentFile=-/etc/sysconfig/%N\n"
        f"EnvironmentFile=-/etc/systemd/system/{name}.env\n"
        "KillMode=process\n"
        "Delegate=yes\n"
        "User=root\n"
        "LimitNOFILE=1048576\n"
        "LimitNPROC=infinity\n"
        "LimitCORE=infinity\n"
        "TasksMax=infinity\n"
        "TimeoutStartSec=0\n"
        "Restart=always\n"
        "RestartSec=5s\n"
        "ExecStartPre=-/sbin/modprobe br_netfilter\n"
        "ExecStartPre=-/sbin/modprobe overlay\n"
        f"ExecStart={K3S_BIN} {command}\n"
    ).encode()


def runtimeclass_manifest(classes: list[RuntimeClass]) -> bytes:
    """RuntimeClasses for k3s's auto-deploy directory (applied at start and on every change),
    and agentd's probe class: the crun-wasm handler without a node selector, so the health
    probe runs (and shows why) on a node whose wasm-runtime label was taken away."""
    probe = RuntimeClass(name=PROBE_RUNTIME_CLASS, handler=CRUN_WASM_RUNTIME)
    docs = []
    for rc in [*classes, probe]:
        doc: dict[str, Any] = {
            "apiVersion": "node.k8s.io/v1",
            "kind": "RuntimeClass",
            "metadata": {"name": rc.name, "labels": {"app.kubernetes.io/managed-by": "agentd"}},
            "handler": rc.handler,
        }
        if rc.nodeSelector:
            doc["scheduling"] = {"nodeSelector": dict(rc.nodeSelector)}
        docs.append(yaml.safe_dump(doc, sort_keys=False))
    return (MANAGED_HEADER + "---\n".join(docs)).encode()
