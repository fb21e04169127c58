"""The daemon: keep the node converged, pick up fleet and local changes, tell systemd how it goes.

The daemon itself stays small: it schedules, pulls, answers unchanged runs from the no-op digest
and talks to systemd. Whatever needs the planner (pydantic, detection, installs) runs in a
short-lived worker process, `agentd apply`, so its memory is returned after every run and a bug
in it cannot take the daemon down.
"""

from __future__ import annotations

import calendar
import contextlib
import json
import os
import random
import select
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import agentd
from agentd.core.errors import AgentError, Cancelled, LockHeldError, NoDesiredState
from agentd.core.redact import redact_text
from agentd.core.timespec import format_duration
from agentd.run import apply_if_unchanged, desired_sources
from agentd.settings.snapshot import (
    AgentConfig,
    SettingsNeedValidation,
    last_good_config,
    load_config,
    suspend_reason,
)
from agentd.sources.pull import FleetStore
from agentd.state.store import StateLock
from agentd.system.commands import Process, ProcessTimeout, start_process
from agentd.system.files import atomic_write
from agentd.system.host import Host
from agentd.system.notify import Notifier, child_environment

# How long a worker may run before it is asked to stop (at its next safe point), and how long
# it then has before it is killed.
WORKER_TIMEOUT_S = 3600.0
WORKER_GRACE_S = 120.0
# The state lock is held by CLI runs too: wait this long for it before calling a cycle failed.
LOCK_WAIT_S = 60.0
# How a worker starts: the daemon's import path first, then `agentd ARGS...` as the command line.
WORKER_BOOT = (
    "import json, sys; sys.path[0:0] = json.loads(sys.argv.pop(1)); "
    "from agentd.cli.main import main; sys.exit(main())"
)
# Local files that make a run: anything else in /etc/wasm-edge (editor swap files) is ignored.
_WATCHED_SUFFIXES = (".yaml",)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class CycleResult:
    """What one converge attempt came to, for STATUS, daemon.json and the backoff."""

    outcome: str  # converged, deferred, failed, suspended, refused, cancelled
    reason: str  # start, timer, drop-in, reload
    generation: Optional[int] = None
    error: Optional[str] = None
    detail: str = ""
    actions: int = 0
    cached: bool = False
    duration_ms: float = 0.0
    pull: Optional[dict[str, Any]] = None
    window_opens: Optional[float] = None  # deferred: when the window opens (time.time())

    @property
    def ok(self) -> bool:
        return self.outcome in ("converged", "deferred", "suspended", "waiting")

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "reason": self.reason,
            "generation": self.generation,
            "error": self.error,
            "detail": self.detail,
            "actions": self.actions,
            "cached": self.cached,
            "durationMs": round(self.duration_ms, 1),
            "pull": self.pull,
        }


@dataclass
class Schedule:
    """When the next run is due, and how many have failed in a row (for the backoff)."""

    next_run: float = 0.0
    failures: int = 0
    last_delay: float = 0.0
    pull_due: bool = True
    local_change_at: Optional[float] = None  # a local file changed then; runs after the debounce
    reasons: list[str] = field(default_factory=list)


class Worker:
    """Runs `agentd <command>` in a child process and waits for it, keeping the daemon alive:
    watchdog pings while it runs, and a stop request passed on as SIGTERM (the child stops at
    its next safe point, never in the middle of installing)."""

    def __init__(
        self,
        root: Path,
        heartbeat: Callable[[], None],
        stopping: threading.Event,
        log_format: str,
        python: str = sys.executable,
        until_heartbeat: Callable[[], float] = lambda: 1.0,
    ) -> None:
        self.root = root
        self.heartbeat = heartbeat
        self.until_heartbeat = until_heartbeat
        self.stopping = stopping
        self.log_format = log_format
        self.python = python
        self.current: Optional[Process] = None

    def run(
        self, args: list[str], env_extra: Mapping[str, str], timeout: float = WORKER_TIMEOUT_S
    ) -> tuple[int, bytes]:
        # The worker imports agentd and its dependencies from where the daemon did (a package
        # bundles them outside the interpreter's own path; its launcher adds them to sys.path),
        # and nothing else: -I keeps the working directory and PYTHON* variables out.
        home = str(Path(agentd.__file__).resolve().parent.parent)
        path = [home, *(p for p in sys.path if p and p != home)]
        argv = [
            self.python,
            "-I",
            "-c",
            WORKER_BOOT,
            json.dumps(path),
            "--root",
            str(self.root),
            "--log-format",
            self.log_format,
            *args,
        ]
        env = {**child_environment(os.environ), **env_extra}
        # stderr is the daemon's own (the journal under systemd); stdout carries the JSON result.
        proc = start_process(argv, env)
        self.current = proc
        chunks: list[bytes] = []

        def read_stdout() -> None:
            if proc.stdout is not None:
                chunks.append(proc.stdout.read())

        # Read while waiting: a large result must not block the child on a full pipe.
        reader = threading.Thread(target=read_stdout, daemon=True)
        reader.start()
        started = time.monotonic()
        asked_to_stop = False
        try:
            while True:
                try:
                    # Never longer than until the next watchdog ping is due: a WatchdogSec of a
                    # second or two must not be missed while a worker runs.
                    code = proc.wait(timeout=self.until_heartbeat())
                    break
                except ProcessTimeout:
                    pass
                self.heartbeat()
                overdue = time.monotonic() - started > timeout
                if (self.stopping.is_set() or overdue) and not asked_to_stop:
                    proc.send_signal(signal.SIGTERM)
                    asked_to_stop, started = True, time.monotonic()
                    timeout = WORKER_GRACE_S
                elif asked_to_stop and overdue:
                    proc.kill()
        finally:
            self.current = None
        reader.join(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()
        return code, b"".join(chunks)


class Wakeup:
    """What wakes the daemon's loop: a byte down a non-blocking pipe. Unlike Event.set(), writing
    it takes no lock, so a signal handler cannot deadlock on a lock the main thread it interrupted
    holds (Event.wait() and clear() hold one; a SIGHUP landing there hung the daemon in the soak
    test after a few hundred reloads)."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # Closed with the object, never before: a thread still holding it may yet call set(),
        # and a write to a closed (and perhaps reused) descriptor would land in another file.
        weakref.finalize(self, os.close, self._read)
        weakref.finalize(self, os.close, self._write)

    @property
    def signal_fd(self) -> int:
        """For signal.set_wakeup_fd(): the kernel may run a signal's C handler on any thread,
        and then nothing interrupts the main thread's select() but this byte (the Python
        handler runs once the main thread is awake again)."""
        return self._write

    def set(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe wakes the loop anyway
            os.write(self._write, b"\0")

    def wait(self, timeout: float) -> None:
        """Until set() or `timeout`; then forget every set() so far (the caller checks why)."""
        select.select([self._read], [], [], max(0.0, timeout))
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read, 4096):
                pass


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
        self.rng = rng or random.Random()  # noqa: S311 - splay and jitter, not secrets
        self.config = AgentConfig()
        self.settings_error: Optional[str] = None
        self.schedule = Schedule()
        self.last: Optional[CycleResult] = None
        self.started_at = _now()
        self.cycles = 0
        self._wake = Wakeup()
        self._stop = threading.Event()
        self._reload = False
        self._lock = threading.Lock()
        self._observer: Any = None
        self._next_ping = 0.0
        self._next_health = 0.0  # the first health run follows the first converge
        self._published: Any = None  # the last node report published to the cluster
        self._published_error: Optional[str] = None
        self.health: Optional[dict[str, Any]] = None
        self.worker = Worker(
            root, self._ping_if_due, self._stop, log_format, until_heartbeat=self._until_ping
        )
        self.status_text = "starting"

    @property
    def signal_fd(self) -> int:
        """The descriptor to give signal.set_wakeup_fd(), so any signal wakes the loop."""
        return self._wake.signal_fd

    # --- triggers: safe to call from other threads; request_reload and request_stop also from
    # signal handlers (they take no lock the interrupted main thread may hold) -------------------

    def request_converge(self, why: str = "request") -> None:
        with self._lock:
            self.schedule.next_run = 0.0
            self.schedule.reasons.append(why)
        self._wake.set()

    def request_reload(self) -> None:
        self._reload = True
        self._wake.set()

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def local_change(self, path: str) -> None:
        """A watched file changed: run once things settle (editors write in several steps)."""
        with self._lock:
            first = self.schedule.local_change_at is None
            self.schedule.local_change_at = time.monotonic()
        if first:  # one save is several inotify events: one line for all of them
            self._log("local change", component="daemon", action="watch", path=path)
        self._wake.set()

    # --- the loop -------------------------------------------------------------------------------

    def run(self, stop: threading.Event, ready: threading.Event) -> int:
        """Converge at once, then on the timer, on local changes and on reload, until `stop`."""
        forward = threading.Thread(target=self._follow, args=(stop,), daemon=True)
        forward.start()
        self._load_settings(initial=True)
        self._watch()
        self._write_status()
        self._cycle("start")
        self.notifier.ready(self.status_text)
        ready.set()
        try:
            while not self._stop.is_set():
                self._wake.wait(self._sleep_time())
                if self._stop.is_set():
                    break
                self._ping_if_due()
                if self._reload:
                    self._reload = False  # a SIGHUP from here on reloads again: nothing is lost
                    self._do_reload()
                    continue
                due = self._due()
                if due is not None:
                    self._cycle(due)
                if time.monotonic() >= self._next_health and not self._stop.is_set():
                    self._health_run()
        finally:
            self.notifier.stopping("stopping")
            self._unwatch()
            self.status_text = "stopped"
            self._write_status(state="stopped")
            self._log("stopped", component="daemon", action="stop")
        return 0

    def _follow(self, stop: threading.Event) -> None:
        # The caller's stop flag becomes ours (and wakes the loop) whoever sets it.
        stop.wait()
        self.request_stop()

    def _sleep_time(self) -> float:
        now = time.monotonic()
        deadlines = [self.schedule.next_run]
        if self.schedule.local_change_at is not None:
            deadlines.append(self.schedule.local_change_at + self.config.debounce)
        interval = self.notifier.watchdog_interval()
        if interval:
            deadlines.append(self._next_ping)
        deadlines.append(self._next_health)
        return max(0.0, min(deadlines) - now)

    def _due(self) -> Optional[str]:
        now = time.monotonic()
        with self._lock:
            changed = self.schedule.local_change_at
            if changed is not None and now - changed >= self.config.debounce:
                self.schedule.local_change_at = None
                return "local change"
            if now >= self.schedule.next_run:
                reasons = self.schedule.reasons
                self.schedule.reasons = []
                return reasons[0] if reasons else "timer"
        return None

    def _ping_if_due(self) -> None:
        interval = self.notifier.watchdog_interval()
        if interval and time.monotonic() >= self._next_ping:
            self.notifier.watchdog()
            self._next_ping = time.monotonic() + interval

    def _until_ping(self) -> float:
        """Seconds until the next watchdog ping is due (at most 1, at least a little)."""
        if not self.notifier.watchdog_interval():
            return 1.0
        return min(1.0, max(0.01, self._next_ping - time.monotonic()))

    # --- settings -------------------------------------------------------------------------------

    def _load_settings(self, *, initial: bool) -> None:
        """The settings file, validated (by a worker when it changed); on error, the last good."""
        config: Optional[AgentConfig]
        try:
            config = load_config(self.paths, self.settings_file, validate=False)
        except SettingsNeedValidation:
            config = self._validate_settings()
        except AgentError as exc:
            config, self.settings_error = None, str(exc)
        if config is not None:
            self.config, self.settings_error = config, None
            return
        if initial:
            self.config = last_good_config(self.paths) or AgentConfig()
        self._log(
            "settings invalid; keeping the last good settings",
            level="error",
            component="daemon",
            action="settings",
            error=self.settings_error,
            using=self.config.origin,
        )

    def _validate_settings(self) -> Optional[AgentConfig]:
        args = ["settings", "--json"]
        if self.settings_file is not None:
            args = ["--settings", str(self.settings_file), *args]
        code, out = self.worker.run(args, {}, timeout=120)
        if code == 0:
            try:
                return load_config(self.paths, self.settings_file, validate=False)
            except AgentError as exc:
                self.settings_error = str(exc)
                return None
        try:
            report = json.loads(out or b"{}")
        except ValueError:
            report = {}
        problems = report.get("problems") or [report.get("error") or f"exit code {code}"]
        self.settings_error = "; ".join(str(p) for p in problems[:3])
        return None

    def _do_reload(self) -> None:
        self.notifier.reloading("reloading settings")
        self._log("reloading", component="daemon", action="reload")
        self._unwatch()
        self._load_settings(initial=False)
        self._watch()
        self.schedule.pull_due = True
        self._cycle("reload")
        self.notifier.ready(self.status_text)

    # --- watching local files ---------------------------------------------------------------------

    def _watch(self) -> None:
        try:
            from watchdog.events import FileSystemEvent, FileSystemEventHandler  # noqa: PLC0415
            from watchdog.observers import Observer  # noqa: PLC0415
        except ImportError:  # pragma: no cover - watchdog is a dependency; the timer still runs
            self._log("watchdog missing: local edits wait for the timer", level="warning")
            return
        etc = self.paths.etc_dir
        try:
            etc.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._log("cannot watch local files", level="warning", error=str(exc))
            return
        daemon = self

        class _Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return
                for raw in (event.src_path, getattr(event, "dest_path", "")):
                    path = os.fsdecode(raw) if raw else ""
                    if path and daemon._watched(Path(path)):
                        daemon.local_change(daemon.paths.host_view(Path(path)))
                        return

        observer = Observer(timeout=0.1)
        observer.schedule(_Handler(), str(etc), recursive=True)
        observer.daemon = True
        observer.start()
        self._observer = observer

    def _watched(self, path: Path) -> bool:
        paths = self.paths
        if path in (paths.suspend_file, paths.desired_file, paths.desired_dir):
            return True
        return path.parent == paths.desired_dir and path.suffix in _WATCHED_SUFFIXES

    def _unwatch(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(timeout=5)

    # --- one cycle ------------------------------------------------------------------------------

    def _cycle(self, reason: str) -> None:
        t0 = time.perf_counter()
        suspended = suspend_reason(self.paths, self.config)
        if suspended:
            result = CycleResult("suspended", reason, detail=suspended)
        else:
            result = self._converge(reason)
        result.duration_ms = (time.perf_counter() - t0) * 1000
        self.last = result
        if result.actions:
            self._next_health = 0.0  # something changed: check it now (the rollback window)
        self._reschedule(result)
        self.status_text = self._status_line(result)
        self._publish_to_cluster()
        # Counted once the cycle's outcome is all in place: whoever sees the count go up finds
        # the schedule, `last` and the status of this cycle, not of a cycle half done.
        self.cycles += 1
        # daemon.json first: whoever reads it on seeing the STATUS finds this cycle there.
        self._write_status()
        self.notifier.status(self.status_text)
        if not result.cached:
            level = "info" if result.ok else "error"
            self._log(
                f"cycle {result.outcome}",
                level=level,
                component="daemon",
                action="cycle",
                generation=result.generation,
                reason=reason,
                error=result.error,
                ms=round(result.duration_ms, 1),
            )

    def _converge(self, reason: str) -> CycleResult:
        pulled: Optional[dict[str, Any]] = None
        try:
            with self._state_lock():
                source = self.config.source
                if source is not None and self.schedule.pull_due:
                    from agentd.sources.pull import pull  # noqa: PLC0415

                    pulled = pull(source, self.paths).to_json()
                    self.schedule.pull_due = False
                extra = {"pull": pulled} if pulled else None
                waiting = self._nothing_desired()
                unchanged = None if waiting else apply_if_unchanged(self.host, self.config, extra)
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
                str(unchanged.get("outcome", "converged")),
                reason,
                generation=unchanged.get("generation"),
                cached=True,
                pull=pulled,
            )
        return self._work(reason, pulled)

    def _nothing_desired(self) -> Optional[str]:
        """Why there is nothing to converge to yet (a fresh node: no files, no fleet document),
        or None. Waiting for one is not a failure: no backoff, no error."""
        if FleetStore(self.paths).candidate.is_file():
            return None
        try:
            desired_sources(self.host, None)
        except NoDesiredState as exc:
            return str(exc)
        return None

    @contextlib.contextmanager
    def _state_lock(self) -> Iterator[None]:
        """The state lock, waited for in short steps: a CLI run may hold it for a minute, and
        meanwhile the watchdog must still be pinged and a stop request must not wait for it."""
        lock = StateLock(self.paths)
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            step = min(self._until_ping(), max(0.0, deadline - time.monotonic()))
            try:
                lock.acquire("daemon", step)
                break
            except LockHeldError:
                if self._stop.is_set():
                    raise Cancelled("stopped while waiting for the state lock") from None
                if time.monotonic() >= deadline:
                    raise
                self._ping_if_due()
        try:
            yield
        finally:
            lock.release()

    def _work(self, reason: str, pulled: Optional[dict[str, Any]]) -> CycleResult:
        self.notifier.status(f"converging ({reason})")
        env = self._worker_env()
        args = ["apply", "--offline", "--json", "--wait", str(int(LOCK_WAIT_S))]
        if self.settings_file is not None:
            args = ["--settings", str(self.settings_file), *args]
        code, out = self.worker.run(args, env)
        try:
            doc = json.loads(out) if out.strip() else {}
        except ValueError:
            doc = {}
        if not isinstance(doc, dict):
            doc = {}
        if code != 0 and doc.get("outcome") in ("converged", "deferred"):
            # A worker that failed did not converge: this is an earlier run's result, printed
            # when the run failed before recording one of its own. Nothing in it is this run's.
            doc = {}
        outcome = str(doc.get("outcome") or ("converged" if code == 0 else "failed"))
        error = doc.get("error")
        problems = doc.get("problems")
        if error and isinstance(problems, list) and problems:
            # "the desired state is invalid (1 error)" says nothing of where: the first
            # FILE:LINE:COL lines go with it to STATUS, daemon.json and the journal.
            error = f"{error}: " + "; ".join(str(p) for p in problems[:3])
        if code != 0 and not error:
            error = f"the worker exited with code {code}"
        return CycleResult(
            outcome,
            reason,
            generation=doc.get("generation"),
            error=redact_text(str(error)) if error else None,
            actions=len(doc.get("actions") or []),
            pull=pulled,
            detail=_deferred_detail(doc),
            window_opens=_window_opens(doc),
        )

    def _reschedule(self, result: CycleResult) -> None:
        now = time.monotonic()
        with self._lock:
            sched = self.schedule
            if result.outcome == "cancelled" and self._stop.is_set():
                delay = 0.0  # stopped on request, not a failure: there is no next run
            elif result.ok:
                sched.failures = 0
                delay = self.config.interval + self.rng.uniform(0, self.config.splay)
                if result.window_opens is not None:
                    # Held actions run when the window opens, not at the next interval, which
                    # may fall after a short window has closed again.
                    delay = min(delay, max(0.0, result.window_opens - time.time()) + 1.0)
                sched.pull_due = True
            else:
                sched.failures += 1
                initial, cap = self.config.backoff
                base = min(initial * 2 ** (sched.failures - 1), cap)
                delay = min(base * self.rng.uniform(0.8, 1.2), cap)
                # A failed pull is retried on the backoff too; a converge failure re-pulls
                # only when the interval would have.
                sched.pull_due = sched.pull_due or result.pull is not None
            sched.last_delay = delay
            sched.next_run = now + delay

    # --- reporting ------------------------------------------------------------------------------

    def _status_line(self, result: CycleResult) -> str:
        gen = result.generation
        if result.outcome == "suspended":
            line = f"suspended ({result.detail}); converging nothing"
        elif result.outcome == "waiting":
            line = f"waiting for a desired state: {result.detail}"
        elif result.outcome in ("converged", "deferred"):
            line = f"converged generation {gen if gen is not None else '?'}, "
            line += f"{self._findings()} findings"
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

    def _findings(self) -> int:
        """The last health run's findings that are worth a look (not the informational ones)."""
        health = self.health
        if health is None:
            try:
                state = json.loads(self.paths.state_file.read_text())
            except (OSError, ValueError):
                return 0
            health = state.get("health") if isinstance(state, dict) else None
        findings = health.get("findings") if isinstance(health, dict) else None
        if not isinstance(findings, list):
            return 0
        return sum(1 for f in findings if isinstance(f, dict) and f.get("severity") != "info")

    # --- health ---------------------------------------------------------------------------------

    def _health_run(self) -> None:
        """The checks, in this process (no planner needed); a worker only when something is due
        to be done about them: a rollback, or a fix whose backoff has run out."""
        from agentd.health import run as health  # noqa: PLC0415

        t0 = time.perf_counter()
        self._next_health = time.monotonic() + self.config.health_interval
        try:
            with self._state_lock():
                run = health.locked_check(self.host, self.config, cancel=self._cancel_if_stopping)
        except Cancelled:
            return  # stopping: the checks run again after the next start
        except (AgentError, OSError) as exc:
            self._log("health check failed", level="warning", component="health", error=str(exc))
            return
        self.health = run.to_json()
        suspended = suspend_reason(self.paths, self.config)
        if (run.due_fixes or run.due_rollbacks) and not suspended:
            code, out = self.worker.run(["check", "--act", "--json"], self._worker_env())
            try:
                acted = json.loads(out) if out.strip() else {}
            except ValueError:
                acted = {}
            if isinstance(acted, dict) and acted.get("findings") is not None:
                self.health = acted
            self._log(
                "health acted",
                component="health",
                action="remediate",
                code=code,
                acted=acted.get("acted") if isinstance(acted, dict) else None,
            )
            # A rollback or a fix changed the node: look again soon.
            self._next_health = time.monotonic() + min(10.0, self.config.health_interval)
        if self.last is not None:
            self.status_text = self._status_line(self.last)
        self._write_status()
        self.notifier.status(self.status_text)
        if not run.healthy:
            self._log(
                "unhealthy",
                level="warning",
                component="health",
                findings=[f.code for f in run.findings if f.unhealthy],
                ms=round((time.perf_counter() - t0) * 1000, 1),
            )

    def _publish_to_cluster(self) -> None:
        """Label and annotate this k3s node with the run's result, when it changed."""
        from agentd.report import node as fleet  # noqa: PLC0415

        try:
            state = json.loads(self.paths.state_file.read_text())
        except (OSError, ValueError):
            return
        last = state.get("lastRun") if isinstance(state, dict) else None
        if not isinstance(last, dict):
            return
        report = fleet.report_of(last, self.status_text)
        if report == self._published:
            return
        why_not = fleet.publish(self.host, self.config, report, _now())
        if why_not is None:
            self._published = report
        elif self._published_error != why_not:
            self._published_error = why_not  # said once, tried again next cycle
            self._log("node status not published", component="fleet", reason=why_not)

    def _cancel_if_stopping(self) -> None:
        if self._stop.is_set():
            raise Cancelled("stopping")

    def _worker_env(self) -> dict[str, str]:
        return {
            "AGENTD_SETTINGS_JSON": json.dumps(dict(self.config.raw)),
            "AGENTD_SETTINGS_ORIGIN": self.config.origin,
        }

    def _write_status(self, state: str = "running") -> None:
        remaining = max(0.0, self.schedule.next_run - time.monotonic())
        doc = {
            "pid": os.getpid(),
            "state": state,
            "startedAt": self.started_at,
            "updatedAt": _now(),
            "status": self.status_text,
            "cycles": self.cycles,
            "settings": {"origin": self.config.origin, "error": self.settings_error},
            # Never silent: turning TLS verification off shows here and in `agentd status`.
            "tlsVerification": "OFF (tls.insecureSkipVerify)"
            if self.config.tls.get("insecureSkipVerify")
            else "on",
            "interval": self.config.interval,
            "splay": self.config.splay,
            "suspended": suspend_reason(self.paths, self.config),
            "lastCycle": self.last.to_json() if self.last else None,
            "nextRunInS": round(remaining, 1) if state == "running" else None,
            "consecutiveFailures": self.schedule.failures,
        }
        try:
            atomic_write(self.paths.daemon_file, json.dumps(doc, indent=2).encode(), 0o600)
        except OSError as exc:
            self._log("cannot write daemon status", level="warning", error=str(exc))

    def _log(self, event: str, level: str = "info", **fields: Any) -> None:
        from agentd.system.log import get_logger  # noqa: PLC0415

        getattr(get_logger(), level)(event, **fields)


def _deferred_detail(doc: Mapping[str, Any]) -> str:
    deferred = doc.get("deferred")
    if not isinstance(deferred, dict):
        return ""
    n = len(deferred.get("actions") or [])
    verb = "waits" if n == 1 else "wait"
    return (
        f"{n} disruptive action{'s' * (n != 1)} {verb} for the maintenance window "
        f"(opens {deferred.get('until')})"
    )


def _window_opens(doc: Mapping[str, Any]) -> Optional[float]:
    deferred = doc.get("deferred")
    until = deferred.get("until") if isinstance(deferred, dict) else None
    if not isinstance(until, str):
        return None
    try:
        return float(calendar.timegm(time.strptime(until, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return None
