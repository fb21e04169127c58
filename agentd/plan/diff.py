"""The plan: a pure diff of desired state and facts, every action and every no-op with a reason."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

from agentd.core.paths import K3S_BIN
from agentd.desired.model import DesiredState
from agentd.facts.model import Facts
from agentd.plan.addons import plan_addons
from agentd.plan.binaries import plan_binary, plan_crun
from agentd.plan.draft import ConfigContents, Draft, found_note
from agentd.plan.k3s_files import k3s_unit_on_node, plan_k3s_files, plan_restart
from agentd.plan.model import Plan
from agentd.plan.wasmedge import plan_wasmedge
from agentd.state.inventory import InventoryEntry


def plan(
    desired: DesiredState,
    facts: Facts,
    inventory: Mapping[str, InventoryEntry],
    configs: ConfigContents,
    force: Optional[Mapping[str, str]] = None,
) -> Plan:
    """What converging `facts` to `desired` takes. Pure: reads nothing, runs nothing.

    `configs` holds the current content (None: absent) of every file in
    `agentd.core.components.MANAGED_CONFIG_PATHS`. `force` names components to change again
    although they look done, with why.
    """
    b = Draft(facts.host.arch, force=dict(force or {}))
    comps = desired.components
    k3s_found = facts.component("k3s")

    if comps.k3s is not None and comps.k3s.state == "absent":
        unit = k3s_unit_on_node(comps.k3s.role, configs)
        plan_binary(b, "k3s", comps.k3s, k3s_found, K3S_BIN, phase="stop", target=unit)
    plan_wasmedge(b, comps.wasmedge, facts.component("wasmedge"), inventory)
    crun_path = plan_crun(
        b, comps.crun, facts.component("crun"), facts.packages, inventory.get("crun")
    )
    if comps.k3s is not None and comps.k3s.state == "present":
        plan_binary(b, "k3s", comps.k3s, k3s_found, K3S_BIN, phase="k3s")
    elif comps.k3s is None:
        b.keep("k3s", "not in the desired state" + found_note(k3s_found))

    plan_k3s_files(b, desired, k3s_found, crun_path, configs, inventory)
    k3s_version = comps.k3s.version if comps.k3s is not None else k3s_found.version
    plan_addons(b, desired, k3s_version, configs, inventory)
    plan_restart(b, desired, k3s_found)
    return b.plan(desired.generation)
