"""`agentd status`: the last run and what agentd installed, read from the state dir."""

from __future__ import annotations

import argparse
import sys

from agentd.cli.main import print_json
from agentd.cli.output import format_run
from agentd.paths import Paths
from agentd.state import load_state


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")


def handle(args: argparse.Namespace) -> int:
    paths = Paths(args.root)
    state = load_state(paths)
    if state is None or state.last_run is None:
        if args.json:
            print_json({"lastRun": None})
        sys.stderr.write(f"agentd: no state yet in {paths.host_view(paths.state_dir)}\n")
        return 1
    if args.json:
        print_json(state.to_json())
        return 0
    gen = state.last_applied_generation
    sys.stdout.write(f"last applied generation: {gen if gen is not None else 'none'}\n")
    sys.stdout.write("last run: " + format_run(state.last_run))
    if state.inventory:
        sys.stdout.write("installed by agentd:\n")
        for name, entry in state.inventory.items():
            what = entry.version or f"sha256 {(entry.sha256 or '')[:12]}"
            sys.stdout.write(f"  {name:<28} {what}\n")
    return 0
