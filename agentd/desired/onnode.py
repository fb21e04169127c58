"""The desired state checked against its node: a missing tokenFile, a sha256 never re-checked."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Optional

from agentd.core.components import plugin_component
from agentd.core.paths import Paths
from agentd.desired.model import Artifacts, DesiredState, Problem
from agentd.schema.yamlload import Loc
from agentd.state.inventory import InventoryEntry


@dataclass(frozen=True)
class OnNode:
    """What the checks read of the node: its root, and what agentd installed there."""

    paths: Paths
    inventory: Mapping[str, InventoryEntry]


def _artifacts(state: DesiredState) -> Iterator[tuple[str, Optional[str], Artifacts, Loc]]:
    """(component, its desired version, its artifacts, where they are) for each present one."""
    c = state.components
    for name, comp in (("k3s", c.k3s), ("crun", c.crun), ("wasmedge", c.wasmedge)):
        # crun from the distribution's package (source: package) has no artifacts.
        if comp is not None and comp.state == "present" and comp.artifacts:
            yield name, comp.version, comp.artifacts, ("components", name, "artifacts")
    if c.wasmedge is not None and c.wasmedge.state == "present":
        for i, plugin in enumerate(c.wasmedge.plugins):
            if plugin.state == "present":
                loc: Loc = ("components", "wasmedge", "plugins", i, "artifacts")
                yield plugin_component(plugin.name), c.wasmedge.version, plugin.artifacts, loc


def node_problems(state: DesiredState, node: OnNode, arch: Optional[str]) -> list[Problem]:
    """Warnings only: the desired state may be checked on another machine than its node."""
    problems: list[Problem] = []
    k3s = state.components.k3s
    token = k3s.tokenFile if k3s is not None and k3s.state == "present" else None
    if token and not node.paths.under(token).exists():
        problems.append(
            Problem(
                ("components", "k3s", "tokenFile"),
                f"{token} does not exist on this node: k3s cannot join with it "
                "(put the cluster's token there, mode 0600)",
                "warning",
            )
        )
    if arch is None:
        return problems
    for component, version, artifacts, loc in _artifacts(state):
        installed = node.inventory.get(component)
        artifact = next((a for k, a in artifacts.items() if k == arch), None)
        if installed is None or artifact is None or not installed.sha256 or not version:
            continue
        if installed.version == version and installed.sha256 != artifact.sha256:
            # A version already installed is never downloaded again, so this sha256 is not
            # checked until the version changes: the fleet may have pinned another build.
            problems.append(
                Problem(
                    (*loc, arch, "sha256"),
                    f"{component} {version} was installed from sha256 {installed.sha256[:12]}..., "
                    f"not this {artifact.sha256[:12]}...: it is not re-checked while {version} "
                    "is installed",
                    "warning",
                )
            )
    return problems
