"""`agentd rollback COMPONENT`: put back what the last change to a component replaced."""

from __future__ import annotations

import argparse
import difflib
import sys
import time

from agentd.cli.exits import print_json
from agentd.converge.rollback import rollback
from agentd.core.components import KINDS, PLUGIN_PREFIX
from agentd.core.errors import RollbackError
from agentd.state.records import RunResult
from agentd.state.store import AgentState, StateLock, load_state, save_state
from agentd.system.host import Host


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "component", help="k3s, crun, wasmedge, wasmedge/plugins/NAME, k3s/config, ..."
    )
    parser.add_argument("--wait", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")


def handle(args: argparse.Namespace) -> int:
    host = Host.at(args.root)
    with StateLock(host.paths).held("rollback", args.wait):
        state = load_state(host.paths) or AgentState()
        started, t0 = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), time.perf_counter()
        _known_or_suggest(host, state, args.component)
        done = rollback(host, state, args.component)
        result = RunResult(
            "rollback",
            "rolled back",
            generation=state.last_applied_generation,
            started_at=started,
            duration_ms=round((time.perf_counter() - t0) * 1000, 1),
            rollback=done,
            service_calls=list(host.services.calls),
        )
        state.record_run(result)
        save_state(host.paths, state)
    if args.json:
        print_json(result.to_json())
    else:
        sys.stdout.write(
            f"rolled back {done['component']}: {done['replacedVersion'] or 'current'} -> "
            f"{done['restoredVersion'] or 'previous'} ({len(done['files'])} files)\n"
        )
        for call in result.service_calls or []:
            sys.stdout.write(f"  service: {call}\n")
    return 0


def _known_or_suggest(host: Host, state: AgentState, component: str) -> None:
    """A name agentd does not know (`crn`) is refused with the closest one it does (`crun`)."""
    known = {kind.name for kind in KINDS if not kind.name.startswith(PLUGIN_PREFIX)}
    known |= set(state.inventory)
    if host.paths.kept_dir.is_dir():
        known |= {p.name.replace("__", "/") for p in host.paths.kept_dir.iterdir() if p.is_dir()}
    if component in known or component.startswith(PLUGIN_PREFIX):
        return
    close = difflib.get_close_matches(component, sorted(known), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise RollbackError(
        f"unknown component {component!r}: {hint}(known: {', '.join(sorted(known))})"
    )
