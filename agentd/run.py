"""One run, in stages: LOAD the desired state, DETECT facts, PLAN, CONVERGE, and record it."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from agentd.errors import AgentError, DesiredStateError, GenerationError
from agentd.host import Host, read_bytes_limited
from agentd.paths import MANAGED_CONFIG_PATHS
from agentd.state import AgentState, StateLock, load_state, save_state

if TYPE_CHECKING:
    from agentd.desired import DesiredState
    from agentd.facts import Facts
    from agentd.plan import Plan

# pydantic, yaml and the planner are imported only when a plan is really needed: an unchanged
# node answers from the no-op digest without them (start-up time matters on a Raspberry Pi).
MAX_CONFIG_BYTES = 1 << 20


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 1)


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


def load_desired(sources: list[Path], arch: str) -> Loaded:
    from agentd.validation import load_and_validate  # noqa: PLC0415

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
    for node_path in MANAGED_CONFIG_PATHS:
        try:
            out[node_path] = read_bytes_limited(host.paths.under(node_path), MAX_CONFIG_BYTES)
        except OSError:
            out[node_path] = None
    return out


def node_arch() -> str:
    from agentd.detect import normalise_arch  # noqa: PLC0415

    return os.environ.get("AGENTD_ARCH") or normalise_arch(os.uname().machine)


def _digest(host: Host, sources: list[Path], state: AgentState) -> str:
    from agentd.fingerprint import planning_inputs_digest  # noqa: PLC0415

    inventory = {k: v.to_json() for k, v in sorted(state.inventory.items())}
    return planning_inputs_digest(host.paths, sources, node_arch(), inventory)


@dataclass
class Planned:
    loaded: Loaded
    facts: Facts
    state: AgentState
    plan: Plan
    timings_ms: dict[str, float]


def make_plan(
    host: Host,
    desired_file: Optional[Path],
    state: Optional[AgentState] = None,
    sources: Optional[list[Path]] = None,
) -> Planned:
    """Load, detect and plan; `state` and `sources` are read here unless the caller has them."""
    from agentd.detect import detect  # noqa: PLC0415
    from agentd.plan import plan  # noqa: PLC0415

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if sources is None:
        sources = desired_sources(host, desired_file)
    if state is None:
        state = load_state(host.paths) or AgentState()
    facts = detect(host.paths, state.recorded_plugins())
    timings["detect"] = _ms(t0)
    t1 = time.perf_counter()
    loaded = load_desired(sources, facts.host.arch)
    timings["load"] = _ms(t1)
    t2 = time.perf_counter()
    the_plan = plan(loaded.desired, facts, state.inventory, read_configs(host))
    timings["plan"] = _ms(t2)
    return Planned(loaded, facts, state, the_plan, timings)


def apply(
    host: Host, desired_file: Optional[Path], *, dry_run: bool = False, lock_wait_s: float = 0.0
) -> dict[str, Any]:
    """Converge once. Returns the run's result (also saved in state.json unless dry-run)."""
    started, t0 = _now(), time.perf_counter()
    if dry_run:
        return _result(make_plan(host, desired_file), started, t0, "planned", dry_run=True)
    with StateLock(host.paths).held("apply", lock_wait_s):
        state = load_state(host.paths) or AgentState()
        sources = desired_sources(host, desired_file)
        digest = _digest(host, sources, state)
        if state.noop and state.noop.get("digest") == digest:
            result = {**state.noop["result"], "startedAt": started, "cached": True}
            _record(host, result, t0, state)
            return result
        return _apply_planned(host, desired_file, state, sources, started, t0, digest)


def _apply_planned(
    host: Host,
    desired_file: Optional[Path],
    state: AgentState,
    sources: list[Path],
    started: str,
    t0: float,
    digest: str,
) -> dict[str, Any]:
    from agentd.converge import converge  # noqa: PLC0415

    result: dict[str, Any] = {"kind": "apply", "startedAt": started, "outcome": "failed"}
    try:
        planned = make_plan(host, desired_file, state, sources)
    except AgentError as exc:
        result.update(error=str(exc), problems=getattr(exc, "problems", []))
        _record(host, result, t0, state)
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
    if not planned.plan.empty:
        from agentd.log import get_logger  # noqa: PLC0415

        get_logger().info(
            "converged", generation=desired.generation, actions=len(planned.plan.actions)
        )
    # Only a plan that found nothing to do is memoised: its inputs were not changed by the run.
    state.noop = None
    if planned.plan.empty:
        keep = (
            "kind",
            "generation",
            "arch",
            "outcome",
            "dryRun",
            "sources",
            "actions",
            "unchanged",
            "warnings",
        )
        state.noop = {"digest": digest, "result": {k: result[k] for k in keep if k in result}}
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
    steps = report.steps if report else None
    result: dict[str, Any] = {
        "kind": "apply",
        "generation": p.generation,
        "arch": p.arch,
        "outcome": outcome,
        "dryRun": dry_run,
        "startedAt": started,
        "sources": planned.loaded.sources,
        "actions": [s.to_json() for s in steps] if steps else [a.to_json() for a in p.actions],
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
    result["durationMs"] = _ms(t0)
    return result


def _record(
    host: Host, result: dict[str, Any], t0: float, state: Optional[AgentState] = None
) -> None:
    if state is None:
        state = load_state(host.paths) or AgentState()
    result["finishedAt"] = _now()
    result["durationMs"] = _ms(t0)
    state.record_run(result)
    save_state(host.paths, state)
