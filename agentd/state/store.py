"""The state dir: run results and inventory in state.json, and the lock that serialises runs."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from agentd.core.errors import AgentError, LockHeldError
from agentd.core.paths import Paths
from agentd.system.files import atomic_write

STATE_VERSION = 1
HISTORY_LENGTH = 20


def count(counters: dict[str, dict[str, int]], name: str, keys: Iterable[str]) -> None:
    """Add one to each of `keys` in the counter `name`."""
    table = counters.setdefault(name, {})
    for key in keys:
        table[key] = table.get(key, 0) + 1


@dataclass
class InventoryEntry:
    """What agentd installed for one component: its version, artifact and the files it put."""

    version: str | None
    sha256: str | None = None
    files: list[str] = field(default_factory=list)  # node paths

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "sha256": self.sha256, "files": list(self.files)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InventoryEntry:
        return cls(data.get("version"), data.get("sha256"), list(data.get("files", [])))


@dataclass
class AgentState:
    """state.json in memory."""

    last_applied_generation: int | None = None
    last_run: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    inventory: dict[str, InventoryEntry] = field(default_factory=dict)
    # The digest of the inputs of the last plan that found nothing to do, and that plan's
    # result: while the digest matches, apply can skip loading, detecting and planning.
    noop: dict[str, Any] | None = None
    # Disruptive actions held back until the maintenance window opens, and a k3s restart
    # still owed for changes already made (so it is not lost when the next plan is empty).
    deferred: dict[str, Any] | None = None
    pending_restart: dict[str, Any] | None = None
    # The last health check, and what the agent did about findings (remediation attempts by
    # finding code; components watched after a change; changes rolled back and not retried).
    health: dict[str, Any] | None = None
    remediations: dict[str, Any] = field(default_factory=dict)
    watch: dict[str, Any] = field(default_factory=dict)
    blocked: dict[str, Any] = field(default_factory=dict)
    # The desired state the last run planned with (as JSON), for the daemon's health checks.
    desired: dict[str, Any] | None = None
    counters: dict[str, dict[str, int]] = field(default_factory=dict)
    # The write-ahead record of the run installing now (agentd.converge writes it before the
    # first target is touched, and drops it with the inventory it becomes): still here at the
    # start of a run, that run was killed half-way and the inventory is not what is installed.
    installing: dict[str, Any] | None = None

    def interrupted(self) -> dict[str, str]:
        """The components a killed run was changing, each with why it is done again: its files
        may be half old, half new, whatever version detection reads."""
        out = {}
        for component, entry in ((self.installing or {}).get("components") or {}).items():
            if entry.get("inventoryAfter") is None:
                doing = "removing it"
            elif entry.get("to"):
                doing = f"installing {entry['to']}"
            else:
                doing = "writing it"  # a config file: no version
            out[component] = f"an earlier run was interrupted while {doing}"
        return out

    def recorded_plugins(self) -> dict[str, list[str]]:
        prefix = "wasmedge/plugins/"
        return {
            key[len(prefix) :]: entry.files
            for key, entry in self.inventory.items()
            if key.startswith(prefix)
        }

    def record_run(self, result: dict[str, Any]) -> None:
        self.last_run = result
        count(self.counters, "runs", [str(result.get("outcome"))])
        done = [a.get("action") for a in result.get("actions", []) if a.get("status") == "done"]
        count(self.counters, "actions", [str(a) for a in done])
        summary = {
            k: result.get(k)
            for k in ("kind", "generation", "outcome", "startedAt", "durationMs", "error")
        }
        summary["actions"] = len(result.get("actions", []))
        self.history = [summary, *self.history][:HISTORY_LENGTH]

    def to_json(self) -> dict[str, Any]:
        return {
            "stateVersion": STATE_VERSION,
            "lastAppliedGeneration": self.last_applied_generation,
            "lastRun": self.last_run,
            "history": self.history,
            "inventory": {k: v.to_json() for k, v in sorted(self.inventory.items())},
            "noop": self.noop,
            "deferred": self.deferred,
            "pendingRestart": self.pending_restart,
            "health": self.health,
            "remediations": self.remediations,
            "watch": self.watch,
            "blocked": self.blocked,
            "desired": self.desired,
            "counters": self.counters,
            "installing": self.installing,
        }


class StateError(AgentError):
    """state.json exists but cannot be read."""


def load_state(paths: Paths) -> AgentState | None:
    """The saved state, or None when this node has none yet."""
    try:
        raw = paths.state_file.read_bytes()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
        return AgentState(
            last_applied_generation=data.get("lastAppliedGeneration"),
            last_run=data.get("lastRun"),
            history=list(data.get("history", [])),
            inventory={
                k: InventoryEntry.from_json(v) for k, v in data.get("inventory", {}).items()
            },
            noop=data.get("noop"),
            deferred=data.get("deferred"),
            pending_restart=data.get("pendingRestart"),
            health=data.get("health"),
            remediations=dict(data.get("remediations") or {}),
            watch=dict(data.get("watch") or {}),
            blocked=dict(data.get("blocked") or {}),
            desired=data.get("desired"),
            counters={k: dict(v) for k, v in (data.get("counters") or {}).items()},
            installing=data.get("installing"),
        )
    except (ValueError, AttributeError, TypeError) as exc:
        raise StateError(
            f"{paths.host_view(paths.state_file)} is corrupt ({exc}); move it aside to start over"
        ) from exc


def save_state(paths: Paths, state: AgentState) -> None:
    data = json.dumps(state.to_json(), indent=2, sort_keys=False).encode() + b"\n"
    # Only root reads what agentd did and what it installed (URLs are redacted, but still).
    atomic_write(paths.state_file, data, 0o600)


class StateLock:
    """An fcntl lock on the state dir's lock file: one run at a time on a node."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self._fd: int | None = None

    def holder(self) -> str:
        try:
            text = self.paths.lock_file.read_text().strip()
        except OSError:
            return "unknown"
        return text or "unknown"

    def acquire(self, command: str, wait_s: float = 0.0) -> None:
        self.paths.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.paths.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise LockHeldError(
                        f"another agentd run holds {self.paths.host_view(self.paths.lock_file)} "
                        f"({self.holder()}); try again later or pass --wait SECONDS"
                    ) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        os.write(fd, f"pid={os.getpid()} command={command} since={stamp}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    @contextlib.contextmanager
    def held(self, command: str, wait_s: float = 0.0) -> Iterator[None]:
        self.acquire(command, wait_s)
        try:
            yield
        finally:
            self.release()
