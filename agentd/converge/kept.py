"""Kept versions: what the last change to each component replaced, for `agentd rollback`."""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from agentd.converge.undo import Saved
from agentd.core.errors import RollbackError
from agentd.state.inventory import InventoryEntry
from agentd.state.records import typed
from agentd.system.files import JsonFileError, read_json, write_json
from agentd.system.host import Host

_OPT_STR = (str, type(None))


@dataclass(frozen=True)
class KeptFile:
    """One target as the change found it: a file (its copy is `blob` in the kept dir), a
    symlink, or nothing (rollback removes what is there)."""

    path: str  # node path
    kind: str  # file, symlink, absent
    mode: int
    blob: Optional[str] = None
    link: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "kind": self.kind, "mode": self.mode}
        if self.blob is not None:
            out["blob"] = self.blob
        if self.link is not None:
            out["link"] = self.link
        return out

    @classmethod
    def from_json(cls, data: Any, where: str) -> KeptFile:
        kind = typed(data, "kind", str, where)
        return cls(
            typed(data, "path", str, where),
            kind,
            typed(data, "mode", int, where),
            typed(data, "blob", str, where) if kind == "file" else None,
            typed(data, "link", str, where) if kind == "symlink" else None,
        )


@dataclass(frozen=True)
class KeptVersion:
    """A component's kept version (`manifest.json` in its kept dir): what its last change
    replaced, which `agentd rollback` puts back."""

    component: str
    version: Optional[str]  # the version kept: the one the change replaced
    replaced_by: Optional[str]
    replaced_at: str  # UTC
    generation: Optional[int]
    action: str  # the change: upgrade, configure, ..., rollback
    inventory: Optional[InventoryEntry]  # the component's inventory entry before the change
    files: tuple[KeptFile, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "replacedBy": self.replaced_by,
            "replacedAt": self.replaced_at,
            "generation": self.generation,
            "action": self.action,
            "component": self.component,
            "inventory": self.inventory.to_json() if self.inventory is not None else None,
            "files": [f.to_json() for f in self.files],
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "manifest") -> KeptVersion:
        inventory = typed(data, "inventory", (dict, type(None)), where)
        files = typed(data, "files", list, where)
        return cls(
            typed(data, "component", str, where),
            typed(data, "version", _OPT_STR, where),
            typed(data, "replacedBy", _OPT_STR, where),
            typed(data, "replacedAt", str, where),
            typed(data, "generation", (int, type(None)), where),
            typed(data, "action", str, where),
            InventoryEntry.from_json(inventory, f"{where}.inventory") if inventory else None,
            tuple(KeptFile.from_json(f, f"{where}.files[{i}]") for i, f in enumerate(files)),
        )


def kept_dir(host: Host, component: str) -> Path:
    return host.paths.kept_dir / component.replace("/", "__")


def keep(
    host: Host,
    component: str,
    entries: list[Saved],
    old: Optional[InventoryEntry],
    *,
    version: Optional[str],
    replaced_by: Optional[str],
    generation: Optional[int],
    action: str,
    at: str,
) -> None:
    """Make `entries` (the state a change replaced) the version `agentd rollback` restores:
    `version` (inventory `old`), replaced by `replaced_by` in `generation` by `action` at `at`."""
    final = kept_dir(host, component)
    tmp = final.with_name(final.name + f".new-{secrets.token_hex(3)}")
    tmp.mkdir(parents=True)
    files = []
    for i, e in enumerate(entries):
        blob = None
        if e.kind == "file":
            assert e.backup is not None
            blob = tmp / f"{i:04d}"
            try:
                os.link(e.backup, blob)
            except OSError:
                shutil.copy2(e.backup, blob)
        link = e.link if e.kind == "symlink" else None
        files.append(KeptFile(e.path, e.kind, e.mode, blob.name if blob else None, link))
    kept = KeptVersion(component, version, replaced_by, at, generation, action, old, tuple(files))
    write_json(tmp / "manifest.json", kept.to_json(), 0o644)
    old_dir = final.with_name(final.name + f".old-{secrets.token_hex(3)}")
    if final.exists():
        final.rename(old_dir)
    tmp.rename(final)
    shutil.rmtree(old_dir, ignore_errors=True)


def kept_version(host: Host, component: str) -> Optional[KeptVersion]:
    """The kept version of `component`, or None when none is kept (or it cannot be read);
    RollbackError when its manifest is not one."""
    path = kept_dir(host, component) / "manifest.json"
    try:
        data = read_json(path)
    except (OSError, JsonFileError):
        return None
    if data is None:
        return None
    try:
        return KeptVersion.from_json(data)
    except TypeError as exc:
        raise RollbackError(
            f"{host.paths.host_view(path)} is corrupt ({exc}); nothing can be rolled back from it"
        ) from exc


def recover_kept(host: Host) -> list[Path]:
    """`keep` swaps a component's kept version with two renames: killed between them, the
    final directory is missing and the new one waits beside it."""
    kept = host.paths.kept_dir
    if not kept.is_dir():
        return []
    removed: list[Path] = []
    leftovers = [p for p in kept.iterdir() if ".new-" in p.name or ".old-" in p.name]
    for path in sorted(leftovers):
        final = kept / path.name.split(".new-")[0].split(".old-")[0]
        if ".new-" in path.name and not final.exists() and (path / "manifest.json").is_file():
            path.rename(final)  # the swap's second rename, done now
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed
