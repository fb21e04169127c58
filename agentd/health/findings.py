"""What the health checks look at and report (CheckInput, Finding), and the verdicts on it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from agentd.core.paths import Paths
from agentd.facts.model import Facts
from agentd.system.commands import CommandResult, run_command

# The checks take the desired state as JSON (DesiredState.model_dump): the daemon runs them
# from the copy the last run kept, without loading pydantic.
Desired = Mapping[str, Any]

SEVERITIES = ("critical", "error", "warning", "info")
UNHEALTHY = frozenset({"critical", "error"})


@dataclass(frozen=True)
class Finding:
    """One thing wrong (or worth knowing), with its cause and what to do about it."""

    code: str
    severity: str  # critical, error, warning, info
    component: str
    message: str
    remedy: str
    # A fix agentd itself can apply: "converge" (install what the desired state says),
    # "reinstall:<component>", "restart:k3s", "ldconfig". None: a person has to act.
    fix: Optional[str] = None

    @property
    def unhealthy(self) -> bool:
        return self.severity in UNHEALTHY

    def to_json(self) -> dict[str, Any]:
        out = {
            "code": self.code,
            "severity": self.severity,
            "component": self.component,
            "message": self.message,
            "remedy": self.remedy,
        }
        if self.fix:
            out["fix"] = self.fix
        return out


@dataclass
class CheckInput:
    """What the checks look at: the node's paths and facts, and what it should be."""

    paths: Paths
    facts: Facts
    desired: Optional[Desired] = None
    node_name: str = ""
    probe_image: Optional[str] = None
    probe_namespace: str = "default"
    probe_timeout: float = 60.0
    # The guide's Gatekeeper test (health.gatekeeperProbe): None when it is off.
    gatekeeper_probe_image: Optional[str] = None
    gatekeeper_probe_namespace: str = "default"
    runner: Callable[..., CommandResult] = run_command
    # Filled in by the checks for the ones after them (so one cause is reported once).
    notes: dict[str, Any] = field(default_factory=dict)


def wanted(inp: CheckInput, name: str) -> Optional[Mapping[str, Any]]:
    """The desired component `name` when it should be present, else None."""
    comp = ((inp.desired or {}).get("components") or {}).get(name)
    if isinstance(comp, Mapping) and comp.get("state", "present") == "present":
        return comp
    return None


def unwanted(inp: CheckInput, name: str) -> bool:
    """The desired state says `name` must be absent."""
    comp = ((inp.desired or {}).get("components") or {}).get(name)
    return isinstance(comp, Mapping) and comp.get("state") == "absent"


def last_line(result: CommandResult) -> str:
    """What a failed command said last (stderr first), short enough for a finding's message."""
    lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
    return lines[-1].strip()[:300] if lines else f"exit code {result.returncode}"


def healthy(findings: Sequence[Finding]) -> bool:
    return not any(f.unhealthy for f in findings)


WASM_STACK = ("crun", "containerd", "wasmedge")


def wasm_ready(findings: Sequence[Finding]) -> bool:
    """Whether Wasm pods can run here: nothing wrong with crun, containerd, WasmEdge or a
    workload probe (the node label follows this)."""
    return not any(
        f.unhealthy and (f.component in WASM_STACK or f.code.startswith(("wasm.", "crun.")))
        for f in findings
    )
