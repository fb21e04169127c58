"""`agentd settings`: validate the agent settings and print them with every default filled in."""

from __future__ import annotations

import argparse
import sys

import yaml

from agentd.cli.main import print_json
from agentd.config import load_config
from agentd.errors import AgentError
from agentd.paths import Paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")


def handle(args: argparse.Namespace) -> int:
    settings = getattr(args, "settings", None)
    try:
        config = load_config(Paths(args.root), settings.absolute() if settings else None)
    except AgentError as exc:
        if args.json:
            print_json(
                {"valid": False, "error": str(exc), "problems": getattr(exc, "problems", [])}
            )
        raise
    if args.json:
        print_json({"valid": True, "origin": config.origin, "settings": dict(config.raw)})
    else:
        sys.stdout.write(f"# effective settings, from {config.origin}\n")
        sys.stdout.write(yaml.safe_dump(dict(config.raw), sort_keys=False))
    return 0
