"""Distribution packages: apt-get and dnf outside the unit's sandbox, or their record."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from agentd.system.commands import CommandResult, run_command

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


def system_packages() -> AptPackages | DnfPackages | None:
    """This machine's package manager, by the commands it has."""
    for directory in ("/usr/bin", "/bin"):
        if os.access(f"{directory}/apt-get", os.X_OK):
            return AptPackages()
        if os.access(f"{directory}/dnf", os.X_OK):
            return DnfPackages()
    return None
