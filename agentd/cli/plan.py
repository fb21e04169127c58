"""`agentd plan`: what apply would do, each action with its reason."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agentd.cli.main import print_json
from agentd.cli.output import format_plan
from agentd.host import Host
from agentd.run import make_plan

EXIT_CHANGES = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--desired", type=Path, help="a desired-state file instead of the sources")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument(
        "--detailed-exitcode",
        action="store_true",
        help="exit 0 when there is nothing to do, 2 when changes are pending",
    )


def handle(args: argparse.Namespace) -> int:
    planned = make_plan(Host.at(args.root), args.desired)
    doc = planned.plan.to_json()
    if planned.loaded.warnings:
        doc["warnings"] = planned.loaded.warnings
        for w in planned.loaded.warnings:
            sys.stderr.write(w + "\n")
    if args.json:
        print_json(doc)
    else:
        sys.stdout.write(format_plan(doc))
    if args.detailed_exitcode and not planned.plan.empty:
        return EXIT_CHANGES
    return 0
