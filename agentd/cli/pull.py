"""`agentd pull`: fetch the fleet's desired state now, check it, and keep it if it is good."""

from __future__ import annotations

import argparse
import sys

from agentd.cli.exits import print_json
from agentd.cli.main import agent_config
from agentd.core.errors import AgentError
from agentd.desired.identity import node_identity
from agentd.desired.load import settle_candidate
from agentd.sources.pull import pull
from agentd.sources.store import FleetStore
from agentd.state.store import StateLock
from agentd.system.host import Host


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument(
        "--wait", type=float, default=0.0, metavar="SECONDS", help="wait for another run's lock"
    )


def handle(args: argparse.Namespace) -> int:
    host = Host.at(args.root)
    config = agent_config(args)
    source = config.source
    if source is None:
        raise AgentError(
            f"no source in {config.origin}: this node converges to its local files only"
        )
    with StateLock(host.paths).held("pull", args.wait):
        result = pull(source, host.paths)
        if result.outcome == "updated":
            settle_candidate(host, node_identity(host, config), promote=True)
        store = FleetStore(host.paths)
        seen = store.seen()
        status = store.status()
    doc = {
        **result.to_json(),
        "verdict": seen.get("verdict"),
        "reason": seen.get("reason") or None,
        "lastGood": status.get("lastGood"),
        "source": status.get("source"),
        "verification": status.get("verification"),
    }
    if result.outcome == "updated" and seen.get("verdict") == "candidate":
        doc["reason"] = "waiting: this node's own desired-state files are invalid"
    refused = result.outcome in ("failed", "rejected") or seen.get("verdict") == "rejected"
    if refused:
        # Like every failed --json command's document (main's error_document).
        why = doc["reason"] or result.detail
        doc |= {"kind": "pull", "ok": False, "exitCode": 1, "errorKind": "pull", "error": why}
        doc["diagnostics"] = []
    if args.json:
        print_json(doc)
    else:
        good = doc["lastGood"] or {}
        sys.stdout.write(f"pull from {doc['source']}: {result.outcome}: {result.detail}\n")
        if seen.get("verdict") == "rejected" and seen.get("reason"):
            sys.stdout.write(f"  rejected: {seen['reason']}\n")
        sys.stdout.write(
            f"  last good: generation {good.get('generation', 'none')}"
            f" ({good.get('origin') or 'nothing accepted yet'})\n"
        )
    return 1 if refused else 0
