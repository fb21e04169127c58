"""One run, in stages: LOAD the desired state, DETECT facts, PLAN, CONVERGE, and record it."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from agentd.core.errors import (
    AgentError,
    Cancelled,
    DesiredStateError,
    GenerationError,
    NoDesiredState,
)
from agentd.core.paths import MANAGED_CONFIG_PATHS
from agentd.settings.snapshot import AgentConfig
from agentd.sources.pull import FleetStore, fleet_document
from agentd.state.store import AgentState, StateLock, load_state, save_state
from agentd.system.files import read_bytes_limited
from agentd.system.host import Host

if TYPE_CHECKING:
    from agentd.core.timespec import MaintenanceWindows
    from agentd.desired.model import DesiredState
    from agentd.desired.targeting import NodeIdentity, Targeting
    from agentd.facts.model import Facts
    from agentd.plan.diff import Action, Plan

# pydantic, yaml and the planner are imported only when a plan is really needed: an unchanged
# node answers from the no-op digest without them (start-up time matters on a Raspberry Pi).
MAX_CONFIG_BYTES = 1 << 20


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 1)


# --- sources -----------------------------------------------------------------------------------


@dataclass
class Sources:
    """The files that make the desired state, in merge order (later wins), and their names."""

    files: list[Path]
    names: dict[Path, str] = field(default_factory=dict)
    fleet: Optional[dict[str, Any]] = None  # the pulled document's record, when one is used

    def shown(self) -> list[str]:
        return [self.names.get(p, str(p)) for p in self.files]


def local_sources(host: Host) -> list[Path]:
    """The node's own files: desired.yaml, then desired.d/*.yaml in alphabetical order."""
    paths = host.paths
    files = [paths.desired_file] if paths.desired_file.is_file() else []
    if paths.desired_dir.is_dir():
        files += sorted(p for p in paths.desired_dir.glob("*.yaml") if p.is_file())
    return files


def desired_sources(
    host: Host, desired_file: Optional[Path], fleet_file: Optional[Path] = None
) -> Sources:
    """`--desired FILE` alone, else the last good fleet document (or `fleet_file`) and then the
    node's own files."""
    if desired_file is not None:
        return Sources([desired_file])
    paths = host.paths
    view = fleet_document(paths)
    files: list[Path] = []
    names: dict[Path, str] = {}
    fleet = None
    if fleet_file is not None:
        store = FleetStore(paths)
        record = store.candidate_record()
        files.append(fleet_file)
        names[fleet_file] = f"{record.get('display', 'fleet document')} (new)"
        fleet = {**record, "candidate": True}
    elif view.path is not None:
        files.append(view.path)
        names[view.path] = view.display
        fleet = view.record
    files += local_sources(host)
    if not files:
        raise NoDesiredState(
            f"no desired state: neither {paths.host_view(paths.desired_file)} nor "
            f"{paths.host_view(paths.desired_dir)}/*.yaml exists, no fleet document has been "
            "pulled (pass --desired FILE, or set a source in "
            f"{paths.host_view(paths.settings_file)})"
        )
    return Sources(files, names, fleet)


@dataclass
class Loaded:
    desired: DesiredState
    sources: list[str]
    warnings: list[str] = field(default_factory=list)
    targeting: list[Targeting] = field(default_factory=list)


def node_identity(host: Host, config: Optional[AgentConfig] = None) -> NodeIdentity:
    """This node as fleet selectors see it (settings first, then the machine)."""
    from agentd.desired.targeting import NodeIdentity  # noqa: PLC0415
    from agentd.facts.detect import _os_name  # noqa: PLC0415

    config = config or AgentConfig()
    node_id = config.node_id
    if node_id is None:
        try:
            node_id = host.paths.under("/etc/machine-id").read_text().strip() or None
        except OSError:
            node_id = None
    return NodeIdentity(
        node_id=node_id or "unknown",
        hostname=config.hostname or os.uname().nodename,
        arch=node_arch(),
        os=_os_name(host.paths),
        labels=config.labels,
    )


def load_desired(sources: Sources, arch: str, node: Optional[NodeIdentity] = None) -> Loaded:
    from agentd.desired.validate import load_and_validate  # noqa: PLC0415

    report = load_and_validate(sources.files, arch, merge_all=True, names=sources.names, node=node)
    if report.errors or report.state is None:
        n = len(report.errors)
        raise DesiredStateError(
            f"the desired state is invalid ({n} error{'s' * (n != 1)})", report.errors
        )
    return Loaded(report.state, sources.shown(), report.warnings, report.targeting)


def settle_candidate(host: Host, *, promote: bool) -> Optional[Path]:
    """Judge a pulled fleet document waiting in the state dir, merged with the node's files.

    Valid: it is promoted to the last good document (or, without `promote`, its path is
    returned for a plan to show). Invalid where the last good one is not: rejected, with the
    reason kept for `status`. When the node's own files are what is broken, it waits.
    """
    store = FleetStore(host.paths)
    if not store.candidate.is_file():
        return None
    from agentd.desired.validate import load_and_validate  # noqa: PLC0415

    arch = node_arch()
    with_new = desired_sources(host, None, fleet_file=store.candidate)
    report = load_and_validate(with_new.files, arch, merge_all=True, names=with_new.names)
    if report.ok:
        if not promote:
            return store.candidate
        record = store.promote()
        _log().info(
            "fleet document accepted",
            component="source",
            action="accept",
            generation=record.get("generation"),
            origin=record.get("origin"),
        )
        return None
    current = desired_sources_or_none(host)
    if current is not None:
        without = load_and_validate(current.files, arch, merge_all=True, names=current.names)
        if not without.ok:
            return None  # the node's own files are broken: the new document is not to blame
    if promote:
        reason = "invalid with this node's files: " + "; ".join(report.errors[:3])
        record = store.reject_candidate(reason)
        _log().error(
            "fleet document rejected",
            component="source",
            action="reject",
            generation=record.get("generation"),
            error=reason,
        )
    return None


def desired_sources_or_none(host: Host) -> Optional[Sources]:
    try:
        return desired_sources(host, None)
    except DesiredStateError:
        return None


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
    from agentd.core.arch import host_arch  # noqa: PLC0415

    return host_arch()


def _digest(host: Host, sources: Sources, state: AgentState) -> str:
    from agentd.facts.digest import planning_inputs_digest  # noqa: PLC0415

    inventory = {k: v.to_json() for k, v in sorted(state.inventory.items())}
    return planning_inputs_digest(host.paths, sources.files, node_arch(), inventory)


def _log() -> Any:
    from agentd.system.log import get_logger  # noqa: PLC0415

    return get_logger()


# --- planning ----------------------------------------------------------------------------------


@dataclass
class Planned:
    loaded: Loaded
    facts: Facts
    state: AgentState
    plan: Plan
    timings_ms: dict[str, float]
    sources: Sources


def make_plan(
    host: Host,
    desired_file: Optional[Path],
    state: Optional[AgentState] = None,
    sources: Optional[Sources] = None,
    force: Optional[Mapping[str, str]] = None,
    config: Optional[AgentConfig] = None,
) -> Planned:
    """Load, detect and plan; `state` and `sources` are read here unless the caller has them.

    Without `sources`, a pulled fleet document that is waiting to be judged is planned with
    when it is valid (as apply would accept it first)."""
    from agentd.facts.detect import detect  # noqa: PLC0415
    from agentd.plan.diff import plan  # noqa: PLC0415

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if sources is None:
        candidate = settle_candidate(host, promote=False) if desired_file is None else None
        sources = desired_sources(host, desired_file, fleet_file=candidate)
    if state is None:
        state = load_state(host.paths) or AgentState()
    # What a killed run was installing is installed again, whatever detection reads.
    force = {**state.interrupted(), **(force or {})}
    facts = detect(host.paths, state.recorded_plugins())
    timings["detect"] = _ms(t0)
    t1 = time.perf_counter()
    loaded = load_desired(sources, facts.host.arch, node_identity(host, config))
    facts = _with_packages(host, facts, loaded.desired)
    timings["load"] = _ms(t1)
    t2 = time.perf_counter()
    the_plan = plan(loaded.desired, facts, state.inventory, read_configs(host), force)
    timings["plan"] = _ms(t2)
    return Planned(loaded, facts, state, the_plan, timings, sources)


def _without_urls(value: Any) -> Any:
    """`value` with every artifact URL replaced by its redacted form."""
    from agentd.core.redact import redact_url  # noqa: PLC0415

    if isinstance(value, dict):
        return {
            k: redact_url(v) if k == "url" and isinstance(v, str) else _without_urls(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_without_urls(v) for v in value]
    return value


def _with_packages(host: Host, facts: Facts, desired: DesiredState) -> Facts:
    """The installed versions of the distribution packages the desired state names."""
    crun = desired.components.crun
    if crun is None or crun.source != "package" or host.packages is None:
        return facts
    return replace(facts, packages={crun.package: host.packages.installed(crun.package)})


# --- the maintenance window --------------------------------------------------------------------


def _window(config: AgentConfig, desired: DesiredState) -> Optional[MaintenanceWindows]:
    """The node's own window (settings) wins over the fleet's (desired state)."""
    own = config.maintenance
    if own is not None:
        return own
    return desired.maintenanceWindow.compile() if desired.maintenanceWindow else None


def _owed_restart(state: AgentState, plan: Plan) -> Plan:
    """Add the k3s restart still owed from a run whose restart waited for the window."""
    owed = state.pending_restart
    if not owed or any(a.action == "restart" for a in plan.actions):
        return plan
    from agentd.plan.diff import Action  # noqa: PLC0415

    restart = Action(
        "k3s",
        "restart",
        f"{owed['unit']}: owed since {owed['since']} for {owed['causes']}",
        target=str(owed["unit"]),
        disruptive=True,
        phase="restart",
    )
    return replace(plan, actions=(*plan.actions, restart))


def _gate(
    plan: Plan, state: AgentState, window: Optional[MaintenanceWindows], now: datetime
) -> tuple[Plan, list[Action]]:
    """The plan without its disruptive actions while the window is closed, and those held."""
    if window is None or window.open_at(now):
        state.deferred = None
        return plan, []
    held = [a for a in plan.actions if a.disruptive]
    if not held:
        state.deferred = None
        return plan, []
    opens = window.next_opening(now).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    state.deferred = {
        "actions": [a.to_json() for a in held],
        "until": opens,
        "window": window.describe(),
    }
    for a in held:
        if a.action == "restart":
            causes = a.reason.split(": ", 1)[-1]
            since = (state.pending_restart or {}).get("since") or _now()
            state.pending_restart = {"unit": a.target, "causes": causes, "since": since}
    kept = tuple(a for a in plan.actions if not a.disruptive)
    return replace(plan, actions=kept), held


# --- health-gated rollback ----------------------------------------------------------------------


def _without_blocked(state: AgentState, plan: Plan, generation: int) -> Plan:
    """The plan without changes that were rolled back for this generation: they are not tried
    again until the desired state changes (no install/rollback flapping)."""
    state.blocked = {c: b for c, b in state.blocked.items() if b.get("generation") == generation}
    if not state.blocked:
        return plan
    from agentd.plan.diff import Unchanged  # noqa: PLC0415

    kept, notes = [], []
    for a in plan.actions:
        block = state.blocked.get(a.component)
        if block is not None and a.to_version == block.get("version"):
            notes.append(
                Unchanged(
                    a.component,
                    f"{a.action} to {a.to_version} was rolled back at {block.get('at')} "
                    f"({block.get('reason')}); not tried again for generation {generation}: "
                    "publish a new generation to try again",
                )
            )
        else:
            kept.append(a)
    return replace(plan, actions=tuple(kept), unchanged=(*plan.unchanged, *notes))


_CHANGES = ("install", "upgrade", "downgrade", "reinstall")


def _health_before(host: Host, config: AgentConfig, planned: Planned) -> Optional[set[str]]:
    """The components that are unhealthy now, checked just before a change to a watched one
    (None when no such change is planned): only what was healthy is rolled back."""
    from agentd.health import run as health  # noqa: PLC0415
    from agentd.health.checks import run_checks  # noqa: PLC0415

    changing = [
        a
        for a in planned.plan.actions
        if a.action in _CHANGES and a.from_version and health.watched(a.component)
    ]
    if not changing:
        return None
    desired = planned.loaded.desired.model_dump(mode="json")
    inp = health.check_input(host, config, desired, planned.facts)
    inp.probe_image = None  # the pod probe takes a minute; the node's own checks suffice here
    return health.unhealthy_components(run_checks(inp))


def _watch_changes(
    state: AgentState,
    report: Any,
    generation: int,
    before: Optional[set[str]],
    config: AgentConfig,
) -> None:
    """Watch each component this run replaced, for the rollback window."""
    if before is None:
        return
    window = float(config.health.get("rollbackWindow") or 0)
    until = time.time() + window
    for step in report.steps:
        a = step.action
        if step.status != "done" or a.action not in _CHANGES or not a.from_version:
            continue
        from agentd.health.run import watched  # noqa: PLC0415

        if not watched(a.component):
            continue
        state.watch[a.component] = {
            "since": _now(),
            "until": until,
            "generation": generation,
            "from": a.from_version,
            "to": a.to_version,
            "healthyBefore": a.component not in before,
        }


def publish(host: Host, config: AgentConfig, state: AgentState) -> None:
    from agentd.health.run import publish as write_metrics  # noqa: PLC0415

    write_metrics(host, config, state)


# --- apply -------------------------------------------------------------------------------------


def tls_verify(config: AgentConfig, host: Host) -> Union[bool, str]:
    tls = config.tls
    if tls.get("insecureSkipVerify"):
        return False
    ca = tls.get("caFile")
    return str(host.paths.under(str(ca))) if ca else True


def apply(
    host: Host,
    desired_file: Optional[Path],
    *,
    config: Optional[AgentConfig] = None,
    pull: bool = False,
    dry_run: bool = False,
    lock_wait_s: float = 0.0,
    cancel: Optional[Callable[[], None]] = None,
    now: Optional[datetime] = None,
    force: Optional[Mapping[str, str]] = None,
) -> dict[str, Any]:
    """Converge once. Returns the run's result (also saved in state.json unless dry-run).

    `pull`: fetch the fleet document first (when a source is configured). `cancel` may raise
    Cancelled until the first target is touched. `now` is for tests of the maintenance window.
    `force`: components to install again although their version is right (a health fix).
    """
    config = config or AgentConfig()
    started, t0 = _now(), time.perf_counter()
    if dry_run:
        planned = make_plan(host, desired_file, config=config)
        return _result(planned, started, t0, "planned", dry_run=True)
    with StateLock(host.paths).held("apply", lock_wait_s):
        pulled = None
        source = config.source
        if pull and desired_file is None and source is not None:
            from agentd.sources.pull import pull as pull_source  # noqa: PLC0415

            pulled = pull_source(source, host.paths).to_json()
        if desired_file is None:
            settle_candidate(host, promote=True)
        extra = {"pull": pulled} if pulled else {}
        state = load_state(host.paths) or AgentState()
        sources = desired_sources(host, desired_file)
        digest = _digest(host, sources, state)
        unchanged = None if force else _unchanged_result(host, state, digest, started, t0, extra)
        if unchanged is not None:
            publish(host, config, state)
            return unchanged
        run = _Run(host, desired_file, state, sources, started, t0, config, extra, force or {})
        try:
            return run.apply(digest, cancel, now)
        except AgentError as exc:
            exc.result = state.last_run  # every failure of a planned run is recorded first
            raise


def _unchanged_result(
    host: Host,
    state: AgentState,
    digest: str,
    started: str,
    t0: float,
    extra: dict[str, Any],
) -> Optional[dict[str, Any]]:
    """The memoised result of the last empty plan, recorded again, while its inputs hold."""
    # A killed run's intent is not among the digest's inputs, and it needs a plan.
    idle = not state.deferred and not state.pending_restart and not state.installing
    if not (idle and state.noop and state.noop.get("digest") == digest):
        return None
    result = {**state.noop["result"], "startedAt": started, "cached": True, **extra}
    _record(host, result, t0, state)
    return result


def apply_if_unchanged(
    host: Host, config: AgentConfig, extra: Optional[dict[str, Any]] = None
) -> Optional[dict[str, Any]]:
    """The no-op apply, or None when a real plan is needed (which this never loads).

    For the daemon, which keeps pydantic and the planner out of its own memory: the caller holds
    the state lock."""
    started, t0 = _now(), time.perf_counter()
    if FleetStore(host.paths).candidate.is_file():
        return None
    state = load_state(host.paths) or AgentState()
    try:
        sources = desired_sources(host, None)
    except DesiredStateError:
        return None  # the worker reports it, with the full message
    digest = _digest(host, sources, state)
    result = _unchanged_result(host, state, digest, started, t0, extra or {})
    if result is not None:
        publish(host, config, state)
    return result


@dataclass
class _Run:
    """One apply that needs a plan: everything it records goes through `record`."""

    host: Host
    desired_file: Optional[Path]
    state: AgentState
    sources: Sources
    started: str
    t0: float
    config: AgentConfig
    extra: dict[str, Any]
    force: Mapping[str, str] = field(default_factory=dict)

    def record(self, result: dict[str, Any]) -> dict[str, Any]:
        result.update(self.extra)
        _record(self.host, result, self.t0, self.state)
        publish(self.host, self.config, self.state)
        return result

    def apply(
        self, digest: str, cancel: Optional[Callable[[], None]], now: Optional[datetime]
    ) -> dict[str, Any]:
        from agentd.converge.install import converge  # noqa: PLC0415

        host, started, t0 = self.host, self.started, self.t0
        try:
            planned = make_plan(
                host, self.desired_file, self.state, self.sources, self.force, self.config
            )
        except AgentError as exc:
            self.record(
                {
                    "kind": "apply",
                    "startedAt": started,
                    "outcome": "failed",
                    "sources": self.sources.shown(),
                    "error": str(exc),
                    "problems": getattr(exc, "problems", []),
                }
            )
            raise
        state, desired = planned.state, planned.loaded.desired
        last = state.last_applied_generation
        if last is not None and desired.generation < last:
            result = _result(planned, started, t0, "refused")
            result["error"] = (
                f"desired generation {desired.generation} is older than generation {last} "
                "already applied on this node; nothing was changed (publish a higher generation)"
            )
            self.record(result)
            raise GenerationError(result["error"])
        if self.desired_file is None:
            # For the daemon's health checks, which need no URL: none is kept (credentials).
            state.desired = _without_urls(desired.model_dump(mode="json"))
        moment = now or datetime.now(timezone.utc)
        the_plan = _without_blocked(state, planned.plan, desired.generation)
        the_plan = _owed_restart(state, the_plan)
        the_plan, held = _gate(the_plan, state, _window(self.config, desired), moment)
        planned.plan = the_plan
        from agentd.converge.install import sweep  # noqa: PLC0415

        swept = sweep(host, state, self.config.metrics_path)
        if swept:
            _log().info("removed what an interrupted run left", action="sweep", paths=swept)
        before = _health_before(host, self.config, planned)
        try:
            report = converge(
                host,
                the_plan,
                state,
                desired.generation,
                cancel=cancel,
                tls_verify=tls_verify(self.config, host),
                downloads=self.config.downloads,
            )
        except Cancelled as exc:
            result = _result(planned, started, t0, "cancelled")
            result["error"] = str(exc)
            self.record(result)
            raise
        except AgentError as exc:
            result = _result(planned, started, t0, "failed", report=getattr(exc, "report", None))
            result["error"] = str(exc)
            self.record(result)
            raise
        state.last_applied_generation = desired.generation
        if any(a.action == "restart" for a in the_plan.actions):
            state.pending_restart = None
        _watch_changes(state, report, desired.generation, before, self.config)
        result = _result(planned, started, t0, "deferred" if held else "converged", report=report)
        if held and state.deferred:
            result["deferred"] = state.deferred
        if not the_plan.empty or held:
            _log().info(
                "converged",
                generation=desired.generation,
                actions=len(the_plan.actions),
                deferred=len(held),
            )
        # Only a plan that found nothing to do (and held nothing back) is memoised: its inputs
        # were not changed by the run.
        state.noop = None
        if the_plan.empty and not held and not state.pending_restart:
            keep = (
                "kind",
                "generation",
                "arch",
                "outcome",
                "dryRun",
                "sources",
                "fleet",
                "actions",
                "unchanged",
                "warnings",
                "targeting",
            )
            state.noop = {"digest": digest, "result": {k: result[k] for k in keep if k in result}}
        return self.record(result)


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
    fleet = planned.sources.fleet
    if fleet:
        result["fleet"] = {k: fleet.get(k) for k in ("generation", "origin", "signedBy")}
    if planned.loaded.warnings:
        result["warnings"] = planned.loaded.warnings
    if planned.loaded.targeting:
        result["targeting"] = [t.to_json() for t in planned.loaded.targeting]
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
