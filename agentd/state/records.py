"""The records of a run state.json keeps: its result, the no-op memo, actions held for a window."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional


def as_object(data: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise TypeError(f"{where}: {type(data).__name__} is not an object")
    return data


def typed(data: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """`data[key]`, which must be of `kind` (a TypeError names the field, for StateError)."""
    value = as_object(data, where).get(key)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int in Python, never a number in state.json.
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise TypeError(f"{where}.{key}: {type(value).__name__} is not {names}")
    return value


OPT_STR = (str, type(None))


NUMBER = (int, float)


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
class Noop:
    """The digest of the inputs of the last plan that found nothing to do, and its result
    (`noop`): while the digest matches, apply skips loading, detecting and planning."""

    digest: str
    result: RunResult

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "result": self.result.to_json()}

    @classmethod
    def from_json(cls, data: Any, where: str = "noop") -> Noop:
        result = typed(data, "result", dict, where)
        return cls(
            typed(data, "digest", str, where), RunResult.from_json(result, f"{where}.result")
        )


# RunResult's fields and their keys in state.json and `--json`, in the order they are written;
# a field that is None is not written (a run that failed before planning has no actions).
_RUN_KEYS = (
    ("kind", "kind", str),
    ("generation", "generation", int),
    ("arch", "arch", str),
    ("outcome", "outcome", str),
    ("dry_run", "dryRun", bool),
    ("cached", "cached", bool),
    ("started_at", "startedAt", str),
    ("sources", "sources", list),
    ("fleet", "fleet", dict),
    ("actions", "actions", list),
    ("unchanged", "unchanged", list),
    ("timings", "timings", dict),
    ("warnings", "warnings", list),
    ("refusals", "refusals", list),
    ("targeting", "targeting", list),
    ("downloads", "downloads", list),
    ("service_calls", "serviceCalls", list),
    ("rollback", "rollback", dict),
    ("error", "error", str),
    ("problems", "problems", list),
    ("deferred", "deferred", dict),
    ("pull", "pull", dict),
    ("finished_at", "finishedAt", str),
    ("duration_ms", "durationMs", (int, float)),
)


# The fields the records in a result's lists share, as `status` and `apply` print them.
_ITEM_FIELDS: dict[str, tuple[type, ...]] = {
    "component": OPT_STR,
    "action": OPT_STR,
    "status": OPT_STR,
    "reason": OPT_STR,
    "from": OPT_STR,
    "to": OPT_STR,
    "url": OPT_STR,
    "sha256": OPT_STR,
    "error": OPT_STR,
    "bytes": (int, type(None)),
    "durationMs": (*NUMBER, type(None)),
    "disruptive": (bool, type(None)),
    "cached": (bool, type(None)),
}


def _number(value: Any) -> bool:
    return isinstance(value, NUMBER) and not isinstance(value, bool)


# What the no-op memo keeps of a result: what the plan said, not when or how long.
_MEMO_FIELDS = (
    "kind",
    "generation",
    "arch",
    "outcome",
    "dry_run",
    "sources",
    "fleet",
    "actions",
    "unchanged",
    "warnings",
    "refusals",
    "targeting",
)


@dataclass(frozen=True)
class RunResult:
    """One run's result (`lastRun`, `noop.result`, what `apply --json` prints): an apply, or a
    rollback. The lists hold the JSON of the records of the stages above this one (each
    action or step, each unchanged entry, each targeting note, each download)."""

    kind: str  # apply, rollback
    outcome: str  # planned, converged, deferred, failed, refused, cancelled, rolled back
    generation: Optional[int] = None
    arch: Optional[str] = None
    dry_run: Optional[bool] = None
    cached: Optional[bool] = None  # answered from the no-op memo
    started_at: Optional[str] = None
    sources: Optional[list[str]] = None
    fleet: Optional[dict[str, Any]] = None  # the fleet document's generation, origin, signer
    actions: Optional[list[dict[str, Any]]] = None
    unchanged: Optional[list[dict[str, Any]]] = None
    timings: Optional[dict[str, float]] = None
    warnings: Optional[list[str]] = None
    refusals: Optional[list[dict[str, Any]]] = None  # what apply refused, and why
    targeting: Optional[list[dict[str, Any]]] = None
    downloads: Optional[list[dict[str, Any]]] = None
    service_calls: Optional[list[str]] = None
    rollback: Optional[dict[str, Any]] = None  # what `agentd rollback` put back
    error: Optional[str] = None
    problems: Optional[list[str]] = None  # the desired state's FILE:LINE:COL errors
    deferred: Optional[Deferred] = None  # held for the maintenance window
    pull: Optional[dict[str, Any]] = None  # the pull before the run
    finished_at: Optional[str] = None
    duration_ms: Optional[float] = None

    @property
    def succeeded(self) -> bool:
        """Converged, or held its disruptive actions for the window."""
        return self.outcome in ("converged", "deferred")

    def memo(self) -> RunResult:
        """What the no-op memo keeps of this result."""
        return RunResult(**{name: getattr(self, name) for name in _MEMO_FIELDS})

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, key, _ in _RUN_KEYS:
            value = getattr(self, name)
            if value is not None:
                out[key] = value.to_json() if isinstance(value, Deferred) else value
        return out

    @classmethod
    def from_json(cls, data: Any, where: str = "lastRun") -> RunResult:
        table = as_object(data, where)
        fields: dict[str, Any] = {}
        for name, key, kind in _RUN_KEYS:
            if key not in ("kind", "outcome") and table.get(key) is None:
                continue
            fields[name] = typed(table, key, kind, where)
        for key in ("actions", "unchanged", "targeting", "downloads"):
            for i, item in enumerate(table.get(key) or ()):
                for field, kinds in _ITEM_FIELDS.items():
                    if field in as_object(item, f"{where}.{key}[{i}]"):
                        typed(item, field, kinds, f"{where}.{key}[{i}]")
        for key in ("sources", "warnings", "serviceCalls", "problems"):
            if not all(isinstance(item, str) for item in table.get(key) or ()):
                raise TypeError(f"{where}.{key}: not a list of strings")
        if not all(_number(v) for v in (table.get("timings") or {}).values()):
            raise TypeError(f"{where}.timings: not an object of numbers")
        if "deferred" in fields:
            fields["deferred"] = Deferred.from_json(fields["deferred"], f"{where}.deferred")
        if "duration_ms" in fields:
            fields["duration_ms"] = float(fields["duration_ms"])
        return cls(**fields)
