"""`agentd check`: run the health checks now (exit 0 healthy, 2 unhealthy, 1 could not check)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import Any

from agentd.cli.color import paint
from agentd.cli.exits import EXIT_UNHEALTHY, print_json
from agentd.cli.main import agent_config
from agentd.core.printable import printable_line
from agentd.health.remedy import check
from agentd.run import apply
from agentd.settings.snapshot import suspend_reason
from agentd.system.host import Host

MARKERS = {"critical": "!!", "error": "x ", "warning": "! ", "info": "i "}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument(
        "--act",
        action="store_true",
        help="also roll back a change that broke a component and apply the fixes that are due "
        "(what the daemon does; not while suspended)",
    )


def handle(args: argparse.Namespace) -> int:
    host = Host.at(args.root)
    config = agent_config(args)
    suspended = suspend_reason(host.paths, config) is not None
    run = check(host, config, act=args.act, suspended=suspended, apply=apply)
    doc = run.to_json()
    if args.json:
        print_json(doc)
    else:

        def out(text: str) -> None:
            sys.stdout.write(printable_line(text))  # findings name the host's files

        if run.before is not None:
            # --act: what was found and done first; the verdict below is the node after it.
            codes = ", ".join(f.code for f in run.before if f.unhealthy) or "none unhealthy"
            out(f"before acting: {len(run.before)} finding(s) ({codes})\n")
            for act in run.acted:
                out(f"  acted: {_acted(act)}\n")
        verdict = paint(
            *(("healthy", "green") if run.healthy else ("UNHEALTHY", "red")), sys.stdout
        )
        after = " after acting" if run.before is not None else ""
        # The verdict is agentd's own (its colour stays); the node's name is escaped.
        sys.stdout.write(verdict)
        out(f"{after}: {len(run.findings)} finding(s) on node {run.node}\n")
        for f in run.findings:
            out(f"  {MARKERS.get(f.severity, '? ')}{f.code:<28} {f.component}: {f.message}\n")
            out(f"      remedy: {f.remedy}\n")
        if run.label:
            out(f"node label wasm-runtime: {run.label}\n")
    return 0 if run.healthy else EXIT_UNHEALTHY


def _acted(act: Mapping[str, Any]) -> str:
    outcome = "done" if act.get("ok") else "failed"
    if "rollback" in act:
        what = f"rolled back {act['rollback']} {act.get('from')} -> {act.get('to')}"
        return f"{what}: {outcome}" + (f" ({act['error']})" if act.get("error") else "")
    return f"{act.get('fix')} for {act.get('code')}: {outcome} ({act.get('detail')})"
