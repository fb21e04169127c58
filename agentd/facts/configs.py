"""The managed config files as they are on the node now, for the planner to compare."""

from __future__ import annotations

from typing import Optional

from agentd.core.components import MANAGED_CONFIG_PATHS
from agentd.core.paths import Paths
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
