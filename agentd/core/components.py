"""The component kinds agentd manages, each declared once; every stage reads this registry."""

from __future__ import annotations

from dataclasses import dataclass

from agentd.core.paths import (
    CONTAINERD_TEMPLATES,
    CRUN_BIN,
    GATEKEEPER_CHART,
    GATEKEEPER_MANIFEST,
    GATEKEEPER_POLICIES,
    K3S_BIN,
    K3S_CONFIG,
    K3S_IMAGES_DIR,
    K3S_REGISTRIES,
    K3S_UNITS,
    PLUGIN_DIR,
    RUNTIMECLASS_MANIFEST,
    SYSTEMD_DIR,
    USR_LOCAL_BIN,
    USR_LOCAL_LIB,
)

PLUGIN_PREFIX = "wasmedge/plugins/"
IMAGE_PREFIX = "images/"
# Debian's multiarch library directories (x86_64-linux-gnu, aarch64-linux-gnu,
# arm-linux-gnueabihf), as a glob.
MULTIARCH_LIBS = "/usr/lib/*-linux-gnu*"


@dataclass(frozen=True)
class ComponentKind:
    """What agentd knows about one kind of component, whatever stage asks.

    `binary`: the program detection looks for in the fixed search dirs and runs with
    `version_args` (its parser is facts.detect's entry of the same name); `installs_to`: where
    agentd puts its own copy, read back after an install; `restarts_k3s`: k3s reads it at start,
    so a change (or undoing one) restarts k3s once; `watched`: a change is watched for the
    health-gated rollback; `libraries`: node-path globs whose files' stat feeds the no-op digest
    (what detection's answer depends on besides the binary);
    `configs`: the files agentd renders for it, compared by content; `secret`: they hold
    credentials, so they are written mode 0600; `placed`: a verified archive put in place as it
    is (k3s reads it), whose recorded files are checked for presence before each plan.
    """

    name: str
    binary: str | None = None
    version_args: tuple[str, ...] = ("--version",)
    installs_to: str | None = None
    restarts_k3s: bool = False
    watched: bool = False
    libraries: tuple[str, ...] = ()
    configs: tuple[str, ...] = ()
    secret: bool = False
    placed: bool = False


K3S = ComponentKind("k3s", binary="k3s", installs_to=K3S_BIN, restarts_k3s=True, watched=True)
CRUN = ComponentKind("crun", binary="crun", installs_to=CRUN_BIN, restarts_k3s=True, watched=True)
WASMEDGE = ComponentKind(
    "wasmedge",
    binary="wasmedge",
    installs_to=f"{USR_LOCAL_BIN}/wasmedge",
    watched=True,
    # agentd's upstream layout in /usr/local, and a distribution's in its multiarch directory
    # (Debian's /usr/bin/wasmedge loads /usr/lib/<multiarch>/libwasmedge.so.0); the loader's
    # cache decides which one a binary without RUNPATH finds.
    libraries=(
        f"{USR_LOCAL_LIB}/libwasmedge.so*",
        "/usr/local/lib64/libwasmedge.so*",
        f"{MULTIARCH_LIBS}/libwasmedge.so*",
        "/etc/ld.so.cache",
    ),
)
# One entry for every wasmedge/plugins/NAME. WasmEdge loads plugins from the directory named
# after where its library lives, walking it recursively (facts.detect.wasmedge_plugin_dirs).
PLUGIN = ComponentKind(
    PLUGIN_PREFIX,
    watched=True,
    libraries=(f"{PLUGIN_DIR}/**/*", f"{MULTIARCH_LIBS}/wasmedge/**/*", "/usr/local/plugin/**/*"),
)
K3S_CONFIG_FILE = ComponentKind("k3s/config", restarts_k3s=True, configs=(K3S_CONFIG,))
K3S_UNIT = ComponentKind(
    "k3s/unit",
    restarts_k3s=True,
    configs=tuple(f"{SYSTEMD_DIR}/{unit}" for unit in K3S_UNITS.values()),
)
CONTAINERD_TEMPLATE = ComponentKind(
    "k3s/containerd", restarts_k3s=True, configs=CONTAINERD_TEMPLATES
)
# The API server applies manifests as they change: no restart.
RUNTIME_CLASSES = ComponentKind("k3s/runtimeclasses", configs=(RUNTIMECLASS_MANIFEST,))
# k3s reads registries.yaml only at start; its auth entries are credentials.
K3S_REGISTRIES_FILE = ComponentKind(
    "k3s/registries", restarts_k3s=True, configs=(K3S_REGISTRIES,), secret=True
)
# The HelmChart manifest (applied as it changes, like the RuntimeClasses) and the chart tarball
# it names, which k3s serves from static/charts; the tarball is a checksummed artifact.
GATEKEEPER_ADDON = ComponentKind("addons/gatekeeper", configs=(GATEKEEPER_MANIFEST,))
GATEKEEPER_CHART_FILE = ComponentKind(
    "addons/gatekeeper/chart", placed=True, libraries=(GATEKEEPER_CHART,)
)
GATEKEEPER_POLICY_FILE = ComponentKind("addons/gatekeeper/policies", configs=(GATEKEEPER_POLICIES,))
# One entry for every images/NAME: an airgap image tarball in agent/images.
IMAGE = ComponentKind(IMAGE_PREFIX, placed=True, libraries=(f"{K3S_IMAGES_DIR}/*",))

KINDS = (
    K3S,
    CRUN,
    WASMEDGE,
    PLUGIN,
    K3S_CONFIG_FILE,
    K3S_UNIT,
    CONTAINERD_TEMPLATE,
    RUNTIME_CLASSES,
    K3S_REGISTRIES_FILE,
    GATEKEEPER_ADDON,
    GATEKEEPER_CHART_FILE,
    GATEKEEPER_POLICY_FILE,
    IMAGE,
)
_BY_NAME = {kind.name: kind for kind in KINDS}

# The kinds with one entry per NAME under them ("wasmedge/plugins/", "images/").
PREFIXES = tuple(kind.name for kind in KINDS if kind.name.endswith("/"))
# What detection reports on, in this order.
BINARY_KINDS = tuple(kind for kind in KINDS if kind.binary is not None)
# The files agentd writes for k3s, which the planner compares with what it would write.
MANAGED_CONFIG_PATHS = tuple(path for kind in KINDS for path in kind.configs)


def kind_of(component: str) -> ComponentKind | None:
    """The kind of `component` ("crun", "wasmedge/plugins/wasi_nn", ...); None if unknown."""
    if component.startswith(PLUGIN_PREFIX):
        return PLUGIN
    if component.startswith(IMAGE_PREFIX):
        return IMAGE
    return _BY_NAME.get(component)


def plugin_component(name: str) -> str:
    return PLUGIN_PREFIX + name


def plugin_name(component: str) -> str | None:
    """NAME of `wasmedge/plugins/NAME`, None for any other component."""
    return component[len(PLUGIN_PREFIX) :] if component.startswith(PLUGIN_PREFIX) else None


def secret(component: str) -> bool:
    """Whether `component`'s file holds credentials (written mode 0600)."""
    kind = kind_of(component)
    return kind is not None and kind.secret


def restarts_k3s(component: str) -> bool:
    kind = kind_of(component)
    return kind is not None and kind.restarts_k3s


def watched(component: str) -> bool:
    """Whether a change to `component` is watched for the health-gated rollback."""
    kind = kind_of(component)
    return kind is not None and kind.watched


# Every glob of library-like files whose change may change what detection reads.
LIBRARY_GLOBS = tuple(pattern for kind in KINDS for pattern in kind.libraries)
