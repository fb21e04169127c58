"""Commands: every program agentd runs, with a fixed environment and a timeout."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

COMMAND_TIMEOUT_S = 10.0


# Commands run with a fixed environment so a caller's PATH or locale never changes the output
# that parsers read.
_COMMAND_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LC_ALL": "C",
}


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    stdout_bytes: bytes = b""  # stdout exactly as written, for data that is not text

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def run_command(
    argv: list[str],
    timeout: float = COMMAND_TIMEOUT_S,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    input_bytes: bytes | None = None,
) -> CommandResult:
    """Run argv without a shell; a missing binary is 127 and a timeout 124, as in a shell.

    `env` adds to (or overrides) the fixed environment; `input_bytes` is fed on stdin.
    """
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            timeout=timeout,
            env={**_COMMAND_ENV, **(env or {})},
            cwd=cwd,
            input=input_bytes,
            stdin=None if input_bytes is not None else subprocess.DEVNULL,
            check=False,
        )
    except FileNotFoundError as exc:
        return CommandResult(tuple(argv), 127, "", str(exc))
    except PermissionError as exc:
        return CommandResult(tuple(argv), 126, "", str(exc))
    except OSError as exc:  # e.g. ENOEXEC: a binary for another architecture
        return CommandResult(tuple(argv), 126, "", str(exc))
    except subprocess.TimeoutExpired:
        return CommandResult(tuple(argv), 124, "", f"timed out after {timeout:.0f}s")
    return CommandResult(
        tuple(argv),
        proc.returncode,
        proc.stdout.decode("utf-8", "replace"),
        proc.stderr.decode("utf-8", "replace"),
        proc.stdout,
    )


Process = subprocess.Popen[bytes]


ProcessTimeout = subprocess.TimeoutExpired


def start_process(argv: list[str], env: Mapping[str, str]) -> Process:
    """Start argv (no shell) with exactly `env`, stdout piped, stderr shared with this process:
    the daemon's workers, whose logs go where the daemon's go."""
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=None, stdin=subprocess.DEVNULL, env=dict(env)
    )
