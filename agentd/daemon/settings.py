"""The daemon's settings: agentd.yaml as last validated, by a worker when the file changed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from agentd.core.errors import AgentError
from agentd.core.paths import Paths
from agentd.daemon.worker import Worker
from agentd.settings.snapshot import (
    AgentConfig,
    SettingsNeedValidation,
    last_good_config,
    load_config,
)
from agentd.system.log import get_logger

# Validating the settings is quick: a worker that takes longer than this is stuck.
VALIDATE_TIMEOUT_S = 120.0


def read_settings(
    paths: Paths,
    settings_file: Optional[Path],
    worker: Worker,
    current: AgentConfig,
    *,
    initial: bool,
) -> tuple[AgentConfig, Optional[str]]:
    """The settings to run on and why the file's are not them (None when they are): on an
    invalid file, `current`, or at start the last settings that validated."""
    config: Optional[AgentConfig]
    error: Optional[str] = None
    try:
        config = load_config(paths, settings_file, validate=False)
    except SettingsNeedValidation:
        config, error = _validate(paths, settings_file, worker)
    except AgentError as exc:
        config, error = None, str(exc)
    if config is not None:
        return config, None
    if initial:
        current = last_good_config(paths) or AgentConfig()
    get_logger().error(
        "settings invalid; keeping the last good settings",
        component="daemon",
        action="settings",
        error=error,
        using=current.origin,
    )
    return current, error


def _validate(
    paths: Paths, settings_file: Optional[Path], worker: Worker
) -> tuple[Optional[AgentConfig], Optional[str]]:
    """`agentd settings` in a worker (pydantic stays out of the daemon), then the snapshot it
    wrote; or None and what is wrong with the file."""
    args = ["settings", "--json"]
    if settings_file is not None:
        args = ["--settings", str(settings_file), *args]
    code, out = worker.run(args, {}, timeout=VALIDATE_TIMEOUT_S)
    if code == 0:
        try:
            return load_config(paths, settings_file, validate=False), None
        except AgentError as exc:
            return None, str(exc)
    try:
        report = json.loads(out or b"{}")
    except ValueError:
        report = {}
    if not isinstance(report, dict):
        report = {}
    problems = report.get("problems") or [report.get("error") or f"exit code {code}"]
    return None, "; ".join(str(p) for p in problems[:3])
