"""One run, in stages: LOAD the desired state, DETECT facts, PLAN, CONVERGE, and record it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from agentd.converge import converge
from agentd.desired import MAX_DOCUMENT_BYTES, DesiredState
from agentd.detect import detect
from agentd.errors import AgentError, DesiredStateError, GenerationError
from agentd.facts import Facts
from agentd.host import Host, read_bytes_limited
from agentd.plan import Plan, config_paths, plan
from agentd.state import AgentState, StateLock, load_state, save_state
from agentd.yamlload import load_and_validate


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def desired_sources(host: Host, desired_file: Optional[Path]) -> list[Path]:
    """The files that make the desired state, in merge order (later wins)."""
    if desired_file is not None:
        return [desired_file]
    paths = host.paths
    sources = [paths.desired_file] if paths.desired_file.is_file() else []
    if paths.desired_dir.is_dir():
        sources += sorted(p for p in paths.desired_dir.glob("*.yaml") if p.is_file())
    if not sources:
        raise DesiredStateError(
            f"no desired state: neither {paths.host_view(paths.desired_file)} nor "
            f"{paths.host_view(paths.desired_dir)}/*.yaml exists (or pass --desired FILE)"
        )
    return sources


@dataclass
class Loaded:
    desired: DesiredState
    sources: list[str]
    warnings: list[str] = field(default_factory=list)


def load_desired(host: Host, desired_file: Optional[Path], arch: str) -> Loaded:
    sources = desired_sources(host, desired_file)
    report = load_and_validate(sources, arch, merge_all=True)
    if report.errors or report.state is None:
        n = len(report.errors)
        raise DesiredStateError(
            f"the desired state is invalid ({n} error{'s' * (n != 1)})", report.errors
        )
    return Loaded(report.state, [str(s) for s in sources], report.warnings)


def read_configs(host: Host) -> dict[str, Optional[bytes]]:
    """The current content of every file the planner compares (None: absent or unreadable)."""
    out: dict[str, Optional[bytes]] = {}
    for node_path in config_paths():
        try:
            out[node_path] = read_bytes_limited(host.paths.under(node_path), MAX_DOCUMENT_BYTES)
        except OSError:
            out[node_path] = None
    return out


@dataclass
class Planned:
    loaded: Loaded
    facts: Facts
    state: AgentState
    plan: Plan
    timings_ms: dict[str, float]


def make_plan(host: Host, desired_file: Optional[Path]) -> Planned:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    state = load_state(host.paths) or AgentState()
    facts = detect(host.paths, state.recorded_plugins())
    t1 = time.perf_counter()
    loaded = load_desired(host, desired_file, facts.host.arch)
    t2 = time.perf_counter()
    the_plan = plan(loaded.desired, facts, state.inventory, read_configs(host))
    t3 = time.perf_counter()
    timings["detect"] = round((t1 - t0) * 1000, 1)
    timings["load"] = round((t2 - t1) * 1000, 1)
    timings["plan"] = round((t3 - t2) * 1000, 1)
    return Planned(loaded, facts, state, the_plan, timings)


def apply(
    host: Host, desired_file: Optional[Path], *, dry_run: bool = False, lock_wait_s: float = 0.0
) -> dict[str, Any]:
    """Converge once. Returns the run's result (also saved in state.json unless dry-run)."""
    started, t0 = _now(), time.perf_counter()
    lock = StateLock(host.paths)
    if dry_run:
        planned = make_plan(host, desired_file)
        return _result(planned, started, t0, "planned", dry_run=True)
    with lock.held("apply", lock_wait_s):
        result: dict[str, Any] = {"kind": "apply", "startedAt": started, "outcome": "failed"}
        try:
            planned = make_plan(host, desired_file)
        except AgentError as exc:
            result.update(error=str(exc), problems=getattr(exc, "problems", []))
            _record(host, result, t0)
            raise
        state, desired = planned.state, planned.loaded.desired
        last = state.last_applied_generation
        if last is not None and desired.generation < last:
            result = _result(planned, started, t0, "refused")
            result["error"] = (
                f"desired generation {desired.generation} is older than generation {last} "
                "already applied on this node; nothing was changed (publish a higher generation)"
            )
            _record(host, result, t0, state)
            raise GenerationError(result["error"])
        try:
            report = converge(host, planned.plan, state, desired.generation)
        except AgentError as exc:
            result = _result(planned, started, t0, "failed", report=getattr(exc, "report", None))
            result["error"] = str(exc)
            _record(host, result, t0, state)
            raise
        state.last_applied_generation = desired.generation
        result = _result(planned, started, t0, "converged", report=report)
        _record(host, result, t0, state)
        return result


def _result(
    planned: Planned,
    started: str,
    t0: float,
    outcome: str,
    *,
    dry_run: bool = False,
    report: Any = None,
) -> dict[str, Any]:
    p = planned.plan
    result: dict[str, Any] = {
        "kind": "apply",
        "generation": p.generation,
        "arch": p.arch,
        "outcome": outcome,
        "dryRun": dry_run,
        "startedAt": started,
        "sources": planned.loaded.sources,
        "actions": [s.to_json() for s in report.steps] if report else [a.to_json() for a in p.actions],
        "unchanged": [u.to_json() for u in p.unchanged],
        "timings": dict(planned.timings_ms),
    }
    if planned.loaded.warnings:
        result["warnings"] = planned.loaded.warnings
    if report is not None:
        result["downloads"] = report.downloads
        result["serviceCalls"] = report.service_calls
        result["timings"].update(report.timings_ms)
        if report.error:
            result["error"] = report.error
    result["durationMs"] = round((time.perf_counter() - t0) * 1000, 1)
    return result


def _record(host: Host, result: dict[str, Any], t0: float, state: AgentState | None = None) -> None:
    if state is None:
        state = load_state(host.paths) or AgentState()
    result["finishedAt"] = _now()
    result["durationMs"] = round((time.perf_counter() - t0) * 1000, 1)
    state.record_run(result)
    save_state(host.paths, state)
