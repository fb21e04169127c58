"""The `agentd` command: parses the common options and hands over to one subcommand module."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentd import __version__
from agentd.errors import AgentError

# Subcommand modules are imported only when used: start-up cost matters on a Raspberry Pi.
COMMANDS = {
    "detect": "what this node has: host facts and each component found",
    "validate": "check desired-state files (errors as FILE:LINE:COL: message)",
    "plan": "what apply would do, and why",
    "apply": "converge this node once",
    "status": "the last run, from the state dir",
    "rollback": "put back the version a component had before its last change",
    "schema": "print the desired state's JSON Schema",
}
EXIT_INTERNAL = 70  # EX_SOFTWARE: a bug, as opposed to an expected failure (exit 1)


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS lets an option be given before or after the subcommand name.
    common.add_argument(
        "--root",
        type=Path,
        default=argparse.SUPPRESS,
        help="work on a sandbox root instead of / (env AGENTD_ROOT); services are not touched",
    )
    common.add_argument(
        "--log-format", choices=("auto", "console", "json"), default=argparse.SUPPRESS
    )
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS)
    return common


def build_parser(selected: str | None) -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="agentd",
        description="Declarative node agent for k3s + WebAssembly edge nodes.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"agentd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        if name == selected:
            module = importlib.import_module(f"agentd.cli.{name}")
            module.add_arguments(p)
            p.set_defaults(handler=module.handle)
    return parser


def _selected(argv: Sequence[str]) -> str | None:
    skip_next = False
    for arg in argv:
        if skip_next:
            skip_next = False
            continue
        if arg in ("--root", "--log-format"):
            skip_next = True
        elif arg in COMMANDS:
            return arg
        elif not arg.startswith("-"):
            return None
    return None


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(_selected(args_list)).parse_args(args_list)
    root = getattr(args, "root", None) or Path(os.environ.get("AGENTD_ROOT") or "/")
    args.root = root.absolute()
    from agentd import log  # noqa: PLC0415

    log.configure(getattr(args, "log_format", "auto"), getattr(args, "verbose", False))
    try:
        code: int = args.handler(args)
    except AgentError as exc:
        sys.stderr.write(f"agentd: error: {exc}\n")
        for problem in getattr(exc, "problems", []):
            sys.stderr.write(f"{problem}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # pragma: no cover - a bug; say so plainly, with its own code
        from agentd.redact import redact_text  # noqa: PLC0415

        sys.stderr.write(f"agentd: internal error: {type(exc).__name__}: {redact_text(str(exc))}\n")
        return EXIT_INTERNAL
    return code


if __name__ == "__main__":
    sys.exit(main())
