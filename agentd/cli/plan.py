"""`agentd plan`: what apply would do, each action with its reason."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from agentd.cli.color import paint_plan
from agentd.cli.exits import EXIT_CHANGES, EXIT_REFUSED, print_json, require_file
from agentd.cli.main import agent_config
from agentd.cli.output import format_plan, plan_legend
from agentd.core.printable import printable
from agentd.plan.filediff import config_diffs, secret_key
from agentd.run import make_plan
from agentd.system.host import Host


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--desired", type=Path, help="a desired-state file instead of the sources")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument(
        "--detailed-exitcode",
        action="store_true",
        help="exit 0 when there is nothing to do, 2 when changes are pending, 3 when apply "
        "would refuse something (the plan's Refused: section)",
    )
    parser.add_argument(
        "--explain",
        action="store_true",
        help="also show every desired value and the file (line:column) it came from",
    )


def _shown(path: str, value: Any) -> Any:
    from agentd.core.redact import MASK, redact_text  # noqa: PLC0415

    if secret_key(path.rsplit(".", 1)[-1]) and value not in (None, ""):
        return MASK
    return redact_text(value) if isinstance(value, str) else value


def handle(args: argparse.Namespace) -> int:
    require_file(args.desired, "--desired")
    planned = make_plan(Host.at(args.root), args.desired, config=agent_config(args))
    doc = planned.plan.to_json()
    doc["refusals"] = planned.judged.to_json()
    doc["diffs"] = config_diffs(planned.plan, planned.configs)
    doc["sources"] = planned.loaded.sources
    if planned.sources.fleet:
        fleet = planned.sources.fleet
        doc["fleet"] = {k: fleet.get(k) for k in ("generation", "origin", "signedBy", "candidate")}
    if planned.loaded.targeting:
        doc["targeting"] = [t.to_json() for t in planned.loaded.targeting]
    if planned.loaded.warnings:
        doc["warnings"] = planned.loaded.warnings
        for w in planned.loaded.warnings:
            sys.stderr.write(printable(w) + "\n")
    if args.explain:
        from agentd.schema.yamlload import load_merged, provenance  # noqa: PLC0415

        merged = load_merged(planned.sources.files, planned.sources.names)
        doc["explain"] = [
            # Values are shown as written, but credentials never are (a URL's, registries').
            {"path": path, "value": _shown(path, value)} | {"from": str(pos)}
            for path, value, pos in provenance(merged)
        ]
    if args.json:
        print_json(doc)
    else:
        sys.stdout.write(paint_plan(format_plan(doc) + plan_legend(doc), sys.stdout))
    if args.explain and not args.json:
        sys.stdout.write("Desired values (later sources win):\n")
        sources = planned.loaded.sources
        sys.stdout.write("".join(f"  source {i + 1}: {s}\n" for i, s in enumerate(sources)))
        width = max((len(e["path"]) for e in doc["explain"]), default=0)
        for entry in doc["explain"]:
            value = json.dumps(entry["value"])
            if len(value) > 60:
                value = value[:57] + "..."
            sys.stdout.write(f"  {entry['path']:<{width}} = {value:<20}  <- {entry['from']}\n")
    if not args.detailed_exitcode:
        return 0
    if doc["refusals"]:  # first: a CI gate must not read a refusal as "changes"
        return EXIT_REFUSED
    return 0 if planned.plan.empty else EXIT_CHANGES
