"""Which parts of a fleet document apply to this node: selectors, and staged rollout waves."""

from __future__ import annotations

import fnmatch
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from agentd.desired.identity import NodeIdentity
from agentd.schema.yamlload import Loaded, Loc, merge

# What an override may change; anything else in it is a mistake the schema reports.
OVERRIDABLE = ("components", "runtimeClasses", "maintenanceWindow")
# Kept when a document's selector leaves this node out: what it is and its generation.
IDENTITY_KEYS = ("apiVersion", "kind", "generation", "selector", "overrides")


@dataclass(frozen=True)
class Targeting:
    """Why a document, or one of its overrides, does or does not apply to this node."""

    source: str
    override: Optional[str]  # None: the document itself
    applies: bool
    why: str

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "override": self.override,
            "applies": self.applies,
            "why": self.why,
        }


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value] if isinstance(value, list) else []


def matches(selector: Mapping[str, Any], node: NodeIdentity) -> tuple[bool, str]:
    """Whether `node` matches: every field given must match (one of a list, all labels)."""
    arches = _strings(selector.get("arch"))
    if arches and node.arch not in arches:
        return False, f"arch {node.arch} is not {' or '.join(arches)}"
    globs = _strings(selector.get("hostname"))
    if globs and not any(fnmatch.fnmatchcase(node.hostname, g) for g in globs):
        return False, f"hostname {node.hostname} matches none of {', '.join(globs)}"
    systems = _strings(selector.get("os"))
    if systems and not any(node.os == s or node.os.split(" ")[0] == s for s in systems):
        return False, f"os {node.os} is not {' or '.join(systems)}"
    labels = selector.get("labels")
    if isinstance(labels, Mapping):
        for key, want in labels.items():
            have = node.labels.get(str(key))
            if have != str(want):
                shown = f"{key}={have}" if have is not None else f"no label {key}"
                return False, f"{shown}, the selector wants {key}={want}"
    return True, "the selector matches" if selector else "no selector: every node"


def wave_position(node_id: str, key: str) -> float:
    """This node's place in [0, 1) for a rollout key: the same for the same key (so a higher
    percent is a superset of a lower one), independent between keys (a new key reshuffles)."""
    digest = hashlib.sha256(f"{key}\0{node_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def in_wave(rollout: Mapping[str, Any], node: NodeIdentity) -> tuple[bool, str]:
    key = str(rollout.get("key", ""))
    # Raw data, validated only later: a percent that is no finite number (a 400-digit int,
    # .nan) puts the node in no wave, and validation then names its place.
    try:
        percent = float(rollout.get("percent", 100))
    except (TypeError, ValueError, OverflowError):
        percent = 0.0
    if not math.isfinite(percent):
        percent = 0.0
    canary = rollout.get("canary")
    if isinstance(canary, Mapping) and canary:
        is_canary, _ = matches({"labels": canary}, node)
        if is_canary:
            return True, f"a canary ({', '.join(f'{k}={v}' for k, v in canary.items())})"
    position = wave_position(node.node_id, key)
    if position < percent / 100:
        return True, f"in the {percent:g}% wave of {key!r} (position {position:.4f})"
    return False, f"not in the {percent:g}% wave of {key!r} yet (position {position:.4f})"


def _subtree(loaded: Loaded, prefix: Loc) -> Loaded:
    """The part of `loaded` under `prefix`, as a document of its own (positions kept)."""
    n = len(prefix)

    def cut(table: Mapping[Loc, Any]) -> dict[Loc, Any]:
        return {path[n:]: pos for path, pos in table.items() if path[:n] == prefix}

    node: Any = loaded.data
    for item in prefix:
        node = node[item]
    return Loaded(node, cut(loaded.positions), cut(loaded.keys))


def _only(loaded: Loaded, keys: tuple[str, ...]) -> Loaded:
    data = {k: v for k, v in loaded.data.items() if k in keys}
    positions = {p: pos for p, pos in loaded.positions.items() if not p or p[0] in keys}
    return Loaded(data, positions, {p: pos for p, pos in loaded.keys.items() if p[0] in keys})


def apply_targeting(
    loaded: Loaded, node: NodeIdentity, source: str
) -> tuple[Loaded, list[Targeting]]:
    """The document as it applies to `node`: nothing of it when its selector leaves the node
    out; each override that applies (selector and rollout wave) merged over it, in order.

    Malformed selectors and overrides are left for the schema to report, with their place."""
    data = loaded.data
    if not isinstance(data, dict):
        return loaded, []
    notes: list[Targeting] = []
    selector = data.get("selector")
    if isinstance(selector, Mapping):
        ok, why = matches(selector, node)
        notes.append(Targeting(source, None, ok, why))
        if not ok:
            return _only(loaded, IDENTITY_KEYS), notes
    overrides = data.get("overrides")
    if not isinstance(overrides, list):
        return loaded, notes
    result = loaded
    for i, override in enumerate(overrides):
        if not isinstance(override, Mapping):
            continue
        name = str(override.get("name") or f"overrides[{i}]")
        sel = override.get("selector")
        ok, why = matches(sel if isinstance(sel, Mapping) else {}, node)
        rollout = override.get("rollout")
        if ok and isinstance(rollout, Mapping):
            ok, why = in_wave(rollout, node)
        notes.append(Targeting(source, name, ok, why))
        if not ok:
            continue
        content = _only(_subtree(loaded, ("overrides", i)), OVERRIDABLE)
        if content.data:
            result = merge(result, content)
    return result, notes
