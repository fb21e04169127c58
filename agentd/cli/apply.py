"""`agentd apply`: converge this node once."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Optional

from agentd.cli.color import paint_plan
from agentd.cli.exits import print_json, require_file
from agentd.cli.main import agent_config
from agentd.cli.output import format_plan, format_run, plan_legend
from agentd.core.errors import Cancelled
from agentd.run import apply
from agentd.system.host import Host
from agentd.system.log import summary_follows
from agentd.system.progress import progress_for


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--desired", type=Path, help="a desired-state file instead of the sources")
    parser.add_argument("--dry-run", action="store_true", help="plan only; change nothing")
    parser.add_argument(
        "--offline",
        action="store_true",
        help="do not pull the fleet document first; use the last good one",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long for another run's lock instead of failing at once",
    )
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")


def _stop_at_a_safe_point() -> tuple[threading.Event, object]:
    """SIGTERM (and SIGINT) ask the run to stop before it touches the node, never mid-install."""
    asked = threading.Event()

    def handler(signum: int, frame: Optional[FrameType]) -> None:
        asked.set()

    previous = signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return asked, previous


def handle(args: argparse.Namespace) -> int:
    require_file(args.desired, "--desired")
    host = Host.at(args.root)
    config = agent_config(args)
    asked, _ = _stop_at_a_safe_point()
    if not args.json:
        summary_follows()

    def cancel() -> None:
        if asked.is_set():
            raise Cancelled("stopped on request before changing anything; nothing was changed")

    # A failure's JSON document (this run's own result, never an earlier run's) is main's.
    result = apply(
        host,
        args.desired,
        config=config,
        pull=not args.offline,
        dry_run=args.dry_run,
        lock_wait_s=args.wait,
        cancel=cancel,
        progress=progress_for(sys.stderr, dict(os.environ)),
    )
    if args.json:
        print_json(result.to_json())
    elif args.dry_run:
        doc = result.to_json()
        sys.stdout.write(paint_plan(format_plan(doc) + plan_legend(doc), sys.stdout))
    else:
        sys.stdout.write(paint_plan(format_run(result), sys.stdout))
    return 0
