"""Exit codes and failure output: one table read by the code, every `--help` and the man page."""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import select
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Optional

from agentd.core.errors import AgentError, Cancelled

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CHANGES = 2  # plan --detailed-exitcode: changes pending
EXIT_UNHEALTHY = 2  # check
EXIT_REFUSED = 3  # plan --detailed-exitcode: apply would refuse something
EXIT_USAGE = 64  # EX_USAGE: a typo in a command line never reads as "unhealthy" (2)
EXIT_NOINPUT = 66  # EX_NOINPUT
EXIT_INTERNAL = 70  # EX_SOFTWARE: a bug, as opposed to an expected failure (exit 1)
EXIT_INTERRUPTED = 130
EXIT_CLOSED_STDOUT = 141  # 128 + SIGPIPE: what a shell reports for `yes | head -1`
EXIT_TERMINATED = 143  # 128 + SIGTERM (cli.main: raised, so that no open() or wait goes on)

SHARED: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "success"),
    (EXIT_FAILURE, "failure: an invalid file, a failed or refused run (nothing is left half-done)"),
    (EXIT_USAGE, "usage error: an unknown option or command, a missing argument"),
    (EXIT_INTERNAL, "internal error: a bug in agentd (please report it)"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C)"),
    (EXIT_CLOSED_STDOUT, "standard output was closed early (`| head`): the output was cut short"),
    (EXIT_TERMINATED, "stopped by SIGTERM: nothing is left half-done"),
)
_NOINPUT = (EXIT_NOINPUT, "a file named on the command line does not exist")
OWN: dict[str, tuple[tuple[int, str], ...]] = {
    "plan": (
        (EXIT_CHANGES, "--detailed-exitcode: changes pending"),
        (
            EXIT_REFUSED,
            "--detailed-exitcode: apply would refuse something (see the plan's refusals)",
        ),
        _NOINPUT,
    ),
    "apply": (_NOINPUT,),
    "validate": (_NOINPUT,),
    "check": (
        (EXIT_UNHEALTHY, "the node is unhealthy"),
        (EXIT_FAILURE, "the checks could not run"),
    ),
    "pull": ((EXIT_FAILURE, "the pull failed or its document was rejected"),),
    "status": ((EXIT_FAILURE, "no state yet: agentd has not run on this node"),),
}


def exit_codes(command: str | None) -> list[tuple[int, str]]:
    """The codes `command` (None: the top-level `agentd`) can exit with, its own meaning first."""
    own = OWN.get(command or "", ())
    mine = {code for code, _ in own}
    rows = [*own, *((c, what) for c, what in SHARED if c not in mine)]
    return sorted(rows)


def epilog(command: str | None) -> str:
    rows = exit_codes(command)
    return "exit status:\n" + "".join(f"  {code:<4} {what}\n" for code, what in rows)


class UsageError(AgentError):
    """A command line argparse refused: its usage and message are already on stderr."""

    exit_code = EXIT_USAGE


class InternalError(AgentError):
    """A bug, reported as one (its message redacted): never reachable from any input."""

    exit_code = EXIT_INTERNAL


class Interrupted(AgentError):
    """Ctrl-C."""

    exit_code = EXIT_INTERRUPTED


class MissingInput(AgentError):
    """A file named on the command line does not exist."""

    exit_code = EXIT_NOINPUT


def require_file(path: Path | None, given_as: str) -> None:
    """A file the command line names must exist: said plainly, with its own code (66)."""
    if path is not None and not path.exists():
        raise MissingInput(f"{path}: no such file (given as {given_as})")


def _did_you_mean(message: str) -> str:
    """argparse's "invalid choice: 'pln' (choose from ...)" with the closest choice named."""
    m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if m is None:
        return ""
    choices = re.findall(r"'([^']*)'", m[2])
    close = difflib.get_close_matches(m[1], choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


class UsageParser(argparse.ArgumentParser):
    """argparse, exiting 64 (EX_USAGE) on a bad command line instead of its 2."""

    def error(self, message: str) -> NoReturn:
        message += _did_you_mean(message)
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise UsageError(message)

    # --help and --version: argparse drops a write error and leaves the rest to the exit's
    # flush; here both reach main, so a closed stdout ends them as any output (141).
    def _print_message(self, message: str, file: Optional[SupportsWrite[str]] = None) -> None:
        if message:
            (file or sys.stderr).write(message)

    def exit(self, status: int = 0, message: Optional[str] = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        sys.stdout.flush()
        sys.exit(status)


_printed = False  # whether this process already put its one JSON document on stdout


def print_json(data: Any) -> None:
    global _printed  # noqa: PLW0603 - one process, one command, one document
    _printed = True
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


_PROBLEM = re.compile(
    r"^(?P<file>[^\n]+?):(?P<line>\d+):(?P<column>\d+): "
    r"(?:(?P<severity>warning): )?(?P<message>.*)$",
    re.DOTALL,
)


def diagnostic(problem: str, severity: str = "error") -> dict[str, Any]:
    """A `FILE:LINE:COL: message` line as an object; a line without a place keeps only text."""
    m = _PROBLEM.match(problem)
    if m is None:
        return {
            "file": None,
            "line": None,
            "column": None,
            "severity": severity,
            "message": problem,
        }
    return {
        "file": m["file"],
        "line": int(m["line"]),
        "column": int(m["column"]),
        "severity": m["severity"] or severity,
        "message": m["message"],
    }


def _kind(exc: AgentError) -> str:
    """`LockHeldError` -> `lock-held`; a plain AgentError is an `error`."""
    if type(exc) is AgentError:
        return "error"
    name = type(exc).__name__.removesuffix("Error") or "agent"
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


def error_document(exc: AgentError, command: str | None) -> dict[str, Any]:
    """The one JSON document a failed `--json` command prints: its run's result, if it has one."""
    result = getattr(exc, "result", None)
    doc: dict[str, Any] = result.to_json() if result is not None else {"kind": command}
    if result is None and command in ("apply", "rollback"):
        doc["outcome"] = "cancelled" if isinstance(exc, (Cancelled, Interrupted)) else "failed"
    if command in ("validate", "settings"):
        doc["valid"] = False  # their success documents say valid: true
    problems = [str(p) for p in getattr(exc, "problems", None) or []]
    doc.update(
        ok=False,
        exitCode=exc.exit_code,
        errorKind=_kind(exc),
        error=str(exc),
        problems=problems,
        diagnostics=[diagnostic(p) for p in problems],
    )
    return doc


def report_failure(exc: AgentError, command: str | None, wants_json: bool) -> int:
    """Say why on stderr (unless argparse did) and, for `--json`, as the one document."""
    from agentd.cli.color import paint  # noqa: PLC0415
    from agentd.core.printable import printable  # noqa: PLC0415

    if not isinstance(exc, UsageError):
        what = "internal error: " if isinstance(exc, InternalError) else ""
        # printable: a message quoting a document or a host's file name stays one line.
        sys.stderr.write(
            f"{paint('agentd: error:', 'red', sys.stderr)} {what}{printable(str(exc))}\n"
        )
        for problem in getattr(exc, "problems", None) or []:
            sys.stderr.write(f"{printable(str(problem))}\n")
    if wants_json and not _printed:
        print_json(error_document(exc, command))
    return exc.exit_code


def stdout_closed() -> bool:
    """Whether standard output's reader is gone (a pipe closed early): poll says POLLERR."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):
        return True
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))


def end_quietly() -> int:
    """The reader left: drop what is still buffered (the exit's flush would fail again)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_CLOSED_STDOUT
