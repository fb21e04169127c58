"""The state dir: run results and inventory in state.json, and the lock that serialises runs."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentd.core.components import plugin_name
from agentd.core.errors import AgentError, LockHeldError
from agentd.core.paths import Paths
from agentd.state.inventory import InventoryEntry
from agentd.state.records import Deferred, Noop, RunResult, typed
from agentd.system.files import read_json, write_json
from agentd.system.readfile import SMALL_FILE_BYTES, read_text_bounded
from agentd.system.storage import storage_error

if TYPE_CHECKING:
    # Read only when state.json has them: a no-op apply, the common case, loads neither.
    from agentd.state.holds import Block, OwedRestart, RollbackHold, Watch
    from agentd.state.intent import Intent

STATE_VERSION = 1
HISTORY_LENGTH = 20
# A history entry's fields (record_run writes them), each absent or null, or of its type.
_OPT = type(None)
_HISTORY_FIELDS: dict[str, tuple[type, ...]] = {
    "kind": (str, _OPT),
    "generation": (int, _OPT),
    "outcome": (str, _OPT),
    "startedAt": (str, _OPT),
    "durationMs": (int, float, _OPT),
    "error": (str, _OPT),
    "actions": (int, _OPT),
}


def count(counters: dict[str, dict[str, int]], name: str, keys: Iterable[str]) -> None:
    """Add one to each of `keys` in the counter `name`."""
    table = counters.setdefault(name, {})
    for key in keys:
        table[key] = table.get(key, 0) + 1


@dataclass
class AgentState:
    """state.json in memory."""

    last_applied_generation: int | None = None
    last_run: RunResult | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    inventory: dict[str, InventoryEntry] = field(default_factory=dict)
    # The digest of the inputs of the last plan that found nothing to do, and that plan's
    # result: while the digest matches, apply can skip loading, detecting and planning.
    noop: Noop | None = None
    # Disruptive actions held back until the maintenance window opens, and a k3s restart
    # still owed for changes already made (so it is not lost when the next plan is empty).
    deferred: Deferred | None = None
    pending_restart: OwedRestart | None = None
    # The last health check, and what the agent did about findings (remediation attempts by
    # finding code; components watched after a change; changes rolled back and not retried).
    health: dict[str, Any] | None = None
    remediations: dict[str, Any] = field(default_factory=dict)
    watch: dict[str, Watch] = field(default_factory=dict)
    blocked: dict[str, Block] = field(default_factory=dict)
    # The desired state the last run planned with (as JSON), for the daemon's health checks.
    desired: dict[str, Any] | None = None
    counters: dict[str, dict[str, int]] = field(default_factory=dict)
    # The write-ahead record of the run installing now (agentd.converge writes it before the
    # first target is touched, and drops it with the inventory it becomes): still here at the
    # start of a run, that run was killed half-way and the inventory is not what is installed.
    installing: Intent | None = None
    # Components a manual `agentd rollback` holds at what it put back (see RollbackHold).
    rollback_holds: dict[str, RollbackHold] = field(default_factory=dict)

    def interrupted(self) -> dict[str, str]:
        """The components a killed run was changing, each with why it is done again: its files
        may be half old, half new, whatever version detection reads."""
        out = {}
        for component, entry in (self.installing.components if self.installing else {}).items():
            if entry.inventory_after is None:
                doing = "removing it"
            elif entry.to_version:
                doing = f"installing {entry.to_version}"
            else:
                doing = "writing it"  # a config file: no version
            out[component] = f"an earlier run was interrupted while {doing}"
        return out

    def recorded_plugins(self) -> dict[str, list[str]]:
        return {
            name: entry.files
            for key, entry in self.inventory.items()
            if (name := plugin_name(key)) is not None
        }

    def record_run(self, result: RunResult) -> None:
        self.last_run = result
        count(self.counters, "runs", [result.outcome])
        actions = result.actions or []
        done = [a.get("action") for a in actions if a.get("status") == "done"]
        count(self.counters, "actions", [str(a) for a in done])
        summary: dict[str, Any] = {
            "kind": result.kind,
            "generation": result.generation,
            "outcome": result.outcome,
            "startedAt": result.started_at,
            "durationMs": result.duration_ms,
            "error": result.error,
            "actions": len(actions),
        }
        self.history = [summary, *self.history][:HISTORY_LENGTH]

    def to_json(self) -> dict[str, Any]:
        return {
            "stateVersion": STATE_VERSION,
            "lastAppliedGeneration": self.last_applied_generation,
            "lastRun": self.last_run.to_json() if self.last_run else None,
            "history": self.history,
            "inventory": {k: v.to_json() for k, v in sorted(self.inventory.items())},
            "noop": self.noop.to_json() if self.noop else None,
            "deferred": self.deferred.to_json() if self.deferred else None,
            "pendingRestart": self.pending_restart.to_json() if self.pending_restart else None,
            "health": self.health,
            "remediations": self.remediations,
            "watch": {k: v.to_json() for k, v in self.watch.items()},
            "blocked": {k: v.to_json() for k, v in self.blocked.items()},
            "desired": self.desired,
            "counters": self.counters,
            "installing": self.installing.to_json() if self.installing else None,
            "rollbackHolds": {k: v.to_json() for k, v in self.rollback_holds.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AgentState:
        """state.json's content; a field of the wrong type is a TypeError that names it."""

        def record(key: str) -> Any:  # an object, or absent or null
            return typed(data, key, (dict, type(None)), "state")

        noop, deferred, owed = record("noop"), record("deferred"), record("pendingRestart")
        watch, blocked = data.get("watch"), data.get("blocked")
        # None and {} are no holds; anything else is parsed (and a wrong type refused).
        holds = owed or any(v is not None and v != {} for v in (watch, blocked))
        if holds:
            from agentd.state.holds import OwedRestart, blocks, watches  # noqa: PLC0415
        last_run = record("lastRun")
        counters = record("counters") or {}
        if not all(isinstance(v, dict) for v in counters.values()):
            raise TypeError("state.counters: not an object of objects")
        for name, table in counters.items():
            if not all(type(n) is int for n in table.values()):
                raise TypeError(f"state.counters.{name}: not an object of counts")
        typed(data, "stateVersion", (int, type(None)), "state")
        history = typed(data, "history", (list, type(None)), "state") or []
        for i, run in enumerate(history):
            for key, kinds in _HISTORY_FIELDS.items():
                typed(run, key, kinds, f"state.history[{i}]")
        return cls(
            last_applied_generation=typed(
                data, "lastAppliedGeneration", (int, type(None)), "state"
            ),
            last_run=RunResult.from_json(last_run) if last_run is not None else None,
            history=list(history),
            inventory={
                k: InventoryEntry.from_json(v, f"inventory.{k}")
                for k, v in (record("inventory") or {}).items()
            },
            noop=Noop.from_json(noop) if noop else None,
            deferred=Deferred.from_json(deferred) if deferred else None,
            pending_restart=OwedRestart.from_json(owed) if owed else None,
            health=record("health"),
            remediations=dict(record("remediations") or {}),
            watch=watches(watch) if holds else {},
            blocked=blocks(blocked) if holds else {},
            desired=record("desired"),
            counters={k: dict(v) for k, v in counters.items()},
            installing=_intent(data.get("installing")),
            rollback_holds=_rollback_holds(data.get("rollbackHolds")),
        )


def _rollback_holds(data: Any) -> dict[str, RollbackHold]:
    if data is None or data == {}:
        return {}
    from agentd.state.holds import rollback_holds  # noqa: PLC0415

    return rollback_holds(data)


def _intent(data: Any) -> Intent | None:
    if not data:
        return None
    from agentd.state.intent import Intent  # noqa: PLC0415

    return Intent.from_json(data)


class StateError(AgentError):
    """state.json exists but cannot be read."""


def load_state(paths: Paths) -> AgentState | None:
    """The saved state, or None when this node has none yet."""
    try:
        data = read_json(paths.state_file)
        return None if data is None else AgentState.from_json(data)
    except (ValueError, AttributeError, TypeError) as exc:
        raise StateError(
            f"{paths.host_view(paths.state_file)} is corrupt ({exc}); move it aside to start over"
        ) from exc


def save_state(paths: Paths, state: AgentState) -> None:
    # Only root reads what agentd did and what it installed (URLs are redacted, but still).
    write_json(paths.state_file, state.to_json(), 0o600)


def refuse_links(paths: Paths) -> None:
    """StateError when the state dir, or a directory in it, holds a symbolic link: agentd puts
    none there, and writing through one (the cache, the kept versions, the pulled document)
    would write wherever it points."""
    state_dir = paths.state_dir
    dirs = [state_dir]
    with contextlib.suppress(OSError):
        dirs += [Path(e.path) for e in os.scandir(state_dir) if e.is_dir(follow_symlinks=False)]
    for directory in dirs:
        try:
            links = [Path(e.path) for e in os.scandir(directory) if e.is_symlink()]
        except OSError:
            continue
        if links:
            raise StateError(
                f"{paths.host_view(links[0])} is a symbolic link; agentd follows no link in "
                "its state dir: move it aside"
            )


class StateLock:
    """An fcntl lock on the state dir's lock file: one run at a time on a node."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self._fd: int | None = None

    def holder(self) -> str:
        try:
            text = read_text_bounded(self.paths.lock_file, SMALL_FILE_BYTES, follow=False).strip()
        except OSError:
            return "unknown"
        return text or "unknown"

    def _open(self) -> int:
        """The lock file, opened without following a link (its target would be truncated) and
        refused unless it is agentd's own regular file."""
        shown = self.paths.host_view(self.paths.lock_file)
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(self.paths.lock_file, flags, 0o644)
        except OSError as exc:
            # ENXIO: a socket, EISDIR: a directory.
            odd = {errno.ELOOP: "is a symbolic link", errno.EISDIR: "is a directory"}
            if exc.errno not in (*odd, errno.ENXIO):
                raise
            what = odd.get(exc.errno or 0, "is not a regular file")
            raise StateError(f"{shown} {what}; move it aside") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            regular = stat.S_ISREG(st.st_mode)
            what = "has other hard links" if regular else "is not a regular file"
            raise StateError(f"{shown} {what}; move it aside")
        return fd

    def acquire(
        self, command: str, wait_s: float = 0.0, cancel: Callable[[], None] | None = None
    ) -> None:
        """Take the lock, waiting up to `wait_s` for another run's; `cancel` (which may raise)
        is called while waiting, so a stop asked for then ends the wait."""
        self.paths.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = self._open()
        try:
            refuse_links(self.paths)
        except BaseException:
            os.close(fd)
            raise
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
                if cancel is not None:
                    try:
                        cancel()
                    except BaseException:
                        os.close(fd)
                        raise
                time.sleep(0.05)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid={os.getpid()} command={command} since={stamp}\n".encode())
        except OSError as exc:
            if storage_error(exc) is None:
                os.close(fd)
                raise
            # The flock is the lock; the stamp only says who holds it. The run goes on, and
            # says what the full disk did to it when it writes state.json.
            from agentd.system.log import get_logger  # noqa: PLC0415

            get_logger().warning("cannot write the lock's holder", error=exc.strerror)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    @contextlib.contextmanager
    def held(
        self, command: str, wait_s: float = 0.0, cancel: Callable[[], None] | None = None
    ) -> Iterator[None]:
        self.acquire(command, wait_s, cancel)
        try:
            yield
        finally:
            self.release()
