"""`agentd validate [FILE...]`: schema and real-world checks, errors as FILE:LINE:COL: message."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agentd.cli.exits import diagnostic, print_json, require_file
from agentd.core.errors import AgentError
from agentd.core.printable import printable
from agentd.desired.load import desired_sources
from agentd.desired.model import ARCHES
from agentd.desired.onnode import OnNode
from agentd.desired.validate import load_and_validate
from agentd.state.store import load_state
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
    for path in args.files:
        require_file(path, "a FILE to validate")
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
    on_node = _on_node(Host.at(args.root))
    for group in groups:
        report = load_and_validate(
            group, arch, merge_all=True, names=names, on_node=on_node, remote=remote
        )
        errors += report.errors
        warnings += report.warnings
    shown = Host.at(args.root).paths.host_view if not args.files else str
    read = [names.get(p) or shown(p) for group in groups for p in group]
    for line in warnings + errors:
        sys.stderr.write(printable(line) + "\n")  # a file name may hold anything
    if args.json:
        print_json(
            {
                "valid": not errors,
                "files": read,
                "errors": errors,
                "warnings": warnings,
                "diagnostics": [diagnostic(e) for e in errors]
                + [diagnostic(w, "warning") for w in warnings],
            }
        )
    else:
        # Which files were read: a file in the wrong place (or not merged) shows here.
        verdict = f"invalid: {len(errors)} error(s)" if errors else "valid"
        sys.stdout.write(f"{verdict}: {len(read)} file(s) read:\n")
        sys.stdout.write("".join(f"  {printable(name)}\n" for name in read))
    return 1 if errors else 0


def _on_node(host: Host) -> OnNode:
    """This node (--root), for the warnings that read it; a broken state file only skips the
    sha256 one (`status` and `apply` say what is wrong with it)."""
    try:
        state = load_state(host.paths)
    except AgentError:
        state = None
    return OnNode(host.paths, state.inventory if state else {})
