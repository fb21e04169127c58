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
from typing import TextIO, cast

from agentd import __version__
from agentd.cli.exits import (
    EXIT_TERMINATED,
    InternalError,
    Interrupted,
    UsageParser,
    end_quietly,
    epilog,
    report_failure,
    stdout_closed,
)
from agentd.core.errors import AgentError, StorageError
from agentd.core.paths import Paths
from agentd.core.printable import PrintableWriter
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
    "ratchet": "lower the generation ratchet (after a mistaken publish), keeping the inventory",
    "run": "the daemon: keep this node converged (what the systemd unit starts)",
    "settings": "check the agent settings and print them with every default filled in",
    "schema": "print the desired state's JSON Schema",
    "probe-wasm": "write the health probe's WASI program (for a probe image)",
}
# The daemon hands its workers the settings it validated (the file may be broken since).
SETTINGS_JSON_ENV = "AGENTD_SETTINGS_JSON"
SETTINGS_ORIGIN_ENV = "AGENTD_SETTINGS_ORIGIN"


def _common() -> UsageParser:
    common = UsageParser(add_help=False)
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
    common.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default=argparse.SUPPRESS,
        help="colour the output (default auto: on a terminal, unless NO_COLOR is set)",
    )
    return common


def build_parser(selected: str | None) -> argparse.ArgumentParser:
    common = _common()
    # Raw epilogs: the exit-status list keeps one code a line.
    parser = UsageParser(
        prog="agentd",
        description="Declarative node agent for k3s + WebAssembly edge nodes.",
        parents=[common],
        epilog=epilog(None),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"agentd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            parents=[common],
            epilog=epilog(name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
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
        if arg in ("--root", "--log-format", "--settings", "--color"):
            skip_next = True
        elif arg in COMMANDS:
            return arg
        elif not arg.startswith("-"):
            return None
    return None


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
    raise SystemExit(EXIT_TERMINATED)


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    # Every byte a host's file name or a document put in the output reaches the terminal (and
    # a log reader) escaped: no screen clear, no forged line (agentd/core/printable.py).
    from agentd.cli.color import OWN_SEQUENCES  # noqa: PLC0415

    out, err = sys.stdout, sys.stderr
    sys.stdout = cast(TextIO, PrintableWriter(out, OWN_SEQUENCES))
    sys.stderr = cast(TextIO, PrintableWriter(err, OWN_SEQUENCES))
    try:
        return _main(argv)
    finally:
        sys.stdout, sys.stderr = out, err


def _main(argv: Sequence[str] | None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = _selected(args_list)
    # Known before parsing, so that a usage error of a `--json` command is a document too.
    wants_json = "--json" in args_list
    try:
        code = _run(build_parser(command), args_list)
        sys.stdout.flush()  # here, not at exit: a closed pipe is then caught below
    except BrokenPipeError as exc:
        if stdout_closed():
            return end_quietly()
        return report_failure(_internal(exc), command, wants_json)
    except AgentError as exc:
        return report_failure(exc, command, wants_json)
    except KeyboardInterrupt:
        return report_failure(Interrupted("interrupted"), command, wants_json)
    except OSError as exc:
        return report_failure(_storage(exc) or _internal(exc), command, wants_json)
    except Exception as exc:  # pragma: no cover - a bug; say so plainly, with its own code
        return report_failure(_internal(exc), command, wants_json)
    return code


def _run(parser: argparse.ArgumentParser, args_list: list[str]) -> int:
    args = parser.parse_args(args_list)
    root = getattr(args, "root", None) or Path(os.environ.get("AGENTD_ROOT") or "/")
    args.root = root.absolute()
    from agentd.cli import color  # noqa: PLC0415
    from agentd.system import log  # noqa: PLC0415

    color.configure(getattr(args, "color", "auto"))
    log.configure(getattr(args, "log_format", "auto"), getattr(args, "verbose", False))
    code: int = args.handler(args)
    return code


def _internal(exc: Exception) -> InternalError:
    from agentd.core.redact import redact_text  # noqa: PLC0415

    return InternalError(f"{type(exc).__name__}: {redact_text(str(exc))}")


def _storage(exc: OSError) -> AgentError | None:
    """A full or failing disk is the node's state, not a bug: an error naming the file system."""
    from agentd.system.storage import describe, storage_error  # noqa: PLC0415

    full = storage_error(exc)
    if full is None:
        return None
    return StorageError(
        f"{describe(full)}; the command stopped there (every file agentd writes is replaced "
        "whole: each is old or new)"
    )


if __name__ == "__main__":
    sys.exit(main())
