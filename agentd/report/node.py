"""This node's result where the fleet can see it: labels and annotations on its k3s node."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from agentd.core.generation import generation_problem
from agentd.core.paths import K3S_CONFIG
from agentd.facts.configs import MAX_CONFIG_BYTES
from agentd.settings.snapshot import AgentConfig
from agentd.system.host import Host
from agentd.system.readfile import read_text_bounded

PREFIX = "agentd.wasm-edge.io"
# Labels, so that `kubectl get nodes -L ...` and label selectors show the rollout's progress.
GENERATION_LABEL = f"{PREFIX}/generation"
RESULT_LABEL = f"{PREFIX}/result"
# Annotations for what does not fit a label value (63 characters of [A-Za-z0-9._-]).
UPDATED_ANNOTATION = f"{PREFIX}/updated"
MESSAGE_ANNOTATION = f"{PREFIX}/message"
OVERRIDES_ANNOTATION = f"{PREFIX}/overrides"
_LABEL_VALUE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class NodeReport:
    """What is published: compared with the last one, so an unchanged node costs no API call."""

    generation: Optional[int]
    result: str
    message: str
    overrides: str

    def labels(self) -> dict[str, str]:
        generation = "" if self.generation is None else str(self.generation)
        return {GENERATION_LABEL: generation, RESULT_LABEL: _label_value(self.result)}


def node_name(host: Host, config: AgentConfig) -> str:
    """This node's name in k3s: the setting, else k3s's node-name, else the host name."""
    named = config.health.get("nodeName")
    if named:
        return str(named)
    try:
        text = read_text_bounded(host.paths.under(K3S_CONFIG), MAX_CONFIG_BYTES)
    except OSError:
        text = ""
    for line in text.splitlines():
        if line.startswith("node-name:"):
            value = line.split(":", 1)[1].strip().strip("'\"")
            if value:
                return value
    return os.uname().nodename.lower()


def _label_value(text: str) -> str:
    return _LABEL_VALUE.sub("-", text).strip("-._")[:63]


def report_of(result: Mapping[str, Any], status: str) -> NodeReport:
    """The report for a run's result and the daemon's STATUS line."""
    applied = [
        str(t.get("override"))
        for t in result.get("targeting") or []
        if t.get("override") and t.get("applies")
    ]
    generation = result.get("generation")
    # In 0..2^53 (16 digits): the label's 63 characters always hold it; anything else is unset.
    return NodeReport(
        generation if generation_problem(generation) is None else None,
        str(result.get("outcome") or "unknown"),
        status[:1000],
        ",".join(applied),
    )


def publish(host: Host, config: AgentConfig, report: NodeReport, updated: str) -> Optional[str]:
    """Label and annotate this node through `k3s kubectl`; None when done, else why not.

    Only where this node can reach the API (a k3s server has /etc/rancher/k3s/k3s.yaml)."""
    k3s = host.paths.find_binary("k3s")
    if k3s is None:
        return "k3s is not installed"
    if not host.paths.under("/etc/rancher/k3s/k3s.yaml").exists():
        return "no kubeconfig on this node (a k3s agent has none)"
    name = node_name(host, config)
    cache = f"--cache-dir={host.paths.state_dir / 'kube-cache'}"
    base = [str(k3s), "kubectl", cache]
    # Empty values are valid for both labels and annotations: nothing to remove, ever.
    labels = [f"{k}={v}" for k, v in report.labels().items()]
    annotations = {
        UPDATED_ANNOTATION: updated,
        MESSAGE_ANNOTATION: report.message,
        OVERRIDES_ANNOTATION: report.overrides,
    }
    for argv in (
        [*base, "label", "node", name, "--overwrite", *labels],
        [
            *base,
            "annotate",
            "node",
            name,
            "--overwrite",
            *(f"{k}={v}" for k, v in annotations.items()),
        ],
    ):
        result = host.commands(argv, 20)
        if not result.ok:
            lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
            return lines[-1][:300] if lines else f"kubectl exited {result.returncode}"
    return None
