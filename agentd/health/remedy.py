"""Acting on health findings: roll back a change that broke a component, apply known fixes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Optional

from agentd.core.errors import AgentError
from agentd.core.paths import K3S_UNITS, SYSTEMD_DIR
from agentd.desired.identity import node_arch, node_identity
from agentd.desired.load import desired_sources, load_desired
from agentd.health.run import HealthRun, examine, note_remediation, record
from agentd.settings.snapshot import AgentConfig
from agentd.state.holds import Block
from agentd.state.records import RunResult
from agentd.state.store import AgentState, StateLock, load_state, save_state
from agentd.system.host import Host
from agentd.system.services import ServiceError

LOCK_WAIT_S = 120.0
# One apply (`agentd.run.apply`), given by the command: the run layer is above this one.
Apply = Callable[..., RunResult]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _log() -> Any:
    from agentd.system.log import get_logger  # noqa: PLC0415

    return get_logger()


def current_desired(host: Host, state: AgentState, config: AgentConfig) -> Optional[dict[str, Any]]:
    """The desired state as it stands in the files now (validated), else the last run's."""
    try:
        sources = desired_sources(host, None)
        loaded = load_desired(sources, node_arch(), node_identity(host, config))
    except AgentError:
        return state.desired
    return loaded.desired.model_dump(mode="json")


def check(
    host: Host, config: AgentConfig, *, act: bool, suspended: bool, apply: Apply
) -> HealthRun:
    """`agentd check`: the checks now, recorded; with `act`, the due rollbacks and fixes too
    (not while convergence is suspended: those change the node), then the checks again: the
    run returned (and recorded) is the node after them, with what was done and what was found
    before (`acted`, `before`)."""
    run = _examine_and_record(host, config)
    if act and not suspended and (run.due_rollbacks or run.due_fixes):
        acted = _act(host, config, run, apply)
        return _examine_and_record(host, config, acted=acted, before=run)
    return run


def _examine_and_record(
    host: Host,
    config: AgentConfig,
    *,
    acted: Optional[list[dict[str, Any]]] = None,
    before: Optional[HealthRun] = None,
) -> HealthRun:
    with StateLock(host.paths).held("check", LOCK_WAIT_S):
        state = load_state(host.paths) or AgentState()
        desired = current_desired(host, state, config)
        run = examine(host, config, desired, state)
        if before is not None:
            run.acted = acted or []
            run.before = before.findings
        record(host, config, state, run)
    return run


def _act(host: Host, config: AgentConfig, run: HealthRun, apply: Apply) -> list[dict[str, Any]]:
    acted: list[dict[str, Any]] = []
    rolled_back: set[str] = set()
    for component, reasons in sorted(run.due_rollbacks.items()):
        acted.append(_roll_back(host, component, reasons))
        rolled_back.add(component)
    backoff = float(config.health.get("remediationBackoff") or 600.0)
    for finding in run.due_fixes:
        if finding.component in rolled_back:
            continue  # the rollback was the fix
        acted.append(_fix(host, config, finding, backoff, apply))
    return acted


def _roll_back(host: Host, component: str, reasons: list[str]) -> dict[str, Any]:
    """Put back the version kept before the change, and block that change for its generation."""
    from agentd.converge.rollback import rollback  # noqa: PLC0415
    from agentd.state.store import count  # noqa: PLC0415

    why = "; ".join(reasons)[:500]
    with StateLock(host.paths).held("rollback", LOCK_WAIT_S):
        state = load_state(host.paths) or AgentState()
        watch = state.watch.pop(component, None)
        generation = watch.generation if watch else None
        replaced = watch.to_version if watch else None
        try:
            done = rollback(host, state, component)
        except AgentError as exc:
            save_state(host.paths, state)
            _log().error("rollback failed", component=component, action="rollback", error=str(exc))
            return {"rollback": component, "ok": False, "error": str(exc)}
        state.blocked[component] = Block(
            generation, replaced, done.get("restoredVersion"), why, _now()
        )
        # The installed version changed under the no-op digest's feet: plan again next time.
        state.noop = None
        count(state.counters, "rollbacks", [component])
        save_state(host.paths, state)
    _log().error(
        "rolled back",
        component=component,
        action="rollback",
        generation=generation,
        replaced=replaced,
        restored=done.get("restoredVersion"),
        reason=why,
    )
    return {
        "rollback": component,
        "ok": True,
        "from": replaced,
        "to": done.get("restoredVersion"),
        "reason": why,
        "serviceCalls": list(host.services.calls),
    }


def _fix(
    host: Host, config: AgentConfig, finding: Any, backoff: float, apply: Apply
) -> dict[str, Any]:
    """Apply one finding's fix; whatever happens, the next attempt waits for its backoff."""
    fix = str(finding.fix)
    ok, detail = False, ""
    try:
        if fix == "restart:k3s":
            unit = _k3s_unit(host)
            host.services.restart(unit)
            ok, detail = True, f"restarted {unit}"
        elif fix == "ldconfig":
            host.services.ldconfig()
            ok, detail = True, "ran ldconfig"
        elif fix == "converge" or fix.startswith("reinstall:"):
            force = {}
            if fix.startswith("reinstall:"):
                force[fix.split(":", 1)[1]] = f"the health check found: {finding.message}"
            result = apply(host, None, config=config, force=force, lock_wait_s=LOCK_WAIT_S)
            ok = result.succeeded
            detail = f"apply {result.outcome} ({len(result.actions or [])} actions)"
        else:
            detail = f"no such fix {fix!r}"
    except (AgentError, ServiceError, OSError) as exc:
        detail = str(exc)
    with StateLock(host.paths).held("remediate", LOCK_WAIT_S):
        state = load_state(host.paths) or AgentState()
        note_remediation(state, finding, backoff, ok)
        save_state(host.paths, state)
    level = "info" if ok else "error"
    getattr(_log(), level)(
        "remediation", component=finding.component, action=fix, code=finding.code, detail=detail
    )
    return {"fix": fix, "code": finding.code, "ok": ok, "detail": detail, "at": time.time()}


def _k3s_unit(host: Host) -> str:
    agent = K3S_UNITS["agent"]
    if host.paths.under(f"{SYSTEMD_DIR}/{agent}").exists():
        return agent
    return K3S_UNITS["server"]
