"""One converge attempt: pull, the no-op digest, else `agentd apply` in a worker; its result."""

from __future__ import annotations

import calendar
import json
import threading
import time
from pathlib import Path
from typing import Any, Optional

from agentd.core.errors import AgentError, Cancelled, LockHeldError, NoDesiredState
from agentd.core.redact import redact_text
from agentd.daemon.heartbeat import LOCK_WAIT_S, Heartbeat, state_lock
from agentd.daemon.schedule import CycleResult, Schedule
from agentd.daemon.worker import Worker, settings_env
from agentd.desired.load import desired_sources
from agentd.run import apply_if_unchanged
from agentd.settings.snapshot import AgentConfig, suspend_reason
from agentd.sources.store import FleetStore
from agentd.state.records import Deferred, RunResult
from agentd.system.host import Host
from agentd.system.notify import Notifier


class Convergence:
    """Converges the node once per call, in the daemon's process while nothing changed, else
    through a worker; never raises: every way it ends is a CycleResult."""

    def __init__(
        self,
        host: Host,
        settings_file: Optional[Path],
        worker: Worker,
        heartbeat: Heartbeat,
        notifier: Notifier,
        stopping: threading.Event,
    ) -> None:
        self.host = host
        self.settings_file = settings_file
        self.worker = worker
        self.heartbeat = heartbeat
        self.notifier = notifier
        self.stopping = stopping

    def attempt(self, config: AgentConfig, reason: str, schedule: Schedule) -> CycleResult:
        t0 = time.perf_counter()
        suspended = suspend_reason(self.host.paths, config)
        if suspended:
            result = CycleResult("suspended", reason, detail=suspended)
        else:
            result = self._converge(config, reason, schedule)
        result.duration_ms = (time.perf_counter() - t0) * 1000
        return result

    def _converge(self, config: AgentConfig, reason: str, schedule: Schedule) -> CycleResult:
        pulled: Optional[dict[str, Any]] = None
        try:
            with state_lock(self.host.paths, self.heartbeat, self.stopping):
                source = config.source
                if source is not None and schedule.pull_due:
                    from agentd.sources.pull import pull  # noqa: PLC0415

                    pulled = pull(source, self.host.paths).to_json()
                    schedule.pull_due = False
                waiting = self._nothing_desired()
                unchanged = None if waiting else apply_if_unchanged(self.host, config, pulled)
        except Cancelled as exc:
            return CycleResult("cancelled", reason, error=str(exc), pull=pulled)
        except LockHeldError as exc:
            return CycleResult("failed", reason, error=str(exc), pull=pulled)
        except (AgentError, OSError) as exc:
            return CycleResult("failed", reason, error=redact_text(str(exc)), pull=pulled)
        if waiting:
            return CycleResult("waiting", reason, detail=waiting, pull=pulled)
        if unchanged is not None:
            return CycleResult(
                unchanged.outcome,
                reason,
                generation=unchanged.generation,
                cached=True,
                pull=pulled,
            )
        return self._work(config, reason, pulled)

    def _nothing_desired(self) -> Optional[str]:
        """Why there is nothing to converge to yet (a fresh node: no files, no fleet document),
        or None. Waiting for one is not a failure: no backoff, no error."""
        if FleetStore(self.host.paths).candidate.is_file():
            return None
        try:
            desired_sources(self.host, None)
        except NoDesiredState as exc:
            return str(exc)
        return None

    def _work(
        self, config: AgentConfig, reason: str, pulled: Optional[dict[str, Any]]
    ) -> CycleResult:
        self.notifier.status(f"converging ({reason})")
        args = ["apply", "--offline", "--json", "--wait", str(int(LOCK_WAIT_S))]
        if self.settings_file is not None:
            args = ["--settings", str(self.settings_file), *args]

        def shown(text: str) -> None:
            self.notifier.status(f"converging ({reason}): {text}")

        code, out = self.worker.run(args, settings_env(config), progress=shown)
        doc = _worker_result(out)
        if code != 0 and doc is not None and doc.succeeded:
            # A worker that failed did not converge: this is an earlier run's result, printed
            # when the run failed before recording one of its own. Nothing in it is this run's.
            doc = None
        outcome = doc.outcome if doc is not None else ("converged" if code == 0 else "failed")
        error = doc.error if doc is not None else None
        problems = doc.problems if doc is not None else None
        if error and problems:
            # "the desired state is invalid (1 error)" says nothing of where: the first
            # FILE:LINE:COL lines go with it to STATUS, daemon.json and the journal.
            error = f"{error}: " + "; ".join(str(p) for p in problems[:3])
        if code != 0 and not error:
            error = f"the worker exited with code {code}"
        deferred = doc.deferred if doc is not None else None
        return CycleResult(
            outcome,
            reason,
            generation=doc.generation if doc is not None else None,
            error=redact_text(str(error)) if error else None,
            actions=len(doc.actions or []) if doc is not None else 0,
            pull=pulled,
            detail=_deferred_detail(deferred),
            window_opens=_window_opens(deferred),
        )


def _worker_result(out: bytes) -> Optional[RunResult]:
    """The run result the worker printed (`apply --json`), or None when it printed none."""
    try:
        return RunResult.from_json(json.loads(out), "the worker's result") if out.strip() else None
    except (ValueError, TypeError):
        return None


def _deferred_detail(deferred: Optional[Deferred]) -> str:
    if deferred is None:
        return ""
    n = len(deferred.actions)
    verb = "waits" if n == 1 else "wait"
    return (
        f"{n} disruptive action{'s' * (n != 1)} {verb} for the maintenance window "
        f"(opens {deferred.until})"
    )


def _window_opens(deferred: Optional[Deferred]) -> Optional[float]:
    until = deferred.until if deferred is not None else None
    if until is None:
        return None
    try:
        return float(calendar.timegm(time.strptime(until, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return None
