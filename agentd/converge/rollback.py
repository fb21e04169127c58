"""Rollback: put back the kept version of a component, through the undo journal."""

from __future__ import annotations

import secrets
import shutil
import time
from typing import Any

from agentd.converge.kept import KeptVersion, keep, kept_dir, kept_version
from agentd.converge.undo import Journal, Op
from agentd.core.components import PLUGIN_PREFIX, kind_of, restarts_k3s
from agentd.core.errors import RollbackError
from agentd.core.paths import SYSTEMD_DIR
from agentd.core.redact import redact_text
from agentd.plan import render
from agentd.plan.refusals import content_sha256
from agentd.state.store import AgentState
from agentd.system.host import Host
from agentd.system.services import ServiceError


def rollback(host: Host, state: AgentState, component: str) -> dict[str, Any]:
    """Put back what the last change to `component` replaced; the replaced state is kept in turn."""
    interrupted = state.interrupted().get(component)
    if interrupted is not None:
        # The kept version is from the change before the killed one: putting it back would
        # skip a generation (or delete what the killed run was replacing).
        raise RollbackError(
            f"{component}: {interrupted}; `agentd apply` installs and records it first"
        )
    manifest = kept_version(host, component)
    if manifest is None:
        raise RollbackError(
            f"nothing kept for {component}: agentd has not changed it on this node "
            f"(kept versions live in {host.paths.host_view(host.paths.kept_dir)})"
        )
    kept = kept_dir(host, component)
    work = host.paths.staging_dir / f"rollback-{secrets.token_hex(3)}"
    journal = Journal(host, work / "backup")
    current = state.inventory.get(component)
    away = _config_sha256(host, component, manifest)
    removes = all(item.kind == "absent" for item in manifest.files)
    try:
        for item in manifest.files:
            if item.kind == "file" and item.blob is not None:
                op = Op("copy", item.path, source=kept / item.blob, mode=item.mode)
            elif item.kind == "symlink":
                op = Op("symlink", item.path, link=item.link)
            else:
                op = Op("remove", item.path)
            journal.apply(component, op)
        if component == "wasmedge" or component.startswith(PLUGIN_PREFIX):
            host.services.ldconfig()
        if component == "k3s/unit":
            host.services.daemon_reload()
        restarted = None
        if _needs_restart(component, manifest, removes, current is None):
            restarted = _k3s_unit_present(host)
            if restarted:
                host.services.restart(restarted)
    except (OSError, ServiceError) as exc:
        failures = journal.undo()
        shutil.rmtree(work, ignore_errors=True)
        more = f"; undo failed for {failures}" if failures else "; nothing was changed"
        raise RollbackError(redact_text(f"rollback of {component} failed: {exc}{more}")) from exc
    keep(
        host,
        component,
        journal.saved,
        current,
        version=current.version if current else manifest.replaced_by,
        replaced_by=manifest.version,
        generation=manifest.generation,
        action="rollback",
        at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    shutil.rmtree(work, ignore_errors=True)
    if manifest.inventory is not None:
        state.inventory[component] = manifest.inventory
    else:
        state.inventory.pop(component, None)
    return {
        "component": component,
        "restoredVersion": manifest.version,
        "replacedVersion": manifest.replaced_by,
        "files": [i.path for i in manifest.files],
        # A first install rolled back: nothing was there before, and nothing is now.
        "removed": removes,
        "restarted": restarted,
        "awaySha256": away,
    }


def _config_sha256(host: Host, component: str, manifest: KeptVersion) -> str | None:
    """A config file's content as the rollback finds it (what it rolls away from), hashed as
    the planner hashes what it would write; None for a component with versions."""
    kind = kind_of(component)
    if kind is None or not kind.configs or len(manifest.files) != 1:
        return None
    try:
        return content_sha256(host.paths.under(manifest.files[0].path).read_bytes())
    except FileNotFoundError:
        return content_sha256(None)


def _needs_restart(component: str, manifest: KeptVersion, removes: bool, adds: bool) -> bool:
    """Whether what is put back needs k3s restarted, as the planner decides for a change: k3s
    reads its binary and files at start, but crun is run anew for every container, so only
    crun appearing or going (the containerd template names it) does."""
    if not restarts_k3s(component):
        return False
    if component == "crun":
        return removes or adds
    # Removing the k3s binary of a first install leaves nothing to restart.
    return not (component == "k3s" and removes) and bool(manifest.files)


def _k3s_unit_present(host: Host) -> str | None:
    for role in ("server", "agent"):
        unit = render.k3s_unit_name(role)
        if host.paths.under(f"{SYSTEMD_DIR}/{unit}").exists():
            return unit
    return None
