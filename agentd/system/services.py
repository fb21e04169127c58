"""Services: systemd restarts and ldconfig, or their record under --root."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from agentd.system.commands import NodeCommands, run_command
from agentd.system.packages import outside_the_unit


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
        # It replaces /etc/ld.so.cache, which the unit's sandbox keeps read-only for agentd.
        result = run_command(outside_the_unit(["ldconfig"], {}), timeout=60)
        if not result.ok:
            raise ServiceError(f"ldconfig failed: {result.stderr.strip()}")


@dataclass
class RecordedServices:
    """Under --root nothing on the host is touched: the calls a run would make are recorded.

    ldconfig touches nothing outside the tree it runs in, so in a real OS tree that agentd runs
    programs inside (`tree`) it runs there too: the tree's ldconfig writes the tree's
    /etc/ld.so.cache from the tree's /etc/ld.so.conf, and a later `--version` or check inside the
    tree finds the library agentd installed, as it would on the node."""

    calls: list[str] = field(default_factory=list)
    tree: NodeCommands | None = None

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
        # A musl tree has no ldconfig (and no cache): nothing to refresh there.
        if self.tree is None or not self.tree.inside or not self.tree.paths.find_binary("ldconfig"):
            return
        result = self.tree(["ldconfig"], 60)
        if not result.ok:
            raise ServiceError(
                f"ldconfig in {self.tree.paths.root} failed: {result.stderr.strip()}"
            )
