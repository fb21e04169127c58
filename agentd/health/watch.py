"""The rollback watch: what was healthy before a change, and the components a run replaced."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Optional

from agentd.core.components import watched
from agentd.health.checks import run_checks
from agentd.health.run import check_input, unhealthy_components
from agentd.settings.snapshot import AgentConfig
from agentd.state.holds import Watch
from agentd.state.store import AgentState
from agentd.system.host import Host

if TYPE_CHECKING:
    from agentd.converge.install import RunReport
    from agentd.desired.model import DesiredState
    from agentd.facts.model import Facts
    from agentd.plan.model import Plan

_CHANGES = ("install", "upgrade", "downgrade", "reinstall")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def health_before(
    host: Host, config: AgentConfig, plan: Plan, desired: DesiredState, facts: Facts
) -> Optional[set[str]]:
    """The components that are unhealthy now, checked just before a change to a watched one
    (None when no such change is planned): only what was healthy is rolled back."""
    changing = [
        a for a in plan.actions if a.action in _CHANGES and a.from_version and watched(a.component)
    ]
    if not changing:
        return None
    inp = check_input(host, config, desired.model_dump(mode="json"), facts)
    inp.probe_image = None  # the pod probe takes a minute; the node's own checks suffice here
    return unhealthy_components(run_checks(inp))


def watch_changes(
    state: AgentState,
    report: RunReport,
    generation: int,
    before: Optional[set[str]],
    config: AgentConfig,
) -> None:
    """Watch each component this run replaced, for the rollback window."""
    if before is None:
        return
    window = float(config.health.get("rollbackWindow") or 0)
    until = time.time() + window
    for step in report.steps:
        a = step.action
        if step.status != "done" or a.action not in _CHANGES or not a.from_version:
            continue
        if not watched(a.component):
            continue
        state.watch[a.component] = Watch(
            since=_now(),
            until=until,
            generation=generation,
            from_version=a.from_version,
            to_version=a.to_version,
            healthy_before=a.component not in before,
        )
