"""The `agentd` command: parses the common options and hands over to one subcommand module."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from agentd import __version__
from agentd.core.errors import AgentError
from agentd.core.paths import Paths
from agentd.settings.snapshot import AgentConfig, load_config

# Subcommand modules are imported only when used: start-up cost matters on a Raspberry Pi.
COMMANDS = {
    "detect": "what this node has: host facts and each component found",
    "validate": "check desired-state files (errors as FILE:LINE:COL: message)",
    "plan": "what apply would do, and why",
    "apply": "converge this node once",
    "check": "run the health checks now (exit 0 healthy, 2 unhealthy, 1 could not check)",
    "pull": "fetch the fleet's desired state now (git or HTTPS), and check its signature",
    "status": "the last run, the daemon and the fleet source, from the state dir",
    "rollback": "put back the version a component had before its last change",
    "run": "the daemon: keep this node converged (what the systemd unit starts)",
    "settings": "check the agent settings and print them with every default filled in",
    "schema": "print the desired state's JSON Schema",
    "probe-wasm": "write the health probe's WASI program (for a probe image)",
}
# The daemon hands its workers the settings it validated (the file may be broken since).
SETTINGS_JSON_ENV = "AGENTD_SETTINGS_JSON"
SETTINGS_ORIGIN_ENV = "AGENTD_SETTINGS_ORIGIN"
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
        "--settings",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="agent settings (default: /etc/wasm-edge/agentd.yaml under the root)",
    )
    common.add_argument(
        "--log-format", choices=("auto", "console", "json", "journal"), default=argparse.SUPPRESS
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
            module = importlib.import_module(f"agentd.cli.{name.replace('-', '_')}")
            module.add_arguments(p)
            p.set_defaults(handler=module.handle)
    return parser


def _selected(argv: Sequence[str]) -> str | None:
    skip_next = False
    for arg in argv:
        if skip_next:
            skip_next = False
            continue
        if arg in ("--root", "--log-format", "--settings"):
            skip_next = True
        elif arg in COMMANDS:
            return arg
        elif not arg.startswith("-"):
            return None
    return None


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def agent_config(args: argparse.Namespace) -> AgentConfig:
    """This node's settings: the daemon's validated copy in a worker, else the file's."""
    given = os.environ.get(SETTINGS_JSON_ENV)
    if given:
        return AgentConfig(json.loads(given), os.environ.get(SETTINGS_ORIGIN_ENV, "the daemon"))
    settings = getattr(args, "settings", None)
    return load_config(Paths(args.root), settings.absolute() if settings else None)


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Raised, not just noted: Python retries a system call a signal interrupts (PEP 475) unless
    # the handler raises, so this is what ends a command waiting in open(), read() or sleep().
    # `apply` and `run` install handlers of their own that stop at a safe point instead.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(_selected(args_list)).parse_args(args_list)
    root = getattr(args, "root", None) or Path(os.environ.get("AGENTD_ROOT") or "/")
    args.root = root.absolute()
    from agentd.system import log  # noqa: PLC0415

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
        from agentd.core.redact import redact_text  # noqa: PLC0415

        sys.stderr.write(f"agentd: internal error: {type(exc).__name__}: {redact_text(str(exc))}\n")
        return EXIT_INTERNAL
    return code


if __name__ == "__main__":
    sys.exit(main())
