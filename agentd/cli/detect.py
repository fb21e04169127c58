"""`agentd detect`: host facts and each component found."""

from __future__ import annotations

import argparse
import sys

from agentd.cli.exits import print_json
from agentd.core.paths import Paths
from agentd.core.printable import printable
from agentd.facts.detect import detect
from agentd.facts.model import COMPONENTS, Facts
from agentd.state.store import load_state


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")


def handle(args: argparse.Namespace) -> int:
    paths = Paths(args.root)
    state = load_state(paths)
    facts = detect(paths, state.recorded_plugins() if state else {})
    if args.json:
        print_json(facts.to_json())
    else:
        sys.stdout.write(format_facts(facts))
    return 0


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def format_facts(facts: Facts) -> str:
    h = facts.host
    lines = [
        f"host: {h.arch}, {h.os}, kernel {h.kernel}, {h.cpus} CPUs, "
        f"{_gib(h.memory_bytes)} memory, {_gib(h.disk_free_bytes)} free disk",
    ]
    for name in COMPONENTS:
        c = facts.component(name)
        if not c.installed:
            lines.append(f"{name:9} not installed")
            continue
        extra = "" if c.managed else " (not installed by agentd)"
        lines.append(f"{name:9} {c.version or '?'} at {c.path}{extra}")
        if c.error:
            lines.append(f"{'':9} error: {c.error}")
        if name == "crun":
            wasm = ", ".join(c.wasm_handlers) or "none (no +WASM: feature)"
            lines.append(f"{'':9} features: {' '.join(c.features) or '-'}; Wasm handler: {wasm}")
        for p in c.plugins:
            lines.append(f"{'':9} plugin {p.name} at {p.path}")
    # Paths and names are the host's: each line is escaped whole, so none can hold a newline.
    return "".join(printable(line) + "\n" for line in lines)
