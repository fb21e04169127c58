"""The records state.json keeps between runs: held actions, an owed restart, watches, blocks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
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
    result: RunResult

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "result": self.result.to_json()}

    @classmethod
    def from_json(cls, data: Any, where: str = "noop") -> Noop:
        result = typed(data, "result", dict, where)
        return cls(
            typed(data, "digest", str, where), RunResult.from_json(result, f"{where}.result")
        )


def watches(data: Any) -> dict[str, Watch]:
    """`watch` as state.json has it (absent: none)."""
    table = _object({} if data is None else data, "watch")
    return {str(k): Watch.from_json(v, f"watch.{k}") for k, v in table.items()}


def blocks(data: Any) -> dict[str, Block]:
    """`blocked` as state.json has it (absent: none)."""
    table = _object({} if data is None else data, "blocked")
    return {str(k): Block.from_json(v, f"blocked.{k}") for k, v in table.items()}


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
        table = _object(data, where)
        fields: dict[str, Any] = {}
        for name, key, kind in _RUN_KEYS:
            if key not in ("kind", "outcome") and table.get(key) is None:
                continue
            fields[name] = typed(table, key, kind, where)
        for key in ("actions", "unchanged", "targeting", "downloads"):
            for i, item in enumerate(table.get(key) or ()):
                if not isinstance(item, dict):
                    raise TypeError(f"{where}.{key}[{i}]: {type(item).__name__} is not dict")
        if "deferred" in fields:
            fields["deferred"] = Deferred.from_json(fields["deferred"], f"{where}.deferred")
        if "duration_ms" in fields:
            fields["duration_ms"] = float(fields["duration_ms"])
        return cls(**fields)
