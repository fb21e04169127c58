"""Kept versions: what the last change to each component replaced, for `agentd rollback`."""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from agentd.converge.undo import Saved
from agentd.state.store import InventoryEntry
from agentd.system.files import JsonFileError, read_json, write_json
from agentd.system.host import Host


def kept_dir(host: Host, component: str) -> Path:
    return host.paths.kept_dir / component.replace("/", "__")


def keep(
    host: Host,
    component: str,
    entries: list[Saved],
    old: InventoryEntry | None,
    meta: dict[str, Any],
) -> None:
    """Make `entries` (the state a change replaced) the version `agentd rollback` restores."""
    final = kept_dir(host, component)
    tmp = final.with_name(final.name + f".new-{secrets.token_hex(3)}")
    tmp.mkdir(parents=True)
    files = []
    for i, e in enumerate(entries):
        item: dict[str, Any] = {"path": e.path, "kind": e.kind, "mode": e.mode}
        if e.kind == "file":
            assert e.backup is not None
            blob = tmp / f"{i:04d}"
            try:
                os.link(e.backup, blob)
            except OSError:
                shutil.copy2(e.backup, blob)
            item["blob"] = blob.name
        elif e.kind == "symlink":
            item["link"] = e.link
        files.append(item)
    manifest = {
        **meta,
        "component": component,
        "inventory": old.to_json() if old else None,
        "files": files,
    }
    write_json(tmp / "manifest.json", manifest, 0o644)
    old_dir = final.with_name(final.name + f".old-{secrets.token_hex(3)}")
    if final.exists():
        final.rename(old_dir)
    tmp.rename(final)
    shutil.rmtree(old_dir, ignore_errors=True)


def kept_manifest(host: Host, component: str) -> dict[str, Any] | None:
    """The kept version's manifest, or None when none is kept (or it cannot be read)."""
    try:
        return read_json(kept_dir(host, component) / "manifest.json")
    except (OSError, JsonFileError):
        return None


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
