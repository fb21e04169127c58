"""The plan being drawn up: the actions and no-ops found so far, and the phrases reasons share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from agentd.core.errors import DesiredStateError
from agentd.core.versions import compare
from agentd.desired.model import Artifact
from agentd.facts.model import ComponentFacts
from agentd.plan.model import PHASES, Action, Plan, Unchanged

ConfigContents = Mapping[str, Optional[bytes]]


@dataclass
class Draft:
    arch: str
    actions: list[Action] = field(default_factory=list)
    unchanged: list[Unchanged] = field(default_factory=list)
    # Components to install (write, remove) again although detection finds them done, and why:
    # a health check found them broken, or a killed run left them half-done.
    force: Mapping[str, str] = field(default_factory=dict)

    def act(self, action: Action) -> None:
        self.actions.append(action)

    def keep(self, component: str, reason: str) -> None:
        self.unchanged.append(Unchanged(component, reason))

    def artifact(self, component: str, artifacts: Mapping[Any, Artifact]) -> Artifact:
        artifact = artifacts.get(self.arch)
        if artifact is None:
            raise DesiredStateError(
                f"{component}: the desired state has no artifact for this node's arch "
                f"({self.arch}); it has {', '.join(sorted(artifacts)) or 'none'}"
            )
        return artifact

    def finish_removal(
        self, component: str, phase: str = "runtime", target: Optional[str] = None
    ) -> None:
        """A removal that a killed run began: agentd's files of `component` are gone (or some
        are left), but its record and kept version were not written. Removing again does both."""
        self.act(
            Action(
                component,
                "remove",
                f"state: absent; {self.force[component]}: finishing the removal",
                target=target,
                phase=phase,
            )
        )

    def plan(self, generation: int) -> Plan:
        ordered = sorted(self.actions, key=lambda a: PHASES[a.phase])
        return Plan(generation, self.arch, tuple(ordered), tuple(self.unchanged))


def verb(installed: str, desired: str) -> str:
    return "upgrade" if compare(installed, desired) < 0 else "downgrade"


def where(found: ComponentFacts) -> str:
    return f" at {found.path}" if found.path else ""


def found_note(found: ComponentFacts) -> str:
    """What is left as it is of a component the desired state does not name."""
    if not found.installed:
        return ""
    return f" (found {found.version or 'an unreadable version'}{where(found)}, left as it is)"
