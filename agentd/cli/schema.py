"""`agentd schema`: the desired state's JSON Schema."""

from __future__ import annotations

import argparse

from agentd.cli.exits import print_json
from agentd.desired.model import json_schema


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="accepted for symmetry: always JSON")


def handle(args: argparse.Namespace) -> int:
    print_json(json_schema())
    return 0
