"""The crash sweep: remove what a killed run left behind, and finish what it left half-done."""

from __future__ import annotations

import shutil
from typing import Optional

from agentd.converge.intent import prune_backups
from agentd.converge.kept import recover_kept
from agentd.core.paths import (
    PLUGIN_DIR,
    SYSTEMD_DIR,
    USR_LOCAL_BIN,
    USR_LOCAL_INCLUDE,
    USR_LOCAL_LIB,
)
from agentd.state.store import AgentState
from agentd.system.files import sweep_temp_files
from agentd.system.host import Host

# Where agentd writes beside its targets (atomic writes leave `.<name>.agentd-<hex>` there).
_WRITTEN_DIRS = (
    USR_LOCAL_BIN,
    USR_LOCAL_LIB,
    PLUGIN_DIR,
    f"{USR_LOCAL_INCLUDE}/wasmedge",
    "/etc/rancher/k3s",
    SYSTEMD_DIR,
    "/var/lib/rancher/k3s/agent/etc/containerd",
    "/var/lib/rancher/k3s/server/manifests",
)


def sweep(host: Host, state: AgentState, metrics_path: Optional[str]) -> list[str]:
    """Remove what a run killed half-way left (temp files beside targets, partial downloads,
    scratch dirs, backups no interrupted install needs) and finish a kept-version swap it
    interrupted. The caller holds the state lock: no other agentd run is writing any of it.
    Returns what was removed, as node paths."""
    paths = host.paths
    written = [paths.under(d) for d in _WRITTEN_DIRS]
    # The health probe's program, and the metrics file (written on every run, under the lock).
    written += [paths.state_dir, paths.source_dir, paths.state_dir / "probe"]
    if metrics_path is not None:
        written.append(paths.under(metrics_path).parent)
    removed = [p for directory in written for p in sweep_temp_files(directory)]
    for scratch in (paths.cache_dir / "tmp", paths.source_dir / "tmp", paths.staging_dir):
        if scratch.is_dir():
            for entry in scratch.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(entry)
    removed += prune_backups(host, state)
    removed += recover_kept(host)
    return [paths.host_view(p) for p in removed]
