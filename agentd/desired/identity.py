"""This node as fleet documents see it: its id, hostname, architecture, OS, labels, allowances."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from agentd.core.arch import host_arch
from agentd.facts.osrelease import os_name
from agentd.settings.snapshot import AgentConfig
from agentd.system.host import Host
from agentd.system.readfile import SMALL_FILE_BYTES, read_text_bounded


@dataclass(frozen=True)
class NodeIdentity:
    """What selectors and rollouts look at."""

    node_id: str  # /etc/machine-id: stable across reboots and re-installs of agentd
    hostname: str
    arch: str
    os: str  # "debian 12"
    labels: Mapping[str, str] = field(default_factory=dict)
    # downloads.allowLocalFiles: the fleet document may name file:// artifacts too.
    allow_local_files: bool = False

    def describe(self) -> str:
        labels = ",".join(f"{k}={v}" for k, v in sorted(self.labels.items())) or "no labels"
        return f"{self.hostname} ({self.arch}, {self.os}, {labels})"

    def to_json(self) -> dict[str, Any]:
        return {
            "nodeId": self.node_id,
            "hostname": self.hostname,
            "arch": self.arch,
            "os": self.os,
            "labels": dict(sorted(self.labels.items())),
            # Only when set: it changes what a plan accepts, so the no-op digest must see it.
            **({"allowLocalFiles": True} if self.allow_local_files else {}),
        }


def node_arch() -> str:
    return host_arch()


def node_identity(host: Host, config: Optional[AgentConfig] = None) -> NodeIdentity:
    """This node as fleet selectors see it (settings first, then the machine). Cheap, and
    without pydantic: the no-op digest reads it on every run."""
    config = config or AgentConfig()
    node_id = config.node_id
    if node_id is None:
        try:
            machine_id = host.paths.under("/etc/machine-id")
            node_id = read_text_bounded(machine_id, SMALL_FILE_BYTES).strip() or None
        except OSError:
            node_id = None
    return NodeIdentity(
        node_id=node_id or "unknown",
        hostname=config.hostname or os.uname().nodename,
        arch=node_arch(),
        os=os_name(host.paths),
        labels=config.labels,
        allow_local_files=bool(config.downloads.get("allowLocalFiles")),
    )
