"""The one boundary to the system: commands, atomic file writes and service restarts."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from agentd.paths import Paths

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


# --- files -------------------------------------------------------------------------------------


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_beside(target: Path) -> Path:
    # Same directory as the target so the final rename never crosses a file system.
    return target.with_name(f".{target.name}.agentd-{secrets.token_hex(4)}")


def atomic_write(target: Path, data: bytes, mode: int = 0o644) -> None:
    """Write beside the target, fsync, chmod, rename: readers see the old or the new file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(target)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(target.parent)


def atomic_copy(source: Path, target: Path, mode: int) -> None:
    """Copy a file into place atomically (streamed, so large binaries are not held in memory)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(target)
    try:
        with (
            source.open("rb") as src,
            open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as dst,
        ):
            while chunk := src.read(1 << 20):
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(target.parent)


def atomic_symlink(link_target: str, link: Path) -> None:
    """Point `link` at `link_target`, replacing whatever was there in one rename."""
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(link)
    os.symlink(link_target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(link.parent)


def remove_tree(path: Path) -> None:
    """Remove a directory tree if present, ignoring errors (caches and scratch space only)."""
    # shutil loads the bz2 and lzma modules: imported here, not by the daemon at start.
    import shutil  # noqa: PLC0415

    shutil.rmtree(path, ignore_errors=True)


def remove_path(path: Path) -> None:
    """Remove a file or symlink (never a directory tree) if present."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def read_bytes_limited(path: Path, limit: int) -> bytes | None:
    """The file's bytes, or None when it is larger than `limit`."""
    with path.open("rb") as f:
        data = f.read(limit + 1)
    return None if len(data) > limit else data


# --- services ----------------------------------------------------------------------------------


class ServiceManager(Protocol):
    """Where restarts go: systemctl on a real host, a record under --root."""

    calls: list[str]

    def daemon_reload(self) -> None: ...
    def restart(self, unit: str) -> None: ...
    def enable(self, unit: str) -> None: ...
    def disable_now(self, unit: str) -> None: ...
    def ldconfig(self) -> None: ...


class ServiceError(Exception):
    """systemctl (or ldconfig) failed."""


@dataclass
class SystemdServices:
    """Runs systemctl for real; each call is kept so the run's result can list it."""

    calls: list[str] = field(default_factory=list)

    def _systemctl(self, *args: str) -> None:
        self.calls.append("systemctl " + " ".join(args))
        result = run_command(["systemctl", *args], timeout=120)
        if not result.ok:
            raise ServiceError(
                f"systemctl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
            )

    def daemon_reload(self) -> None:
        self._systemctl("daemon-reload")

    def restart(self, unit: str) -> None:
        self._systemctl("restart", unit)

    def enable(self, unit: str) -> None:
        self._systemctl("enable", unit)

    def disable_now(self, unit: str) -> None:
        self._systemctl("disable", "--now", unit)

    def ldconfig(self) -> None:
        self.calls.append("ldconfig")
        result = run_command(["ldconfig"], timeout=60)
        if not result.ok:
            raise ServiceError(f"ldconfig failed: {result.stderr.strip()}")


@dataclass
class RecordedServices:
    """Under --root nothing on the host is touched: the calls a run would make are recorded."""

    calls: list[str] = field(default_factory=list)

    def daemon_reload(self) -> None:
        self.calls.append("systemctl daemon-reload")

    def restart(self, unit: str) -> None:
        self.calls.append(f"systemctl restart {unit}")

    def enable(self, unit: str) -> None:
        self.calls.append(f"systemctl enable {unit}")

    def disable_now(self, unit: str) -> None:
        self.calls.append(f"systemctl disable --now {unit}")

    def ldconfig(self) -> None:
        self.calls.append("ldconfig")


@dataclass
class Host:
    """A node: its paths (under the root) and its service manager."""

    paths: Paths
    services: ServiceManager

    @classmethod
    def at(cls, root: Path) -> Host:
        paths = Paths(root)
        services: ServiceManager = RecordedServices() if paths.sandboxed else SystemdServices()
        return cls(paths, services)
