"""`agentd validate [FILE...]`: schema and real-world checks, errors as FILE:LINE:COL: message."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agentd.core.errors import AgentError
from agentd.desired.load import desired_sources
from agentd.desired.model import ARCHES
from agentd.desired.validate import load_and_validate
from agentd.system.host import Host


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files",
        nargs="*",
        type=Path,
        help="desired-state files; none: this node's sources, merged as apply merges them",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="merge the FILEs in order (like desired.yaml and desired.d/) instead of one by one",
    )
    parser.add_argument(
        "--arch",
        choices=(*ARCHES, "none"),
        help="check artifacts for this architecture (default: this node's; none: skip)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")


def handle(args: argparse.Namespace) -> int:
    arch: str | None = args.arch
    if arch is None:
        from agentd.core.arch import host_arch  # noqa: PLC0415

        arch = host_arch()
    elif arch == "none":
        arch = None
    names: dict[Path, str] = {}
    remote: frozenset[str] = frozenset()
    if args.files:
        groups = [args.files] if args.merge else [[f] for f in args.files]
    else:
        from agentd.cli.main import agent_config  # noqa: PLC0415
        from agentd.desired.identity import node_identity  # noqa: PLC0415

        host = Host.at(args.root)
        sources = desired_sources(host, None)
        groups, names = [sources.files], sources.names
        try:
            config = agent_config(args)
        except AgentError:
            config = None  # broken settings are `agentd settings`' to report: the strict default
        remote = sources.remote(node_identity(host, config))
    errors: list[str] = []
    warnings: list[str] = []
    for group in groups:
        report = load_and_validate(group, arch, merge_all=True, names=names, remote=remote)
        errors += report.errors
        warnings += report.warnings
    for line in warnings + errors:
        sys.stderr.write(line + "\n")
    if args.json:
        from agentd.cli.main import print_json  # noqa: PLC0415

        print_json({"valid": not errors, "errors": errors, "warnings": warnings})
    elif not errors:
        sys.stdout.write(f"valid ({sum(len(g) for g in groups)} file(s))\n")
    return 1 if errors else 0
