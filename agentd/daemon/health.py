"""The daemon's health runs: the checks in its own process, a worker to act on what is due."""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Optional

from agentd.core.errors import AgentError, Cancelled
from agentd.daemon.heartbeat import Heartbeat, state_lock
from agentd.daemon.worker import Worker, settings_env
from agentd.settings.snapshot import AgentConfig, suspend_reason
from agentd.state.store import load_state
from agentd.system.host import Host
from agentd.system.log import get_logger

# After a rollback or a fix, the next health run comes this soon (or at the interval if sooner).
RECHECK_S = 10.0


class HealthRuns:
    """When the next health run is due, and the last one's result (for the STATUS line)."""

    def __init__(
        self, host: Host, worker: Worker, heartbeat: Heartbeat, stopping: threading.Event
    ) -> None:
        self.host = host
        self.worker = worker
        self.heartbeat = heartbeat
        self.stopping = stopping
        self.next_run = 0.0  # the first health run follows the first converge
        self.last: Optional[dict[str, Any]] = None

    def due(self) -> bool:
        return time.monotonic() >= self.next_run

    def request(self) -> None:
        """A health run at once: something changed (and its rollback window is open)."""
        self.next_run = 0.0

    def run(self, config: AgentConfig) -> bool:
        """The checks, in this process (no planner needed); a worker only when something is due
        to be done about them: a rollback, or a fix whose backoff has run out. False when the
        run came to nothing (stopping, or the checks could not run)."""
        from agentd.health import run as health  # noqa: PLC0415

        log = get_logger()
        t0 = time.perf_counter()
        self.next_run = time.monotonic() + config.health_interval
        try:
            with state_lock(self.host.paths, self.heartbeat, self.stopping):
                run = health.locked_check(self.host, config, cancel=self._cancel_if_stopping)
        except Cancelled:
            return False  # stopping: the checks run again after the next start
        except (AgentError, OSError) as exc:
            log.warning("health check failed", component="health", error=str(exc))
            return False
        self.last = run.to_json()
        suspended = suspend_reason(self.host.paths, config)
        if (run.due_fixes or run.due_rollbacks) and not suspended:
            code, out = self.worker.run(["check", "--act", "--json"], settings_env(config))
            try:
                acted = json.loads(out) if out.strip() else {}
            except ValueError:
                acted = {}
            if isinstance(acted, dict) and acted.get("findings") is not None:
                self.last = acted
            log.info(
                "health acted",
                component="health",
                action="remediate",
                code=code,
                acted=acted.get("acted") if isinstance(acted, dict) else None,
            )
            # A rollback or a fix changed the node: look again soon.
            self.next_run = time.monotonic() + min(RECHECK_S, config.health_interval)
        if not run.healthy:
            log.warning(
                "unhealthy",
                component="health",
                findings=[f.code for f in run.findings if f.unhealthy],
                ms=round((time.perf_counter() - t0) * 1000, 1),
            )
        return True

    def findings(self) -> int:
        """The last health run's findings that are worth a look (not the informational ones)."""
        health = self.last
        if health is None:
            try:
                state = load_state(self.host.paths)
            except (AgentError, OSError):
                return 0
            health = state.health if state is not None else None
        findings = health.get("findings") if isinstance(health, dict) else None
        if not isinstance(findings, list):
            return 0
        return sum(1 for f in findings if isinstance(f, dict) and f.get("severity") != "info")

    def _cancel_if_stopping(self) -> None:
        if self.stopping.is_set():
            raise Cancelled("stopping")
