"""What is done of a plan now: the maintenance window, an owed restart, blocked rollbacks."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Optional

from agentd.plan.model import Action, Plan, Unchanged
from agentd.settings.snapshot import AgentConfig
from agentd.state.holds import OwedRestart
from agentd.state.records import Deferred
from agentd.state.store import AgentState

if TYPE_CHECKING:
    from agentd.core.timespec import MaintenanceWindows
    from agentd.desired.model import DesiredState


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def window(config: AgentConfig, desired: DesiredState) -> Optional[MaintenanceWindows]:
    """The node's own window (settings) wins over the fleet's (desired state)."""
    own = config.maintenance
    if own is not None:
        return own
    return desired.maintenanceWindow.compile() if desired.maintenanceWindow else None


def with_owed_restart(state: AgentState, plan: Plan) -> Plan:
    """Add the k3s restart still owed from a run whose restart waited for the window."""
    owed = state.pending_restart
    if owed is None or any(a.action == "restart" for a in plan.actions):
        return plan
    restart = Action(
        "k3s",
        "restart",
        f"{owed.unit}: owed since {owed.since} for {owed.causes}",
        target=owed.unit,
        disruptive=True,
        phase="restart",
    )
    return replace(plan, actions=(*plan.actions, restart))


def defer(
    state: AgentState,
    held: Sequence[Action],
    opens: Optional[str],
    window: Optional[MaintenanceWindows],
) -> None:
    """Record the disruptive actions held for the window (agentd.plan.refusals judges which)."""
    if not held or window is None or opens is None:
        state.deferred = None
        return
    state.deferred = Deferred([a.to_json() for a in held], opens, window.describe())
    for a in held:
        if a.action == "restart":
            causes = a.reason.split(": ", 1)[-1]
            since = state.pending_restart.since if state.pending_restart else _now()
            state.pending_restart = OwedRestart(str(a.target), causes, since)


def without_blocked(state: AgentState, plan: Plan, generation: int) -> Plan:
    """The plan without changes that were rolled back for this generation: they are not tried
    again until the desired state changes (no install/rollback flapping)."""
    state.blocked = {c: b for c, b in state.blocked.items() if b.generation == generation}
    if not state.blocked:
        return plan
    kept, notes = [], []
    for a in plan.actions:
        block = state.blocked.get(a.component)
        if block is not None and a.to_version == block.version:
            notes.append(
                Unchanged(
                    a.component,
                    f"{a.action} to {a.to_version} was rolled back at {block.at} "
                    f"({block.reason}); not tried again for generation {generation}: "
                    "publish a new generation to try again",
                )
            )
        else:
            kept.append(a)
    return replace(plan, actions=tuple(kept), unchanged=(*plan.unchanged, *notes))
