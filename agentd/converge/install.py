"""Converge: fetch and verify every artifact, stage it, then install through an undo journal."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from agentd.converge.archive import extract_tarball
from agentd.converge.fetch import ArtifactCache, FetchResult
from agentd.core.errors import AgentError, Cancelled, ConvergeError, RollbackError
from agentd.core.paths import (
    CRUN_BIN,
    K3S_BIN,
    PLUGIN_DIR,
    SYSTEMD_DIR,
    USR_LOCAL_BIN,
    USR_LOCAL_INCLUDE,
    USR_LOCAL_LIB,
    Paths,
)
from agentd.core.redact import redact_text, redact_url
from agentd.core.versions import upstream_version
from agentd.plan import render
from agentd.plan.diff import PLUGIN_PREFIX, Action, Plan
from agentd.state.store import AgentState, InventoryEntry, save_state
from agentd.system.files import atomic_copy, atomic_symlink, atomic_write, remove_path
from agentd.system.host import Host
from agentd.system.log import get_logger, log_fields
from agentd.system.packages import PackageError
from agentd.system.services import ServiceError

K3S_LINKS = ("kubectl", "crictl", "ctr")
# Components whose change k3s only notices when it restarts.
RESTARTS_K3S = ("k3s", "crun", "k3s/config", "k3s/unit", "k3s/containerd")


@dataclass(frozen=True)
class Op:
    """One change to one node path."""

    kind: str  # copy, write, symlink, remove
    path: str  # node path
    source: Optional[Path] = None
    data: Optional[bytes] = None
    link: Optional[str] = None
    mode: int = 0o644


@dataclass
class Step:
    action: Action
    ops: list[Op] = field(default_factory=list)
    sha256: Optional[str] = None
    package_version: Optional[str] = None  # the distribution package version chosen to install
    status: str = "pending"  # pending, done, failed, undone
    duration_ms: float = 0.0

    def to_json(self) -> dict[str, Any]:
        out = self.action.to_json()
        out["status"] = self.status
        out["durationMs"] = round(self.duration_ms, 1)
        return out


@dataclass
class _Saved:
    component: str
    path: str
    kind: str  # file, symlink, absent
    backup: Optional[Path] = None
    link: Optional[str] = None
    mode: int = 0o644

    def to_json(self, paths: Paths) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "kind": self.kind, "mode": self.mode}
        if self.backup is not None:
            out["backup"] = paths.host_view(self.backup)
        if self.link is not None:
            out["link"] = self.link
        return out

    @classmethod
    def from_json(cls, paths: Paths, component: str, data: Mapping[str, Any]) -> _Saved:
        backup = paths.under(data["backup"]) if data.get("backup") else None
        return cls(component, data["path"], data["kind"], backup, data.get("link"), data["mode"])


class Journal:
    """Saves each target's previous state before the first change to it, so a run can be undone."""

    def __init__(self, host: Host, backup_dir: Path) -> None:
        self.host = host
        self.backup_dir = backup_dir
        self.saved: list[_Saved] = []
        self._seen: set[str] = set()
        self._touched: set[str] = set()

    def save(self, component: str, node_path: str) -> None:
        """Save `node_path` now, ahead of its change (the intent records the saved state)."""
        self._save(component, node_path)

    def _save(self, component: str, node_path: str) -> None:
        if node_path in self._seen:
            return
        self._seen.add(node_path)
        target = self.host.paths.under(node_path)
        if target.is_symlink():
            entry = _Saved(component, node_path, "symlink", link=os.readlink(target))
        elif target.is_file():
            self.backup_dir.mkdir(parents=True, exist_ok=True)
            backup = self.backup_dir / f"{len(self.saved):04d}"
            try:
                # A hard link is free and keeps the old inode alive after the rename over it.
                os.link(target, backup)
            except OSError:
                shutil.copy2(target, backup)
            entry = _Saved(
                component, node_path, "file", backup=backup, mode=target.stat().st_mode & 0o7777
            )
        elif target.exists():
            raise ConvergeError(f"{node_path} is a directory or special file; not replacing it")
        else:
            entry = _Saved(component, node_path, "absent")
        self.saved.append(entry)

    def apply(self, component: str, op: Op) -> None:
        self._save(component, op.path)
        self._touched.add(op.path)
        target = self.host.paths.under(op.path)
        if op.kind == "copy":
            assert op.source is not None
            atomic_copy(op.source, target, op.mode)
        elif op.kind == "write":
            assert op.data is not None
            atomic_write(target, op.data, op.mode)
        elif op.kind == "symlink":
            assert op.link is not None
            atomic_symlink(op.link, target)
        elif op.kind == "remove":
            remove_path(target)
        else:
            raise ValueError(op.kind)

    def undo(self) -> list[str]:
        """Put every saved path back, newest first; returns what could not be restored."""
        failures = []
        for entry in reversed(self.saved):
            if entry.path not in self._touched:
                continue  # saved ahead, never changed
            try:
                _restore(self.host, entry)
            except OSError as exc:
                failures.append(f"{entry.path}: {exc}")
        return failures


def _restore(host: Host, entry: _Saved) -> None:
    target = host.paths.under(entry.path)
    if entry.kind == "file":
        assert entry.backup is not None
        atomic_copy(entry.backup, target, entry.mode)
    elif entry.kind == "symlink":
        assert entry.link is not None
        atomic_symlink(entry.link, target)
    else:
        remove_path(target)


# --- kept versions (rollback) ------------------------------------------------------------------


def _kept_dir(host: Host, component: str) -> Path:
    return host.paths.kept_dir / component.replace("/", "__")


def _keep(
    host: Host,
    component: str,
    entries: list[_Saved],
    old: InventoryEntry | None,
    meta: dict[str, Any],
) -> None:
    """Make `entries` (the state a change replaced) the version `agentd rollback` restores."""
    final = _kept_dir(host, component)
    tmp = final.with_name(final.name + f".new-{secrets.token_hex(3)}")
    tmp.mkdir(parents=True)
    files = []
    for i, e in enumerate(entries):
        item: dict[str, Any] = {"path": e.path, "kind": e.kind, "mode": e.mode}
        if e.kind == "file":
            assert e.backup is not None
            blob = tmp / f"{i:04d}"
            try:
                os.link(e.backup, blob)
            except OSError:
                shutil.copy2(e.backup, blob)
            item["blob"] = blob.name
        elif e.kind == "symlink":
            item["link"] = e.link
        files.append(item)
    manifest = {
        **meta,
        "component": component,
        "inventory": old.to_json() if old else None,
        "files": files,
    }
    atomic_write(tmp / "manifest.json", json.dumps(manifest, indent=2).encode())
    old_dir = final.with_name(final.name + f".old-{secrets.token_hex(3)}")
    if final.exists():
        final.rename(old_dir)
    tmp.rename(final)
    shutil.rmtree(old_dir, ignore_errors=True)


def kept_manifest(host: Host, component: str) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(
            (_kept_dir(host, component) / "manifest.json").read_text()
        )
    except (OSError, ValueError):
        return None
    return data


# --- what a killed run leaves behind -------------------------------------------------------------

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
    from agentd.system.files import sweep_temp_files  # noqa: PLC0415

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
    removed += _prune_backups(host, state)
    removed += _recover_kept(host)
    return [paths.host_view(p) for p in removed]


def _recover_kept(host: Host) -> list[Path]:
    """`_keep` swaps a component's kept version with two renames: killed between them, the
    final directory is missing and the new one waits beside it."""
    kept = host.paths.kept_dir
    if not kept.is_dir():
        return []
    removed: list[Path] = []
    leftovers = [p for p in kept.iterdir() if ".new-" in p.name or ".old-" in p.name]
    for path in sorted(leftovers):
        final = kept / path.name.split(".new-")[0].split(".old-")[0]
        if ".new-" in path.name and not final.exists() and (path / "manifest.json").is_file():
            path.rename(final)  # the swap's second rename, done now
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


# --- the write-ahead intent -----------------------------------------------------------------

# A run killed between replacing a target and writing state.json leaves new (or half old, half
# new) files and the old inventory: the next run's detection reads the new version, plans
# nothing, and rollback would put back the wrong thing. So before a component's first target is
# touched, state.json records what it becomes and what it replaced (the `installing` intent);
# the next run installs every component still in it again, whatever detection reads, and
# records it as a clean run would, keeping what the node had before the killed run.


def _backups_dir(host: Host) -> Path:
    """The journal's backups: what each target was before this run (or an interrupted one)."""
    return host.paths.state_dir / "replaced"


def _write_ahead(
    host: Host,
    state: AgentState,
    journal: Journal,
    step: Step,
    earlier: dict[str, Any] | None,
    generation: int,
) -> None:
    """Save `step`'s targets and persist its intent entry, before any of them is changed.
    `earlier` is the intent a killed run left, as this run found it."""
    a = step.action
    if a.action == "restart":
        return
    for op in step.ops:
        journal.save(a.component, op.path)
    old = state.inventory.get(a.component)
    after = _inventory_after(step)
    entry: dict[str, Any] = {
        "action": a.action,
        "from": a.from_version,
        "to": a.to_version,
        "inventoryBefore": old.to_json() if old else None,
        "inventoryAfter": after.to_json() if after else None,
        "replaced": [e.to_json(host.paths) for e in journal.saved if e.component == a.component],
    }
    prior = ((earlier or {}).get("components") or {}).get(a.component)
    if prior is not None:
        # The files found now are the killed run's work: what rollback must put back is what
        # the node had before that run.
        seen = {r["path"] for r in prior["replaced"]}
        entry["replaced"] = prior["replaced"] + [
            r for r in entry["replaced"] if r["path"] not in seen
        ]
        for key in ("action", "from", "inventoryBefore"):
            entry[key] = prior[key]
    components = dict((state.installing or {}).get("components") or {})
    components[a.component] = entry
    state.installing = {"generation": generation, "components": components}
    save_state(host.paths, state)


def _settle_intent(host: Host, state: AgentState, installing: dict[str, Any] | None) -> None:
    """Make `installing` the intent on disk, then drop the backups it no longer names."""
    state.installing = installing
    save_state(host.paths, state)
    _prune_backups(host, state)


def _prune_backups(host: Host, state: AgentState) -> list[Path]:
    """Remove the backups of runs that no intent names (recorded, undone, or killed before
    writing theirs); the kept versions hold their own links to the same files."""
    root = _backups_dir(host)
    if not root.is_dir():
        return []
    needed = {
        host.paths.under(r["backup"]).parent
        for entry in ((state.installing or {}).get("components") or {}).values()
        for r in entry["replaced"]
        if r.get("backup")
    }
    removed = []
    for path in sorted(root.iterdir()):
        if path in needed:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


# --- staging -----------------------------------------------------------------------------------


class _Stager:
    """Turns each planned action into file operations, touching nothing outside the state dir."""

    def __init__(self, host: Host, state: AgentState, work: Path) -> None:
        self.host = host
        self.state = state
        self.work = work

    def ops(self, action: Action, blob: FetchResult | None) -> list[Op]:
        c, verb = action.component, action.action
        if verb == "configure":
            assert action.target is not None
            if action.content is None:
                return [Op("remove", action.target)]
            return [Op("write", action.target, data=action.content, mode=0o644)]
        if verb == "restart":
            return []
        if verb == "remove":
            return [Op("remove", p) for p in self._installed_files(action)]
        assert blob is not None
        if c == "k3s":
            return self._k3s(blob.path)
        if c == "crun":
            return [Op("copy", CRUN_BIN, source=blob.path, mode=0o755)]
        if c == "wasmedge":
            return self._wasmedge(blob.path)
        if c.startswith(PLUGIN_PREFIX):
            return self._plugin(c[len(PLUGIN_PREFIX) :], blob.path)
        raise ConvergeError(f"{c}: agentd does not know how to {verb} it")

    def _k3s(self, blob: Path) -> list[Op]:
        ops = [Op("copy", K3S_BIN, source=blob, mode=0o755)]
        recorded = self.state.inventory.get("k3s")
        for name in K3S_LINKS:
            node_path = f"{USR_LOCAL_BIN}/{name}"
            link = self.host.paths.under(node_path)
            mine = recorded is not None and node_path in recorded.files
            # Like get.k3s.io: link only where no such command exists already.
            if mine or not (link.exists() or link.is_symlink()):
                ops.append(Op("symlink", node_path, link="k3s"))
        return ops

    def _extract(self, name: str, blob: Path) -> tuple[Path, list[str]]:
        dest = self.work / "extract" / name.replace("/", "__")
        return dest, extract_tarball(blob, dest)

    def _wasmedge(self, blob: Path) -> list[Op]:
        dest, members = self._extract("wasmedge", blob)
        tops = {m.split("/", 1)[0] for m in members}
        if len(tops) != 1 or not next(iter(tops)).startswith("WasmEdge-"):
            raise ConvergeError(
                f"the WasmEdge archive should hold one WasmEdge-<version>-Linux/ directory, "
                f"found {sorted(tops)}"
            )
        top = next(iter(tops))
        prefix_map = {
            "bin": USR_LOCAL_BIN,
            "lib64": USR_LOCAL_LIB,
            "lib": USR_LOCAL_LIB,
            "include": USR_LOCAL_INCLUDE,
        }
        ops: list[Op] = []
        for member in members:
            parts = member.split("/")
            if len(parts) < 3 or parts[1] not in prefix_map:
                continue  # README, LICENSE and the like stay out of /usr/local
            node_path = prefix_map[parts[1]] + "/" + "/".join(parts[2:])
            src = dest / member
            if src.is_symlink():
                ops.append(Op("symlink", node_path, link=os.readlink(src)))
            else:
                ops.append(Op("copy", node_path, source=src, mode=src.stat().st_mode & 0o755))
        if not any(o.path == f"{USR_LOCAL_BIN}/wasmedge" for o in ops):
            raise ConvergeError(f"the WasmEdge archive has no {top}/bin/wasmedge")
        # Files of the version being replaced that the new one does not have (an old .so.0.x).
        new_paths = {o.path for o in ops}
        recorded = self.state.inventory.get("wasmedge")
        if recorded:
            ops += [Op("remove", p) for p in recorded.files if p not in new_paths]
        # Real files before the symlinks that point at them.
        return sorted(ops, key=lambda o: (o.kind == "symlink", o.kind == "remove", o.path))

    def _plugin(self, name: str, blob: Path) -> list[Op]:
        dest, members = self._extract(PLUGIN_PREFIX + name, blob)
        libs = [m for m in members if m.endswith(".so") and not (dest / m).is_symlink()]
        if not libs:
            raise ConvergeError(f"plugin {name}: the archive holds no .so file")
        return [
            Op("copy", f"{PLUGIN_DIR}/{Path(m).name}", source=dest / m, mode=0o644) for m in libs
        ]

    def replaced_by_package(self, action: Action) -> list[Op]:
        """What agentd installed from artifacts for a component its package now provides:
        removed (journaled, so undone on failure, and kept for rollback), as the plan says."""
        recorded = self.state.inventory.get(action.component)
        if recorded is None or not recorded.files:
            return []
        return [Op("remove", p) for p in recorded.files]

    def _installed_files(self, action: Action) -> list[str]:
        recorded = self.state.inventory.get(action.component)
        if recorded and recorded.files:
            return list(recorded.files)
        # Not recorded (installed before agentd, or by hand in /usr/local): the upstream layout.
        c = action.component
        paths = self.host.paths
        if c.startswith(PLUGIN_PREFIX):
            return [action.target] if action.target else []
        if c == "crun":
            return [CRUN_BIN]
        if c == "k3s":
            links = [
                f"{USR_LOCAL_BIN}/{n}"
                for n in K3S_LINKS
                if os.path.realpath(paths.under(f"{USR_LOCAL_BIN}/{n}"))
                == os.path.realpath(paths.under(K3S_BIN))
            ]
            return [K3S_BIN, *links]
        if c == "wasmedge":
            found = [f"{USR_LOCAL_BIN}/wasmedge", f"{USR_LOCAL_BIN}/wasmedgec"]
            found += [paths.host_view(p) for p in paths.usr_local_lib.glob("libwasmedge.so*")]
            inc = paths.usr_local_include / "wasmedge"
            found += [paths.host_view(p) for p in inc.rglob("*") if not p.is_dir()]
            return found
        return []


# --- the run -----------------------------------------------------------------------------------


@dataclass
class RunReport:
    """What one converge did, for state.json, `apply --json` and the logs."""

    steps: list[Step] = field(default_factory=list)
    downloads: list[dict[str, Any]] = field(default_factory=list)
    service_calls: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    error: Optional[str] = None
    undo_failures: list[str] = field(default_factory=list)


@contextlib.contextmanager
def _timed(report: RunReport, stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        report.timings_ms[stage] = round((time.perf_counter() - start) * 1000, 1)


def converge(
    host: Host,
    plan: Plan,
    state: AgentState,
    generation: int,
    *,
    cancel: Optional[Callable[[], None]] = None,
    tls_verify: Union[bool, str] = True,
    downloads: Optional[Mapping[str, Any]] = None,
) -> RunReport:
    """Apply `plan`; on any failure put every target back and raise ConvergeError.

    `cancel` is called while downloading and before the first target is touched; it raises
    Cancelled to stop there (once installing has begun, the run finishes). `state.inventory` is
    updated in place only when the whole run succeeded. state.json is written here too: ahead
    of each component (the intent), and with the new inventory once all are done.
    """
    report = RunReport(steps=[Step(a) for a in plan.actions])
    if plan.empty:
        return report
    run_dir = (
        host.paths.staging_dir / f"run-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"
    )
    run_dir.mkdir(parents=True)
    try:
        # Every line the run logs carries its generation: `journalctl AGENTD_GENERATION=12`
        # lists what generation 12 changed.
        with log_fields(generation=generation):
            _converge(host, report, state, generation, run_dir, cancel, tls_verify, downloads or {})
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        report.service_calls = list(host.services.calls)
        if host.packages is not None:
            report.service_calls += host.packages.calls
    return report


def _converge(
    host: Host,
    report: RunReport,
    state: AgentState,
    generation: int,
    run_dir: Path,
    cancel: Optional[Callable[[], None]],
    tls_verify: Union[bool, str],
    downloads: Mapping[str, Any],
) -> None:
    check = cancel or (lambda: None)
    max_bytes = int(downloads.get("maxMiB") or 2048) << 20
    cache = ArtifactCache(host.paths.cache_dir, verify=tls_verify, max_bytes=max_bytes)
    cache.attempts = int(downloads.get("attempts") or 3)
    cache.backoff_s = float(downloads.get("backoff", 1.0))
    timeout = float(downloads.get("timeout") or 30.0)
    blobs: dict[int, FetchResult] = {}
    with _timed(report, "fetch"):
        for i, step in enumerate(report.steps):
            art = step.action.artifact
            if art is None:
                continue
            try:
                check()
                blobs[i] = cache.fetch(art.url, art.sha256, timeout=timeout, progress=check)
            except Cancelled:
                raise
            except AgentError as exc:
                step.status = "failed"
                raise _fail(report, step, exc, "nothing was changed") from exc
            step.sha256 = art.sha256
            report.downloads.append(
                {
                    "component": step.action.component,
                    "url": redact_url(art.url),
                    "sha256": art.sha256,
                    "bytes": blobs[i].size,
                    "cached": not blobs[i].downloaded,
                }
            )
    stager = _Stager(host, state, run_dir)
    with _timed(report, "stage"):
        for i, step in enumerate(report.steps):
            try:
                if step.action.package is not None:
                    step.package_version = _choose_package(host, step.action)
                    step.ops = stager.replaced_by_package(step.action)
                else:
                    step.ops = stager.ops(step.action, blobs.get(i))
            except (AgentError, OSError, PackageError) as exc:
                step.status = "failed"
                raise _fail(report, step, exc, "nothing was changed") from exc
    check()  # the last point at which stopping leaves the node exactly as it was
    # The backups outlive a killed run (the intent names them): not in the swept staging dir.
    journal = Journal(host, _backups_dir(host) / run_dir.name)
    earlier = state.installing
    try:
        with _timed(report, "install"):
            for step in report.steps:
                step.status = "running"
                _write_ahead(host, state, journal, step, earlier, generation)
                _run_step(host, journal, step)
                if step.action.component == "wasmedge":
                    # /usr/local/lib is found through the loader's cache only: refresh it now, so
                    # the new wasmedge (and a Wasm crun after it) can start. Plugins need no
                    # refresh: WasmEdge opens them by path.
                    host.services.ldconfig()
                _read_back(host, step)
    except (AgentError, OSError, ServiceError, PackageError) as exc:
        failed = next((s for s in report.steps if s.status == "running"), None)
        if failed:
            failed.status = "failed"
        report.undo_failures = journal.undo()
        if not report.undo_failures:
            # Undone: only what an earlier killed run left half-done is still to be done again.
            # An undo that failed leaves files of unknown versions: this run's intent stays.
            _settle_intent(host, state, earlier)
        kept = [s for s in report.steps if s.status == "done" and s.action.package]
        for s in report.steps:
            if s.status == "done" and not s.action.package:
                s.status = "undone"
        _recover_services(host, report)
        suffix = "every change of this run was undone"
        if kept:
            # A package manager keeps what it installed; apt/dnf are the place to undo it.
            names = ", ".join(f"{s.action.package} {s.package_version}" for s in kept)
            suffix += f", except the distribution package {names}, which stays installed"
        if report.undo_failures:
            suffix = "undo FAILED for: " + "; ".join(report.undo_failures)
        raise _fail(report, failed, exc, suffix) from exc
    _commit(host, report, state, generation)


def _run_step(host: Host, journal: Journal, step: Step) -> None:
    start = time.perf_counter()
    a = step.action
    if a.action == "remove" and a.component == "k3s":
        host.services.disable_now(a.target or render.k3s_unit_name("server"))
    for op in step.ops:
        journal.apply(a.component, op)
    if a.package is not None:
        assert host.packages is not None
        assert step.package_version is not None
        host.packages.install(a.package, step.package_version, reinstall=a.action == "reinstall")
    if a.component == "k3s/unit":
        host.services.daemon_reload()
    if a.action == "restart":
        assert a.target is not None
        host.services.enable(a.target)
        host.services.restart(a.target)
    step.status = "done"
    step.duration_ms = (time.perf_counter() - start) * 1000
    get_logger().info(
        "action done",
        component=a.component,
        action=a.action,
        version=a.to_version,
        target=a.target,
        reason=a.reason,
        ms=round(step.duration_ms, 1),
    )


def _choose_package(host: Host, action: Action) -> str:
    """The newest version the repositories offer that meets the constraint (the package lists
    refreshed once when none does); ConvergeError, before anything changed, when none can."""
    from agentd.core.versions import satisfies  # noqa: PLC0415

    manager = host.packages
    assert action.package is not None
    assert action.to_version is not None
    if manager is None:
        raise ConvergeError(
            f"{action.component} comes from a distribution package, but this node has neither "
            "apt-get nor dnf"
        )
    constraint, package = action.to_version, action.package
    for attempt in (1, 2):
        offered = manager.available(package)
        fitting = [v for v in offered if satisfies(upstream_version(v), constraint)]
        if fitting:
            from agentd.core.versions import Version, parse_version  # noqa: PLC0415

            def key(v: str) -> Version:
                return parse_version(upstream_version(v)) or Version("0")

            return max(fitting, key=key)
        if attempt == 1:
            manager.refresh()
    shown = ", ".join(sorted({upstream_version(v) for v in offered})) or "nothing"
    raise ConvergeError(
        f"the repositories ({manager.name}) offer {package} {shown}; the desired state asks "
        f"{constraint}: use artifacts for this crun, or a repository that has it"
    )


_READ_BACK = {"k3s": K3S_BIN, "crun": CRUN_BIN, "wasmedge": f"{USR_LOCAL_BIN}/wasmedge"}


def _read_back(host: Host, step: Step) -> None:
    """Run the installed binary and check it is the version the plan asked for.

    The sha256 pins the artifact, not what it is: a document whose URL points at another
    release would otherwise be installed again and again, each run seeing the "wrong" version.
    """
    a = step.action
    if a.action not in ("install", "upgrade", "downgrade", "reinstall"):
        return
    if a.component not in _READ_BACK:
        return
    from agentd.core.versions import compare, satisfies  # noqa: PLC0415
    from agentd.facts import detect  # noqa: PLC0415
    from agentd.system.commands import run_command  # noqa: PLC0415

    node_path = _READ_BACK[a.component]
    if a.package is not None:
        if host.paths.sandboxed:
            return  # under --root a package install is only recorded
        node_path = f"/usr/bin/{a.package}"
    result = run_command([str(host.paths.under(node_path)), "--version"])
    parsers = {
        "k3s": lambda text: (detect.parse_k3s_version(text) or (None,))[0],
        "crun": lambda text: (detect.parse_crun_version(text) or (None,))[0],
        "wasmedge": detect.parse_wasmedge_version,
    }
    got = parsers[a.component](result.stdout) if result.ok else None
    if got is None:
        why = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise ConvergeError(
            f"the installed {node_path} does not run: `{node_path} --version` exited "
            f"{result.returncode}: {why[0][:200]}"
        )
    if a.package is not None:
        if a.to_version is not None and not satisfies(got, a.to_version):
            raise ConvergeError(
                f"package {a.package} {step.package_version} installed {node_path} {got}, "
                f"which does not meet {a.to_version}"
            )
        return
    if a.to_version is not None and compare(got, a.to_version) != 0:
        raise ConvergeError(
            f"the artifact installed as {a.component} {a.to_version} reports version {got}: "
            "its URL and sha256 are of another release"
        )


def _recover_services(host: Host, report: RunReport) -> None:
    """After an undo, restart k3s on the restored files if this run had touched it."""
    touched = [
        s for s in report.steps if s.status == "undone" and s.action.component in RESTARTS_K3S
    ]
    restart = next((s.action for s in report.steps if s.action.action == "restart"), None)
    if touched and restart and restart.target:
        with contextlib.suppress(ServiceError):
            host.services.daemon_reload()
            host.services.restart(restart.target)


def _fail(report: RunReport, step: Step | None, exc: BaseException, outcome: str) -> ConvergeError:
    where = f"{step.action.component} {step.action.action}: " if step else ""
    report.error = redact_text(f"{where}{exc}; {outcome}")
    get_logger().error(
        "converge failed",
        component=step.action.component if step else None,
        action=step.action.action if step else None,
        error=report.error,
    )
    err = ConvergeError(report.error)
    err.report = report
    return err


def _commit(host: Host, report: RunReport, state: AgentState, generation: int) -> None:
    """Do what the intent says for each component of the run: keep what it replaced (for
    rollback) and record its new inventory; the intent goes in the same write of state.json."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    done = dict.fromkeys(s.action.component for s in report.steps if s.action.action != "restart")
    if not done:
        return  # a restart alone: nothing was written ahead, nothing is to be recorded
    assert state.installing is not None  # written ahead of each component
    intent = dict(state.installing["components"])
    for component in done:
        entry = intent.pop(component)
        replaced = [_Saved.from_json(host.paths, component, r) for r in entry["replaced"]]
        before = entry["inventoryBefore"]
        if replaced:
            _keep(
                host,
                component,
                replaced,
                InventoryEntry.from_json(before) if before else None,
                {
                    "version": entry["from"],
                    "replacedBy": entry["to"],
                    "replacedAt": stamp,
                    "generation": generation,
                    "action": entry["action"],
                },
            )
        after = entry["inventoryAfter"]
        if after is None:
            state.inventory.pop(component, None)
        else:
            state.inventory[component] = InventoryEntry.from_json(after)
    # What an earlier killed run left and this one did not plan (a component no longer
    # desired, a k3s upgrade held for the window) stays to be done again.
    _settle_intent(host, state, {**state.installing, "components": intent} if intent else None)


def _inventory_after(step: Step) -> InventoryEntry | None:
    """What the inventory records for a component once `step` is done (None: nothing)."""
    a = step.action
    if a.action == "remove" or (a.action == "configure" and a.content is None):
        return None
    if a.action == "configure":
        assert a.content is not None
        return InventoryEntry(None, hashlib.sha256(a.content).hexdigest(), [a.target or ""])
    if a.package is not None and step.package_version is not None:
        # The package manager owns its files: nothing for agentd to keep or roll back.
        return InventoryEntry(upstream_version(step.package_version), None, [])
    files = sorted({op.path for op in step.ops if op.kind != "remove"})
    return InventoryEntry(a.to_version, step.sha256, files)


# --- rollback ----------------------------------------------------------------------------------


def rollback(host: Host, state: AgentState, component: str) -> dict[str, Any]:
    """Put back what the last change to `component` replaced; the replaced state is kept in turn."""
    interrupted = state.interrupted().get(component)
    if interrupted is not None:
        # The kept version is from the change before the killed one: putting it back would
        # skip a generation (or delete what the killed run was replacing).
        raise RollbackError(
            f"{component}: {interrupted}; `agentd apply` installs and records it first"
        )
    manifest = kept_manifest(host, component)
    if manifest is None:
        raise RollbackError(
            f"nothing kept for {component}: agentd has not changed it on this node "
            f"(kept versions live in {host.paths.host_view(host.paths.kept_dir)})"
        )
    kept = _kept_dir(host, component)
    work = host.paths.staging_dir / f"rollback-{secrets.token_hex(3)}"
    journal = Journal(host, work / "backup")
    current = state.inventory.get(component)
    try:
        for item in manifest["files"]:
            if item["kind"] == "file":
                op = Op("copy", item["path"], source=kept / item["blob"], mode=item["mode"])
            elif item["kind"] == "symlink":
                op = Op("symlink", item["path"], link=item["link"])
            else:
                op = Op("remove", item["path"])
            journal.apply(component, op)
        if component == "wasmedge" or component.startswith(PLUGIN_PREFIX):
            host.services.ldconfig()
        if component == "k3s/unit":
            host.services.daemon_reload()
        restarted = None
        if component in RESTARTS_K3S:
            restarted = _k3s_unit_present(host)
            if restarted:
                host.services.restart(restarted)
    except (OSError, ServiceError) as exc:
        failures = journal.undo()
        shutil.rmtree(work, ignore_errors=True)
        more = f"; undo failed for {failures}" if failures else "; nothing was changed"
        raise RollbackError(redact_text(f"rollback of {component} failed: {exc}{more}")) from exc
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    restored = manifest.get("inventory")
    _keep(
        host,
        component,
        journal.saved,
        current,
        {
            "version": current.version if current else manifest.get("replacedBy"),
            "replacedBy": manifest.get("version"),
            "replacedAt": stamp,
            "generation": manifest.get("generation"),
            "action": "rollback",
        },
    )
    shutil.rmtree(work, ignore_errors=True)
    if restored:
        state.inventory[component] = InventoryEntry.from_json(restored)
    else:
        state.inventory.pop(component, None)
    return {
        "component": component,
        "restoredVersion": manifest.get("version"),
        "replacedVersion": manifest.get("replacedBy"),
        "files": [i["path"] for i in manifest["files"]],
        "restarted": restarted,
    }


def _k3s_unit_present(host: Host) -> str | None:
    for role in ("server", "agent"):
        unit = render.k3s_unit_name(role)
        if host.paths.under(f"{SYSTEMD_DIR}/{unit}").exists():
            return unit
    return None
