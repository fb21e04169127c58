"""`agentd rollback COMPONENT`: put back what a component's last change replaced, and hold it."""

from __future__ import annotations

import argparse
import difflib
import sys
import time
from typing import Any

from agentd.cli.exits import print_json
from agentd.converge.rollback import rollback
from agentd.core.components import KINDS, PREFIXES, restarts_k3s
from agentd.core.errors import AgentError, RollbackError
from agentd.state.holds import RollbackHold
from agentd.state.records import RunResult
from agentd.state.store import AgentState, StateLock, load_state, save_state
from agentd.system.host import Host


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # One of the two, never both: argparse says so as a usage error (exit 64).
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "component",
        nargs="?",
        help="k3s, crun, wasmedge, wasmedge/plugins/NAME, k3s/config, ...",
    )
    which.add_argument(
        "--release",
        metavar="COMPONENT",
        help="end the hold of an earlier rollback: apply and the daemon change COMPONENT again",
    )
    parser.add_argument("--wait", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def handle(args: argparse.Namespace) -> int:
    host = Host.at(args.root)
    if args.release is not None:
        return _release(host, args)
    with StateLock(host.paths).held("rollback", args.wait):
        state = load_state(host.paths) or AgentState()
        started, t0 = _now(), time.perf_counter()
        _known_or_suggest(host, state, args.component)
        done = rollback(host, state, args.component)
        hold = RollbackHold(
            started, done["replacedVersion"], done["restoredVersion"], done["awaySha256"]
        )
        # Held until the desired state names something else (agentd.plan.refusals); the
        # no-op memo would answer without judging it.
        state.rollback_holds[args.component] = hold
        state.noop = None
        done = {**done, "hold": hold.to_json()}
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
        return 0
    out = sys.stdout.write
    if done["removed"]:
        out(
            f"rolled back {done['component']}: removed {', '.join(done['files'])} (agentd "
            "installed it first; nothing was there before)\n"
        )
    else:
        out(
            f"rolled back {done['component']}: {done['replacedVersion'] or 'current'} -> "
            f"{done['restoredVersion'] or 'previous'} ({len(done['files'])} files)\n"
        )
    for call in result.service_calls or []:
        out(f"  service: {call}\n")
    if restarts_k3s(done["component"]) and not done["restarted"]:
        out("  k3s not restarted: what was put back does not need it\n")
    out(f"  held: {_held(done['component'], done)}\n")
    return 0


def _held(component: str, done: dict[str, Any]) -> str:
    away = f" {done['replacedVersion']}" if done["replacedVersion"] else ""
    return (
        f"apply and the daemon leave {component} as it is while the desired state names"
        f"{away or ' the content'} rolled away from (`agentd rollback --release {component}` "
        "ends the hold)"
    )


def _release(host: Host, args: argparse.Namespace) -> int:
    with StateLock(host.paths).held("rollback", args.wait):
        state = load_state(host.paths) or AgentState()
        hold = state.rollback_holds.pop(args.release, None)
        if hold is None:
            held = ", ".join(sorted(state.rollback_holds)) or "none"
            raise AgentError(f"no rollback holds {args.release} (held: {held})")
        state.noop = None  # the next apply plans again, and changes it
        save_state(host.paths, state)
    if args.json:
        print_json({"released": args.release, "hold": hold.to_json()})
    else:
        sys.stdout.write(
            f"released {args.release}: held by rollback since {hold.since}; the next apply "
            "converges it to the desired state\n"
        )
    return 0


def _known_or_suggest(host: Host, state: AgentState, component: str) -> None:
    """A name agentd does not know (`crn`) is refused with the closest one it does (`crun`)."""
    known = {kind.name for kind in KINDS if kind.name not in PREFIXES}
    known |= set(state.inventory)
    if host.paths.kept_dir.is_dir():
        known |= {p.name.replace("__", "/") for p in host.paths.kept_dir.iterdir() if p.is_dir()}
    if component in known or component.startswith(PREFIXES):
        return
    close = difflib.get_close_matches(component, sorted(known), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise RollbackError(
        f"unknown component {component!r}: {hint}(known: {', '.join(sorted(known))})"
    )
