"""What agentd installed, per component (`inventory.<component>` in state.json)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from agentd.state.records import typed


@dataclass
class InventoryEntry:
    """What agentd installed for one component: its version, artifact and the files it put."""

    version: Optional[str]
    sha256: Optional[str] = None
    files: list[str] = field(default_factory=list)  # node paths
    signed_by: Optional[str] = None  # the cosign key that verified the artifact

    def to_json(self) -> dict[str, Any]:
        out = {"version": self.version, "sha256": self.sha256, "files": list(self.files)}
        return out | ({"signedBy": self.signed_by} if self.signed_by else {})

    @classmethod
    def from_json(cls, data: Any, where: str = "inventory") -> InventoryEntry:
        files = typed(data, "files", (list, type(None)), where) or []
        if not all(isinstance(f, str) for f in files):
            raise TypeError(f"{where}.files: not a list of node paths")
        return cls(
            typed(data, "version", (str, type(None)), where),
            typed(data, "sha256", (str, type(None)), where),
            list(files),
            typed(data, "signedBy", (str, type(None)), where),
        )
