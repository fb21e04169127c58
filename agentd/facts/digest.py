"""A digest of everything `plan()` reads, so an unchanged node skips loading and planning."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import agentd
from agentd.core.components import BINARY_KINDS, LIBRARY_GLOBS, MANAGED_CONFIG_PATHS
from agentd.core.paths import BIN_SEARCH_DIRS, Paths
from agentd.facts.configs import MAX_CONFIG_BYTES
from agentd.system.readfile import FileRefused, read_bounded

# The packages whose code decides the plan: editing any module in them (even without a version
# bump) must invalidate every stored digest. Their modules are listed from the file system, so a
# module added or moved within them is covered without editing this list.
_PLANNING_PACKAGES = ("core", "schema", "settings", "facts", "state", "desired", "plan")


def _stat(path: Path) -> list[Any] | None:
    try:
        st = path.lstat()
    except OSError:
        return None
    return [st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _listing(root: Path, pattern: str) -> list[Any]:
    """Every file matching the node-path glob `pattern` under `root`, with its stat."""
    try:
        return [[str(p.relative_to(root)), _stat(p)] for p in sorted(root.glob(pattern[1:]))]
    except OSError:
        return []


def _content(path: Path) -> str | None:
    try:
        # No config or desired-state file agentd accepts is larger: one that is, or one that is
        # not a regular file, is refused when it is loaded, and its stat stands in for it here.
        return hashlib.sha256(read_bounded(path, MAX_CONFIG_BYTES)).hexdigest()
    except FileRefused:
        return json.dumps(_stat(path))
    except OSError:
        return None


def planning_modules(package: Path) -> list[Path]:
    """Every module of the packages the plan depends on, in a stable order."""
    return sorted(m for name in _PLANNING_PACKAGES for m in (package / name).glob("*.py"))


def planning_inputs_digest(
    paths: Paths, sources: Sequence[Path], node: Mapping[str, Any], state_inputs: Any
) -> str:
    """sha256 over the plan's inputs: desired-state bytes, this node's identity as targeting
    sees it (`node`: id, hostname, arch, OS, labels), binaries, plugin and library files (by
    stat), the managed config files (by content), agentd's inventory and its own code.

    Stat fingerprints include ctime, which no user-space write can set back, so a binary
    replaced in place changes the digest even if its mtime and size are forged.
    """
    package = Path(agentd.__file__).parent
    code = [[str(m.relative_to(package)), _stat(m)] for m in planning_modules(package)]
    doc = {
        "agentd": [agentd.__version__, code],
        # Selectors and rollout waves decide which overrides apply: a new label is a new plan.
        "node": dict(node),
        "sources": [[str(p), _content(p)] for p in sources],
        "binaries": [
            [kind.binary, d, _stat(paths.under(d) / str(kind.binary))]
            for kind in BINARY_KINDS
            for d in BIN_SEARCH_DIRS
        ],
        "libs": [_listing(paths.root, pattern) for pattern in LIBRARY_GLOBS],
        "configs": [[p, _content(paths.under(p))] for p in MANAGED_CONFIG_PATHS],
        "state": state_inputs,
        "env": os.environ.get("AGENTD_ARCH"),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
