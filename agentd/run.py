"""One run, in stages: LOAD the desired state, DETECT facts, PLAN, CONVERGE, and record it."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from agentd.core.errors import (
    AgentError,
    Cancelled,
    DesiredStateError,
    DownloadError,
    GenerationError,
    StorageError,
    SuspendedError,
)
from agentd.desired.identity import node_identity
from agentd.desired.load import (
    Loaded,
    Sources,
    desired_sources,
    load_desired,
    settle_candidate,
    without_urls,
)
from agentd.facts.configs import missing_placed, read_configs
from agentd.settings.snapshot import AgentConfig, suspend_reason
from agentd.sources.store import FleetStore
from agentd.state.records import Noop, RunResult
from agentd.state.store import AgentState, StateLock, load_state, save_state
from agentd.system.host import Host
from agentd.system.progress import Progress
from agentd.system.storage import describe, storage_error

if TYPE_CHECKING:
    from agentd.desired.model import DesiredState
    from agentd.facts.model import Facts
    from agentd.plan.model import Plan
    from agentd.plan.refusals import Judged

# pydantic, yaml and the planner are imported only when a plan is really needed: an unchanged
# node answers from the no-op digest without them (start-up time matters on a Raspberry Pi).


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 1)


def _digest(host: Host, sources: Sources, state: AgentState, config: AgentConfig) -> str:
    from agentd.facts.digest import planning_inputs_digest  # noqa: PLC0415

    node = node_identity(host, config).to_json()
    inventory = {k: v.to_json() for k, v in sorted(state.inventory.items())}
    return planning_inputs_digest(host.paths, sources.files, node, inventory)


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
    judged: Judged  # what apply refuses of the plan, and why (`plan` is what it runs)
    # The managed config files as planned from (None: absent), for `plan`'s diffs.
    configs: Mapping[str, Optional[bytes]] = field(default_factory=dict)


def make_plan(
    host: Host,
    desired_file: Optional[Path],
    state: Optional[AgentState] = None,
    sources: Optional[Sources] = None,
    force: Optional[Mapping[str, str]] = None,
    config: Optional[AgentConfig] = None,
    now: Optional[datetime] = None,
) -> Planned:
    """Load, detect and plan; `state` and `sources` are read here unless the caller has them.

    Without `sources`, a pulled fleet document that is waiting to be judged is planned with
    when it is valid (as apply would accept it first). `now` is for the maintenance window."""
    from agentd.facts.detect import detect  # noqa: PLC0415
    from agentd.plan import policy  # noqa: PLC0415
    from agentd.plan.diff import plan  # noqa: PLC0415
    from agentd.plan.refusals import judge  # noqa: PLC0415

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    node = node_identity(host, config)
    if sources is None:
        candidate = settle_candidate(host, node, promote=False) if desired_file is None else None
        sources = desired_sources(host, desired_file, fleet_file=candidate)
    if state is None:
        state = load_state(host.paths) or AgentState()
    # What a killed run was installing is installed again, whatever detection reads.
    force = {**missing_placed(host.paths, state.inventory), **state.interrupted(), **(force or {})}
    facts = detect(host.paths, state.recorded_plugins())
    timings["detect"] = _ms(t0)
    t1 = time.perf_counter()
    from agentd.desired.onnode import OnNode  # noqa: PLC0415

    # on_node: a tokenFile missing here, a pinned sha256 that is not re-checked, as warnings.
    loaded = load_desired(sources, facts.host.arch, node, OnNode(host.paths, state.inventory))
    facts = _with_packages(host, facts, loaded.desired)
    timings["load"] = _ms(t1)
    t2 = time.perf_counter()
    configs = read_configs(host.paths)
    the_plan = plan(loaded.desired, facts, state.inventory, configs, force)
    # What apply refuses (an older generation, suspend, a change rolled back, one held for
    # the window) or adds (a k3s restart still owed): `plan`, `apply --dry-run` and apply
    # itself all see the same judgement.
    config = config or AgentConfig()
    judged = judge(
        state,
        the_plan,
        loaded.desired,
        window=policy.window(config, loaded.desired),
        now=now or datetime.now(timezone.utc),
        suspended=suspend_reason(host.paths, config),
        rejected=_rejected(host) if desired_file is None else None,
    )
    timings["plan"] = _ms(t2)
    return Planned(loaded, facts, state, judged.plan, timings, sources, judged, configs)


def _rejected(host: Host) -> Optional[str]:
    """Why the last pull refused the source's document (its status), if it did."""
    last = FleetStore(host.paths).status().get("lastPull")
    if isinstance(last, dict) and last.get("outcome") == "rejected":
        return str(last.get("detail") or "rejected")
    return None


def _with_packages(host: Host, facts: Facts, desired: DesiredState) -> Facts:
    """The installed versions of the distribution packages the desired state names."""
    crun = desired.components.crun
    if crun is None or crun.source != "package" or host.packages is None:
        return facts
    return replace(facts, packages={crun.package: host.packages.installed(crun.package)})


def publish(host: Host, config: AgentConfig, state: AgentState) -> None:
    from agentd.report.metrics import publish_metrics  # noqa: PLC0415

    publish_metrics(host, config, state)


# --- apply -------------------------------------------------------------------------------------


def tls_verify(config: AgentConfig, host: Host) -> Union[bool, str]:
    tls = config.tls
    if tls.get("insecureSkipVerify"):
        return False
    ca = tls.get("caFile")
    if not ca:
        return True
    path = host.paths.under(str(ca))
    # requests opens the file itself: looked at first, a FIFO there cannot hang the download.
    from agentd.system.readfile import open_regular  # noqa: PLC0415

    try:
        open_regular(path).close()
    except OSError as exc:
        raise DownloadError(f"tls.caFile {path}: {exc.strerror or exc}") from None
    return str(path)


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
    progress: Optional[Progress] = None,
) -> RunResult:
    """Converge once. Returns the run's result (also saved in state.json unless dry-run).

    `pull`: fetch the fleet document first (when a source is configured). `cancel` may raise
    Cancelled until the first target is touched. `now` is for tests of the maintenance window.
    `force`: components to install again although their version is right (a health fix).
    `progress` is told each stage and download as it goes (a terminal line, the daemon's STATUS).
    """
    config = config or AgentConfig()
    if dry_run:
        started, t0 = _now(), time.perf_counter()
        planned = make_plan(host, desired_file, config=config)
        return _result(planned, started, t0, "planned", dry_run=True)
    try:
        return _apply_locked(
            host, desired_file, config, pull, lock_wait_s, cancel, now, force, progress
        )
    except OSError as exc:
        full = storage_error(exc)
        if full is None:
            raise
        error = f"{describe(full, host.paths.state_dir)}; {_node_state(host)}"
        _log().error("apply failed: storage", error=error)
        raise StorageError(error) from exc


def _node_state(host: Host) -> str:
    """What a run stopped by its storage left, from state.json (which is always whole)."""
    try:
        disk = load_state(host.paths)
    except AgentError as exc:
        return f"the node's state is unknown ({exc})"
    if disk is not None and disk.installing is not None:
        names = ", ".join(sorted(disk.installing.components))
        return (
            f"state.json holds the write-ahead record of generation {disk.installing.generation} "
            f"for {names}: each of their files is old or new, and the next run with space "
            "installs them again and records them"
        )
    gen = disk.last_applied_generation if disk is not None else None
    return (
        "no file of this run was installed: the node is as it was (generation "
        f"{gen if gen is not None else 'none'}); the next run with space applies it again"
    )


def _apply_locked(
    host: Host,
    desired_file: Optional[Path],
    config: AgentConfig,
    pull: bool,
    lock_wait_s: float,
    cancel: Optional[Callable[[], None]],
    now: Optional[datetime],
    force: Optional[Mapping[str, str]],
    progress: Optional[Progress],
) -> RunResult:
    started, t0 = _now(), time.perf_counter()
    with StateLock(host.paths).held("apply", lock_wait_s, cancel):
        pulled = None
        source = config.source
        if pull and desired_file is None and source is not None:
            from agentd.sources.pull import pull as pull_source  # noqa: PLC0415

            pulled = pull_source(source, host.paths).to_json()
        if desired_file is None:
            settle_candidate(host, node_identity(host, config), promote=True)
        state = load_state(host.paths) or AgentState()
        sources = desired_sources(host, desired_file)
        digest = _digest(host, sources, state, config)
        # Suspended, the memo is not answered: the plan's judgement refuses the run.
        replan = force or suspend_reason(host.paths, config)
        unchanged = None if replan else _unchanged_result(host, state, digest, started, t0, pulled)
        if unchanged is not None:
            publish(host, config, state)
            return unchanged
        run = _Run(host, desired_file, state, sources, started, t0, config, pulled, force or {})
        try:
            return run.apply(digest, cancel, now, progress)
        except AgentError as exc:
            exc.result = state.last_run  # every failure of a planned run is recorded first
            raise


def _unchanged_result(
    host: Host,
    state: AgentState,
    digest: str,
    started: str,
    t0: float,
    pulled: Optional[dict[str, Any]],
) -> Optional[RunResult]:
    """The memoised result of the last empty plan, recorded again, while its inputs hold."""
    # A killed run's intent is not among the digest's inputs, and it needs a plan.
    idle = not state.deferred and not state.pending_restart and not state.installing
    if not (idle and state.noop and state.noop.digest == digest):
        return None
    result = replace(state.noop.result, started_at=started, cached=True, pull=pulled or None)
    return _record(host, result, t0, state)


def apply_if_unchanged(
    host: Host, config: AgentConfig, pulled: Optional[dict[str, Any]] = None
) -> Optional[RunResult]:
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
    digest = _digest(host, sources, state, config)
    result = _unchanged_result(host, state, digest, started, t0, pulled)
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
    pulled: Optional[dict[str, Any]]  # the pull before the run, when there was one
    force: Mapping[str, str] = field(default_factory=dict)

    unsaved: Optional[str] = None  # why the run's result could not be saved, if it could not

    def record(self, result: RunResult) -> RunResult:
        """Record `result` in state.json; on a full disk, in the journal (and stderr) only."""
        try:
            recorded = _record(
                self.host, replace(result, pull=self.pulled or None), self.t0, self.state
            )
        except OSError as exc:
            full = storage_error(exc)
            if full is None:
                raise
            self.unsaved = describe(full, self.host.paths.state_dir)
            recorded = self.state.last_run or result
            _log().error(
                "the run's result could not be saved",
                outcome=result.outcome,
                error=f"{result.error or result.outcome}; not saved: {self.unsaved}",
            )
        publish(self.host, self.config, self.state)
        return recorded

    def as_on_disk(self) -> None:
        """After a write the storage refused, forget what only memory holds: state.json (whole,
        old or new) is the truth the failure is recorded onto."""
        try:
            disk = load_state(self.host.paths) or AgentState()
        except AgentError:
            return
        for f in fields(AgentState):
            setattr(self.state, f.name, getattr(disk, f.name))

    def apply(
        self,
        digest: str,
        cancel: Optional[Callable[[], None]],
        now: Optional[datetime],
        progress: Optional[Progress] = None,
    ) -> RunResult:
        from agentd.converge.install import converge  # noqa: PLC0415
        from agentd.health.watch import health_before, watch_changes  # noqa: PLC0415
        from agentd.plan import policy  # noqa: PLC0415

        host, started, t0 = self.host, self.started, self.t0
        try:
            planned = make_plan(
                host, self.desired_file, self.state, self.sources, self.force, self.config, now
            )
        except AgentError as exc:
            self.record(
                RunResult(
                    "apply",
                    "failed",
                    started_at=started,
                    sources=self.sources.shown(),
                    error=str(exc),
                    problems=list(getattr(exc, "problems", [])),
                )
            )
            raise
        state, desired, judged = planned.state, planned.loaded.desired, planned.judged
        refused = judged.refused_run
        if refused is not None:
            self.record(replace(_result(planned, started, t0, "refused"), error=refused.reason))
            raise (GenerationError if refused.kind == "generation" else SuspendedError)(
                refused.reason
            )
        if self.desired_file is None:
            # For the daemon's health checks, which need no URL: none is kept (credentials).
            state.desired = without_urls(desired.model_dump(mode="json"))
        window = policy.window(self.config, desired)
        the_plan, held = planned.plan, list(judged.held)
        policy.defer(state, held, judged.opens, window)
        for component in judged.released:
            del state.rollback_holds[component]
        from agentd.converge.sweep import sweep  # noqa: PLC0415

        swept = sweep(host, state, self.config.metrics_path)
        if swept:
            _log().info("removed what an interrupted run left", action="sweep", paths=swept)
        before = health_before(host, self.config, the_plan, desired, planned.facts)
        try:
            report = converge(
                host,
                the_plan,
                state,
                desired.generation,
                cancel=cancel,
                progress=progress,
                tls_verify=tls_verify(self.config, host),
                # registries: what oci:// artifacts are fetched with (mirrors, auth, TLS).
                downloads={**self.config.downloads, "registries": self.config.registries},
            )
        except Cancelled as exc:
            self.record(replace(_result(planned, started, t0, "cancelled"), error=str(exc)))
            raise
        except AgentError as exc:
            if storage_error(exc) is not None:
                self.as_on_disk()
            failed = _result(planned, started, t0, "failed", report=getattr(exc, "report", None))
            self.record(replace(failed, error=str(exc)))
            raise
        state.last_applied_generation = desired.generation
        if any(a.action == "restart" for a in the_plan.actions):
            state.pending_restart = None
        watch_changes(state, report, desired.generation, before, self.config)
        result = _result(planned, started, t0, "deferred" if held else "converged", report=report)
        if held and state.deferred:
            result = replace(result, deferred=state.deferred)
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
            state.noop = Noop(digest, result.memo())
        recorded = self.record(result)
        if self.unsaved is not None:
            raise StorageError(
                f"generation {desired.generation} is installed and its inventory recorded, but "
                f"the run's result could not be saved: {self.unsaved}; the next run with space "
                f"finds nothing to do and records generation {desired.generation}"
            )
        return recorded


def _result(
    planned: Planned,
    started: str,
    t0: float,
    outcome: str,
    *,
    dry_run: bool = False,
    report: Any = None,
) -> RunResult:
    p = planned.plan
    steps = report.steps if report else None
    fleet = planned.sources.fleet
    loaded = planned.loaded
    timings = dict(planned.timings_ms)
    if report is not None:
        timings.update(report.timings_ms)
    return RunResult(
        "apply",
        outcome,
        generation=p.generation,
        arch=p.arch,
        dry_run=dry_run,
        started_at=started,
        sources=loaded.sources,
        actions=[s.to_json() for s in steps] if steps else [a.to_json() for a in p.actions],
        unchanged=[u.to_json() for u in p.unchanged],
        timings=timings,
        fleet={k: fleet.get(k) for k in ("generation", "origin", "signedBy")} if fleet else None,
        warnings=loaded.warnings or None,
        refusals=planned.judged.to_json() or None,
        targeting=[t.to_json() for t in loaded.targeting] or None,
        downloads=report.downloads if report is not None else None,
        service_calls=report.service_calls if report is not None else None,
        error=(report.error or None) if report is not None else None,
        duration_ms=_ms(t0),
    )


def _record(host: Host, result: RunResult, t0: float, state: AgentState) -> RunResult:
    recorded = replace(result, finished_at=_now(), duration_ms=_ms(t0))
    state.record_run(recorded)
    save_state(host.paths, state)
    return recorded
