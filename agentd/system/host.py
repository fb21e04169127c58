"""The host: one object holding the node paths, its commands, services and package manager."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union

from agentd.core.paths import Paths
from agentd.system.commands import NodeCommands, node_commands
from agentd.system.packages import AptPackages, DnfPackages, RecordedPackages, system_packages
from agentd.system.services import RecordedServices, ServiceManager, SystemdServices

PackageManager = Union[AptPackages, DnfPackages, RecordedPackages]


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
            services = RecordedServices(tree=node_commands(paths))
            return cls(paths, services, RecordedPackages(system_packages()))
        return cls(paths, SystemdServices(), system_packages())

    @property
    def commands(self) -> NodeCommands:
        """How the node's own programs run (inside a real OS tree under --root)."""
        return node_commands(self.paths)
