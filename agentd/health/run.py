"""A health run: the checks now, recorded, published (metrics, node label), and what is due."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from agentd.health.checks import run_checks
from agentd.health.findings import CheckInput, Finding, healthy, wasm_ready
from agentd.health.kube import Kube
from agentd.report.metrics import publish_metrics
from agentd.report.node import node_name
from agentd.settings.snapshot import AgentConfig
from agentd.state.store import AgentState, load_state, save_state
from agentd.system.commands import CommandResult
from agentd.system.host import Host

WASM_LABEL = "wasm-runtime"  # the label the guide's RuntimeClass selects on
BACKOFF_CAP_S = 86400.0


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def unhealthy_components(findings: Sequence[Finding]) -> set[str]:
    return {f.component for f in findings if f.unhealthy}


@dataclass
class HealthRun:
    """One health run's result: what was found, published, and what is due to be done."""

    findings: list[Finding]
    checked_at: str
    duration_ms: float
    node: str
    wasm_ready: bool
    label: Optional[str] = None  # set, removed, unchanged, or why it could not be
    due_fixes: list[Finding] = field(default_factory=list)
    due_rollbacks: dict[str, list[str]] = field(default_factory=dict)
    acted: list[dict[str, Any]] = field(default_factory=list)
    # After acting: the findings of the run that acted (this run is the node after the acts).
    before: Optional[list[Finding]] = None

    @property
    def healthy(self) -> bool:
        return healthy(self.findings)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": "check",
            "healthy": self.healthy,
            "wasmReady": self.wasm_ready,
            "checkedAt": self.checked_at,
            "durationMs": round(self.duration_ms, 1),
            "node": self.node,
            "findings": [f.to_json() for f in self.findings],
        }
        if self.label is not None:
            out["label"] = self.label
        if self.due_fixes or self.due_rollbacks:
            out["due"] = {
                "fixes": [f.code for f in self.due_fixes],
                "rollbacks": sorted(self.due_rollbacks),
            }
        if self.acted:
            out["acted"] = self.acted
        if self.before is not None:
            out["before"] = {
                "healthy": healthy(self.before),
                "findings": [f.to_json() for f in self.before],
            }
        return out


def check_input(
    host: Host,
    config: AgentConfig,
    desired: Optional[Mapping[str, Any]],
    facts: Any,
    cancel: Optional[Callable[[], None]] = None,
) -> CheckInput:
    probe = config.health.get("probe") or {}
    gatekeeper = config.health.get("gatekeeperProbe") or {}
    commands = host.commands
    runner: Callable[..., CommandResult] = commands
    if cancel is not None:
        stop = cancel

        def runner(*args: Any, **kwargs: Any) -> CommandResult:
            stop()  # a stop request ends the checks before their next command
            return commands(*args, **kwargs)

    return CheckInput(
        paths=host.paths,
        facts=facts,
        desired=desired,
        node_name=node_name(host, config),
        probe_image=probe.get("image"),
        probe_namespace=str(probe.get("namespace") or "default"),
        probe_timeout=float(probe.get("timeout") or 60.0),
        gatekeeper_probe_image=gatekeeper.get("image") if gatekeeper.get("enabled") else None,
        gatekeeper_probe_namespace=str(gatekeeper.get("namespace") or "default"),
        runner=runner,
    )


def examine(
    host: Host,
    config: AgentConfig,
    desired: Optional[Mapping[str, Any]],
    state: AgentState,
    *,
    label: bool = True,
    cancel: Optional[Callable[[], None]] = None,
) -> HealthRun:
    """Run the checks, label the node, and work out which fixes and rollbacks are due."""
    from agentd.facts.detect import detect  # noqa: PLC0415

    t0 = time.perf_counter()
    facts = detect(host.paths, state.recorded_plugins())
    inp = check_input(host, config, desired, facts, cancel)
    findings = run_checks(inp)
    crun = inp.notes.get("crun")
    capable = bool(crun is not None and getattr(crun, "wasm_handlers", ())) and wasm_ready(findings)
    run = HealthRun(findings, _now(), (time.perf_counter() - t0) * 1000, inp.node_name, capable)
    if label and config.health.get("label", True):
        run.label = _label_node(inp, capable)
    now = time.time()
    if config.health.get("remediate", True):
        run.due_fixes = _due_fixes(state, findings, now)
    run.due_rollbacks = _due_rollbacks(state, findings, now)
    return run


def _label_node(inp: CheckInput, capable: bool) -> Optional[str]:
    kube, node = inp.notes.get("kube"), inp.notes.get("node")
    if not isinstance(kube, Kube) or not isinstance(node, Mapping):
        return None
    labels = (node.get("metadata") or {}).get("labels") or {}
    has = labels.get(WASM_LABEL) == "enabled"
    if has == capable:
        return "unchanged"
    change = f"{WASM_LABEL}=enabled" if capable else f"{WASM_LABEL}-"
    args = ["label", "node", inp.node_name, change]
    result = kube(*([*args, "--overwrite"] if capable else args))
    if not result.ok:
        return f"failed: {(result.stderr or result.stdout).strip()[:200]}"
    return "set" if capable else "removed"


def _due_fixes(state: AgentState, findings: Sequence[Finding], now: float) -> list[Finding]:
    """Findings with a fix agentd knows, whose backoff has run out (at most one per code)."""
    due: list[Finding] = []
    seen: set[str] = set()
    for f in findings:
        if not f.fix or not f.unhealthy or f.code in seen:
            continue
        seen.add(f.code)
        entry = state.remediations.get(f.code) or {}
        if now >= float(entry.get("nextAt") or 0):
            due.append(f)
    return due


def _due_rollbacks(
    state: AgentState, findings: Sequence[Finding], now: float
) -> dict[str, list[str]]:
    """Components changed within their window, healthy before and unhealthy now: why each."""
    due: dict[str, list[str]] = {}
    for component, watch in state.watch.items():
        if now > watch.until or not watch.healthy_before:
            continue
        reasons = [f.message for f in findings if f.unhealthy and f.component == component]
        if reasons:
            due[component] = reasons
    return due


def record(host: Host, config: AgentConfig, state: AgentState, run: HealthRun) -> None:
    """Keep the run in state (the caller holds the lock), forget fixed findings' backoffs and
    finished watches, and publish the metrics."""
    state.health = run.to_json()
    present = {f.code for f in run.findings}
    state.remediations = {k: v for k, v in state.remediations.items() if k in present}
    now = time.time()
    state.watch = {k: v for k, v in state.watch.items() if now <= v.until}
    save_state(host.paths, state)
    publish_metrics(host, config, state)


def note_remediation(state: AgentState, finding: Finding, backoff_s: float, ok: bool) -> None:
    """One more attempt at `finding`'s fix: the next waits twice as long (capped)."""
    from agentd.state.store import count  # noqa: PLC0415

    entry = state.remediations.get(finding.code) or {}
    attempts = int(entry.get("attempts") or 0) + 1
    wait = min(backoff_s * 2 ** (attempts - 1), BACKOFF_CAP_S)
    state.remediations[finding.code] = {
        "attempts": attempts,
        "lastAt": _now(),
        "nextAt": time.time() + wait,
        "fix": finding.fix,
        "ok": ok,
    }
    count(state.counters, "remediations", [finding.code])


def locked_check(
    host: Host, config: AgentConfig, cancel: Optional[Callable[[], None]] = None
) -> HealthRun:
    """The daemon's health run (the caller holds the state lock): the checks against the
    desired state the last run kept, with no pydantic and no planner. Acting on what is due
    is left to a worker."""
    state = load_state(host.paths) or AgentState()
    run = examine(host, config, state.desired, state, cancel=cancel)
    record(host, config, state, run)
    return run
