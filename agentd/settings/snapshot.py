"""The agent settings as plain data, from a snapshot while the file is unchanged (no pydantic)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from agentd import __version__
from agentd.core.errors import AgentError
from agentd.core.paths import Paths
from agentd.core.timespec import MaintenanceWindows, windows_from_json
from agentd.sources.document import SourceConfig
from agentd.system.files import JsonFileError, read_bytes_limited, read_json, write_json

MAX_SETTINGS_BYTES = 1 << 20
# Must equal the pydantic model's defaults (tests/unit/settings/test_settings.py compares them):
# a node with no settings file runs on these without loading pydantic at all.
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
    "downloads": {
        "timeout": 30.0,
        "attempts": 3,
        "backoff": 1.0,
        "maxMiB": 2048,
        "allowLocalFiles": False,
        "verify": None,
    },
    "registries": {"mirrors": {}, "configs": {}},
    "maintenanceWindow": None,
    "suspend": False,
    "health": {
        "remediate": True,
        "remediationBackoff": 600.0,
        "rollbackWindow": 600.0,
        "nodeName": None,
        "label": True,
        "probe": {"image": None, "namespace": "default", "timeout": 60.0},
        "gatekeeperProbe": {
            "enabled": False,
            "image": "untrusted/image:latest",
            "namespace": "default",
        },
    },
}
DEFAULT_ORIGIN = "defaults (no settings file)"


@dataclass(frozen=True)
class AgentConfig:
    """Validated settings (`settings_json` output) with typed access; `origin` says from where."""

    raw: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULTS))
    origin: str = DEFAULT_ORIGIN

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
    def registries(self) -> Mapping[str, Any]:
        return dict(self.raw.get("registries") or {})

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
    if snapshot is not None and snapshot.key == key:
        return AgentConfig(snapshot.settings, shown if data is not None else DEFAULT_ORIGIN)
    if data is None:
        return AgentConfig(dict(DEFAULTS), DEFAULT_ORIGIN)
    if not validate:
        raise SettingsNeedValidation(f"{shown} changed since it was last validated")
    from agentd.settings.model import load_settings, settings_json  # noqa: PLC0415

    raw = settings_json(load_settings(path, shown))
    write_snapshot(paths, SettingsSnapshot(key, shown, raw))
    return AgentConfig(raw, shown)


@dataclass(frozen=True)
class SettingsSnapshot:
    """The last settings that validated on this node; `key` names the bytes they came from."""

    key: str  # agentd's version and the file's sha256: a new agentd validates again
    origin: str  # the settings file, as the messages show it
    settings: Mapping[str, Any]  # `settings_json` output

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "origin": self.origin, "settings": dict(self.settings)}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Optional[SettingsSnapshot]:
        """None for a document that holds no settings (then the file is validated again)."""
        settings = doc.get("settings")
        if not isinstance(settings, dict):
            return None
        return cls(str(doc.get("key")), str(doc.get("origin")), settings)


def read_snapshot(paths: Paths) -> Optional[SettingsSnapshot]:
    """The snapshot, or None when there is none that can be used (the file is validated again)."""
    try:
        doc = read_json(paths.settings_snapshot)
    except (OSError, JsonFileError):
        return None
    return SettingsSnapshot.from_json(doc) if doc is not None else None


def write_snapshot(paths: Paths, snapshot: SettingsSnapshot) -> None:
    try:
        write_json(paths.settings_snapshot, snapshot.to_json(), 0o600)
    except OSError:
        return  # only a cache: the next load validates again


def last_good_config(paths: Paths) -> Optional[AgentConfig]:
    """The last settings that validated, whatever the file holds now (for a broken file)."""
    snapshot = read_snapshot(paths)
    if snapshot is None:
        return None
    return AgentConfig(snapshot.settings, f"{snapshot.origin} (last good)")


def suspend_reason(paths: Paths, config: AgentConfig) -> Optional[str]:
    """Why convergence is suspended (the setting, or the file), or None."""
    if config.suspend:
        return f"suspend: true in {config.origin}"
    if paths.suspend_file.exists():
        return f"{paths.host_view(paths.suspend_file)} exists"
    return None
