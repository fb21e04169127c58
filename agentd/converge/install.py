"""Converge: fetch and check every artifact, stage it, then install and record it, or undo it."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import secrets
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from agentd.converge.fetch import ArtifactCache, FetchResult
from agentd.converge.intent import backups_dir, settle_intent, write_ahead
from agentd.converge.kept import keep
from agentd.converge.oci import Registries
from agentd.converge.signatures import SignaturePolicy, check_signature
from agentd.converge.staging import Stager, choose_package
from agentd.converge.undo import Journal, Op, Saved
from agentd.core.components import kind_of, restarts_k3s
from agentd.core.errors import AgentError, Cancelled, ConvergeError, StorageError
from agentd.core.redact import redact_text, redact_url
from agentd.core.versions import upstream_version
from agentd.plan import render
from agentd.plan.model import Action, Plan
from agentd.state.inventory import InventoryEntry
from agentd.state.store import AgentState
from agentd.system.host import Host
from agentd.system.log import get_logger, log_fields
from agentd.system.packages import PackageError
from agentd.system.progress import Progress
from agentd.system.services import ServiceError
from agentd.system.storage import describe, storage_error


@dataclass
class Step:
    """One planned action in this run: its file operations, and how it went."""

    action: Action
    ops: list[Op] = field(default_factory=list)
    sha256: Optional[str] = None
    package_version: Optional[str] = None  # the distribution package version chosen to install
    signed_by: Optional[str] = None  # the key that verified its artifact's cosign signature
    status: str = "pending"  # pending, done, failed, undone
    duration_ms: float = 0.0

    def to_json(self) -> dict[str, Any]:
        out = self.action.to_json()
        out["status"] = self.status
        out["durationMs"] = round(self.duration_ms, 1)
        return out


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
    progress: Optional[Progress] = None,
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
            _converge(
                host,
                report,
                state,
                generation,
                run_dir,
                cancel,
                tls_verify,
                downloads or {},
                progress or Progress(),
            )
    finally:
        if progress is not None:
            progress.done()
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
    progress: Progress,
) -> None:
    check = cancel or (lambda: None)
    max_bytes = int(downloads.get("maxMiB") or 2048) << 20
    cache = ArtifactCache(host.paths.cache_dir, verify=tls_verify, max_bytes=max_bytes)
    cache.attempts = int(downloads.get("attempts") or 3)
    cache.backoff_s = float(downloads.get("backoff", 1.0))
    cache.registries = Registries(
        downloads.get("registries"), verify=tls_verify, path=lambda f: str(host.paths.under(f))
    )
    timeout = float(downloads.get("timeout") or 30.0)
    blobs: dict[int, FetchResult] = {}
    policy: Optional[SignaturePolicy] = None
    unusable: Optional[AgentError] = None  # a key that cannot be read fails the first artifact
    try:
        policy = SignaturePolicy.from_settings(downloads, host.paths)
    except AgentError as exc:
        unusable = exc
    with _timed(report, "fetch"):
        for i, step in enumerate(report.steps):
            art = step.action.artifact
            if art is None:
                continue
            name = step.action.component
            progress.stage(f"fetching {name}")

            def arrived(done: int, total: Optional[int], name: str = name) -> None:
                progress.download(name, done, total)

            try:
                check()
                blobs[i] = cache.fetch(
                    art.url, art.sha256, timeout=timeout, progress=check, arrived=arrived
                )
                if unusable is not None:
                    raise unusable
                if policy is not None:
                    # After the sha256, before staging: a refused artifact changes nothing.
                    step.signed_by = check_signature(
                        policy,
                        art.url,
                        art.sha256,
                        timeout=timeout,
                        tls_verify=tls_verify,
                        registries=cache.registries,
                    )
            except Cancelled:
                raise
            except AgentError as exc:
                step.status = "failed"
                raise _fail(report, step, exc, "nothing was changed", host.paths.cache_dir) from exc
            step.sha256 = art.sha256
            report.downloads.append(
                {
                    "component": step.action.component,
                    "url": redact_url(art.url),
                    "sha256": art.sha256,
                    "bytes": blobs[i].size,
                    "cached": not blobs[i].downloaded,
                    "signedBy": step.signed_by,
                }
            )
    stager = Stager(host, state, run_dir)
    with _timed(report, "stage"):
        for i, step in enumerate(report.steps):
            progress.stage(f"staging {step.action.component}")
            try:
                if step.action.package is not None:
                    step.package_version = choose_package(host, step.action)
                    step.ops = stager.replaced_by_package(step.action)
                else:
                    step.ops = stager.ops(step.action, blobs.get(i))
            except (AgentError, OSError, PackageError) as exc:
                step.status = "failed"
                raise _fail(report, step, exc, "nothing was changed", run_dir) from exc
    check()  # the last point at which stopping leaves the node exactly as it was
    # The backups outlive a killed run (the intent names them): not in the swept staging dir.
    journal = Journal(host, backups_dir(host) / run_dir.name)
    earlier = state.installing
    try:
        with _timed(report, "install"):
            for n, step in enumerate(report.steps, 1):
                a = step.action
                progress.stage(f"{a.action} {a.component} ({n}/{len(report.steps)})")
                step.status = "running"
                if step.action.action != "restart":  # a restart changes no file: none to save
                    after = _inventory_after(step)
                    write_ahead(
                        host, state, journal, step.action, step.ops, after, earlier, generation
                    )
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
        unsettled = ""
        if not report.undo_failures:
            # Undone: only what an earlier killed run left half-done is still to be done again.
            # An undo that failed leaves files of unknown versions: this run's intent stays.
            try:
                settle_intent(host, state, earlier)
            except OSError as again:
                if storage_error(again) is None:
                    raise
                unsettled = (
                    f"; state.json could not be updated ({describe(again)}): it still holds "
                    "this run's write-ahead record, so the next run installs those components "
                    "again"
                )
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
            suffix = (
                "undo FAILED for: "
                + "; ".join(report.undo_failures)
                + " (each is whole, old or new: state.json's write-ahead record names them, so "
                "the next run installs them again)"
            )
        raise _fail(report, failed, exc, suffix + unsettled) from exc
    try:
        _commit(host, report, state, generation)
    except OSError as exc:
        if storage_error(exc) is None:
            raise
        raise _unrecorded(report, generation, exc) from exc


def _unrecorded(report: RunReport, generation: int, exc: OSError) -> StorageError:
    """Installed, but the record of it could not be written: what the node is, and what then."""
    done = [s.action for s in report.steps if s.status == "done" and s.action.action != "restart"]
    names = ", ".join(" ".join(filter(None, (a.component, a.to_version))) for a in done)
    report.error = redact_text(
        f"generation {generation} is installed ({names}) but could not be recorded: "
        f"{describe(exc)}. state.json still holds the inventory from before, with this run's "
        "write-ahead record: the next run with space installs these components again and "
        "records them"
    )
    get_logger().error("converge not recorded", error=report.error)
    err = StorageError(report.error)
    err.report = report
    return err


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


def _read_back(host: Host, step: Step) -> None:
    """Run the installed binary and check it is the version the plan asked for.

    The sha256 pins the artifact, not what it is: a document whose URL points at another
    release would otherwise be installed again and again, each run seeing the "wrong" version.
    """
    a = step.action
    if a.action not in ("install", "upgrade", "downgrade", "reinstall"):
        return
    kind = kind_of(a.component)
    if kind is None or kind.installs_to is None:
        return
    from agentd.core.versions import compare, satisfies  # noqa: PLC0415
    from agentd.facts import detect  # noqa: PLC0415

    node_path = kind.installs_to
    if a.package is not None:
        if host.paths.sandboxed:
            return  # under --root a package install is only recorded
        node_path = f"/usr/bin/{a.package}"
    result = host.commands([str(host.paths.under(node_path)), "--version"])
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
    touched = [s for s in report.steps if s.status == "undone" and restarts_k3s(s.action.component)]
    restart = next((s.action for s in report.steps if s.action.action == "restart"), None)
    if touched and restart and restart.target:
        with contextlib.suppress(ServiceError):
            host.services.daemon_reload()
            host.services.restart(restart.target)


def _fail(
    report: RunReport,
    step: Step | None,
    exc: BaseException,
    outcome: str,
    near: Optional[Path] = None,
) -> ConvergeError:
    where = f"{step.action.component} {step.action.action}: " if step else ""
    full = storage_error(exc)
    reason = describe(full, near) if full is not None else str(exc)
    if full is not None:
        outcome += "; the next run with space plans again from what is installed"
    report.error = redact_text(f"{where}{reason}; {outcome}")
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
    intent = dict(state.installing.components)
    for component in done:
        entry = intent.pop(component)
        replaced = [Saved.from_replaced(host.paths, component, r) for r in entry.replaced]
        before = entry.inventory_before
        if replaced:
            keep(
                host,
                component,
                replaced,
                before,
                version=entry.from_version,
                replaced_by=entry.to_version,
                generation=generation,
                action=entry.action,
                at=stamp,
            )
        after = entry.inventory_after
        if after is None:
            state.inventory.pop(component, None)
        else:
            state.inventory[component] = after
    # What an earlier killed run left and this one did not plan (a component no longer
    # desired, a k3s upgrade held for the window) stays to be done again.
    left = dataclasses.replace(state.installing, components=intent) if intent else None
    settle_intent(host, state, left)


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
    return InventoryEntry(a.to_version, step.sha256, files, step.signed_by)
