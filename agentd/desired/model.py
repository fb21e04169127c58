"""The desired state (agentd/v1): pydantic models and the checks that need real-world knowledge."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, Optional

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from agentd.core.generation import MAX_GENERATION
from agentd.core.names import dns1123_subdomain_error, label_error, taint_error
from agentd.core.ociref import parse_reference
from agentd.core.paths import PROBE_RUNTIME_CLASS
from agentd.core.printable import unprintable
from agentd.core.versions import compare, is_k3s_version, parse_constraint, parse_version
from agentd.desired.addons import Registries, addon_problems
from agentd.schema.types import (
    DnsLabel,
    DnsSubdomain,
    Labels,
    MaintenanceWindowSpec,
    SafeName,
    StrictModel,
)
from agentd.schema.yamlload import Loc

ARCHES = ("amd64", "arm64", "armv7")
Arch = Literal["amd64", "arm64", "armv7"]

# Upstream plugin names (components.md); anything else is a warning, not an error, so a newer
# WasmEdge release's plugins are not refused.
KNOWN_PLUGINS = (
    "wasi_nn-ggml",
    "wasi_nn-openvino",
    "wasi_nn-pytorch",
    "wasi_nn-tensorflowlite",
    "wasi_crypto",
    "wasi_logging",
    "wasmedge_image",
    "wasmedge_tensorflow",
    "wasmedge_tensorflowlite",
    "wasm_bpf",
    "wasmedge_rustls",
)
SOCKET_PLUGIN_NAMES = ("wasi_socket", "wasmedge_wasi_socket", "wasi-socket", "socket")

NO_ARMV7_WASMEDGE = "WasmEdge publishes no 32-bit ARM (armv7) build"
ARMV7_WASMEDGE_REFUSED = (
    "this armv7 node leaves WasmEdge and its plugins out and applies the rest of the desired "
    "state; set 'state: absent' for wasmedge on armv7 nodes (an override with selector "
    "arch: [armv7], or a node-local drop-in) to say so"
)

NO_WASM_FLAG = (
    "k3s has no 'wasm' flag: since v1.29.0+k3s1 k3s finds Wasm runtimes (crun, "
    "containerd-shim-wasmedge-v1, ...) on its PATH at start and adds them to containerd by "
    "itself; install the runtime to /usr/local/bin and remove this flag"
)


def _version_string(value: Any) -> Any:
    # YAML reads 1.10 as the float 1.1: refuse numbers instead of silently changing the version.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise ValueError(f"version must be a quoted string (YAML read {value!r} as a number)")
    return value


class Artifact(StrictModel):
    url: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("url")
    @classmethod
    def _scheme(cls, url: str) -> str:
        if url.startswith("oci://"):
            parse_reference(url)  # its ValueError says what an OCI reference looks like
        elif not url.startswith(("https://", "http://", "file:///")):
            raise ValueError("url must start with https://, http://, file:/// or oci://")
        return url


Artifacts = dict[Arch, Artifact]


class _Versioned(StrictModel):
    state: Literal["present", "absent"] = "present"
    version: Optional[str] = None
    artifacts: Artifacts = Field(default_factory=dict)

    _check_version = field_validator("version", mode="before")(_version_string)

    @model_validator(mode="after")
    def _present_needs_version(self) -> _Versioned:
        if self.state == "present" and not self.version:
            raise ValueError("a present component needs a version")
        return self


class Plugin(StrictModel):
    name: SafeName
    state: Literal["present", "absent"] = "present"
    artifacts: Artifacts = Field(default_factory=dict)


class Crun(_Versioned):
    # The guide's "crun >= 1.8.5" is kept as a default, but it is a setting: nothing in crun's
    # changelog ties 1.8.5 to Wasm logs (components.md).
    minimumVersion: str = "1.8.5"
    # artifact: a pinned, checksummed binary to /usr/local/bin. package: the distribution's
    # package (apt-get/dnf), `version` then being a constraint such as ">=1.8.5".
    source: Literal["artifact", "package"] = "artifact"
    package: str = Field(default="crun", pattern=r"^[a-z0-9][a-z0-9+.-]*$")

    _check_minimum = field_validator("minimumVersion", mode="before")(_version_string)

    @model_validator(mode="after")
    def _constraint(self) -> Crun:
        if self.source == "package" and self.state == "present" and self.version:
            parse_constraint(self.version)
        return self


class WasmEdge(_Versioned):
    plugins: list[Plugin] = Field(default_factory=list)


class K3s(_Versioned):
    role: Literal["server", "agent"] = "server"
    server: Optional[str] = None
    tokenFile: Optional[str] = None
    config: dict[str, Any] = Field(default_factory=dict)
    registries: Optional[Registries] = None

    @field_validator("server")
    @classmethod
    def _server_url(cls, server: Optional[str]) -> Optional[str]:
        if server is not None and not server.startswith("https://"):
            raise ValueError("server must be an https:// URL, e.g. https://10.0.0.1:6443")
        return server

    @field_validator("tokenFile")
    @classmethod
    def _token_file(cls, path: Optional[str]) -> Optional[str]:
        if path is not None and not path.startswith("/"):
            raise ValueError("tokenFile must be an absolute path")
        bad = unprintable(path) if path is not None else None
        if bad:
            # k3s's config.yaml would carry it, and no file is named so on a sane node.
            raise ValueError(f"tokenFile has {bad}: {path!r}")
        return path

    @model_validator(mode="after")
    def _agent_needs_server(self) -> K3s:
        if self.state == "present" and self.role == "agent" and not self.server:
            raise ValueError("an agent needs 'server: https://HOST:6443'")
        return self


class Components(StrictModel):
    k3s: Optional[K3s] = None
    crun: Optional[Crun] = None
    wasmedge: Optional[WasmEdge] = None


class RuntimeClass(StrictModel):
    # What the API server checks (k8s.io/kubernetes/pkg/apis/node/validation): the name is a
    # DNS subdomain, the handler a DNS label, scheduling.nodeSelector labels.
    name: DnsSubdomain
    handler: DnsLabel
    nodeSelector: Labels = Field(default_factory=dict)


class Gatekeeper(StrictModel):
    """OPA Gatekeeper, installed by k3s's helm-controller from a chart k3s serves itself."""

    version: str = Field(min_length=1)  # the chart's version
    chart: Artifact
    values: dict[str, Any] = Field(default_factory=dict)
    # The spec of Gatekeeper's Config (config.gatekeeper.sh/v1alpha1), checked against its CRD.
    config: Optional[dict[str, Any]] = None
    # ConstraintTemplates and Constraints, written to the manifests directory once checked.
    policies: list[Any] = Field(default_factory=list)

    _check_version = field_validator("version", mode="before")(_version_string)


class Addons(StrictModel):
    gatekeeper: Optional[Gatekeeper] = None


class Image(StrictModel):
    """An airgap image tarball for k3s to import into containerd."""

    name: SafeName
    artifacts: Artifacts = Field(default_factory=dict)


class Selector(StrictModel):
    """Which nodes a document or an override is for; every field given must match."""

    arch: list[Arch] = Field(default_factory=list)  # any of
    hostname: list[str] = Field(default_factory=list)  # shell globs, any of: "edge-*"
    os: list[str] = Field(default_factory=list)  # "debian" or "debian 12", any of
    labels: Labels = Field(default_factory=dict)  # the agent settings' labels, all of


class Rollout(StrictModel):
    """A staged rollout: the nodes whose hash of (key, machine-id) falls below `percent`; a
    higher percent is a superset of a lower one, a new key draws a new wave."""

    percent: float = Field(ge=0, le=100)
    key: str = Field(min_length=1)
    canary: Labels = Field(default_factory=dict)  # nodes with these labels go first


class Override(StrictModel):
    """Changes for some nodes only, merged over the document where selector and wave say so."""

    name: SafeName
    selector: Selector = Field(default_factory=Selector)
    rollout: Optional[Rollout] = None
    # Validated where they are merged, as part of the document.
    components: dict[str, Any] = Field(default_factory=dict)
    runtimeClasses: Optional[list[Any]] = None
    maintenanceWindow: Optional[dict[str, Any]] = None


class DesiredState(StrictModel):
    apiVersion: Literal["agentd/v1"]
    kind: Literal["NodeState"]
    # Bounded: a published 10^18 would freeze every node (no higher one could follow).
    generation: int = Field(ge=0, le=MAX_GENERATION)
    selector: Optional[Selector] = None
    components: Components = Field(default_factory=Components)
    runtimeClasses: list[RuntimeClass] = Field(default_factory=list)
    addons: Optional[Addons] = None
    images: list[Image] = Field(default_factory=list)
    maintenanceWindow: Optional[MaintenanceWindowSpec] = None
    overrides: list[Override] = Field(default_factory=list)

    @field_validator("overrides")
    @classmethod
    def _unique_names(cls, overrides: list[Override]) -> list[Override]:
        names = [o.name for o in overrides]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ValueError(f"two overrides are named {name!r}")
        return overrides


# --- checks that need knowledge of the real software -------------------------------------------


@dataclass(frozen=True)
class Problem:
    """A finding about a document, located by its path inside the YAML."""

    loc: Loc
    message: str
    severity: Literal["error", "warning"] = "error"


def _mentions_wasm_flag(value: Any) -> bool:
    if isinstance(value, str):
        return re.search(r"(^|\s)--wasm(\s|=|$)", value) is not None
    if isinstance(value, list):
        return any(_mentions_wasm_flag(v) for v in value)
    return False


def sanity_problems(doc: DesiredState, arch: str | None) -> list[Problem]:
    """What is valid YAML and schema but wrong for k3s, crun or WasmEdge (or for this node)."""
    problems: list[Problem] = []
    comps = doc.components
    for name in ("k3s", "crun", "wasmedge"):
        comp = getattr(comps, name)
        if comp is None or comp.state == "absent":
            continue
        base: Loc = ("components", name)
        from_package = getattr(comp, "source", "artifact") == "package"
        if from_package:
            if comp.artifacts:
                problems.append(
                    Problem(
                        (*base, "artifacts"),
                        "source: package installs the distribution's package; these artifacts "
                        "are not used",
                        "warning",
                    )
                )
            continue
        if comp.version and name != "k3s" and parse_version(comp.version) is None:
            problems.append(Problem((*base, "version"), f"not a version: {comp.version!r}"))
        if arch in ARCHES and arch not in comp.artifacts:
            if name == "wasmedge" and arch == "armv7":
                pass  # reported below with the real reason
            else:
                problems.append(
                    Problem(
                        (*base, "artifacts"),
                        f"no {arch} artifact for {name}, and this node is {arch}",
                    )
                )
    if comps.k3s is not None and comps.k3s.state == "present":
        problems.extend(_k3s_problems(comps.k3s))
    if comps.wasmedge is not None:
        problems.extend(_wasmedge_problems(comps.wasmedge, arch))
    if comps.crun is not None and parse_version(comps.crun.minimumVersion) is None:
        problems.append(Problem(("components", "crun", "minimumVersion"), "not a version"))
    seen: set[str] = set()
    for i, rc in enumerate(doc.runtimeClasses):
        if rc.name in seen:
            problems.append(Problem(("runtimeClasses", i, "name"), f"duplicate {rc.name!r}"))
        if rc.name == PROBE_RUNTIME_CLASS:
            problems.append(
                Problem(
                    ("runtimeClasses", i, "name"),
                    f"{PROBE_RUNTIME_CLASS!r} is agentd's own (its health probe runs with it); "
                    "choose another name",
                )
            )
        seen.add(rc.name)
        if rc.handler == "crun":
            problems.append(
                Problem(
                    ("runtimeClasses", i, "handler"),
                    "handler 'crun' is the runtime k3s adds by itself, without pod_annotations "
                    "(Wasm annotations never reach crun) and taking /usr/bin/crun before "
                    "/usr/local/bin/crun; use handler 'crun-wasm', the runtime agentd configures",
                    "warning",
                )
            )
    node_arch = arch if arch in ARCHES else None
    problems.extend(Problem(loc, msg, sev) for loc, msg, sev in addon_problems(doc, node_arch))
    return problems


def _k3s_problems(k3s: K3s) -> list[Problem]:
    problems: list[Problem] = []
    base: Loc = ("components", "k3s")
    if k3s.version and not is_k3s_version(k3s.version):
        hint = f" (did you mean {k3s.version}+k3s1?)" if "+" not in k3s.version else ""
        problems.append(
            Problem(
                (*base, "version"),
                f"k3s versions look like v1.30.4+k3s1; {k3s.version!r} has no +k3sN{hint}",
            )
        )
    for key, value in k3s.config.items():
        bare = key.lstrip("-").rstrip("+")
        if bare == "wasm" or _mentions_wasm_flag(value):
            problems.append(Problem((*base, "config", key), NO_WASM_FLAG))
        elif bare in ("token", "agent-token"):
            problems.append(
                Problem(
                    (*base, "config", key),
                    "a token is never written in the desired state: put it in a file on the "
                    "node and name it with tokenFile",
                )
            )
        elif key.startswith("-"):
            problems.append(
                Problem((*base, "config", key), "config keys are flag names without '--'")
            )
        elif bare in ("node-label", "node-taint"):
            problems.extend(_label_problems((*base, "config", key), bare, value))
        elif bare == "node-name" and isinstance(value, str) and dns1123_subdomain_error(value):
            why = dns1123_subdomain_error(value)
            problems.append(Problem((*base, "config", key), f"node-name {value!r}: {why}"))
        elif key.endswith("-mode") and isinstance(value, int) and not isinstance(value, bool):
            problems.append(
                Problem(
                    (*base, "config", key),
                    f"quote file modes: YAML read this as the number {value} "
                    f'(octal {value:o}); write "0{value:o}"',
                    "warning",
                )
            )
    return problems


def _label_problems(loc: Loc, flag: str, value: Any) -> list[Problem]:
    """k3s's node-label (key=value) and node-taint (key=value:Effect), which k3s hands to the
    API server: what it would refuse, validate refuses first."""
    check = label_error if flag == "node-label" else taint_error
    items = value if isinstance(value, list) else [value]
    problems: list[Problem] = []
    for i, item in enumerate(items):
        at: Loc = (*loc, i) if isinstance(value, list) else loc
        why = check(item) if isinstance(item, str) else f"{flag} entries are strings"
        if why:
            problems.append(Problem(at, f"{flag} {item!r}: {why}"))
    return problems


def _wasmedge_problems(wasmedge: WasmEdge, arch: str | None) -> list[Problem]:
    problems: list[Problem] = []
    base: Loc = ("components", "wasmedge")
    if wasmedge.state == "present" and arch == "armv7":
        # A warning, not an error: one fleet document serves every architecture, and an armv7
        # node refusing all of it for WasmEdge would keep its k3s and crun from converging too.
        # The plan leaves WasmEdge out with this reason (agentd/plan/wasmedge.py).
        problems.append(Problem(base, f"{NO_ARMV7_WASMEDGE}; {ARMV7_WASMEDGE_REFUSED}", "warning"))
    if "armv7" in wasmedge.artifacts:
        problems.append(
            Problem((*base, "artifacts", "armv7"), "WasmEdge has no armv7 build", "warning")
        )
    nn_backends: list[str] = []
    for i, plugin in enumerate(wasmedge.plugins):
        ploc: Loc = (*base, "plugins", i, "name")
        if plugin.name in SOCKET_PLUGIN_NAMES:
            problems.append(
                Problem(
                    ploc,
                    f"there is no {plugin.name!r} plugin: sockets (and DNS) are built into "
                    "WasmEdge's WASI module; a guest resolves names through the "
                    "wasmedge_wasi_socket Rust crate and needs /etc/resolv.conf in its sandbox",
                )
            )
            continue
        if plugin.name not in KNOWN_PLUGINS:
            problems.append(Problem(ploc, f"unknown WasmEdge plugin {plugin.name!r}", "warning"))
        if plugin.name.startswith("wasi_nn-") and plugin.state == "present":
            nn_backends.append(plugin.name)
        if plugin.state == "present" and wasmedge.state == "absent":
            problems.append(Problem(ploc, "a plugin cannot be present without WasmEdge"))
        # On armv7 the missing WasmEdge build is the error that matters (reported above).
        lacks_build = arch in ARCHES and arch != "armv7" and arch not in plugin.artifacts
        if plugin.state == "present" and lacks_build:
            problems.append(
                Problem(
                    (*base, "plugins", i, "artifacts"),
                    f"no {arch} artifact for plugin {plugin.name}, and this node is {arch}",
                )
            )
        if wasmedge.version:
            for a, artifact in plugin.artifacts.items():
                found = re.search(r"-(\d+\.\d+\.\d+(?:-[A-Za-z0-9.]+)?)-", artifact.url)
                if found and compare(found.group(1), wasmedge.version) != 0:
                    problems.append(
                        Problem(
                            (*base, "plugins", i, "artifacts", a, "url"),
                            f"plugin built for WasmEdge {found.group(1)}, runtime is "
                            f"{wasmedge.version}: WasmEdge silently skips plugins of another "
                            "version",
                            "warning",
                        )
                    )
    if len(nn_backends) > 1:
        problems.append(
            Problem(
                (*base, "plugins"),
                "every wasi_nn backend installs the same libwasmedgePluginWasiNN.so: choose one "
                f"of {', '.join(nn_backends)}",
            )
        )
    names = [p.name for p in wasmedge.plugins]
    for i, n in enumerate(names):
        if n in names[:i]:
            problems.append(Problem((*base, "plugins", i, "name"), f"duplicate plugin {n!r}"))
    return problems


def json_schema() -> dict[str, Any]:
    """The JSON Schema of agentd/v1 documents, for editors and CI checks of fleet repos."""
    schema = DesiredState.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "agentd/v1 NodeState"
    return schema
