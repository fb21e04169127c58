"""What a node really has: host facts and each component found, as plain data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agentd.core.components import BINARY_KINDS

# What detection reports on, in the registry's order.
COMPONENTS = tuple(kind.name for kind in BINARY_KINDS)


@dataclass(frozen=True)
class PluginFact:
    """A WasmEdge plugin library found in a plugin directory."""

    name: str  # the upstream plugin name (wasi_nn-ggml, wasi_crypto, ...) or the file's stem
    path: str  # as seen on the node
    managed: bool = False  # agentd recorded installing it
    version: str | None = None  # from `wasmedge --version` (0.14+ lists loaded plugins)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "path": self.path, "managed": self.managed}
        if self.version:
            out["version"] = self.version
        return out


@dataclass(frozen=True)
class ComponentFacts:
    """One component as detected; `installed` False means no binary in the search dirs."""

    installed: bool
    version: str | None = None
    path: str | None = None  # as seen on the node, e.g. /usr/bin/crun
    managed: bool = False  # lives where agentd installs it (/usr/local/...)
    commit: str | None = None
    features: tuple[str, ...] = ()
    plugins: tuple[PluginFact, ...] = ()
    error: str | None = None  # the binary exists but its version could not be read
    # What the program logged as errors while still answering (WasmEdge: a plugin it cannot load).
    load_errors: tuple[str, ...] = ()

    @property
    def wasm_handlers(self) -> tuple[str, ...]:
        """crun's Wasm handlers: the names after each `+WASM:` token."""
        return tuple(f.split(":", 1)[1] for f in self.features if f.startswith("WASM:"))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"installed": self.installed}
        if not self.installed:
            return out
        out["version"] = self.version
        out["path"] = self.path
        out["managed"] = self.managed
        if self.commit:
            out["commit"] = self.commit
        if self.features:
            out["features"] = list(self.features)
        if self.plugins or (self.path and self.path.endswith("wasmedge")):
            out["plugins"] = [p.to_json() for p in self.plugins]
        if self.error:
            out["error"] = self.error
        if self.load_errors:
            out["loadErrors"] = list(self.load_errors)
        return out


NOT_INSTALLED = ComponentFacts(installed=False)


@dataclass(frozen=True)
class HostFacts:
    arch: str  # amd64, arm64, armv7 (or the raw machine name when unknown)
    os: str  # "<id> <version_id>", e.g. "debian 12"
    kernel: str
    cpus: int
    memory_bytes: int
    disk_free_bytes: int
    cgroup_v2: bool | None = None
    disk_total_bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "os": self.os,
            "kernel": self.kernel,
            "cpus": self.cpus,
            "memoryBytes": self.memory_bytes,
            "diskFreeBytes": self.disk_free_bytes,
            "diskTotalBytes": self.disk_total_bytes,
            "cgroupV2": self.cgroup_v2,
        }


@dataclass(frozen=True)
class Facts:
    host: HostFacts
    components: dict[str, ComponentFacts] = field(default_factory=dict)
    # Distribution packages the desired state names: the installed version (full, as the
    # package manager has it), or None.
    packages: dict[str, str | None] = field(default_factory=dict)

    def component(self, name: str) -> ComponentFacts:
        return self.components.get(name, NOT_INSTALLED)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "host": self.host.to_json(),
            "components": {name: self.component(name).to_json() for name in COMPONENTS},
        }
        if self.packages:
            out["packages"] = dict(self.packages)
        return out
