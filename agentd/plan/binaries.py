"""The single-binary components in the plan: k3s and crun, from an artifact or a package."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional, Union

from agentd.core.paths import CRUN_BIN
from agentd.core.versions import compare, satisfies, upstream_version
from agentd.desired.model import Crun, K3s
from agentd.facts.model import ComponentFacts
from agentd.plan.draft import Draft, found_note, verb, where
from agentd.plan.model import Action
from agentd.state.inventory import InventoryEntry

Binary = Union[K3s, Crun]


def plan_binary(
    b: Draft,
    name: str,
    want: Binary,
    found: ComponentFacts,
    managed_path: str,
    phase: str,
    target: Optional[str] = None,
    own_copy: bool = False,
) -> None:
    """Install, up/downgrade or remove a single-binary component (k3s, crun).

    `own_copy`: only agentd's copy is the desired artifact; one found elsewhere (the
    distribution's) is not taken for it, even at the desired version."""
    # Replacing or removing a k3s that is there stops its workloads; a first install does not.
    disruptive = name == "k3s" and found.installed
    if want.state == "absent":
        _plan_removal(b, name, found, phase, target, disruptive)
        return
    assert want.version is not None  # enforced by the model
    same = found.installed and found.version and compare(found.version, want.version) == 0
    foreign = bool(same and own_copy and not found.managed)
    if same and not foreign and name not in b.force:
        b.keep(name, f"{found.version} already installed{where(found)}")
        return
    artifact = b.artifact(name, want.artifacts)

    def act(action: str, reason: str, from_version: Optional[str]) -> None:
        b.act(
            Action(
                name,
                action,
                reason,
                from_version=from_version,
                to_version=want.version,
                artifact=artifact,
                disruptive=disruptive,
                phase=phase,
            )
        )

    if foreign:
        act(
            "install",
            f"{found.path} ({found.version}) was not installed by agentd and is left alone, but "
            f"the desired {name} is agentd's artifact (a distribution's build may lack Wasm); "
            f"installing {want.version} to {managed_path}, which comes first in the search order",
            found.version,
        )
    elif same:
        act(
            "reinstall",
            f"{want.version} is installed{where(found)} but {b.force[name]}; installing "
            f"it again to {managed_path}",
            found.version,
        )
    elif not found.installed:
        act("install", f"not installed; desired {want.version}", None)
    elif not found.managed:
        act(
            "install",
            f"{found.path} ({found.version or 'unknown version'}) was not installed by agentd "
            f"and is left alone; installing {want.version} to {managed_path}, which comes "
            "first in the search order",
            found.version,
        )
    elif found.version is None:
        act(
            "install",
            f"{found.path} does not report a version ({found.error}); reinstalling {want.version}",
            None,
        )
    else:
        act(
            verb(found.version, want.version),
            f"installed {found.version}, desired {want.version}",
            found.version,
        )


def _plan_removal(
    b: Draft,
    name: str,
    found: ComponentFacts,
    phase: str,
    target: Optional[str],
    disruptive: bool,
) -> None:
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
        b.finish_removal(name, phase=phase, target=target)
    elif found.installed:
        b.keep(
            name,
            f"state: absent, but {found.path} was not installed by agentd (it belongs to "
            "the distribution or another tool); not removing it",
        )
    else:
        b.keep(name, "state: absent and not installed")


def plan_crun(
    b: Draft,
    want: Optional[Crun],
    found: ComponentFacts,
    packages: Mapping[str, Optional[str]],
    recorded: Optional[InventoryEntry],
) -> Optional[str]:
    """Plan crun; return the crun binary the containerd template should name (None: no crun)."""
    if want is None:
        b.keep("crun", "not in the desired state" + found_note(found))
        return found.path if found.installed else None
    if want.source == "package":
        return _plan_package(b, want, packages.get(want.package), recorded)
    plan_binary(b, "crun", want, found, CRUN_BIN, phase="runtime", own_copy=True)
    if want.state == "absent":
        return None
    already = found.installed and found.managed and found.version and want.version
    if already and compare(str(found.version), str(want.version)) == 0 and "crun" not in b.force:
        return found.path
    return CRUN_BIN


def _plan_package(
    b: Draft, want: Crun, installed: Optional[str], recorded: Optional[InventoryEntry]
) -> Optional[str]:
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
        action = "install"  # apt/dnf keep a package that already meets it; the artifact goes
        reason = f"package {want.package} {installed} meets {constraint}"
    elif meets:
        action = "reinstall"
        why = b.force["crun"]
        reason = f"package {want.package} {installed} is installed but {why}; reinstalling it"
    elif installed is not None:
        action = "upgrade"
        reason = f"package {want.package} {installed} does not meet {constraint}; installing one"
    else:
        action, reason = "install", f"no package {want.package}; installing {constraint}"
    b.act(
        Action(
            "crun",
            action,
            f"{reason} {source}{replacing}",
            from_version=upstream_version(installed) if installed else None,
            to_version=constraint,
            package=want.package,
        )
    )
    return binary
