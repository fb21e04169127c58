"""What state.json holds between runs: an owed restart, watches, rollback blocks and holds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from agentd.state.records import NUMBER, OPT_STR, as_object, typed


@dataclass(frozen=True)
class OwedRestart:
    """A k3s restart owed for changes already made, kept until it is done (`pendingRestart`)."""

    unit: str
    causes: str  # the changes that need it
    since: str  # when it was first owed, UTC

    def to_json(self) -> dict[str, Any]:
        return {"unit": self.unit, "causes": self.causes, "since": self.since}

    @classmethod
    def from_json(cls, data: Any, where: str = "pendingRestart") -> OwedRestart:
        return cls(
            typed(data, "unit", str, where),
            typed(data, "causes", str, where),
            typed(data, "since", str, where),
        )


@dataclass(frozen=True)
class Watch:
    """A component replaced by a run, watched for its rollback window (`watch.<component>`)."""

    since: str  # UTC
    until: float  # time.time() at the window's end
    generation: int
    from_version: Optional[str]
    to_version: Optional[str]
    healthy_before: bool  # only what was healthy before the change is rolled back

    def to_json(self) -> dict[str, Any]:
        return {
            "since": self.since,
            "until": self.until,
            "generation": self.generation,
            "from": self.from_version,
            "to": self.to_version,
            "healthyBefore": self.healthy_before,
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "watch") -> Watch:
        return cls(
            typed(data, "since", str, where),
            float(typed(data, "until", NUMBER, where)),
            typed(data, "generation", int, where),
            typed(data, "from", OPT_STR, where),
            typed(data, "to", OPT_STR, where),
            typed(data, "healthyBefore", bool, where),
        )


@dataclass(frozen=True)
class Block:
    """A change rolled back, not tried again for its generation (`blocked.<component>`)."""

    generation: Optional[int]
    version: Optional[str]  # the version rolled back from
    restored: Optional[str]  # the version put back
    reason: str
    at: str  # UTC

    def to_json(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "version": self.version,
            "restored": self.restored,
            "reason": self.reason,
            "at": self.at,
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "blocked") -> Block:
        return cls(
            typed(data, "generation", (int, type(None)), where),
            typed(data, "version", OPT_STR, where),
            typed(data, "restored", OPT_STR, where),
            typed(data, "reason", str, where),
            typed(data, "at", str, where),
        )


def watches(data: Any) -> dict[str, Watch]:
    """`watch` as state.json has it (absent: none)."""
    table = as_object({} if data is None else data, "watch")
    return {str(k): Watch.from_json(v, f"watch.{k}") for k, v in table.items()}


def blocks(data: Any) -> dict[str, Block]:
    """`blocked` as state.json has it (absent: none)."""
    table = as_object({} if data is None else data, "blocked")
    return {str(k): Block.from_json(v, f"blocked.{k}") for k, v in table.items()}


@dataclass(frozen=True)
class RollbackHold:
    """A manual `agentd rollback`: the component stays at what it put back until the desired
    state names something else than what it was rolled away from (`rollbackHolds.<component>`)."""

    since: str  # UTC
    away: Optional[str]  # the version rolled away from (None: a config file, see away_sha256)
    restored: Optional[str]  # the version put back (None: a config file, or nothing)
    away_sha256: Optional[str] = None  # a config file: the content rolled away from

    def to_json(self) -> dict[str, Any]:
        return {
            "since": self.since,
            "away": self.away,
            "restored": self.restored,
            "awaySha256": self.away_sha256,
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "rollbackHolds") -> RollbackHold:
        return cls(
            typed(data, "since", str, where),
            typed(data, "away", OPT_STR, where),
            typed(data, "restored", OPT_STR, where),
            typed(data, "awaySha256", OPT_STR, where),
        )


def rollback_holds(data: Any) -> dict[str, RollbackHold]:
    """`rollbackHolds` as state.json has it (absent: none)."""
    table = as_object({} if data is None else data, "rollbackHolds")
    return {str(k): RollbackHold.from_json(v, f"rollbackHolds.{k}") for k, v in table.items()}
