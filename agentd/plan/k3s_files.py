"""k3s's files in the plan (config, unit, containerd template, RuntimeClasses) and its restart."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

from agentd.core.paths import (
    CONTAINERD_TEMPLATES,
    CRUN_WASM_RUNTIME,
    K3S_CONFIG,
    RUNTIMECLASS_MANIFEST,
    SYSTEMD_DIR,
)
from agentd.desired.model import DesiredState
from agentd.facts.model import ComponentFacts
from agentd.plan import render
from agentd.plan.draft import ConfigContents, Draft
from agentd.plan.model import Action
from agentd.state.inventory import InventoryEntry

# The changes a k3s restart is planned for: what k3s reads only at start (and crun appearing or
# going, which the containerd template names).
RESTART_CAUSES = ("k3s", "k3s/config", "k3s/unit", "k3s/containerd", "k3s/registries")


def k3s_unit_on_node(role: str, configs: ConfigContents) -> str:
    """The k3s unit this node has: the desired role's if its file exists, else the other's."""
    other = "agent" if role == "server" else "server"
    for candidate in (render.k3s_unit_name(role), render.k3s_unit_name(other)):
        if configs.get(f"{SYSTEMD_DIR}/{candidate}") is not None:
            return candidate
    return render.k3s_unit_name(role)


def _written_by_agentd(
    current: bytes, component: str, target: str, inventory: Mapping[str, InventoryEntry]
) -> bool:
    """agentd's renderers put their header first, but for the unit (written as get.k3s.io
    writes it, without one): agentd's inventory then records the file it wrote."""
    if current.startswith(render.MANAGED_HEADER.encode()):
        return True
    recorded = inventory.get(component)
    return recorded is not None and target in recorded.files


def configure(
    b: Draft,
    component: str,
    target: str,
    content: Optional[bytes],
    configs: ConfigContents,
    inventory: Mapping[str, InventoryEntry],
    what: str,
) -> bool:
    """Plan writing `content` (None: removing) to `target` if it is not there already."""
    current = configs.get(target)
    status = f"{target} is up to date" if content else f"{target} is absent"
    if current == content and component not in b.force:
        b.keep(component, status)
        return False
    if current == content:
        again = "writing it again" if content else "removing it again"
        reason = f"{status} but {b.force[component]}; {again}"
    elif content is None:
        reason = f"{what} is no longer wanted; removing {target}"
    elif current is None:
        reason = f"writing {what} to {target}"
    elif not _written_by_agentd(current, component, target, inventory):
        reason = f"{target} was not written by agentd; replacing it with {what} (kept for rollback)"
    else:
        reason = f"{target} differs from {what}"
    b.act(Action(component, "configure", reason, target=target, content=content, phase="configure"))
    return True


def plan_k3s_files(
    b: Draft,
    desired: DesiredState,
    k3s_found: ComponentFacts,
    crun_path: Optional[str],
    configs: ConfigContents,
    inventory: Mapping[str, InventoryEntry],
) -> None:
    k3s = desired.components.k3s
    managed = k3s is not None and k3s.state == "present"
    k3s_version = k3s.version if managed and k3s is not None else k3s_found.version
    removing = k3s is not None and k3s.state == "absent"
    k3s_present = managed or (k3s_found.installed and not removing)
    if managed and k3s is not None:
        config = render.k3s_config(k3s)
        configure(b, "k3s/config", K3S_CONFIG, config, configs, inventory, "the k3s config")
        unit = render.k3s_unit_name(k3s.role)
        configure(
            b,
            "k3s/unit",
            f"{SYSTEMD_DIR}/{unit}",
            render.k3s_unit(k3s.role),
            configs,
            inventory,
            f"the {unit} unit",
        )
    elif removing and k3s is not None:
        # Removing k3s stops and disables its unit; its files stay for whoever looks later.
        unit_path = f"{SYSTEMD_DIR}/{k3s_unit_on_node(k3s.role, configs)}"
        for component, target in (("k3s/config", K3S_CONFIG), ("k3s/unit", unit_path)):
            there = "is left as it is" if configs.get(target) is not None else "is absent"
            b.keep(component, f"k3s has state: absent; {target} {there}")
    if k3s_present and k3s_version and crun_path is not None:
        template = render.containerd_template(k3s_version, crun_path)
        configure(
            b,
            "k3s/containerd",
            render.containerd_template_path(k3s_version),
            template,
            configs,
            inventory,
            f"the containerd template with the {CRUN_WASM_RUNTIME} runtime (pod_annotations)",
        )
    elif crun_path is not None:
        why = "k3s is to be removed" if removing else "k3s is neither installed nor desired"
        b.keep("k3s/containerd", why)
    crun = desired.components.crun
    if crun is not None and crun.state == "absent":
        # A template naming a removed crun would make every Wasm pod fail to start.
        for target in CONTAINERD_TEMPLATES:
            current = configs.get(target)
            if current is not None and current.startswith(render.MANAGED_HEADER.encode()):
                configure(b, "k3s/containerd", target, None, configs, inventory, "the crun runtime")
    manifest = RUNTIMECLASS_MANIFEST
    if managed and k3s is not None and k3s.role == "server":
        content = (
            render.runtimeclass_manifest(desired.runtimeClasses) if desired.runtimeClasses else None
        )
        configure(
            b, "k3s/runtimeclasses", manifest, content, configs, inventory, "the RuntimeClasses"
        )
    elif desired.runtimeClasses and removing:
        b.keep("k3s/runtimeclasses", "k3s is to be removed; the manifest is left as it is")
    elif desired.runtimeClasses:
        b.keep(
            "k3s/runtimeclasses",
            "RuntimeClasses are cluster objects: only a k3s server node writes them",
        )


def plan_restart(b: Draft, desired: DesiredState, k3s_found: ComponentFacts) -> None:
    k3s = desired.components.k3s
    if k3s is not None and k3s.state == "absent":
        return
    will_run = (k3s is not None) or k3s_found.installed
    causes = [
        f"{a.component} {a.action}"
        for a in b.actions
        if a.component in RESTART_CAUSES
        or (a.component == "crun" and a.action in ("install", "remove"))
    ]
    if not will_run:
        return
    if not causes:
        b.keep("k3s/service", "nothing k3s reads has changed; no restart")
        return
    role = k3s.role if k3s is not None else "server"
    unit = render.k3s_unit_name(role)
    b.act(
        Action(
            "k3s",
            "restart",
            f"{unit}: {', '.join(causes)} (k3s reads these at start; one restart for all)",
            target=unit,
            # Starting a k3s that was not there interrupts nothing.
            disruptive=k3s_found.installed,
            phase="restart",
        )
    )
