"""The one boundary to the system: commands, atomic file writes and service restarts."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Union

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


# The temporary files atomic writes leave behind when the process is killed before the rename.
TEMP_RE = re.compile(r"^\..+\.agentd-[0-9a-f]{8}$")


def temp_beside(target: Path) -> Path:
    # Same directory as the target so the final rename never crosses a file system.
    return target.with_name(f".{target.name}.agentd-{secrets.token_hex(4)}")


def sweep_temp_files(directory: Path) -> list[Path]:
    """Remove what a killed agentd left in `directory` (only its own temp files and symlinks,
    by name); the caller holds the state lock, so no run of its own is writing them."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        # atomic_symlink's temp is a symlink: is_file() would follow it, or find it dangling.
        temp = entry.is_symlink() or entry.is_file(follow_symlinks=False)
        if TEMP_RE.match(entry.name) and temp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def atomic_write(target: Path, data: bytes, mode: int = 0o644) -> None:
    """Write beside the target, fsync, chmod, rename: readers see the old or the new file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(target)
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
    tmp = temp_beside(target)
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
    tmp = temp_beside(link)
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


# --- distribution packages ---------------------------------------------------------------------

PACKAGE_TIMEOUT_S = 900.0  # an install may download: well beyond a version query
_APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "APT_LISTCHANGES_FRONTEND": "none"}


class PackageError(Exception):
    """The package manager failed (its own message is in the text)."""


def outside_the_unit(argv: list[str], env: Mapping[str, str]) -> list[str]:
    """argv as a transient systemd unit when agentd runs as its (sandboxed) service.

    The package manager writes /usr, /var/lib/dpkg and /var/cache, which the service's
    ProtectSystem=strict keeps read-only for agentd itself: `systemd-run --wait --pipe` runs it
    outside that sandbox, its output and exit code passed back."""
    under_systemd = "INVOCATION_ID" in os.environ and os.path.isdir("/run/systemd/system")
    if not under_systemd or not os.access("/usr/bin/systemd-run", os.X_OK):
        return argv
    setenv = [f"--setenv={k}={v}" for k, v in env.items()]
    return [
        "/usr/bin/systemd-run",
        "--wait",
        "--pipe",
        "--quiet",
        "--collect",
        "--service-type=exec",
        f"--description=agentd: {' '.join(argv[:3])}",
        *setenv,
        "--",
        *argv,
    ]


def _tail(result: CommandResult) -> str:
    lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
    return " / ".join(line.strip() for line in lines[-3:])[:400] or f"exit {result.returncode}"


@dataclass
class AptPackages:
    """apt-get and dpkg on a Debian-family node."""

    name: str = "apt"
    calls: list[str] = field(default_factory=list)

    def installed(self, package: str) -> str | None:
        """The installed package's full version, or None."""
        result = run_command(["dpkg-query", "-W", "-f=${db:Status-Abbrev}|${Version}", package])
        status, _, version = result.stdout.partition("|")
        if not result.ok or not status.startswith("ii"):
            return None
        return version.strip() or None

    def available(self, package: str) -> list[str]:
        """Every version the configured repositories offer (full versions, as apt lists them)."""
        result = run_command(["apt-cache", "madison", package], 60)
        versions = []
        for line in result.stdout.splitlines():
            parts = [p.strip() for p in line.split("|")]
            if len(parts) >= 2 and parts[0] == package and parts[1] not in versions:
                versions.append(parts[1])
        return versions

    def refresh(self) -> None:
        self.calls.append("apt-get update")
        argv = outside_the_unit(["apt-get", "update", "-q"], _APT_ENV)
        result = run_command(argv, PACKAGE_TIMEOUT_S, env=_APT_ENV)
        if not result.ok:
            raise PackageError(f"apt-get update failed: {_tail(result)}")

    def install(self, package: str, version: str, *, reinstall: bool = False) -> None:
        argv = ["apt-get", "install", "-y", "-q", "--no-install-recommends"]
        argv += ["--reinstall"] if reinstall else []
        argv.append(f"{package}={version}")
        self.calls.append(" ".join(argv))
        result = run_command(outside_the_unit(argv, _APT_ENV), PACKAGE_TIMEOUT_S, env=_APT_ENV)
        if not result.ok:
            raise PackageError(f"apt-get install {package}={version} failed: {_tail(result)}")


@dataclass
class DnfPackages:
    """dnf and rpm on a Fedora/RHEL-family node."""

    name: str = "dnf"
    calls: list[str] = field(default_factory=list)

    def installed(self, package: str) -> str | None:
        result = run_command(["rpm", "-q", "--qf", "%{VERSION}-%{RELEASE}", package])
        if not result.ok:
            return None
        return result.stdout.strip() or None

    def available(self, package: str) -> list[str]:
        result = run_command(
            ["dnf", "repoquery", "-q", "--available", "--qf", "%{version}-%{release}", package],
            120,
        )
        return list(dict.fromkeys(v.strip() for v in result.stdout.splitlines() if v.strip()))

    def refresh(self) -> None:
        self.calls.append("dnf makecache")
        result = run_command(outside_the_unit(["dnf", "makecache", "-q"], {}), PACKAGE_TIMEOUT_S)
        if not result.ok:
            raise PackageError(f"dnf makecache failed: {_tail(result)}")

    def install(self, package: str, version: str, *, reinstall: bool = False) -> None:
        argv = ["dnf", "reinstall" if reinstall else "install", "-y", "-q", f"{package}-{version}"]
        self.calls.append(" ".join(argv))
        result = run_command(outside_the_unit(argv, {}), PACKAGE_TIMEOUT_S)
        if not result.ok:
            raise PackageError(f"dnf install {package}-{version} failed: {_tail(result)}")


@dataclass
class RecordedPackages:
    """Under --root nothing is installed: the calls are recorded. What the repositories offer is
    still asked of this machine's package manager (read-only), so a plan says what is there."""

    real: AptPackages | DnfPackages | None
    calls: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        real = self.real.name if self.real is not None else "no package manager"
        return f"{real}: this machine's, asked read-only under --root"

    def installed(self, package: str) -> str | None:
        return None  # the sandbox has no package database

    def available(self, package: str) -> list[str]:
        return self.real.available(package) if self.real is not None else []

    def refresh(self) -> None:
        self.calls.append("refresh package lists")

    def install(self, package: str, version: str, *, reinstall: bool = False) -> None:
        verb = "reinstall" if reinstall else "install"
        self.calls.append(f"{verb} package {package} {version}")


PackageManager = Union[AptPackages, DnfPackages, RecordedPackages]


def system_packages() -> AptPackages | DnfPackages | None:
    """This machine's package manager, by the commands it has."""
    for directory in ("/usr/bin", "/bin"):
        if os.access(f"{directory}/apt-get", os.X_OK):
            return AptPackages()
        if os.access(f"{directory}/dnf", os.X_OK):
            return DnfPackages()
    return None


@dataclass
class Host:
    """A node: its paths (under the root), its service manager and its package manager."""

    paths: Paths
    services: ServiceManager
    packages: PackageManager | None = None

    @classmethod
    def at(cls, root: Path) -> Host:
        paths = Paths(root)
        if paths.sandboxed:
            return cls(paths, RecordedServices(), RecordedPackages(system_packages()))
        return cls(paths, SystemdServices(), system_packages())
