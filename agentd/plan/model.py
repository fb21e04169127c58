"""The plan's records: each action with its reason, each component left alone with why."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from agentd.desired.model import Artifact

# Actions run in this order; within a phase, in the order they were planned.
PHASES = {
    "stop": 0,  # k3s removal stops the cluster before anything it uses goes away
    "runtime": 1,  # wasmedge, then its plugins, then crun
    "k3s": 2,
    "configure": 3,
    "restart": 4,
}


@dataclass(frozen=True)
class Action:
    component: str
    action: str  # install, upgrade, downgrade, remove, configure, restart
    reason: str
    from_version: Optional[str] = None
    to_version: Optional[str] = None
    artifact: Optional[Artifact] = None
    target: Optional[str] = None  # configure: the node path written (or removed)
    content: Optional[bytes] = None  # configure: the new content; None removes the file
    disruptive: bool = False  # interrupts running workloads (k3s restart or upgrade)
    phase: str = "runtime"
    package: Optional[str] = None  # from the distribution: this package (to_version: a constraint)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"component": self.component, "action": self.action}
        if self.from_version is not None:
            out["from"] = self.from_version
        if self.to_version is not None:
            out["to"] = self.to_version
        if self.target is not None:
            out["target"] = self.target
        if self.package is not None:
            out["package"] = self.package
        out["reason"] = self.reason
        out["disruptive"] = self.disruptive
        return out


@dataclass(frozen=True)
class Unchanged:
    component: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"component": self.component, "reason": self.reason}


@dataclass(frozen=True)
class Plan:
    generation: int
    arch: str
    actions: tuple[Action, ...] = ()
    unchanged: tuple[Unchanged, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.actions

    def to_json(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "arch": self.arch,
            "actions": [a.to_json() for a in self.actions],
            "unchanged": [u.to_json() for u in self.unchanged],
        }
