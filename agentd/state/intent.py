"""The write-ahead intent in state.json: what a run installing now changes, and what it replaced."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional


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
    # An InventoryEntry's JSON, as agentd.state.store writes it (that module holds this one, so
    # this one cannot import its class); None: the component had (or will have) no entry.
    inventory_before: Optional[dict[str, Any]]
    inventory_after: Optional[dict[str, Any]]
    replaced: list[Replaced] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "from": self.from_version,
            "to": self.to_version,
            "inventoryBefore": self.inventory_before,
            "inventoryAfter": self.inventory_after,
            "replaced": [r.to_json() for r in self.replaced],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> IntentEntry:
        return cls(
            data["action"],
            data["from"],
            data["to"],
            data["inventoryBefore"],
            data["inventoryAfter"],
            [Replaced.from_json(r) for r in data["replaced"]],
        )


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
                {k: IntentEntry.from_json(v) for k, v in (data["components"] or {}).items()},
            )
        except KeyError as exc:
            raise ValueError(f"the installing intent has no {exc}") from exc
