"""`agentd ratchet lower N --confirm`: lower the generation ratchet, keeping the inventory."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from agentd.cli.exits import print_json
from agentd.core.errors import AgentError
from agentd.core.generation import MAX_GENERATION, generation_problem, shown
from agentd.sources.store import FleetStore
from agentd.state.records import RunResult
from agentd.state.store import AgentState, StateLock, load_state, save_state
from agentd.system.host import Host
from agentd.system.log import get_logger


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    lower = sub.add_parser(
        "lower",
        help="accept generations above N again (after a mistaken publish); keeps the inventory",
    )
    lower.add_argument("generation", type=int, metavar="N", help=f"0..{MAX_GENERATION}")
    lower.add_argument(
        "--confirm", action="store_true", help="do it (without: only say what it would do)"
    )
    lower.add_argument("--wait", type=float, default=0.0, metavar="SECONDS")
    lower.add_argument("--json", action="store_true", help="one JSON document on stdout")


class NotConfirmed(AgentError):
    """`ratchet lower` without --confirm: nothing was changed."""


def _changes(state: AgentState, fleet: Any, n: int) -> list[str]:
    out = []
    last = state.last_applied_generation
    if last is not None and last > n:
        out.append(f"the last applied generation {shown(last)} becomes {n}")
    if isinstance(fleet, int) and fleet > n:
        out.append(
            f"the last good fleet document (generation {shown(fleet)}) is kept, recorded as "
            f"generation {n}: the source's document is judged again at the next pull"
        )
    return out


def handle(args: argparse.Namespace) -> int:
    n = args.generation
    problem = generation_problem(n)
    if problem is not None:
        raise AgentError(f"cannot lower the ratchet to {shown(n)}: {problem}")
    host = Host.at(args.root)
    with StateLock(host.paths).held("ratchet", args.wait):
        state = load_state(host.paths) or AgentState()
        store = FleetStore(host.paths)
        changes = _changes(state, store.good_record().get("generation"), n)
        if not changes:
            sys.stdout.write(f"nothing to lower: no generation above {n} is recorded\n")
            return 0
        kept = ", ".join(sorted(state.inventory)) or "nothing"
        what = "; ".join(changes) + f"; the inventory ({kept}) is kept"
        if not args.confirm:
            raise NotConfirmed(
                f"not confirmed, nothing was changed: lowering the ratchet to {n} would do this: "
                f"{what}. Run again with --confirm"
            )
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        before = state.last_applied_generation
        if before is not None and before > n:
            state.last_applied_generation = n
        state.noop = None  # the memo would answer for the old generation
        store.lower_generation(n)
        result = RunResult(
            "ratchet",
            "lowered",
            generation=n,
            started_at=started,
            finished_at=started,
            warnings=[f"ratchet lowered to {n}: {what}"],
        )
        state.record_run(result)
        save_state(host.paths, state)
    get_logger().warning("ratchet lowered", action="ratchet", generation=n, changes=changes)
    if args.json:
        print_json(result.to_json())
    else:
        sys.stdout.write(f"ratchet lowered to generation {n}: {what}\n")
    return 0
