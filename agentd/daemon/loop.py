"""The daemon: keep the node converged, pick up fleet and local changes, tell systemd how it goes.

The daemon itself stays small: it schedules, pulls, answers unchanged runs from the no-op digest
and talks to systemd. Whatever needs the planner (pydantic, detection, installs) runs in a
short-lived worker process, `agentd apply`, so its memory is returned after every run and a bug
in it cannot take the daemon down.
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path
from typing import Optional

from agentd.core.timespec import format_duration
from agentd.daemon.cluster import ClusterReport
from agentd.daemon.cycle import Convergence
from agentd.daemon.health import HealthRuns
from agentd.daemon.heartbeat import Heartbeat
from agentd.daemon.schedule import CycleResult, Schedule
from agentd.daemon.settings import read_settings
from agentd.daemon.status import DaemonStatus, utc_timestamp, write_status
from agentd.daemon.wakeup import FileWatch, Wakeup
from agentd.daemon.worker import Worker
from agentd.settings.snapshot import AgentConfig, suspend_reason
from agentd.sources.store import FleetStore
from agentd.system.host import Host
from agentd.system.log import get_logger
from agentd.system.notify import Notifier


class Daemon:
    """The reconcile loop. `run(stop, ready)` returns when `stop` is set; tests drive it with
    the two flags (and `request_converge`/`request_reload`) instead of sleeping."""

    def __init__(
        self,
        root: Path,
        settings_file: Optional[Path] = None,
        *,
        notifier: Optional[Notifier] = None,
        log_format: str = "json",
        rng: Optional[random.Random] = None,
    ) -> None:
        self.host = Host.at(root)
        self.paths = self.host.paths
        self.settings_file = settings_file
        self.notifier = notifier or Notifier.from_env()
        self.config = AgentConfig()
        self.settings_error: Optional[str] = None
        self.schedule = Schedule(rng or random.Random())  # noqa: S311 - splay and jitter, not secrets
        self.last: Optional[CycleResult] = None
        self.started_at = utc_timestamp()
        self.cycles = 0
        self.status_text = "starting"
        self._wake = Wakeup()
        self._stop = threading.Event()
        self._reload = False
        self._watch = FileWatch(self.paths, self.local_change)
        self.heartbeat = Heartbeat(self.notifier)
        self.worker = Worker(root, self.heartbeat, self._stop, log_format)
        self.convergence = Convergence(
            self.host, settings_file, self.worker, self.heartbeat, self.notifier, self._stop
        )
        self.health = HealthRuns(self.host, self.worker, self.heartbeat, self._stop)
        self.cluster = ClusterReport(self.host)

    @property
    def signal_fd(self) -> int:
        """The descriptor to give signal.set_wakeup_fd(), so any signal wakes the loop."""
        return self._wake.signal_fd

    # --- triggers: safe to call from other threads; request_reload and request_stop also from
    # signal handlers (they take no lock the interrupted main thread may hold) -------------------

    def request_converge(self, why: str = "request") -> None:
        self.schedule.request(why)
        self._wake.set()

    def request_reload(self) -> None:
        self._reload = True
        self._wake.set()

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def local_change(self, path: str) -> None:
        """A watched file changed: run once things settle (editors write in several steps)."""
        if self.schedule.local_change():  # one save is several inotify events: one line for all
            get_logger().info("local change", component="daemon", action="watch", path=path)
        self._wake.set()

    # --- the loop -------------------------------------------------------------------------------

    def run(self, stop: threading.Event, ready: threading.Event) -> int:
        """Converge at once, then on the timer, on local changes and on reload, until `stop`."""
        forward = threading.Thread(target=self._follow, args=(stop,), daemon=True)
        forward.start()
        self._load_settings(initial=True)
        self._watch.start()
        self._write_status()
        self._cycle("start")
        self.notifier.ready(self.status_text)
        ready.set()
        try:
            while not self._stop.is_set():
                self._wake.wait(self._sleep_time())
                if self._stop.is_set():
                    break
                self.heartbeat.ping_if_due()
                if self._reload:
                    self._reload = False  # a SIGHUP from here on reloads again: nothing is lost
                    self._do_reload()
                    continue
                due = self.schedule.due(self.config.debounce)
                if due is not None:
                    self._cycle(due)
                if self.health.due() and not self._stop.is_set():
                    self._health_run()
        finally:
            self.notifier.stopping("stopping")
            self._watch.stop()
            self.status_text = "stopped"
            self._write_status(state="stopped")
            get_logger().info("stopped", component="daemon", action="stop")
        return 0

    def _follow(self, stop: threading.Event) -> None:
        # The caller's stop flag becomes ours (and wakes the loop) whoever sets it.
        stop.wait()
        self.request_stop()

    def _sleep_time(self) -> float:
        deadlines = [self.schedule.deadline(self.config.debounce), self.health.next_run]
        ping = self.heartbeat.deadline()
        if ping is not None:
            deadlines.append(ping)
        return max(0.0, min(deadlines) - time.monotonic())

    def _load_settings(self, *, initial: bool) -> None:
        self.config, self.settings_error = read_settings(
            self.paths, self.settings_file, self.worker, self.config, initial=initial
        )

    def _do_reload(self) -> None:
        self.notifier.reloading("reloading settings")
        get_logger().info("reloading", component="daemon", action="reload")
        self._watch.stop()
        self._load_settings(initial=False)
        self._watch.start()
        self.schedule.pull_due = True
        self._cycle("reload")
        self.notifier.ready(self.status_text)

    def _cycle(self, reason: str) -> None:
        result = self.convergence.attempt(self.config, reason, self.schedule)
        self.last = result
        if result.actions:
            self.health.request()
        self.schedule.reschedule(result, self.config, self._stop.is_set())
        self.status_text = self._status_line(result)
        self.cluster.publish(self.config, self.status_text)
        # Counted once the cycle's outcome is all in place: whoever sees the count go up finds
        # the schedule, `last` and the status of this cycle, not of a cycle half done.
        self.cycles += 1
        # daemon.json first: whoever reads it on seeing the STATUS finds this cycle there.
        self._write_status()
        self.notifier.status(self.status_text)
        if not result.cached:
            log = get_logger()
            (log.info if result.ok else log.error)(
                f"cycle {result.outcome}",
                component="daemon",
                action="cycle",
                generation=result.generation,
                reason=reason,
                error=result.error,
                ms=round(result.duration_ms, 1),
            )

    def _health_run(self) -> None:
        if not self.health.run(self.config):
            return
        if self.last is not None:
            self.status_text = self._status_line(self.last)
        self._write_status()
        self.notifier.status(self.status_text)

    # --- reporting ------------------------------------------------------------------------------

    def _status_line(self, result: CycleResult) -> str:
        gen = result.generation
        if result.outcome == "suspended":
            line = f"suspended ({result.detail}); converging nothing"
        elif result.outcome == "waiting":
            line = f"waiting for a desired state: {result.detail}"
        elif result.outcome in ("converged", "deferred"):
            line = f"converged generation {gen if gen is not None else '?'}, "
            line += f"{self.health.findings()} findings"
            if result.outcome == "deferred":
                line += f"; {result.detail}"
        elif result.outcome == "cancelled" and self._stop.is_set():
            line = f"cancelled: {result.error or 'stopped on request'}; stopping"
        else:
            retry = format_duration(self.schedule.last_delay)
            line = f"{result.outcome}: {result.error or 'unknown error'}; retrying in {retry}"
        pulled = result.pull or {}
        if pulled.get("outcome") in ("failed", "rejected"):
            good = FleetStore(self.paths).good_generation()
            keep = f"keeping generation {good}" if good is not None else "no fleet document yet"
            line += f" (source {pulled['outcome']}: {pulled.get('detail')}; {keep})"
        if self.settings_error:
            line += f" [settings invalid: {self.settings_error}; using {self.config.origin}]"
        return line

    def _write_status(self, state: str = "running") -> None:
        remaining = max(0.0, self.schedule.next_run - time.monotonic())
        status = DaemonStatus(
            pid=os.getpid(),
            state=state,
            started_at=self.started_at,
            updated_at=utc_timestamp(),
            status=self.status_text,
            cycles=self.cycles,
            settings_origin=self.config.origin,
            settings_error=self.settings_error,
            tls_verification="OFF (tls.insecureSkipVerify)"
            if self.config.tls.get("insecureSkipVerify")
            else "on",
            interval=self.config.interval,
            splay=self.config.splay,
            suspended=suspend_reason(self.paths, self.config),
            last_cycle=self.last.to_json() if self.last else None,
            next_run_in_s=round(remaining, 1) if state == "running" else None,
            consecutive_failures=self.schedule.failures,
        )
        try:
            write_status(self.paths, status)
        except OSError as exc:
            get_logger().warning("cannot write daemon status", error=str(exc))
