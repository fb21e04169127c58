"""Every host path agentd touches, derived from one root so `--root` sandboxes all of them."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from agentd.core.errors import AgentError

# Where detection looks for binaries: fixed, never the agent's own PATH (INTERFACE.md).
BIN_SEARCH_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")

# Where components go, as seen on the node (the upstream conventions in INTERFACE.md).
USR_LOCAL_BIN = "/usr/local/bin"
USR_LOCAL_LIB = "/usr/local/lib"
USR_LOCAL_INCLUDE = "/usr/local/include"
PLUGIN_DIR = "/usr/local/lib/wasmedge"
K3S_BIN = f"{USR_LOCAL_BIN}/k3s"
CRUN_BIN = f"{USR_LOCAL_BIN}/crun"
SYSTEMD_DIR = "/etc/systemd/system"
K3S_UNITS = {"server": "k3s.service", "agent": "k3s-agent.service"}
# k3s adds a runtime named "crun" by itself when it finds crun (components.md), and its base
# template emits that table; TOML forbids defining a table twice, so agentd's Wasm-capable crun
# runtime needs a name of its own.
CRUN_WASM_RUNTIME = "crun-wasm"
# The RuntimeClass agentd's health probe runs with: the crun-wasm handler and no node selector,
# so the probe still runs (and shows why) on a node whose wasm-runtime label was taken away.
PROBE_RUNTIME_CLASS = "agentd-wasm-probe"
K3S_CONFIG = "/etc/rancher/k3s/config.yaml"
K3S_MANIFESTS_DIR = "/var/lib/rancher/k3s/server/manifests"
RUNTIMECLASS_MANIFEST = f"{K3S_MANIFESTS_DIR}/agentd-runtimeclasses.yaml"
# Cluster add-ons (README "Cluster add-ons"): k3s serves static/charts itself at
# https://%{KUBERNETES_API}%/static/charts/, imports agent/images into containerd, and reads
# registries.yaml at start.
K3S_REGISTRIES = "/etc/rancher/k3s/registries.yaml"
K3S_STATIC_CHARTS = "/var/lib/rancher/k3s/server/static/charts"
K3S_IMAGES_DIR = "/var/lib/rancher/k3s/agent/images"
# The image archives k3s imports from agent/images, matched case-insensitively by suffix
# (rancher/wharfie pkg/tarfile/tarfile.go SupportedExtensions, which k3s's preloadFile and
# image watcher use); agentd keeps the URL's suffix so that k3s picks the same decompressor.
IMAGE_SUFFIXES = (".tar", ".tar.lz4", ".tar.bz2", ".tbz", ".tar.gz", ".tgz", ".tar.zst", ".tzst")
GATEKEEPER_MANIFEST = f"{K3S_MANIFESTS_DIR}/agentd-addon-gatekeeper.yaml"
GATEKEEPER_POLICIES = f"{K3S_MANIFESTS_DIR}/agentd-addon-gatekeeper-policies.yaml"
GATEKEEPER_CHART = f"{K3S_STATIC_CHARTS}/gatekeeper.tgz"
GATEKEEPER_NAMESPACE = "gatekeeper-system"  # the HelmChart's targetNamespace
CONTAINERD_DIR = "/var/lib/rancher/k3s/agent/etc/containerd"
# containerd 1 reads the first template, containerd 2 (bundled with newer k3s) the second.
CONTAINERD_TEMPLATES = (
    f"{CONTAINERD_DIR}/config.toml.tmpl",
    f"{CONTAINERD_DIR}/config-v3.toml.tmpl",
)

# The dynamic loaders of glibc and musl on agentd's architectures, at the absolute paths their
# programs name as their interpreter (ELF PT_INTERP). A root that has one is a real OS tree with a
# libc of its own: run from outside it, its programs get this host's loader and libraries instead
# (the kernel resolves PT_INTERP against the process's root), which fails (`GLIBC_2.38' not
# found) or mixes two libcs (a RUNPATH pulling the tree's libc into the host's loader).
DYNAMIC_LOADERS = (
    "/lib64/ld-linux-x86-64.so.2",
    "/lib/ld-linux-aarch64.so.1",
    "/lib/ld-linux-armhf.so.3",
    "/lib/ld-musl-x86_64.so.1",
    "/lib/ld-musl-aarch64.so.1",
    "/lib/ld-musl-armhf.so.1",
)


class RootLinkError(AgentError):
    """A host path under a sandbox root goes through a loop of symbolic links."""


# As many links as Linux follows resolving one path (MAXSYMLINKS) before it gives up with ELOOP.
_MAX_LINKS = 40


@dataclass(frozen=True)
class Paths:
    """Host paths under `root` ("/" on a real node)."""

    root: Path

    @functools.cached_property
    def sandboxed(self) -> bool:
        return self.root.resolve() != Path("/")

    def under(self, host_path: str) -> Path:
        """`host_path` (absolute, as on the node) mapped under the root. Under a sandbox root
        its directories are resolved as a chroot would resolve them (an absolute link's target
        taken under the root, `..` stopping at it), so nothing reached through them, written
        or read, is outside the root; the last component is left as it is, link or not."""
        if not host_path.startswith("/"):
            raise ValueError(f"host path must be absolute: {host_path!r}")
        if not self.sandboxed:
            return self.root / host_path.lstrip("/")
        *dirs, last = host_path.split("/")
        return self._resolved(dirs, host_path).joinpath(last)

    def under_dir(self, host_path: str) -> Path:
        """A directory's `under()`: with its last component resolved too, since what is written
        is inside it."""
        if not host_path.startswith("/"):
            raise ValueError(f"host path must be absolute: {host_path!r}")
        if not self.sandboxed:
            return self.root / host_path.lstrip("/")
        return self._resolved(host_path.split("/"), host_path)

    def _resolved(self, parts: list[str], host_path: str) -> Path:
        done: list[str] = []
        todo = parts[::-1]  # a stack: the next component last
        links = 0
        while todo:
            part = todo.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if done:
                    done.pop()
                continue
            try:
                target = os.readlink(self.root.joinpath(*done, part))
            except OSError:  # not a link, or not there (yet): taken as it is
                done.append(part)
                continue
            links += 1
            if links > _MAX_LINKS:
                raise RootLinkError(
                    f"{host_path}: too many levels of symbolic links under the root {self.root}"
                )
            if target.startswith("/"):
                done = []
            todo.extend(target.split("/")[::-1])
        return self.root.joinpath(*done)

    @property
    def own_loader(self) -> str | None:
        """The dynamic loader the root has of its own (as the node names it); None for a tree
        without one, such as the tests' sandboxes of stand-in scripts."""
        for loader in DYNAMIC_LOADERS:
            # lexists: on a merged-/usr tree the loader is an absolute symlink, which seen from
            # outside the tree points at this host's own loader.
            if os.path.lexists(self.under(loader)):
                return loader
        return None

    def host_view(self, path: Path) -> str:
        """The node's own name for a path under the root (for messages and state)."""
        try:
            rel = path.relative_to(self.root)
        except ValueError:
            return str(path)
        return "/" + str(rel) if str(rel) != "." else "/"

    # agentd's own configuration and state
    @property
    def etc_dir(self) -> Path:
        return self.under_dir("/etc/wasm-edge")

    @property
    def desired_file(self) -> Path:
        return self.etc_dir / "desired.yaml"

    @property
    def desired_dir(self) -> Path:
        return self.etc_dir / "desired.d"

    @property
    def settings_file(self) -> Path:
        return self.etc_dir / "agentd.yaml"

    @property
    def suspend_file(self) -> Path:
        """While it exists, the daemon converges nothing (health checks go on)."""
        return self.etc_dir / "suspend"

    @property
    def state_dir(self) -> Path:
        return self.under_dir("/var/lib/wasm-edge")

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def lock_file(self) -> Path:
        return self.state_dir / "lock"

    @property
    def cache_dir(self) -> Path:
        return self.state_dir / "cache"

    @property
    def kept_dir(self) -> Path:
        """Previous versions kept for `agentd rollback`."""
        return self.state_dir / "previous"

    @property
    def staging_dir(self) -> Path:
        return self.state_dir / "staging"

    @property
    def source_dir(self) -> Path:
        """The pulled fleet document: the last good one, a candidate, the fetch state."""
        return self.state_dir / "source"

    @property
    def daemon_file(self) -> Path:
        """What the running daemon reports about itself, for `agentd status`."""
        return self.state_dir / "daemon.json"

    @property
    def settings_snapshot(self) -> Path:
        """The last settings that loaded, used while the settings file is broken."""
        return self.state_dir / "settings.last-good.json"

    @property
    def facts_cache_file(self) -> Path:
        return self.state_dir / "facts-cache.json"

    # component locations (upstream conventions)
    @property
    def usr_local_lib(self) -> Path:
        return self.under_dir(USR_LOCAL_LIB)

    @property
    def usr_local_include(self) -> Path:
        return self.under_dir(USR_LOCAL_INCLUDE)

    @property
    def plugin_dir(self) -> Path:
        return self.under_dir(PLUGIN_DIR)

    @property
    def os_release(self) -> Path:
        return self.under("/etc/os-release")

    def bin_search_dirs(self) -> list[Path]:
        return [self.under_dir(d) for d in BIN_SEARCH_DIRS]

    def find_binary(self, name: str) -> Path | None:
        """First executable `name` in the fixed search list under the root."""
        for directory in self.bin_search_dirs():
            candidate = directory / name
            if candidate.is_file() and _executable(candidate):
                return candidate
        return None


def _executable(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & 0o111)
    except OSError:
        return False
