"""WasmEdge and its plugins in the plan: a plugin follows the runtime's version."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Optional

from agentd.core.components import PLUGIN_PREFIX
from agentd.core.versions import compare
from agentd.desired.model import NO_ARMV7_WASMEDGE, Plugin, WasmEdge
from agentd.facts.model import ComponentFacts, PluginFact
from agentd.plan.draft import Draft, found_note, verb, where
from agentd.plan.model import Action
from agentd.state.inventory import InventoryEntry


def plan_wasmedge(
    b: Draft,
    want: Optional[WasmEdge],
    found: ComponentFacts,
    inventory: Mapping[str, InventoryEntry],
) -> None:
    if want is None:
        b.keep("wasmedge", "not in the desired state" + found_note(found))
        _keep_unnamed_plugins(b, found, ())
        return
    if want.state == "absent":
        _plan_removal(b, found)
        return
    if b.arch == "armv7":
        _refuse_on_armv7(b, want, found)
        return
    assert want.version is not None
    same = bool(found.installed and found.version and compare(found.version, want.version) == 0)
    runtime_changes = not same  # plugins follow real version changes only
    if same and "wasmedge" in b.force:
        b.act(
            Action(
                "wasmedge",
                "reinstall",
                f"{want.version} is installed{where(found)} but {b.force['wasmedge']}; "
                "installing it again",
                from_version=found.version,
                to_version=want.version,
                artifact=b.artifact("wasmedge", want.artifacts),
            )
        )
    elif runtime_changes:
        action = "install"
        reason = f"not installed; desired {want.version}"
        if found.installed and found.version:
            action = verb(found.version, want.version)
            reason = f"installed {found.version}, desired {want.version}"
        elif found.installed:
            reason = f"{found.path} does not report a version; reinstalling {want.version}"
        b.act(
            Action(
                "wasmedge",
                action,
                reason,
                from_version=found.version,
                to_version=want.version,
                artifact=b.artifact("wasmedge", want.artifacts),
            )
        )
    else:
        b.keep("wasmedge", f"{found.version} already installed{where(found)}")
    _plan_plugins(b, want, found, inventory, runtime_changes)
    _keep_unnamed_plugins(b, found, [p.name for p in want.plugins])


def _refuse_on_armv7(b: Draft, want: WasmEdge, found: ComponentFacts) -> None:
    """No action, a reason: the rest of the plan goes ahead (validation warned of it). Nothing
    found is touched either, a WasmEdge someone built for this node by hand included."""
    refused = f"refused: {NO_ARMV7_WASMEDGE}, and this node is armv7"
    b.keep("wasmedge", f"{refused}; {want.version} is not installed{found_note(found)}")
    for plugin in want.plugins:
        b.keep(PLUGIN_PREFIX + plugin.name, f"refused with WasmEdge ({NO_ARMV7_WASMEDGE})")
    _keep_unnamed_plugins(b, found, [p.name for p in want.plugins])


def _plan_removal(b: Draft, found: ComponentFacts) -> None:
    # Plugins first: they are useless without the runtime and live in its library dir.
    for plugin in found.plugins:
        _remove_plugin(b, plugin, "WasmEdge is to be removed")
    gone = {PLUGIN_PREFIX + p.name for p in found.plugins}
    for component in sorted(b.force):
        if component.startswith(PLUGIN_PREFIX) and component not in gone:
            b.finish_removal(component)
    if found.installed and found.managed:
        b.act(
            Action(
                "wasmedge",
                "remove",
                f"state: absent; WasmEdge {found.version or ''} found at {found.path}".strip(),
                from_version=found.version,
            )
        )
    elif "wasmedge" in b.force:
        b.finish_removal("wasmedge")
    elif found.installed:
        b.keep(
            "wasmedge",
            f"state: absent, but {found.path} was not installed by agentd (it belongs to "
            "the distribution or another tool); not removing it",
        )
    else:
        b.keep("wasmedge", "state: absent and not installed")


def _plugin_fact(found: ComponentFacts, name: str) -> Optional[PluginFact]:
    for p in found.plugins:
        if p.name == name:
            return p
    return None


def _plan_plugins(
    b: Draft,
    want: WasmEdge,
    found: ComponentFacts,
    inventory: Mapping[str, InventoryEntry],
    runtime_changes: bool,
) -> None:
    assert want.version is not None
    for plugin in want.plugins:
        component = PLUGIN_PREFIX + plugin.name
        fact = _plugin_fact(found, plugin.name)
        if plugin.state == "absent":
            if fact is not None:
                _remove_plugin(b, fact, "state: absent")
            elif component in b.force:
                b.finish_removal(component)
            else:
                b.keep(component, "state: absent and not installed")
            continue
        recorded = inventory.get(component)
        if fact is None:
            b.act(_plugin_action(b, plugin, "install", "not installed", None, want.version))
        elif runtime_changes:
            # WasmEdge silently skips a plugin built for another runtime version.
            old = recorded.version if recorded else None
            b.act(
                _plugin_action(
                    b,
                    plugin,
                    "upgrade" if old is None else verb(old, want.version),
                    f"WasmEdge changes to {want.version} and a plugin must match the runtime's "
                    "version",
                    old,
                    want.version,
                )
            )
        elif recorded is not None and recorded.version and compare(recorded.version, want.version):
            b.act(
                _plugin_action(
                    b,
                    plugin,
                    verb(recorded.version, want.version),
                    f"installed for WasmEdge {recorded.version}, runtime is {want.version}",
                    recorded.version,
                    want.version,
                )
            )
        elif component in b.force:
            b.act(
                _plugin_action(
                    b,
                    plugin,
                    "reinstall",
                    f"{fact.path} is installed but {b.force[component]}; installing it again",
                    recorded.version if recorded else None,
                    want.version,
                )
            )
        else:
            how = "installed by agentd" if fact.managed else "found, not installed by agentd"
            b.keep(component, f"{how} at {fact.path}")


def _keep_unnamed_plugins(b: Draft, found: ComponentFacts, named: Collection[str]) -> None:
    """A plugin found on the node that the desired state does not name is left as it is, like
    a component it does not name."""
    for plugin in found.plugins:
        if plugin.name in named:
            continue
        version = f"{plugin.version} " if plugin.version else ""
        whose = "installed by agentd" if plugin.managed else "not installed by agentd"
        b.keep(
            PLUGIN_PREFIX + plugin.name,
            f"not in the desired state (found {version}at {plugin.path}, {whose}; left as it is)",
        )


def _plugin_action(
    b: Draft, plugin: Plugin, action: str, reason: str, old: Optional[str], new: str
) -> Action:
    component = PLUGIN_PREFIX + plugin.name
    return Action(
        component,
        action,
        reason,
        from_version=old,
        to_version=new,
        artifact=b.artifact(component, plugin.artifacts),
    )


def _remove_plugin(b: Draft, plugin: PluginFact, why: str) -> None:
    b.act(
        Action(
            PLUGIN_PREFIX + plugin.name,
            "remove",
            f"{why}; found at {plugin.path}",
            from_version=plugin.version,
            target=plugin.path,
        )
    )
