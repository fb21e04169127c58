"""When the next run is due: the interval and its splay, the backoff, the maintenance window."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional

from agentd.settings.snapshot import AgentConfig


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


class Schedule:
    """When the next run is due, and how many have failed in a row (for the backoff). Requests
    and the file watch bring a run forward from other threads: they go through the lock."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.next_run = 0.0
        self.failures = 0
        self.last_delay = 0.0
        self.pull_due = True
        # A local file changed then: a run follows once the debounce has passed.
        self.local_change_at: Optional[float] = None
        self.reasons: list[str] = []
        self._lock = threading.Lock()

    def request(self, why: str) -> None:
        """A run now, for `why`."""
        with self._lock:
            self.next_run = 0.0
            self.reasons.append(why)

    def local_change(self) -> bool:
        """A run once the local files settle (editors write in several steps); True for the
        first change since the last such run."""
        with self._lock:
            first = self.local_change_at is None
            self.local_change_at = time.monotonic()
        return first

    def deadline(self, debounce: float) -> float:
        """When a run may be due next (time.monotonic())."""
        changed = self.local_change_at
        if changed is None:
            return self.next_run
        return min(self.next_run, changed + debounce)

    def due(self, debounce: float) -> Optional[str]:
        """Why a run is due now (taken: the next call does not see it again), or None."""
        now = time.monotonic()
        with self._lock:
            changed = self.local_change_at
            if changed is not None and now - changed >= debounce:
                self.local_change_at = None
                return "local change"
            if now >= self.next_run:
                reasons = self.reasons
                self.reasons = []
                return reasons[0] if reasons else "timer"
        return None

    def reschedule(self, result: CycleResult, config: AgentConfig, stopping: bool) -> None:
        """The next run after `result`: the interval and splay, or the backoff after a failure."""
        now = time.monotonic()
        with self._lock:
            if result.outcome == "cancelled" and stopping:
                delay = 0.0  # stopped on request, not a failure: there is no next run
            elif result.ok:
                self.failures = 0
                delay = config.interval + self.rng.uniform(0, config.splay)
                if result.window_opens is not None:
                    # Held actions run when the window opens, not at the next interval, which
                    # may fall after a short window has closed again.
                    delay = min(delay, max(0.0, result.window_opens - time.time()) + 1.0)
                self.pull_due = True
            else:
                self.failures += 1
                initial, cap = config.backoff
                base = min(initial * 2 ** (self.failures - 1), cap)
                delay = min(base * self.rng.uniform(0.8, 1.2), cap)
                # A failed pull is retried on the backoff too; a converge failure re-pulls
                # only when the interval would have.
                self.pull_due = self.pull_due or result.pull is not None
            self.last_delay = delay
            self.next_run = now + delay
