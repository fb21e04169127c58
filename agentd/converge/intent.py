"""The write-ahead intent: state.json says what a component becomes before its files change."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Sequence
from pathlib import Path

from agentd.converge.undo import Journal, Op
from agentd.plan.model import Action
from agentd.state.intent import Intent, IntentEntry
from agentd.state.inventory import InventoryEntry
from agentd.state.store import AgentState, save_state
from agentd.system.host import Host

# A run killed between replacing a target and writing state.json leaves new (or half old, half
# new) files and the old inventory: the next run's detection reads the new version, plans
# nothing, and rollback would put back the wrong thing. So before a component's first target is
# touched, state.json records what it becomes and what it replaced (the `installing` intent);
# the next run installs every component still in it again, whatever detection reads, and
# records it as a clean run would, keeping what the node had before the killed run.


def backups_dir(host: Host) -> Path:
    """The journal's backups: what each target was before this run (or an interrupted one)."""
    return host.paths.state_dir / "replaced"


def write_ahead(
    host: Host,
    state: AgentState,
    journal: Journal,
    action: Action,
    ops: Sequence[Op],
    after: InventoryEntry | None,
    earlier: Intent | None,
    generation: int,
) -> None:
    """Save the targets of `ops` and persist the intent entry of `action` (whose component's
    inventory becomes `after`), before any of them is changed. `earlier` is the intent a
    killed run left, as this run found it."""
    for op in ops:
        journal.save(action.component, op.path)
    old = state.inventory.get(action.component)
    entry = IntentEntry(
        action=action.action,
        from_version=action.from_version,
        to_version=action.to_version,
        inventory_before=old,
        inventory_after=after,
        replaced=[e.replaced(host.paths) for e in journal.saved if e.component == action.component],
    )
    prior = earlier.components.get(action.component) if earlier else None
    if prior is not None:
        # The files found now are the killed run's work: what rollback must put back is what
        # the node had before that run.
        seen = {r.path for r in prior.replaced}
        entry = dataclasses.replace(
            entry,
            action=prior.action,
            from_version=prior.from_version,
            inventory_before=prior.inventory_before,
            replaced=prior.replaced + [r for r in entry.replaced if r.path not in seen],
        )
    components = dict(state.installing.components) if state.installing else {}
    components[action.component] = entry
    state.installing = Intent(generation, components)
    save_state(host.paths, state)


def settle_intent(host: Host, state: AgentState, installing: Intent | None) -> None:
    """Make `installing` the intent on disk, then drop the backups it no longer names."""
    state.installing = installing
    save_state(host.paths, state)
    prune_backups(host, state)


def prune_backups(host: Host, state: AgentState) -> list[Path]:
    """Remove the backups of runs that no intent names (recorded, undone, or killed before
    writing theirs); the kept versions hold their own links to the same files."""
    root = backups_dir(host)
    if not root.is_dir():
        return []
    components = state.installing.components if state.installing else {}
    needed = {
        host.paths.under(r.backup).parent
        for entry in components.values()
        for r in entry.replaced
        if r.backup
    }
    removed = []
    for path in sorted(root.iterdir()):
        if path in needed:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed
