"""The write-ahead intent in state.json: what a run installing now changes, and what it replaced."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from agentd.state.inventory import InventoryEntry


@dataclass(frozen=True)
class Replaced:
    """One target as it was before the run changed it: a file (with its backup), a symlink, or
    nothing at all."""

    path: str  # node path
    kind: str  # file, symlink, absent
    mode: int = 0o644
    backup: Optional[str] = None  # node path of the file's backup (kind file only)
    link: Optional[str] = None  # the symlink's target (kind symlink only)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "kind": self.kind, "mode": self.mode}
        if self.backup is not None:
            out["backup"] = self.backup
        if self.link is not None:
            out["link"] = self.link
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Replaced:
        return cls(data["path"], data["kind"], data["mode"], data.get("backup"), data.get("link"))


@dataclass(frozen=True)
class IntentEntry:
    """One component of the intent: the change being made to it, and what it replaced."""

    action: str
    from_version: Optional[str]
    to_version: Optional[str]
    # None: the component had (or will have) no inventory entry.
    inventory_before: Optional[InventoryEntry]
    inventory_after: Optional[InventoryEntry]
    replaced: list[Replaced] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "from": self.from_version,
            "to": self.to_version,
            "inventoryBefore": _inventory_json(self.inventory_before),
            "inventoryAfter": _inventory_json(self.inventory_after),
            "replaced": [r.to_json() for r in self.replaced],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "installing") -> IntentEntry:
        return cls(
            data["action"],
            data["from"],
            data["to"],
            _inventory(data["inventoryBefore"], f"{where}.inventoryBefore"),
            _inventory(data["inventoryAfter"], f"{where}.inventoryAfter"),
            [Replaced.from_json(r) for r in data["replaced"]],
        )


def _inventory_json(entry: Optional[InventoryEntry]) -> Optional[dict[str, Any]]:
    return entry.to_json() if entry is not None else None


def _inventory(data: Any, where: str) -> Optional[InventoryEntry]:
    return InventoryEntry.from_json(data, where) if data is not None else None


@dataclass(frozen=True)
class Intent:
    """`installing` in state.json: written before a run's first target is touched, dropped with
    the inventory it becomes. Still there when a run starts, the run that wrote it was killed."""

    generation: int
    components: dict[str, IntentEntry] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "components": {k: v.to_json() for k, v in self.components.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Intent:
        """ValueError when a key is missing (state.json's loader reports the file corrupt)."""
        try:
            return cls(
                data["generation"],
                {
                    k: IntentEntry.from_json(v, f"installing.components.{k}")
                    for k, v in (data["components"] or {}).items()
                },
            )
        except KeyError as exc:
            raise ValueError(f"the installing intent has no {exc}") from exc
