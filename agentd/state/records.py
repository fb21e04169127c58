"""The records state.json keeps between runs: held actions, an owed restart, watches, blocks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional


def _object(data: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise TypeError(f"{where}: {type(data).__name__} is not an object")
    return data


def typed(data: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """`data[key]`, which must be of `kind` (a TypeError names the field, for StateError)."""
    value = _object(data, where).get(key)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int in Python, never a number in state.json.
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise TypeError(f"{where}.{key}: {type(value).__name__} is not {names}")
    return value


_OPT_STR = (str, type(None))
_NUMBER = (int, float)


@dataclass(frozen=True)
class Deferred:
    """Disruptive actions held back until the maintenance window opens (`deferred`)."""

    actions: list[dict[str, Any]]  # each an Action's JSON (the plan layer is above this one)
    until: str  # when the window opens next, UTC
    window: str  # the window, described

    def to_json(self) -> dict[str, Any]:
        return {"actions": list(self.actions), "until": self.until, "window": self.window}

    @classmethod
    def from_json(cls, data: Any, where: str = "deferred") -> Deferred:
        actions: list[Any] = typed(data, "actions", list, where)
        for i, action in enumerate(actions):
            if not isinstance(action, dict):
                raise TypeError(f"{where}.actions[{i}]: {type(action).__name__} is not dict")
        return cls(actions, typed(data, "until", str, where), typed(data, "window", str, where))


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
            float(typed(data, "until", _NUMBER, where)),
            typed(data, "generation", int, where),
            typed(data, "from", _OPT_STR, where),
            typed(data, "to", _OPT_STR, where),
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
            typed(data, "version", _OPT_STR, where),
            typed(data, "restored", _OPT_STR, where),
            typed(data, "reason", str, where),
            typed(data, "at", str, where),
        )


@dataclass(frozen=True)
class Noop:
    """The digest of the inputs of the last plan that found nothing to do, and its result
    (`noop`): while the digest matches, apply skips loading, detecting and planning."""

    digest: str
    result: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "result": self.result}

    @classmethod
    def from_json(cls, data: Any, where: str = "noop") -> Noop:
        return cls(typed(data, "digest", str, where), typed(data, "result", dict, where))


def watches(data: Any) -> dict[str, Watch]:
    """`watch` as state.json has it (absent: none)."""
    table = _object({} if data is None else data, "watch")
    return {str(k): Watch.from_json(v, f"watch.{k}") for k, v in table.items()}


def blocks(data: Any) -> dict[str, Block]:
    """`blocked` as state.json has it (absent: none)."""
    table = _object({} if data is None else data, "blocked")
    return {str(k): Block.from_json(v, f"blocked.{k}") for k, v in table.items()}
