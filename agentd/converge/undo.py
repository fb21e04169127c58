"""The undo journal: each target as it was before its first change, so a run can be undone."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from agentd.core.errors import ConvergeError
from agentd.core.paths import Paths
from agentd.state.intent import Replaced
from agentd.system.files import (
    atomic_copy,
    atomic_symlink,
    atomic_write,
    remove_path,
    temp_beside,
)
from agentd.system.host import Host
from agentd.system.storage import storage_error


@dataclass(frozen=True)
class Op:
    """One change to one node path."""

    kind: str  # copy, write, symlink, remove
    path: str  # node path
    source: Optional[Path] = None
    data: Optional[bytes] = None
    link: Optional[str] = None
    mode: int = 0o644


@dataclass
class Saved:
    """One target as the journal found it before its first change."""

    component: str
    path: str
    kind: str  # file, symlink, absent
    backup: Optional[Path] = None
    link: Optional[str] = None
    mode: int = 0o644

    def replaced(self, paths: Paths) -> Replaced:
        """As the write-ahead intent records it."""
        backup = paths.host_view(self.backup) if self.backup is not None else None
        return Replaced(self.path, self.kind, self.mode, backup, self.link)

    @classmethod
    def from_replaced(cls, paths: Paths, component: str, r: Replaced) -> Saved:
        backup = paths.under(r.backup) if r.backup else None
        return cls(component, r.path, r.kind, backup, r.link, r.mode)


class Journal:
    """Saves each target's previous state before the first change to it, so a run can be undone."""

    def __init__(self, host: Host, backup_dir: Path) -> None:
        self.host = host
        self.backup_dir = backup_dir
        self.saved: list[Saved] = []
        self._seen: set[str] = set()
        self._touched: set[str] = set()

    def save(self, component: str, node_path: str) -> None:
        """Save `node_path` now, ahead of its change (the intent records the saved state)."""
        if node_path in self._seen:
            return
        self._seen.add(node_path)
        target = self.host.paths.under(node_path)
        if target.is_symlink():
            entry = Saved(component, node_path, "symlink", link=os.readlink(target))
        elif target.is_file():
            self.backup_dir.mkdir(parents=True, exist_ok=True)
            backup = self.backup_dir / f"{len(self.saved):04d}"
            try:
                # A hard link is free and keeps the old inode alive after the rename over it.
                os.link(target, backup)
            except OSError:
                shutil.copy2(target, backup)
            entry = Saved(
                component, node_path, "file", backup=backup, mode=target.stat().st_mode & 0o7777
            )
        elif target.exists():
            raise ConvergeError(f"{node_path} is a directory or special file; not replacing it")
        else:
            entry = Saved(component, node_path, "absent")
        self.saved.append(entry)

    def apply(self, component: str, op: Op) -> None:
        self.save(component, op.path)
        self._touched.add(op.path)
        target = self.host.paths.under(op.path)
        if op.kind == "copy":
            assert op.source is not None
            atomic_copy(op.source, target, op.mode)
        elif op.kind == "write":
            assert op.data is not None
            atomic_write(target, op.data, op.mode)
        elif op.kind == "symlink":
            assert op.link is not None
            atomic_symlink(op.link, target)
        elif op.kind == "remove":
            remove_path(target)
        else:
            raise ValueError(op.kind)

    def undo(self) -> list[str]:
        """Put every saved path back, newest first; returns what could not be restored."""
        failures = []
        for entry in reversed(self.saved):
            if entry.path not in self._touched:
                continue  # saved ahead, never changed
            try:
                _restore(self.host, entry)
            except OSError as exc:
                failures.append(f"{entry.path}: {exc}")
        return failures


def _link_back(backup: Path, target: Path, mode: int) -> None:
    """On a full disk, put the saved inode itself back (a hard link takes no data block):
    linked beside the target and renamed over it, so the target is still old or new."""
    tmp = temp_beside(target)
    try:
        os.link(backup, tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _restore(host: Host, entry: Saved) -> None:
    target = host.paths.under(entry.path)
    if entry.kind == "file":
        assert entry.backup is not None
        try:
            atomic_copy(entry.backup, target, entry.mode)
        except OSError as exc:
            if storage_error(exc) is None:
                raise
            _link_back(entry.backup, target, entry.mode)
    elif entry.kind == "symlink":
        assert entry.link is not None
        atomic_symlink(entry.link, target)
    else:
        remove_path(target)
