"""The agent settings as plain data, from a snapshot while the file is unchanged (no pydantic)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from agentd import __version__
from agentd.core.errors import AgentError
from agentd.core.paths import Paths
from agentd.core.timespec import MaintenanceWindows, windows_from_json
from agentd.sources.pull import SourceConfig
from agentd.system.files import atomic_write, read_bytes_limited

MAX_SETTINGS_BYTES = 1 << 20
# Must equal the pydantic model's defaults (tests/unit/settings/test_settings.py compares them): a
# node with no
# settings file runs on these without loading pydantic at all.
DEFAULTS: dict[str, Any] = {
    "apiVersion": "agentd/v1",
    "kind": "AgentSettings",
    "source": None,
    "interval": 300.0,
    "splay": 60.0,
    "healthInterval": 60.0,
    "backoff": {"initial": 10.0, "max": 900.0},
    "debounce": 0.2,
    "labels": {},
    "hostname": None,
    "nodeId": None,
    "metrics": {"enabled": True, "path": "/var/lib/prometheus/node-exporter/agentd.prom"},
    "tls": {"caFile": None, "insecureSkipVerify": False},
    "downloads": {"timeout": 30.0, "attempts": 3, "backoff": 1.0, "maxMiB": 2048},
    "maintenanceWindow": None,
    "suspend": False,
    "health": {
        "remediate": True,
        "remediationBackoff": 600.0,
        "rollbackWindow": 600.0,
        "nodeName": None,
        "label": True,
        "probe": {"image": None, "namespace": "default", "timeout": 60.0},
    },
}


@dataclass(frozen=True)
class AgentConfig:
    """Validated settings (`settings_json` output) with typed access; `origin` says from where."""

    raw: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULTS))
    origin: str = "defaults (no settings file)"

    @property
    def source(self) -> Optional[SourceConfig]:
        return SourceConfig.from_settings(self.raw)

    @property
    def interval(self) -> float:
        return float(self.raw["interval"])

    @property
    def splay(self) -> float:
        return float(self.raw["splay"])

    @property
    def health_interval(self) -> float:
        return float(self.raw["healthInterval"])

    @property
    def backoff(self) -> tuple[float, float]:
        return float(self.raw["backoff"]["initial"]), float(self.raw["backoff"]["max"])

    @property
    def debounce(self) -> float:
        return float(self.raw["debounce"])

    @property
    def suspend(self) -> bool:
        return bool(self.raw["suspend"])

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.raw["labels"])

    @property
    def hostname(self) -> Optional[str]:
        value = self.raw.get("hostname")
        return str(value) if value else None

    @property
    def node_id(self) -> Optional[str]:
        value = self.raw.get("nodeId")
        return str(value) if value else None

    @property
    def metrics_path(self) -> Optional[str]:
        metrics = self.raw["metrics"]
        return str(metrics["path"]) if metrics.get("enabled") else None

    @property
    def tls(self) -> Mapping[str, Any]:
        return dict(self.raw["tls"])

    @property
    def health(self) -> Mapping[str, Any]:
        return dict(self.raw.get("health") or DEFAULTS["health"])

    @property
    def downloads(self) -> Mapping[str, Any]:
        return dict(self.raw.get("downloads") or DEFAULTS["downloads"])

    @property
    def maintenance(self) -> Optional[MaintenanceWindows]:
        spec = self.raw.get("maintenanceWindow")
        return windows_from_json(spec) if spec else None


class SettingsNeedValidation(AgentError):
    """The settings file changed since it was last validated (the daemon asks a worker)."""


def _snapshot_key(data: Optional[bytes]) -> str:
    digest = hashlib.sha256(data).hexdigest() if data is not None else "absent"
    return f"{__version__}:{digest}"


def _read(path: Path) -> Optional[bytes]:
    try:
        data = read_bytes_limited(path, MAX_SETTINGS_BYTES)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AgentError(f"cannot read the settings {path}: {exc.strerror or exc}") from None
    # An oversized file is handed to the validator, which reports it with its position.
    return data if data is not None else b"\0oversized"


def load_config(
    paths: Paths, settings_file: Optional[Path] = None, *, validate: bool = True
) -> AgentConfig:
    """The settings: from the snapshot while the file's bytes are the ones last validated,
    else validated now (which loads pydantic) unless `validate` is off, then
    SettingsNeedValidation. An invalid file raises SettingsError (FILE:LINE:COL lines)."""
    path = settings_file or paths.settings_file
    data = _read(path)
    key = _snapshot_key(data)
    shown = paths.host_view(path)
    snapshot = read_snapshot(paths)
    if snapshot is not None and snapshot.get("key") == key:
        return AgentConfig(snapshot["settings"], shown if data is not None else DEFAULT_ORIGIN)
    if data is None:
        return AgentConfig(dict(DEFAULTS), DEFAULT_ORIGIN)
    if not validate:
        raise SettingsNeedValidation(f"{shown} changed since it was last validated")
    from agentd.settings.model import load_settings, settings_json  # noqa: PLC0415

    raw = settings_json(load_settings(path, shown))
    write_snapshot(paths, key, raw, shown)
    return AgentConfig(raw, shown)


DEFAULT_ORIGIN = "defaults (no settings file)"


def read_snapshot(paths: Paths) -> Optional[dict[str, Any]]:
    """The last settings that validated on this node, with the key of the bytes they came from."""
    try:
        data = json.loads(paths.settings_snapshot.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("settings"), dict):
        return None
    return data


def write_snapshot(paths: Paths, key: str, raw: Mapping[str, Any], origin: str) -> None:
    doc = {"key": key, "origin": origin, "settings": raw}
    try:
        atomic_write(paths.settings_snapshot, json.dumps(doc, indent=1).encode(), 0o600)
    except OSError:
        return  # only a cache: the next load validates again


def last_good_config(paths: Paths) -> Optional[AgentConfig]:
    """The last settings that validated, whatever the file holds now (for a broken file)."""
    snapshot = read_snapshot(paths)
    if snapshot is None:
        return None
    return AgentConfig(snapshot["settings"], f"{snapshot.get('origin')} (last good)")


def suspend_reason(paths: Paths, config: AgentConfig) -> Optional[str]:
    """Why convergence is suspended (the setting, or the file), or None."""
    if config.suspend:
        return f"suspend: true in {config.origin}"
    if paths.suspend_file.exists():
        return f"{paths.host_view(paths.suspend_file)} exists"
    return None
