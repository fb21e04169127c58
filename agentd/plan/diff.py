"""The plan: a pure diff of desired state and facts, every action and every no-op with a reason."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from agentd.core.components import MANAGED_CONFIG_PATHS, PLUGIN_PREFIX
from agentd.core.errors import DesiredStateError
from agentd.core.paths import (
    CONTAINERD_TEMPLATES,
    CRUN_BIN,
    CRUN_WASM_RUNTIME,
    K3S_BIN,
    K3S_CONFIG,
    RUNTIMECLASS_MANIFEST,
    SYSTEMD_DIR,
)
from agentd.core.versions import compare, satisfies, upstream_version
from agentd.desired.model import Artifact, Crun, DesiredState, K3s, Plugin, WasmEdge
from agentd.facts.model import ComponentFacts, Facts, PluginFact
from agentd.plan import render
from agentd.state.store import InventoryEntry

# Actions run in this order; within a phase, in the order they were planned.
_PHASES = {
    "stop": 0,  # k3s removal stops the cluster before anything it uses goes away
    "runtime": 1,  # wasmedge, then its plugins, then crun
    "k3s": 2,
    "configure": 3,
    "restart": 4,
}


@dataclass(frozen=True)
class Action:
    component: str
    action: str  # install, upgrade, downgrade, remove, configure, restart
    reason: str
    from_version: Optional[str] = None
    to_version: Optional[str] = None
    artifact: Optional[Artifact] = None
    target: Optional[str] = None  # configure: the node path written (or removed)
    content: Optional[bytes] = None  # configure: the new content; None removes the file
    disruptive: bool = False  # interrupts running workloads (k3s restart or upgrade)
    phase: str = "runtime"
    package: Optional[str] = None  # from the distribution: this package (to_version: a constraint)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"component": self.component, "action": self.action}
        if self.from_version is not None:
            out["from"] = self.from_version
        if self.to_version is not None:
            out["to"] = self.to_version
        if self.target is not None:
            out["target"] = self.target
        if self.package is not None:
            out["package"] = self.package
        out["reason"] = self.reason
        out["disruptive"] = self.disruptive
        return out


@dataclass(frozen=True)
class Unchanged:
    component: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"component": self.component, "reason": self.reason}


@dataclass(frozen=True)
class Plan:
    generation: int
    arch: str
    actions: tuple[Action, ...] = ()
    unchanged: tuple[Unchanged, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.actions

    def to_json(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "arch": self.arch,
            "actions": [a.to_json() for a in self.actions],
            "unchanged": [u.to_json() for u in self.unchanged],
        }


@dataclass
class _Builder:
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


def _verb(installed: str, desired: str) -> str:
    order = compare(installed, desired)
    return "upgrade" if order < 0 else "downgrade"


def _where(found: ComponentFacts) -> str:
    return f" at {found.path}" if found.path else ""


ConfigContents = Mapping[str, Optional[bytes]]
Component = Union[K3s, Crun, WasmEdge]


def plan(
    desired: DesiredState,
    facts: Facts,
    inventory: Mapping[str, InventoryEntry],
    configs: ConfigContents,
    force: Optional[Mapping[str, str]] = None,
) -> Plan:
    """What converging `facts` to `desired` takes. Pure: reads nothing, runs nothing.

    `configs` holds the current content (None: absent) of every file in `config_paths()`.
    `force` names components to change again although they look done, with why.
    """
    b = _Builder(facts.host.arch, force=dict(force or {}))
    comps = desired.components
    k3s_found = facts.component("k3s")

    if comps.k3s is not None and comps.k3s.state == "absent":
        unit = _k3s_unit_on_node(comps.k3s.role, configs)
        _plan_binary(b, "k3s", comps.k3s, k3s_found, K3S_BIN, phase="stop", target=unit)
    _plan_wasmedge(b, comps.wasmedge, facts.component("wasmedge"), inventory)
    crun_path = _plan_crun(
        b, comps.crun, facts.component("crun"), facts.packages, inventory.get("crun")
    )
    if comps.k3s is not None and comps.k3s.state == "present":
        _plan_binary(b, "k3s", comps.k3s, k3s_found, K3S_BIN, phase="k3s")
    elif comps.k3s is None:
        b.keep("k3s", "not in the desired state" + _found_note(k3s_found))

    _plan_k3s_files(b, desired, k3s_found, crun_path, configs)
    _plan_restart(b, desired, k3s_found)
    ordered = sorted(b.actions, key=lambda a: _PHASES[a.phase])
    return Plan(desired.generation, b.arch, tuple(ordered), tuple(b.unchanged))


def _k3s_unit_on_node(role: str, configs: ConfigContents) -> str:
    """The k3s unit this node has: the desired role's if its file exists, else the other's."""
    other = "agent" if role == "server" else "server"
    for candidate in (render.k3s_unit_name(role), render.k3s_unit_name(other)):
        if configs.get(f"{SYSTEMD_DIR}/{candidate}") is not None:
            return candidate
    return render.k3s_unit_name(role)


def _found_note(found: ComponentFacts) -> str:
    if not found.installed:
        return ""
    return f" (found {found.version or 'an unreadable version'}{_where(found)}, left as it is)"


def _plan_binary(
    b: _Builder,
    name: str,
    want: Component,
    found: ComponentFacts,
    managed_path: str,
    phase: str,
    target: str | None = None,
) -> None:
    """Install, up/downgrade or remove a single-binary component (k3s, crun)."""
    # Replacing or removing a k3s that is there stops its workloads; a first install does not.
    disruptive = name == "k3s" and found.installed
    if want.state == "absent":
        if found.installed and found.managed:
            b.act(
                Action(
                    name,
                    "remove",
                    f"state: absent; {name} {found.version or ''} found at {found.path}".strip(),
                    from_version=found.version,
                    target=target,
                    disruptive=disruptive,
                    phase=phase,
                )
            )
        elif name in b.force:
            _finish_removal(b, name, phase=phase, target=target)
        elif found.installed:
            b.keep(
                name,
                f"state: absent, but {found.path} was not installed by agentd (it belongs to "
                "the distribution or another tool); not removing it",
            )
        else:
            b.keep(name, "state: absent and not installed")
        return
    assert want.version is not None  # enforced by the model
    same = found.installed and found.version and compare(found.version, want.version) == 0
    if same and name not in b.force:
        b.keep(name, f"{found.version} already installed{_where(found)}")
        return
    artifact = b.artifact(name, want.artifacts)
    if same:
        b.act(
            Action(
                name,
                "reinstall",
                f"{want.version} is installed{_where(found)} but {b.force[name]}; installing "
                f"it again to {managed_path}",
                from_version=found.version,
                to_version=want.version,
                artifact=artifact,
                disruptive=disruptive,
                phase=phase,
            )
        )
    elif not found.installed:
        b.act(
            Action(
                name,
                "install",
                f"not installed; desired {want.version}",
                to_version=want.version,
                artifact=artifact,
                disruptive=disruptive,
                phase=phase,
            )
        )
    elif not found.managed:
        b.act(
            Action(
                name,
                "install",
                f"{found.path} ({found.version or 'unknown version'}) was not installed by agentd "
                f"and is left alone; installing {want.version} to {managed_path}, which comes "
                "first in the search order",
                from_version=found.version,
                to_version=want.version,
                artifact=artifact,
                disruptive=disruptive,
                phase=phase,
            )
        )
    elif found.version is None:
        b.act(
            Action(
                name,
                "install",
                f"{found.path} does not report a version ({found.error}); reinstalling "
                f"{want.version}",
                to_version=want.version,
                artifact=artifact,
                disruptive=disruptive,
                phase=phase,
            )
        )
    else:
        b.act(
            Action(
                name,
                _verb(found.version, want.version),
                f"installed {found.version}, desired {want.version}",
                from_version=found.version,
                to_version=want.version,
                artifact=artifact,
                disruptive=disruptive,
                phase=phase,
            )
        )


def _plan_crun(
    b: _Builder,
    want: Crun | None,
    found: ComponentFacts,
    packages: Mapping[str, str | None],
    recorded: InventoryEntry | None,
) -> str | None:
    """Plan crun; return the crun binary the containerd template should name (None: no crun)."""
    if want is None:
        b.keep("crun", "not in the desired state" + _found_note(found))
        return found.path if found.installed else None
    if want.source == "package":
        return _plan_package(b, want, packages.get(want.package), recorded)
    _plan_binary(b, "crun", want, found, CRUN_BIN, phase="runtime")
    if want.state == "absent":
        return None
    already = found.installed and found.version and want.version
    if already and compare(str(found.version), str(want.version)) == 0 and "crun" not in b.force:
        return found.path
    return CRUN_BIN


def _plan_package(
    b: _Builder, want: Crun, installed: str | None, recorded: InventoryEntry | None
) -> str | None:
    """crun from the distribution: install (or upgrade) its package when the installed one does
    not meet the constraint. Which version the repositories offer is found out when converging.

    A crun agentd installed from artifacts before (recorded with its files) goes in the same
    action: left in /usr/local/bin it would come first on PATH, and once the inventory names the
    package, nothing would track it any more."""
    binary = f"/usr/bin/{want.package}"
    artifact = list(recorded.files) if recorded is not None and recorded.files else []
    replacing = (
        f"; agentd's crun {recorded.version or ''} at {', '.join(artifact)} is removed (kept for "
        "rollback)"
        if recorded is not None and artifact
        else ""
    )
    if want.state == "absent":
        b.keep(
            "crun",
            f"state: absent with source: package: agentd does not remove the distribution's "
            f"{want.package} (apt-get/dnf remove it)",
        )
        return None
    assert want.version is not None
    constraint = want.version
    meets = installed is not None and satisfies(upstream_version(installed), constraint)
    if meets and "crun" not in b.force and not artifact:
        b.keep("crun", f"package {want.package} {installed} meets {constraint}")
        return binary
    source = "from the distribution's repositories"
    if meets and "crun" not in b.force:
        verb = "install"  # apt/dnf keep a package that already meets it; the artifact goes
        reason = f"package {want.package} {installed} meets {constraint}"
    elif meets:
        verb = "reinstall"
        why = b.force["crun"]
        reason = f"package {want.package} {installed} is installed but {why}; reinstalling it"
    elif installed is not None:
        verb = "upgrade"
        reason = f"package {want.package} {installed} does not meet {constraint}; installing one"
    else:
        verb, reason = "install", f"no package {want.package}; installing {constraint}"
    b.act(
        Action(
            "crun",
            verb,
            f"{reason} {source}{replacing}",
            from_version=upstream_version(installed) if installed else None,
            to_version=constraint,
            package=want.package,
        )
    )
    return binary


def _plan_wasmedge(
    b: _Builder,
    want: WasmEdge | None,
    found: ComponentFacts,
    inventory: Mapping[str, InventoryEntry],
) -> None:
    if want is None:
        b.keep("wasmedge", "not in the desired state" + _found_note(found))
        return
    if want.state == "absent":
        # Plugins first: they are useless without the runtime and live in its library dir.
        for plugin in found.plugins:
            _remove_plugin(b, plugin, "WasmEdge is to be removed")
        gone = {PLUGIN_PREFIX + p.name for p in found.plugins}
        for component in sorted(b.force):
            if component.startswith(PLUGIN_PREFIX) and component not in gone:
                _finish_removal(b, component)
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
            _finish_removal(b, "wasmedge")
        elif found.installed:
            b.keep(
                "wasmedge",
                f"state: absent, but {found.path} was not installed by agentd (it belongs to "
                "the distribution or another tool); not removing it",
            )
        else:
            b.keep("wasmedge", "state: absent and not installed")
        return
    assert want.version is not None
    same = bool(found.installed and found.version and compare(found.version, want.version) == 0)
    runtime_changes = not same  # plugins follow real version changes only
    if same and "wasmedge" in b.force:
        b.act(
            Action(
                "wasmedge",
                "reinstall",
                f"{want.version} is installed{_where(found)} but {b.force['wasmedge']}; "
                "installing it again",
                from_version=found.version,
                to_version=want.version,
                artifact=b.artifact("wasmedge", want.artifacts),
            )
        )
    elif runtime_changes:
        verb = "install"
        reason = f"not installed; desired {want.version}"
        if found.installed and found.version:
            verb = _verb(found.version, want.version)
            reason = f"installed {found.version}, desired {want.version}"
        elif found.installed:
            reason = f"{found.path} does not report a version; reinstalling {want.version}"
        b.act(
            Action(
                "wasmedge",
                verb,
                reason,
                from_version=found.version,
                to_version=want.version,
                artifact=b.artifact("wasmedge", want.artifacts),
            )
        )
    else:
        b.keep("wasmedge", f"{found.version} already installed{_where(found)}")
    _plan_plugins(b, want, found, inventory, runtime_changes)


def _plugin_fact(found: ComponentFacts, name: str) -> PluginFact | None:
    for p in found.plugins:
        if p.name == name:
            return p
    return None


def _plan_plugins(
    b: _Builder,
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
                _finish_removal(b, component)
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
                    "upgrade" if old is None else _verb(old, want.version),
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
                    _verb(recorded.version, want.version),
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


def _plugin_action(
    b: _Builder, plugin: Plugin, verb: str, reason: str, old: str | None, new: str
) -> Action:
    component = PLUGIN_PREFIX + plugin.name
    return Action(
        component,
        verb,
        reason,
        from_version=old,
        to_version=new,
        artifact=b.artifact(component, plugin.artifacts),
    )


def _finish_removal(
    b: _Builder, component: str, phase: str = "runtime", target: str | None = None
) -> None:
    """A removal that a killed run began: agentd's files of `component` are gone (or some are
    left), but its record and kept version were not written. Removing again does both."""
    b.act(
        Action(
            component,
            "remove",
            f"state: absent; {b.force[component]}: finishing the removal",
            target=target,
            phase=phase,
        )
    )


def _remove_plugin(b: _Builder, plugin: PluginFact, why: str) -> None:
    b.act(
        Action(
            PLUGIN_PREFIX + plugin.name,
            "remove",
            f"{why}; found at {plugin.path}",
            from_version=plugin.version,
            target=plugin.path,
        )
    )


# --- k3s's files -------------------------------------------------------------------------------


def config_paths() -> list[str]:
    """Every node path whose current content `plan()` compares against."""
    return list(MANAGED_CONFIG_PATHS)


def _configure(
    b: _Builder,
    component: str,
    target: str,
    content: bytes | None,
    configs: ConfigContents,
    what: str,
) -> bool:
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
    elif not current.startswith(render.MANAGED_HEADER.encode()):
        reason = f"{target} was not written by agentd; replacing it with {what} (kept for rollback)"
    else:
        reason = f"{target} differs from {what}"
    b.act(Action(component, "configure", reason, target=target, content=content, phase="configure"))
    return True


def _plan_k3s_files(
    b: _Builder,
    desired: DesiredState,
    k3s_found: ComponentFacts,
    crun_path: str | None,
    configs: ConfigContents,
) -> None:
    k3s = desired.components.k3s
    managed = k3s is not None and k3s.state == "present"
    k3s_version = k3s.version if managed and k3s is not None else k3s_found.version
    removing = k3s is not None and k3s.state == "absent"
    k3s_present = managed or (k3s_found.installed and not removing)
    if managed and k3s is not None:
        _configure(b, "k3s/config", K3S_CONFIG, render.k3s_config(k3s), configs, "the k3s config")
        unit = render.k3s_unit_name(k3s.role)
        _configure(
            b,
            "k3s/unit",
            f"{SYSTEMD_DIR}/{unit}",
            render.k3s_unit(k3s.role),
            configs,
            f"the {unit} unit",
        )
    if k3s_present and k3s_version and crun_path is not None:
        template = render.containerd_template(k3s_version, crun_path)
        _configure(
            b,
            "k3s/containerd",
            render.containerd_template_path(k3s_version),
            template,
            configs,
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
                _configure(b, "k3s/containerd", target, None, configs, "the crun runtime")
    manifest = RUNTIMECLASS_MANIFEST
    if managed and k3s is not None and k3s.role == "server":
        content = (
            render.runtimeclass_manifest(desired.runtimeClasses) if desired.runtimeClasses else None
        )
        _configure(b, "k3s/runtimeclasses", manifest, content, configs, "the RuntimeClasses")
    elif desired.runtimeClasses and removing:
        b.keep("k3s/runtimeclasses", "k3s is to be removed; the manifest is left as it is")
    elif desired.runtimeClasses:
        b.keep(
            "k3s/runtimeclasses",
            "RuntimeClasses are cluster objects: only a k3s server node writes them",
        )


def _plan_restart(b: _Builder, desired: DesiredState, k3s_found: ComponentFacts) -> None:
    k3s = desired.components.k3s
    if k3s is not None and k3s.state == "absent":
        return
    will_run = (k3s is not None) or k3s_found.installed
    causes = [
        f"{a.component} {a.action}"
        for a in b.actions
        if a.component in ("k3s", "k3s/config", "k3s/unit", "k3s/containerd")
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
