"""What apply refuses of a plan, and why: judged once, by this module, for `plan` and `apply`."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Optional

from agentd.core.components import PLUGIN_PREFIX
from agentd.plan import policy
from agentd.plan.k3s_files import RESTART_CAUSES
from agentd.plan.model import Action, Plan
from agentd.state.holds import RollbackHold
from agentd.state.store import AgentState

if TYPE_CHECKING:
    from agentd.core.timespec import MaintenanceWindows
    from agentd.desired.model import DesiredState

# Refusals of the whole run: apply changes nothing at all.
WHOLE_RUN = ("generation", "suspended")
# What a file absent before a change is hashed as (RollbackHold.away_sha256).
ABSENT = "absent"


@dataclass(frozen=True)
class Refusal:
    """One thing apply will not do now, and why (`refusals` in `plan --json`)."""

    kind: str  # generation, suspended, signature, document, rollback-block, rollback-hold, window
    subject: str  # a component, "desired state", "node" or "fleet document"
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "subject": self.subject, "reason": self.reason}


@dataclass(frozen=True)
class Judged:
    """The plan apply runs now, what it refuses, and what that means for state.json."""

    plan: Plan  # without what is refused
    refusals: tuple[Refusal, ...] = ()
    held: tuple[Action, ...] = ()  # disruptive actions waiting for the maintenance window
    opens: Optional[str] = None  # when the window opens next, UTC
    released: tuple[str, ...] = ()  # rollback holds that end: the desired state moved on

    @property
    def refused_run(self) -> Optional[Refusal]:
        """The refusal of the whole run, if any: apply then changes nothing."""
        return next((r for r in self.refusals if r.kind in WHOLE_RUN), None)

    def to_json(self) -> list[dict[str, str]]:
        return [r.to_json() for r in self.refusals]


def content_sha256(content: Optional[bytes]) -> str:
    return ABSENT if content is None else hashlib.sha256(content).hexdigest()


def judge(
    state: AgentState,
    plan: Plan,
    desired: DesiredState,
    *,
    window: Optional[MaintenanceWindows],
    now: datetime,
    suspended: Optional[str] = None,
    rejected: Optional[str] = None,
) -> Judged:
    """Every refusal apply makes of `plan` (the diff's), with the plan it runs instead.

    `suspended`: why convergence is suspended; `rejected`: why the source's latest document
    was refused by the last pull (a signature, an older generation, garbage)."""
    refusals: list[Refusal] = []
    last = state.last_applied_generation
    if last is not None and desired.generation < last:
        refusals.append(
            Refusal(
                "generation",
                "desired state",
                f"desired generation {desired.generation} is older than generation {last} "
                "already applied on this node; nothing was changed (publish a higher generation, "
                "or lower the ratchet: agentd ratchet lower N --confirm)",
            )
        )
    if suspended:
        refusals.append(
            Refusal(
                "suspended", "node", f"convergence is suspended ({suspended}); nothing is changed"
            )
        )
    if rejected:
        kind = "signature" if "sign" in rejected.lower() else "document"
        refusals.append(
            Refusal(
                kind,
                "fleet document",
                f"the last pull refused the source's document: {rejected}; the node stays on "
                "the last good document",
            )
        )
    unblocked = policy.without_blocked(state, plan, desired.generation)
    for a in plan.actions:
        if a not in unblocked.actions:
            note = [u for u in unblocked.unchanged if u.component == a.component]
            refusals.append(Refusal("rollback-block", a.component, note[-1].reason))
    kept, held_back, released = _rollback_holds(state.rollback_holds, unblocked, desired)
    refusals += held_back
    the_plan = policy.with_owed_restart(state, _without_idle_restart(kept, unblocked))
    held: tuple[Action, ...] = ()
    opens = None
    if window is not None and not window.open_at(now):
        held = tuple(a for a in the_plan.actions if a.disruptive)
    if held:
        assert window is not None
        opens = window.next_opening(now).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        for a in held:
            refusals.append(
                Refusal(
                    "window",
                    a.component,
                    f"{a.action} is disruptive: held for the maintenance window "
                    f"({window.describe()}), which opens {opens}",
                )
            )
        the_plan = replace(the_plan, actions=tuple(a for a in the_plan.actions if a not in held))
    return Judged(the_plan, tuple(refusals), held, opens, tuple(released))


def _rollback_holds(
    holds: Mapping[str, RollbackHold], plan: Plan, desired: DesiredState
) -> tuple[Plan, list[Refusal], list[str]]:
    """The plan without what would undo a manual rollback; the holds the desired state ended."""
    if not holds:
        return plan, [], []
    kept, refused = [], []
    for a in plan.actions:
        hold = holds.get(a.component)
        if hold is not None and a.action != "restart" and _undoes(a, hold):
            back = f" (back at {hold.restored})" if hold.restored else ""
            away = f" {hold.away}" if hold.away else ""
            refused.append(
                Refusal(
                    "rollback-hold",
                    a.component,
                    f"held by rollback since {hold.since}{back}: the desired state still names"
                    f" what was rolled away from{away}; publish another version, or run "
                    f"`agentd rollback --release {a.component}`",
                )
            )
        else:
            kept.append(a)
    held = {r.subject for r in refused}
    released = [c for c, h in holds.items() if c not in held and _moved_on(c, h, desired, plan)]
    return replace(plan, actions=tuple(kept)), refused, released


def _undoes(a: Action, hold: RollbackHold) -> bool:
    if hold.away_sha256 is not None:
        return a.action == "configure" and content_sha256(a.content) == hold.away_sha256
    return a.to_version is not None and a.to_version == hold.away


def _moved_on(component: str, hold: RollbackHold, desired: DesiredState, plan: Plan) -> bool:
    """Whether the desired state names something else than what was rolled away from."""
    if any(a.component == component and a.action != "restart" for a in plan.actions):
        return True  # a change the hold does not refuse: another version, or a removal
    if hold.away_sha256 is not None:
        return True  # the file is as the desired state renders it, which is not what was undone
    wanted = _desired_version(desired, component)
    return wanted is not None and wanted != hold.away


def _desired_version(desired: DesiredState, component: str) -> Optional[str]:
    comps = desired.components
    if component.startswith(PLUGIN_PREFIX):
        component = "wasmedge"  # a plugin follows the runtime's version
    want = {"k3s": comps.k3s, "crun": comps.crun, "wasmedge": comps.wasmedge}.get(component)
    return None if want is None or want.state == "absent" else want.version


def _without_idle_restart(kept: Plan, planned: Plan) -> Plan:
    """A k3s restart is for the changes that go ahead: none left, none; else only theirs."""
    if len(kept.actions) == len(planned.actions):
        return kept
    causes = [
        f"{a.component} {a.action}"
        for a in kept.actions
        if (a.component in RESTART_CAUSES and a.action != "restart")
        or (a.component == "crun" and a.action in ("install", "remove"))
    ]
    actions = []
    for a in kept.actions:
        if a.action == "restart" and a.target and not causes:
            continue
        if a.action == "restart" and a.target:
            why = f"{a.target}: {', '.join(causes)} (k3s reads these at start; one restart for all)"
            actions.append(replace(a, reason=why))
        else:
            actions.append(a)
    return replace(kept, actions=tuple(actions))
