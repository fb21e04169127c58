"""daemon.json: what the daemon is doing, written by it and read by `agentd status`."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional, Union

from agentd.core.paths import Paths
from agentd.system.files import read_json, write_json


@dataclass(frozen=True)
class DaemonStatus:
    """One daemon.json: the daemon's state, its STATUS line, its settings and its last cycle."""

    pid: int
    state: str  # running, stopped
    started_at: str
    updated_at: str
    status: str  # the STATUS line systemd shows
    cycles: int
    settings_origin: str
    settings_error: Optional[str]
    # Never silent: turning TLS verification off shows here and in `agentd status`.
    tls_verification: str
    interval: float
    splay: float
    suspended: Optional[str]
    last_cycle: Optional[dict[str, Any]]  # CycleResult.to_json()
    next_run_in_s: Optional[float]  # None once stopped
    consecutive_failures: int

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "state": self.state,
            "startedAt": self.started_at,
            "updatedAt": self.updated_at,
            "status": self.status,
            "cycles": self.cycles,
            "settings": {"origin": self.settings_origin, "error": self.settings_error},
            "tlsVerification": self.tls_verification,
            "interval": self.interval,
            "splay": self.splay,
            "suspended": self.suspended,
            "lastCycle": self.last_cycle,
            "nextRunInS": self.next_run_in_s,
            "consecutiveFailures": self.consecutive_failures,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> DaemonStatus:
        """Raises ValueError for a field of the wrong type (a file agentd did not write)."""
        settings = _field(doc, "settings", dict, {})
        return cls(
            pid=_field(doc, "pid", int, 0),
            state=_field(doc, "state", str, ""),
            started_at=_field(doc, "startedAt", str, ""),
            updated_at=_field(doc, "updatedAt", str, ""),
            status=_field(doc, "status", str, ""),
            cycles=_field(doc, "cycles", int, 0),
            settings_origin=_field(settings, "origin", str, ""),
            settings_error=_field(settings, "error", str, None),
            tls_verification=_field(doc, "tlsVerification", str, ""),
            interval=_field(doc, "interval", (int, float), 0.0),
            splay=_field(doc, "splay", (int, float), 0.0),
            suspended=_field(doc, "suspended", str, None),
            last_cycle=_field(doc, "lastCycle", dict, None),
            next_run_in_s=_field(doc, "nextRunInS", (int, float), None),
            consecutive_failures=_field(doc, "consecutiveFailures", int, 0),
        )


def _field(
    doc: Mapping[str, Any], key: str, kind: Union[type, tuple[type, ...]], default: Any
) -> Any:
    value = doc.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"{key} is a {type(value).__name__}")
    return value


def utc_timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_status(paths: Paths, status: DaemonStatus) -> None:
    write_json(paths.daemon_file, status.to_json(), 0o600)


def read_status(paths: Paths) -> Optional[DaemonStatus]:
    """The daemon's last daemon.json, or None when there is none that can be read."""
    try:
        doc = read_json(paths.daemon_file)
        return None if doc is None else DaemonStatus.from_json(doc)
    except (OSError, ValueError):
        return None
