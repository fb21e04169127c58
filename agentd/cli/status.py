"""`agentd status`: the last run, the daemon and the fleet source, read from the state dir."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from agentd.cli.exits import print_json
from agentd.cli.output import format_run
from agentd.core.paths import Paths
from agentd.core.printable import printable_line
from agentd.daemon.status import read_status
from agentd.sources.store import FleetStore
from agentd.state.store import load_state


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")


def _tls(args: argparse.Namespace) -> str:
    """Whether TLS is verified, from the settings (a broken settings file: unknown)."""
    from agentd.cli.main import agent_config  # noqa: PLC0415
    from agentd.core.errors import AgentError  # noqa: PLC0415

    try:
        off = agent_config(args).tls.get("insecureSkipVerify")
    except AgentError:
        return "unknown (the settings do not load)"
    return "OFF (tls.insecureSkipVerify: true)" if off else "on"


def handle(args: argparse.Namespace) -> int:
    paths = Paths(args.root)
    tls = _tls(args)
    state = load_state(paths)
    daemon = read_status(paths)
    source = FleetStore(paths).status() or None
    suspended = paths.suspend_file.exists()
    if (state is None or state.last_run is None) and daemon is None:
        error = f"no state yet in {paths.host_view(paths.state_dir)}"
        if args.json:
            print_json(
                {"lastRun": None, "daemon": None, "source": source}
                | {"kind": "status", "ok": False, "exitCode": 1, "errorKind": "no-state"}
                | {"error": error}
                | {"diagnostics": []}
            )
        sys.stderr.write(f"agentd: {error}\n")
        return 1
    if args.json:
        doc: dict[str, Any] = state.to_json() if state else {"lastRun": None}
        shown = daemon.to_json() if daemon else None
        doc.update(daemon=shown, source=source, suspendFile=suspended, tlsVerification=tls)
        print_json(doc)
        return 0

    def out(text: str) -> None:
        sys.stdout.write(printable_line(text))  # what state and the daemon recorded, escaped

    if tls != "on":
        out(f"TLS verification: {tls}\n")
    if daemon is not None:
        out(f"daemon: {daemon.state} (pid {daemon.pid}): {daemon.status}\n")
        out(f"  settings: {daemon.settings_origin}\n")
        if daemon.settings_error:
            out(f"  settings error: {daemon.settings_error}\n")

        if daemon.suspended:
            out(f"  suspended: {daemon.suspended}\n")
    elif suspended:
        out(f"suspended: {paths.host_view(paths.suspend_file)} exists\n")
    if source:
        pull = source.get("lastPull") or {}
        good = source.get("lastGood") or {}
        out(f"source: {source.get('source')} (verification: {source.get('verification')})\n")
        out(
            f"  last pull {source.get('lastPullAt')}: {pull.get('outcome')}: {pull.get('detail')}\n"
        )
        out(
            f"  last good: generation {good.get('generation', 'none')} {good.get('origin') or ''}\n"
        )
        if source.get("tlsVerification"):
            out(f"  TLS verification: {source['tlsVerification']}\n")
    if state is None:
        return 0
    gen = state.last_applied_generation
    out(f"last applied generation: {gen if gen is not None else 'none'}\n")
    if state.last_run is not None:
        sys.stdout.write("last run: " + format_run(state.last_run))  # escaped by format_run
    if state.deferred:
        d = state.deferred
        out(f"waiting for the maintenance window ({d.window}), opens {d.until}:\n")
        for a in d.actions:
            out(f"  {a.get('action')} {a.get('component')}: {a.get('reason')}\n")
    # The write-ahead record: a run is changing these now, or was killed while it did.
    for component, why in sorted(state.interrupted().items()):
        out(f"{component}: unfinished: {why}, unless a run is going on now; ")
        out("the next apply installs it again\n")
    if state.pending_restart:
        p = state.pending_restart
        out(f"k3s restart owed since {p.since}: {p.causes}\n")
    if state.health:
        h = state.health
        verdict = "healthy" if h.get("healthy") else "UNHEALTHY"
        findings = h.get("findings") or []
        out(f"health at {h.get('checkedAt')}: {verdict}, {len(findings)} finding(s)")
        out(f"; node label: {h['label']}\n" if h.get("label") else "\n")
        for f in findings:
            out(f"  {f.get('severity'):<8} {f.get('code'):<28} {f.get('message')}\n")
    for component, w in sorted(state.watch.items()):
        out(f"watching {component} ({w.from_version} -> {w.to_version}) for a rollback window\n")
    for component, b in sorted(state.blocked.items()):
        out(
            f"rolled back {component} {b.version} -> {b.restored} at {b.at}"
            f" (not retried for generation {b.generation}): {b.reason}\n"
        )
    for component, hold in sorted(state.rollback_holds.items()):
        away, back = hold.away or "a changed file", hold.restored or "what was there"
        out(
            f"held by rollback since {hold.since}: {component} at {back}"
            f" while the desired state names {away} (agentd rollback --release {component})\n"
        )
    for code, r in sorted(state.remediations.items()):
        out(f"remediation {r.get('fix')} for {code}: {r.get('attempts')} attempt(s)\n")
    if state.inventory:
        out("installed by agentd:\n")
        for name, entry in state.inventory.items():
            what = entry.version or f"sha256 {(entry.sha256 or '')[:12]}"
            signed = f", signature verified by {entry.signed_by}" if entry.signed_by else ""
            out(f"  {name:<28} {what}{signed}\n")
    return 0
