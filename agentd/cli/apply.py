"""`agentd apply`: converge this node once."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agentd.cli.main import print_json
from agentd.cli.output import format_plan, format_run
from agentd.errors import AgentError
from agentd.host import Host
from agentd.run import apply


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--desired", type=Path, help="a desired-state file instead of the sources")
    parser.add_argument("--dry-run", action="store_true", help="plan only; change nothing")
    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long for another run's lock instead of failing at once",
    )
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")


def handle(args: argparse.Namespace) -> int:
    host = Host.at(args.root)
    try:
        result = apply(host, args.desired, dry_run=args.dry_run, lock_wait_s=args.wait)
    except AgentError as exc:
        if args.json:
            from agentd.state import load_state  # noqa: PLC0415

            state = load_state(host.paths)
            print_json(state.last_run if state and state.last_run else {"error": str(exc)})
        raise
    if args.json:
        print_json(result)
    elif args.dry_run:
        sys.stdout.write(format_plan(result))
    else:
        sys.stdout.write(format_run(result))
    return 0
