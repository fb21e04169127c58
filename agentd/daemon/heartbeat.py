"""The systemd watchdog, pinged on time while the daemon waits: for a worker, for the state lock."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Optional

from agentd.core.errors import Cancelled, LockHeldError
from agentd.core.paths import Paths
from agentd.state.store import StateLock
from agentd.system.notify import Notifier

# The state lock is held by CLI runs too: wait this long for it before calling a cycle failed.
LOCK_WAIT_S = 60.0


class Heartbeat:
    """WATCHDOG=1 every WatchdogSec/2 (the notifier's interval); nothing when there is none."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self._next_ping = 0.0

    def deadline(self) -> Optional[float]:
        """When the next ping is due (time.monotonic()), or None without a watchdog."""
        return self._next_ping if self.notifier.watchdog_interval() else None

    def ping_if_due(self) -> None:
        interval = self.notifier.watchdog_interval()
        if interval and time.monotonic() >= self._next_ping:
            self.notifier.watchdog()
            self._next_ping = time.monotonic() + interval

    def until_ping(self) -> float:
        """Seconds until the next watchdog ping is due (at most 1, at least a little)."""
        if not self.notifier.watchdog_interval():
            return 1.0
        return min(1.0, max(0.01, self._next_ping - time.monotonic()))


@contextlib.contextmanager
def state_lock(paths: Paths, heartbeat: Heartbeat, stopping: threading.Event) -> Iterator[None]:
    """The state lock, waited for in short steps: a CLI run may hold it for a minute, and
    meanwhile the watchdog must still be pinged and a stop request must not wait for it."""
    lock = StateLock(paths)
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        step = min(heartbeat.until_ping(), max(0.0, deadline - time.monotonic()))
        try:
            lock.acquire("daemon", step)
            break
        except LockHeldError:
            if stopping.is_set():
                raise Cancelled("stopped while waiting for the state lock") from None
            if time.monotonic() >= deadline:
                raise
            heartbeat.ping_if_due()
    try:
        yield
    finally:
        lock.release()
