"""The managed config files as they are on the node now, for the planner to compare."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

from agentd.core.components import MANAGED_CONFIG_PATHS, kind_of
from agentd.core.paths import Paths
from agentd.state.inventory import InventoryEntry
from agentd.system.files import read_bytes_limited

MAX_CONFIG_BYTES = 1 << 20


def read_configs(paths: Paths) -> dict[str, Optional[bytes]]:
    """The current content of every file the planner compares (None: absent, unreadable, or
    larger than any config agentd writes)."""
    out: dict[str, Optional[bytes]] = {}
    for node_path in MANAGED_CONFIG_PATHS:
        try:
            out[node_path] = read_bytes_limited(paths.under(node_path), MAX_CONFIG_BYTES)
        except OSError:
            out[node_path] = None
    return out


def missing_placed(paths: Paths, inventory: Mapping[str, InventoryEntry]) -> dict[str, str]:
    """The placed archives (a chart, an image tarball) agentd recorded and someone removed: the
    plan puts them back (its `force`), as it rewrites a config file that differs."""
    out: dict[str, str] = {}
    for component, entry in inventory.items():
        kind = kind_of(component)
        if kind is None or not kind.placed:
            continue
        gone = [f for f in entry.files if not paths.under(f).is_file()]
        if gone:
            out[component] = f"{gone[0]} is missing"
    return out
