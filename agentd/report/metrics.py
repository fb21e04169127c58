"""Prometheus metrics in node_exporter's textfile-collector format, written atomically."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from agentd import __version__
from agentd.core.timespec import utc_stamp_seconds
from agentd.settings.snapshot import AgentConfig, suspend_reason
from agentd.sources.store import FleetStore
from agentd.state.store import AgentState
from agentd.system.files import temp_beside
from agentd.system.host import Host

_HELP = {
    "agentd_info": ("gauge", "agentd's version (always 1)"),
    "agentd_last_run_timestamp_seconds": ("gauge", "when the last run finished"),
    "agentd_last_run_success": ("gauge", "1 when the last run converged (or held actions back)"),
    "agentd_last_run_duration_seconds": ("gauge", "how long the last run took"),
    "agentd_generation": ("gauge", "the desired-state generation this node last applied"),
    "agentd_fleet_generation": ("gauge", "the generation of the last good fleet document"),
    "agentd_component_info": ("gauge", "a component agentd installed, by version (always 1)"),
    "agentd_override_applied": ("gauge", "1 when a fleet override (rollout wave) applies here"),
    "agentd_healthy": ("gauge", "1 when the last health check found nothing wrong"),
    "agentd_wasm_ready": ("gauge", "1 while Wasm pods can run here (the node label follows)"),
    "agentd_last_health_timestamp_seconds": ("gauge", "when the health checks last ran"),
    "agentd_health_duration_seconds": ("gauge", "how long the health checks took"),
    "agentd_findings": ("gauge", "health findings, by code and severity"),
    "agentd_deferred_actions": ("gauge", "disruptive actions waiting for the maintenance window"),
    "agentd_suspended": ("gauge", "1 while convergence is suspended"),
    "agentd_runs_total": ("counter", "runs, by outcome"),
    "agentd_actions_total": ("counter", "actions done, by verb"),
    "agentd_remediations_total": ("counter", "fixes applied for health findings, by code"),
    "agentd_rollbacks_total": ("counter", "health-gated rollbacks, by component"),
}


def _escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Mapping[str, object]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items())) + "}"


class _Text:
    def __init__(self) -> None:
        self.samples: dict[str, list[str]] = {}

    def add(self, name: str, value: float, **labels: object) -> None:
        number = repr(float(value)) if value != int(value) else str(int(value))
        self.samples.setdefault(name, []).append(f"{name}{_labels(labels)} {number}")

    def render(self) -> str:
        lines: list[str] = []
        for name, (kind, text) in _HELP.items():
            samples = self.samples.get(name)
            if not samples:
                continue
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", *samples]
        return "\n".join(lines) + "\n"


def render(
    state: Mapping[str, Any],
    *,
    fleet_generation: Optional[int] = None,
    suspended: bool = False,
) -> str:
    """The metrics text for state.json's content (as JSON)."""
    out = _Text()
    out.add("agentd_info", 1, version=__version__)
    run = state.get("lastRun") or {}
    finished = utc_stamp_seconds(run.get("finishedAt"))
    if finished is not None:
        out.add("agentd_last_run_timestamp_seconds", finished)
        ok = run.get("outcome") in ("converged", "deferred")
        out.add("agentd_last_run_success", 1 if ok else 0)
    if isinstance(run.get("durationMs"), (int, float)):
        out.add("agentd_last_run_duration_seconds", round(run["durationMs"] / 1000, 4))
    if isinstance(state.get("lastAppliedGeneration"), int):
        out.add("agentd_generation", state["lastAppliedGeneration"])
    if fleet_generation is not None:
        out.add("agentd_fleet_generation", fleet_generation)
    for note in run.get("targeting") or []:
        if isinstance(note, Mapping) and note.get("override"):
            out.add(
                "agentd_override_applied",
                1 if note.get("applies") else 0,
                override=note["override"],
            )
    for component, entry in sorted((state.get("inventory") or {}).items()):
        if isinstance(entry, Mapping) and entry.get("version"):
            out.add("agentd_component_info", 1, component=component, version=entry["version"])
    health = state.get("health") or {}
    if health:
        out.add("agentd_healthy", 1 if health.get("healthy") else 0)
        out.add("agentd_wasm_ready", 1 if health.get("wasmReady") else 0)
        checked = utc_stamp_seconds(health.get("checkedAt"))
        if checked is not None:
            out.add("agentd_last_health_timestamp_seconds", checked)
        if isinstance(health.get("durationMs"), (int, float)):
            out.add("agentd_health_duration_seconds", round(health["durationMs"] / 1000, 4))
        counts: dict[tuple[str, str], int] = {}
        for finding in health.get("findings") or []:
            key = (str(finding.get("code")), str(finding.get("severity")))
            counts[key] = counts.get(key, 0) + 1
        for (code, severity), n in sorted(counts.items()):
            out.add("agentd_findings", n, code=code, severity=severity)
    deferred = state.get("deferred") or {}
    out.add("agentd_deferred_actions", len(deferred.get("actions") or []))
    out.add("agentd_suspended", 1 if suspended else 0)
    counters = state.get("counters") or {}
    for name, label in (
        ("runs", "outcome"),
        ("actions", "action"),
        ("remediations", "code"),
        ("rollbacks", "component"),
    ):
        for key, n in sorted((counters.get(name) or {}).items()):
            out.add(f"agentd_{name}_total", n, **{label: key})
    return out.render()


def write(path: Path, text: str) -> None:
    """Replace `path` in one rename, so the collector never reads half a file. No fsync: a
    metrics file lost in a power cut is written again within a cycle."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(path)
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def publish_metrics(host: Host, config: AgentConfig, state: AgentState) -> None:
    """Write the metrics file (when metrics are on); a failure is logged, never fatal."""
    target = config.metrics_path
    if target is None:
        return
    text = render(
        state.to_json(),
        fleet_generation=FleetStore(host.paths).good_generation(),
        suspended=suspend_reason(host.paths, config) is not None,
    )
    try:
        write(host.paths.under(target), text)
    except OSError as exc:
        from agentd.system.log import get_logger  # noqa: PLC0415

        get_logger().warning("cannot write metrics", path=target, error=str(exc))
