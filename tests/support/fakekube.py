"""A fake Kubernetes API server for the real kubectl, with this node's kubelet, containerd and crun.

`FakeCluster` stands in for the API server of a k3s cluster (which cannot be had here), and for
the kubelet, containerd and crun that run a pod on this node. It is a real HTTPS server on
127.0.0.1 (a test CA made by openssl, a bearer token; `tls=False` serves plain http, over which
kubectl sends no credentials, so then nothing is checked) that the real kubectl (1.20 to 1.33)
accepts: discovery (aggregated, and the legacy /api, /api/v1, /apis walk that older kubectl
and the fallback use), nodes (get, list, merge and strategic-merge patches: `kubectl label` /
`kubectl annotate`), pods (create, get, list, logs, delete), RuntimeClasses (read from the
node's own files), /readyz, /livez, /healthz, /version.
Errors are Kubernetes Status objects, so kubectl prints its real messages, e.g.
`Error from server (NotFound): nodes "x" not found`; a stopped server refuses connections, so
kubectl prints `The connection to the server 127.0.0.1:PORT was refused - did you specify the
right host or port?`.

What a pod does is decided from the node's real files under `root`, the way the real stack does:

- admission (at create): the namespace must exist; `spec.runtimeClassName` must name a
  RuntimeClass that k3s deployed from `<root>/var/lib/rancher/k3s/server/manifests/` (every
  .yaml/.yml/.json there, unless `<file>.skip` exists), else `403 pods "x" is forbidden: pod
  rejected: RuntimeClass "y" not found` (the RuntimeClass admission plugin); its
  `scheduling.nodeSelector` is merged into the pod's nodeSelector.
- the scheduler: a pod without `spec.nodeName` goes to a Ready node without NoSchedule taints
  whose labels match its nodeSelector; none → Pending, PodScheduled False, reason Unschedulable.
  Only the local node (`node_name`) has a kubelet: a pod bound to another node stays Pending.
- the kubelet and containerd: the RuntimeClass handler names a runtime in the containerd
  template k3s renders (`config-v3.toml.tmpl` first when the node's containerd is 2.x, else
  `config.toml.tmpl`), on top of k3s's base, which already defines `runc` and, when k3s finds
  crun (in /usr/sbin, /usr/bin, /usr/local/bin, /usr/local/sbin, in that order), `crun`; so a
  template that defines `runtimes."crun"` again breaks containerd (TOML forbids a table twice).
  No such runtime, a BinaryName that does not exist, or a crun that cannot even print
  `--version` (a stand-in, run for real): the pod sandbox cannot be created and the pod stays
  Pending in ContainerCreating (`events()` says why). Only annotations matching the runtime's
  `pod_annotations` (Go filepath.Match patterns) reach crun.
- images: what the node has is what its status.images lists and what `add_image` put there; a
  pull (imagePullPolicy Always, or an image the node lacks) succeeds only for images added with
  `in_registry=True`; otherwise the pod stays Pending in ErrImagePull / ImagePullBackOff.
- crun: a crun whose `--version` has `+WASM:<runtime>` runs the container as Wasm when crun's
  own rule says so (annotation `run.oci.handler=wasm`, or `module.wasm.image/variant=compat`, or
  `compat-smart` / `wasm-smart` with a command ending in .wasm or .wat): it loads the runtime
  library (`libwasmedge.so.0` for wasmedge) from the loader's directories (/etc/ld.so.conf(.d)
  entries, /lib, /usr/lib, /usr/local/lib, /lib64, /usr/lib64 and the multiarch dirs; the loader
  cache is not modelled), else the container ends StartError, exit code 128, empty logs, with
  crun's real message (tests/fixtures/real/crun_run_wasm_no_libwasmedge.stderr: "could not load
  `libwasmedge.so.0`: `libwasmedge.so.0: cannot open shared object file: ...`"); a command file
  without an execute bit ends StartError with crun's "the path `/probe.wasm` exists but it is
  not executable: Operation not permitted" (crun_run_wasm_no_annotation_mode0644); then it runs
  the module (from a hostPath
  volume under `root`, or from the image's files) for real in wasmtime: logs are what it prints,
  exit code 0 (crun's wasmedge handler exits 0 once `_start` returns) or 1 on a trap. Otherwise
  crun execs the command natively: a Wasm module (or any non-native file) fails with crun's
  error line on the container's stderr, which is in the logs, exit code 1 (reason Error): the
  message of tests/fixtures/real/crun_run_wasm_no_annotation.stderr, as a JSON line because
  containerd runs crun with --log-format=json:
  `{"msg":"exec container process `/probe.wasm`: Exec format error","level":"error",...}`.
  A native program (ELF, #!) is not run, nor a pod of several containers: the fake answers
  500 rather than pretend.
- restartPolicy: Never → Succeeded or Failed; OnFailure → Succeeded, or Running with the
  container in CrashLoopBackOff; Always → Running in CrashLoopBackOff after any exit.

Timing: the response to the create is Pending (as the API server answers); with
`pod_startup_reads=0` (the default) the first read of the pod (get, list or logs) already shows
its end state; with N > 0, the first N reads show it Pending (ContainerCreating), then Running.
Nothing waits on a clock.
"""

from __future__ import annotations

import atexit
import copy
import functools
import hashlib
import http.server
import json
import re
import secrets
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any, Optional, Union
from urllib.parse import parse_qs, urlsplit

import yaml

from tests.support.fleet import TestCA, make_ca
from tests.support.standins import k3s_kubeconfig, real_kubectl, write_k3s_kubeconfig

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kube"

Obj = dict[str, Any]

K3S_VERSION = "v1.30.4+k3s1"
CONTAINERD_VERSION = "containerd://1.7.20-k3s1"
RUNTIMECLASS_DIR = "/var/lib/rancher/k3s/server/manifests"
CONTAINERD_DIR = "/var/lib/rancher/k3s/agent/etc/containerd"
# The directories the dynamic loader searches without its cache (glibc's trusted dirs and
# Debian's multiarch and /usr/local/lib entries from /etc/ld.so.conf.d).
LOADER_DIRS = (
    "/usr/local/lib",
    "/usr/local/lib/x86_64-linux-gnu",
    "/usr/local/lib/aarch64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib/arm-linux-gnueabihf",
    "/usr/lib/arm-linux-gnueabihf",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
)
# Where k3s looks for crun, in this order, to add its `crun` runtime to the base template
# (k3s-io/k3s pkg/agent/containerd/runtimes.go, findCRunContainerRuntime).
K3S_CRUN_LOCATIONS = ("/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin")
# The library each crun Wasm handler dlopen()s (containers/crun src/libcrun/handlers/*.c).
WASM_LIBRARIES = {
    "wasmedge": "libwasmedge.so.0",
    "wasmtime": "libwasmtime.so",
    "wasmer": "libwasmer.so",
    "wamr": "libiwasm.so",
}
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_TIME_ZERO = "1970-01-01T00:00:00Z"


class FakeKubeError(Exception):
    """Something the fake does not model; answered as a 500 naming tests/support/fakekube.py."""


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _crun_time() -> str:
    # crun's JSON log lines carry microseconds.
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@functools.cache
def default_ca() -> TestCA:
    """A test CA (openssl) with a certificate for 127.0.0.1, made once per process."""
    directory = Path(tempfile.mkdtemp(prefix="fakekube-ca-"))
    atexit.register(shutil.rmtree, directory, True)
    return make_ca(directory)


def kubectl(
    kubeconfig: Path,
    *args: str,
    home: Path,
    stdin: str | None = None,
    binary: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the real kubectl with `kubeconfig`, HOME at `home` (its discovery cache lives there,
    so tests never share one) and a fixed PATH and locale."""
    program = binary or real_kubectl()
    if program is None:
        raise FileNotFoundError("no real kubectl here (Debian: apt-get install kubernetes-client)")
    return subprocess.run(
        [program, "--kubeconfig", str(kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C", "HOME": str(home)},
        timeout=60,
        check=False,
    )


# --- objects of the real shapes ----------------------------------------------------------------


def load_fixture(name: str) -> Obj:
    """A recorded object from tests/fixtures/kube (see its README for where each comes from)."""
    data: Obj = json.loads((FIXTURES / name).read_text())
    return data


def k3s_node(
    name: str = "edge-1",
    *,
    role: str = "server",
    kubelet_version: str = K3S_VERSION,
    container_runtime_version: str = CONTAINERD_VERSION,
    arch: str = "amd64",
    internal_ip: str = "192.168.1.21",
) -> Obj:
    """A k3s node as `kubectl get node NAME -o json` shows it (fixture node-k3s-server.json):
    k3s's labels and annotations, a Ready condition, nodeInfo with the k3s versions."""
    node = load_fixture("node-k3s-server.json")
    meta, status = node["metadata"], node["status"]
    meta["name"] = name
    meta["uid"] = str(uuid.uuid4())
    labels = meta["labels"]
    labels["kubernetes.io/hostname"] = name
    labels["kubernetes.io/arch"] = labels["beta.kubernetes.io/arch"] = arch
    annotations = meta["annotations"]
    annotations["k3s.io/hostname"] = name
    for key in (
        "alpha.kubernetes.io/provided-node-ip",
        "flannel.alpha.coreos.com/public-ip",
        "k3s.io/internal-ip",
    ):
        annotations[key] = internal_ip
    if role == "agent":
        del labels["node-role.kubernetes.io/control-plane"]
        del labels["node-role.kubernetes.io/master"]
        annotations["k3s.io/node-args"] = '["agent"]'
    elif role != "server":
        raise ValueError(f"a k3s node is a server or an agent, not {role!r}")
    node["spec"]["providerID"] = f"k3s://{name}"
    status["addresses"] = [
        {"address": internal_ip, "type": "InternalIP"},
        {"address": name, "type": "Hostname"},
    ]
    info = status["nodeInfo"]
    info["kubeletVersion"] = info["kubeProxyVersion"] = kubelet_version
    info["containerRuntimeVersion"] = container_runtime_version
    info["architecture"] = arch
    return node


def status_object(code: int, reason: str, message: str, details: Obj | None = None) -> Obj:
    """A metav1.Status error, as the API server sends it."""
    status: Obj = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        status["details"] = details
    return status


class ApiError(Exception):
    """An error answer: a Status object with its HTTP code."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None):
        super().__init__(message)
        self.status = status_object(code, reason, message, details)
        self.code = code


def _not_found(resource: str, name: str, group: str = "") -> ApiError:
    qualified = f"{resource}.{group}" if group else resource
    return ApiError(
        404,
        "NotFound",
        f'{qualified} "{name}" not found',
        {"name": name, "group": group, "kind": resource}
        if group
        else {"name": name, "kind": resource},
    )


# --- discovery ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Resource:
    name: str
    kind: str
    namespaced: bool
    verbs: tuple[str, ...]
    short_names: tuple[str, ...] = ()
    singular: str = ""
    subresources: tuple[tuple[str, str, tuple[str, ...]], ...] = ()  # (name, kind, verbs)
    categories: tuple[str, ...] = ()


_ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
_CORE = (
    _Resource(
        "namespaces",
        "Namespace",
        False,
        ("create", "delete", "get", "list", "patch", "update", "watch"),
        ("ns",),
        "namespace",
        (("status", "Namespace", ("get", "patch", "update")),),
    ),
    _Resource(
        "nodes",
        "Node",
        False,
        _ALL_VERBS,
        ("no",),
        "node",
        (
            ("proxy", "NodeProxyOptions", ("create", "delete", "get", "patch", "update")),
            ("status", "Node", ("get", "patch", "update")),
        ),
    ),
    _Resource(
        "pods",
        "Pod",
        True,
        _ALL_VERBS,
        ("po",),
        "pod",
        (
            ("log", "Pod", ("get",)),
            ("status", "Pod", ("get", "patch", "update")),
        ),
        ("all",),
    ),
)
_NODE_K8S = (_Resource("runtimeclasses", "RuntimeClass", False, _ALL_VERBS, (), "runtimeclass"),)
_GROUPS = {"node.k8s.io": ("v1", _NODE_K8S)}


def _aggregated_group(name: str, version: str, resources: Sequence[_Resource]) -> Obj:
    items = []
    for r in resources:
        entry: Obj = {
            "resource": r.name,
            "responseKind": {"group": "", "kind": r.kind, "version": ""},
            "scope": "Namespaced" if r.namespaced else "Cluster",
            "singularResource": r.singular,
            "verbs": list(r.verbs),
        }
        if r.short_names:
            entry["shortNames"] = list(r.short_names)
        if r.categories:
            entry["categories"] = list(r.categories)
        if r.subresources:
            entry["subresources"] = [
                {
                    "subresource": sub,
                    "responseKind": {"group": "", "kind": kind, "version": ""},
                    "verbs": list(verbs),
                }
                for sub, kind, verbs in r.subresources
            ]
        items.append(entry)
    meta: Obj = {"creationTimestamp": None}
    if name:
        meta["name"] = name
    return {
        "metadata": meta,
        "versions": [{"version": version, "resources": items, "freshness": "Current"}],
    }


def _aggregated_list(groups: list[Obj], api_version: str) -> Obj:
    return {
        "kind": "APIGroupDiscoveryList",
        "apiVersion": f"apidiscovery.k8s.io/{api_version}",
        "metadata": {},
        "items": groups,
    }


def _resource_list(group_version: str, resources: Sequence[_Resource]) -> Obj:
    out = []
    for r in resources:
        entry: Obj = {
            "name": r.name,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": list(r.verbs),
        }
        if r.short_names:
            entry["shortNames"] = list(r.short_names)
        if r.categories:
            entry["categories"] = list(r.categories)
        out.append(entry)
        for sub, kind, verbs in r.subresources:
            out.append(
                {
                    "name": f"{r.name}/{sub}",
                    "singularName": "",
                    "namespaced": r.namespaced,
                    "kind": kind,
                    "verbs": list(verbs),
                }
            )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": out,
    }


def _wants_aggregated(accept: str) -> str | None:
    """The apidiscovery version a client asks for (kubectl ≥ 1.26 asks for v2 and v2beta1)."""
    for part in accept.split(","):
        params = dict(p.strip().split("=", 1) for p in part.split(";")[1:] if "=" in p)
        if params.get("g") == "apidiscovery.k8s.io" and params.get("as") == "APIGroupDiscoveryList":
            return params.get("v")
    return None


# --- patches -----------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: null deletes a key, a mapping merges, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """A strategic merge patch for what kubectl sends here (maps: metadata, labels, annotations):
    a merge patch that also honours `$patch: replace|delete` and drops `$setElementOrder/...`
    and `$retainKeys` directives. Lists are replaced whole (no merge keys)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    body = {k: v for k, v in patch.items() if not k.startswith("$")}
    if directive == "replace":
        return copy.deepcopy(body)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in body.items():
        if value is None:
            out.pop(key, None)
            continue
        merged = strategic_merge_patch(out.get(key), value)
        if merged is None:
            out.pop(key, None)
        else:
            out[key] = merged
    return out


# --- the node's containerd template ------------------------------------------------------------


class _TomlError(ValueError):
    pass


_TOML_KEY = re.compile(r"""\s*(?:"((?:[^"\\]|\\.)*)"|'([^']*)'|([A-Za-z0-9_-]+))\s*""")


def _toml_key(text: str) -> tuple[str, ...]:
    parts: list[str] = []
    pos = 0
    while True:
        match = _TOML_KEY.match(text, pos)
        if match is None:
            raise _TomlError(f"bad key {text!r}")
        quoted, literal, bare = match.groups()
        parts.append(json.loads(f'"{quoted}"') if quoted is not None else literal or bare)
        pos = match.end()
        if pos == len(text):
            return tuple(parts)
        if text[pos] != ".":
            raise _TomlError(f"bad key {text!r}")
        pos += 1


def _toml_value(text: str) -> Any:
    value, rest = _toml_scan(text.strip())
    rest = rest.strip()
    if rest and not rest.startswith("#"):
        raise _TomlError(f"unexpected {rest!r} after a value")
    return value


def _toml_scan(text: str) -> tuple[Any, str]:
    if text.startswith('"'):
        match = re.match(r'"((?:[^"\\]|\\.)*)"', text)
        if match is None:
            raise _TomlError(f"unterminated string {text!r}")
        return json.loads(match.group(0)), text[match.end() :]
    if text.startswith("'"):
        end = text.find("'", 1)
        if end < 0:
            raise _TomlError(f"unterminated string {text!r}")
        return text[1:end], text[end + 1 :]
    if text.startswith("["):
        items: list[Any] = []
        rest = text[1:].lstrip()
        while not rest.startswith("]"):
            item, rest = _toml_scan(rest)
            items.append(item)
            rest = rest.lstrip()
            if rest.startswith(","):
                rest = rest[1:].lstrip()
            elif not rest.startswith("]"):
                raise _TomlError(f"bad array near {rest!r}")
        return items, rest[1:]
    match = re.match(r"(true|false|[+-]?[0-9][0-9_]*)", text)
    if match is None:
        raise _TomlError(
            f"unsupported value {text!r} (tests/support/fakekube.py reads a TOML subset)"
        )
    token = match.group(1)
    value: Any = token == "true" if token in ("true", "false") else int(token.replace("_", ""))
    return value, text[match.end() :]


def parse_toml_tables(text: str) -> dict[tuple[str, ...], Obj]:
    """The tables of a containerd config (a TOML subset: tables, strings, booleans, integers,
    arrays); Go template actions (`{{ ... }}` lines) are skipped. A table defined twice is an
    error, as in TOML."""
    tables: dict[tuple[str, ...], Obj] = {(): {}}
    current: tuple[str, ...] = ()
    pending = ""
    for raw in text.splitlines():
        line = (pending + " " + raw.strip()) if pending else raw.strip()
        pending = ""
        if not line or line.startswith("#") or line.startswith("{{"):
            continue
        if line.startswith("[["):
            raise _TomlError("arrays of tables are not read by tests/support/fakekube.py")
        if line.startswith("["):
            end = line.rfind("]")
            if end < 0:
                raise _TomlError(f"bad table header {line!r}")
            current = _toml_key(line[1:end])
            if current in tables:
                raise _TomlError(f"table {line[1:end]} is defined twice")
            tables[current] = {}
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise _TomlError(f"expected key = value, got {line!r}")
        if value.strip().startswith("[") and value.count("[") > value.count("]"):
            pending = line  # an array over several lines
            continue
        tables[current][key.strip().strip("\"'")] = _toml_value(value)
    if pending:
        raise _TomlError(f"unterminated array: {pending!r}")
    return tables


def go_filepath_match(pattern: str, name: str) -> bool:
    """Go's path/filepath.Match, which containerd uses for pod_annotations: `*` and `?` do not
    cross `/`; `[...]` classes with `^` negation; `\\` escapes."""
    regex = ""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            regex += "[^/]*"
        elif c == "?":
            regex += "[^/]"
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            regex += re.escape(pattern[i])
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                return False  # ErrBadPattern: no match
            body = pattern[i + 1 : end]
            negate = body.startswith("^")
            body = body[1:] if negate else body
            regex += "[" + ("^/" if negate else "") + body.replace("\\", "\\\\") + "]"
            i = end
        else:
            regex += re.escape(c)
        i += 1
    return re.fullmatch(regex, name) is not None


def _crun_takes_wasm(annotations: Mapping[str, str], argv: Sequence[str]) -> bool:
    """crun's wasm_can_handle_container (src/libcrun/handlers/handler-utils.c)."""
    entry = argv[0] if argv else ""
    smart = entry.lower().endswith((".wasm", ".wat"))
    handler = annotations.get("run.oci.handler")
    if handler is not None:
        return smart if handler == "wasm-smart" else handler == "wasm"
    variant = annotations.get("module.wasm.image/variant")
    if variant is not None:
        return smart if variant == "compat-smart" else variant == "compat"
    return False


def _tolerates(tolerations: Sequence[Obj], taint: Obj) -> bool:
    for toleration in tolerations:
        if toleration.get("effect") not in (None, "", taint.get("effect")):
            continue
        if toleration.get("operator") == "Exists":
            if not toleration.get("key") or toleration.get("key") == taint.get("key"):
                return True
        elif toleration.get("key") == taint.get("key") and toleration.get("value", "") == taint.get(
            "value", ""
        ):
            return True
    return False


def normalize_image(ref: str) -> str:
    """An image reference as containerd names it: docker.io/library/NAME:latest and so on."""
    name, _, digest = ref.partition("@")
    first = name.split("/", 1)[0]
    if "/" not in name:
        name = f"docker.io/library/{name}"
    elif "." not in first and ":" not in first and first != "localhost":
        name = f"docker.io/{name}"
    if digest:
        return f"{name}@{digest}"
    if ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    return name


# --- what happens to a pod on this node --------------------------------------------------------


@dataclass
class _Outcome:
    """The end state the kubelet reaches for a pod's (first) container."""

    stage: str  # "sandbox", "create", "pull" (it never runs) or "exited"
    reason: str = ""  # waiting or terminated reason
    message: str = ""
    exit_code: int = 0
    logs: bytes = b""
    started: bool = True  # the container process ran (for startedAt)


@dataclass
class _Image:
    files: dict[str, tuple[bytes, int]]
    entrypoint: list[str] | None
    on_node: bool
    in_registry: bool


@dataclass
class _PodRecord:
    obj: Obj
    handler: str | None
    outcome: _Outcome | None = None
    reads: int = 0
    events: list[tuple[str, str]] = field(default_factory=list)
    changed_at: str = ""  # when the container last changed state, as the kubelet recorded it


class _Runtime:
    """What containerd and crun on the node under `root` do with a pod's container."""

    def __init__(self, cluster: FakeCluster, root: Path):
        self.cluster = cluster
        self.root = root

    def under(self, node_path: str) -> Path:
        return self.root / node_path.lstrip("/")

    def containerd2(self) -> bool:
        node = self.cluster._nodes.get(self.cluster.node_name) or {}
        version = ((node.get("status") or {}).get("nodeInfo") or {}).get(
            "containerRuntimeVersion", ""
        )
        match = re.match(r"containerd://v?(\d+)", version)
        return bool(match and int(match.group(1)) >= 2)

    def find_crun(self) -> str | None:
        for directory in K3S_CRUN_LOCATIONS:
            if self.under(f"{directory}/crun").is_file():
                return f"{directory}/crun"
        return None

    def runtimes(self) -> dict[str, Obj]:
        """containerd's runtimes: k3s's base (runc, and crun when found) plus the template's.
        Raises _TomlError when containerd could not start with the rendered config."""
        cri = ("plugins", "io.containerd.cri.v1.runtime") if self.containerd2() else None
        v1 = ("plugins", "io.containerd.grpc.v1.cri")
        prefixes = [p for p in (cri, v1) if p is not None]
        base_prefix = prefixes[0]
        runtimes_key = (*base_prefix, "containerd", "runtimes")
        base: dict[tuple[str, ...], Obj] = {
            (*runtimes_key, "runc"): {"runtime_type": "io.containerd.runc.v2"},
            (*runtimes_key, "runc", "options"): {"SystemdCgroup": True},
        }
        crun = self.find_crun()
        if crun is not None:
            crun_key = (*runtimes_key, "crun")
            crun_options = (*runtimes_key, "crun", "options")
            base[crun_key] = {"runtime_type": "io.containerd.runc.v2"}
            base[crun_options] = {"BinaryName": crun, "SystemdCgroup": True}
        tables = dict(base)
        template = self.template()
        if template is not None:
            for key, table in parse_toml_tables(template.read_text()).items():
                if key in base:
                    raise _TomlError(f"table {'.'.join(key)} is defined twice")
                if key:
                    tables[key] = table
        out: dict[str, Obj] = {}
        for key, table in tables.items():
            for prefix in prefixes:
                head = (*prefix, "containerd", "runtimes")
                if key[: len(head)] == head and len(key) == len(head) + 1:
                    options = tables.get((*key, "options"), {})
                    out[key[-1]] = {**table, "options": options}
        return out

    def template(self) -> Path | None:
        names = (
            ("config-v3.toml.tmpl", "config.toml.tmpl")
            if self.containerd2()
            else ("config.toml.tmpl",)
        )
        for name in names:
            path = self.under(f"{CONTAINERD_DIR}/{name}")
            if path.is_file():
                return path
        return None

    def loader_dirs(self) -> list[str]:
        dirs: list[str] = []
        confs = [self.under("/etc/ld.so.conf")]
        conf_d = self.under("/etc/ld.so.conf.d")
        if conf_d.is_dir():
            confs += sorted(conf_d.glob("*.conf"))
        for conf in confs:
            try:
                text = conf.read_text(errors="replace")
            except OSError:
                continue
            for raw in text.splitlines():
                entry = raw.split("#", 1)[0].strip()
                if entry.startswith("/"):
                    dirs.append(entry)
        return list(dict.fromkeys([*dirs, *LOADER_DIRS]))

    def find_library(self, soname: str) -> bool:
        return any(self.under(f"{d}/{soname}").exists() for d in self.loader_dirs())

    def runtime_version(self, binary: str) -> str | None:
        """`<binary> --version`, run for real (a stand-in under the root); None if it fails."""
        try:
            proc = subprocess.run(
                [str(self.under(binary)), "--version"],
                capture_output=True,
                text=True,
                timeout=10,
                env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
                check=False,
            )
        except OSError:
            return None
        return proc.stdout if proc.returncode == 0 else None


def _sandbox_failure(message: str) -> _Outcome:
    return _Outcome(
        "sandbox", "ContainerCreating", f"Failed to create pod sandbox: {message}", started=False
    )


def _start_error(message: str) -> _Outcome:
    return _Outcome(
        "exited",
        "StartError",
        f"failed to create containerd task: failed to create shim task: OCI runtime create "
        f"failed: {message}: unknown",
        128,
        started=False,
    )


def _run_wasm(module: bytes, argv: Sequence[str], env: Mapping[str, str]) -> tuple[int, bytes]:
    """Run a WASI command module for real in wasmtime, as crun's Wasm handler runs it in
    WasmEdge: (exit code, what it wrote to stdout and stderr)."""
    try:
        import wasmtime
    except ImportError as exc:  # pragma: no cover - wasmtime is a dev dependency
        raise FakeKubeError(
            f"tests/support/fakekube.py needs wasmtime to run Wasm pods: {exc}"
        ) from exc
    with tempfile.TemporaryDirectory(prefix="fakekube-") as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        engine = wasmtime.Engine()
        store = wasmtime.Store(engine)
        linker = wasmtime.Linker(engine)
        linker.define_wasi()
        config = wasmtime.WasiConfig()
        config.argv = list(argv)
        config.env = [[k, v] for k, v in env.items()]
        config.stdout_file = str(out)
        config.stderr_file = str(err)
        store.set_wasi(config)
        code = 0
        try:
            instance = linker.instantiate(store, wasmtime.Module(engine, module))
            instance.exports(store)["_start"](store)  # type: ignore[operator]
        except wasmtime.ExitTrap:
            code = 0  # crun's wasmedge handler exits 0 once the VM returns (handlers/wasmedge.c)
        except (wasmtime.WasmtimeError, wasmtime.Trap, KeyError):
            code = 1  # "could not get wasmedge result from VM"
        # The container log has both streams; their interleaving is not kept here.
        logs = b"".join(f.read_bytes() for f in (out, err) if f.exists())
        return code, logs


# --- the cluster -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One request the server answered."""

    method: str
    path: str  # without the query
    query: str
    accept: str
    content_type: str
    status: int


@dataclass
class _Fault:
    code: int
    remaining: int | None
    method: str | None
    path: str | None


class FakeCluster:
    """A fake k3s API server on 127.0.0.1 with one local node whose files are under `root`.

    Stands in for the API server, and for the kubelet, containerd and crun running the pod on
    this node (see the module docstring for the rules). State is inspectable and settable from
    the test: `node(name)`, `pod(name)`, `set_node_ready(...)`, `fail(500)`, `stop()`.
    """

    def __init__(
        self,
        root: Path | None = None,
        *,
        node_name: str = "edge-1",
        nodes: Iterable[Obj] | None = None,
        token: str | None = None,
        pod_startup_reads: int = 0,
        aggregated_discovery: bool = True,
        k3s_version: str = K3S_VERSION,
        tls: Union[bool, TestCA] = True,
    ):
        self.root = Path(root) if root is not None else None
        # https with a test CA and a bearer token, as k3s serves https (kubectl sends no
        # credentials over plain http, so tls=False also means no authentication).
        self.ca: TestCA | None
        if isinstance(tls, bool):
            self.ca = default_ca() if tls else None
        else:
            self.ca = tls
        self.node_name = node_name
        self.token = token if token is not None else secrets.token_hex(16)
        self.pod_startup_reads = pod_startup_reads
        self.aggregated_discovery = aggregated_discovery
        self.k3s_version = k3s_version
        self._lock = threading.RLock()
        self._initial_nodes = [copy.deepcopy(n) for n in nodes] if nodes is not None else None
        self._nodes: dict[str, Obj] = {}
        self._pods: dict[tuple[str, str], _PodRecord] = {}
        self._namespaces: dict[str, Obj] = {}
        self._images: dict[str, _Image] = {}
        self._faults: list[_Fault] = []
        self._requests: list[Request] = []
        self._readyz_ok = True
        self._resource_version = 1000
        self._addons = _addons().AddonState()
        self._local = threading.local()
        self._server: Optional[_HTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self._port = 0
        self.reset()

    # --- lifecycle -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        scheme = "https" if self.ca is not None else "http"
        return f"{scheme}://127.0.0.1:{self._port}"

    @property
    def ca_pem(self) -> bytes | None:
        return self.ca.cert.read_bytes() if self.ca is not None else None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> FakeCluster:
        """Serve (again, on the same port after a `stop`, as a restarted k3s does)."""
        if self._thread is not None:
            return self
        self._server = _HTTPServer(("127.0.0.1", self._port), _Handler, self)
        self._port = self._server.server_address[1]
        if self.ca is not None:
            # The handshake happens in the handler's thread, at its first read.
            self._server.socket = self.ca.server_context().wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fakekube-{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening: kubectl then gets "connection refused", as with k3s not running."""
        if self._server is None:
            return
        self._server.shutdown()
        if self._thread is not None:
            self._thread.join()
        self._server.server_close()
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def reset(self) -> None:
        """Back to a fresh cluster: the nodes as given, no pods, no faults, an empty log."""
        with self._lock:
            nodes = (
                self._initial_nodes
                if self._initial_nodes is not None
                else [k3s_node(self.node_name, kubelet_version=self.k3s_version)]
            )
            self._nodes = {n["metadata"]["name"]: copy.deepcopy(n) for n in nodes}
            self._pods.clear()
            self._namespaces = {ns: self._namespace_object(ns) for ns in DEFAULT_NAMESPACES}
            self._images.clear()
            self._faults.clear()
            self._requests.clear()
            self._readyz_ok = True
            self._addons = _addons().AddonState()

    # --- kubeconfig ----------------------------------------------------------------------------

    def kubeconfig(self, path: Path) -> Path:
        """Write a kubeconfig for this cluster (k3s's shape, see standins.k3s_kubeconfig)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(k3s_kubeconfig(self.url, self.token, self.ca_pem))
        path.chmod(0o600)
        return path

    def write_k3s_kubeconfig(self, root: Path | None = None) -> Path:
        """Write `<root>/etc/rancher/k3s/k3s.yaml` for this cluster, as a k3s server does."""
        target = root if root is not None else self.root
        if target is None:
            raise ValueError("no root to write /etc/rancher/k3s/k3s.yaml under")
        return write_k3s_kubeconfig(target, self.url, self.token, self.ca_pem)

    # --- state, for tests ----------------------------------------------------------------------

    def node(self, name: str) -> Obj:
        """A copy of the stored node object."""
        with self._lock:
            if name not in self._nodes:
                raise KeyError(f"no node {name!r} in the fake cluster")
            return copy.deepcopy(self._nodes[name])

    def nodes(self) -> list[Obj]:
        with self._lock:
            return [copy.deepcopy(n) for n in self._nodes.values()]

    def add_node(self, node: Obj) -> None:
        with self._lock:
            self._nodes[node["metadata"]["name"]] = copy.deepcopy(node)

    def remove_node(self, name: str) -> None:
        with self._lock:
            del self._nodes[name]

    def set_node_ready(
        self,
        name: str,
        ready: bool | None,
        *,
        reason: str | None = None,
        message: str | None = None,
    ) -> None:
        """Set the node's Ready condition as the kubelet and the node lifecycle controller do:
        True (KubeletReady; the pressure conditions healthy again), False (KubeletNotReady,
        with the not-ready taints) or None: every condition Unknown (NodeStatusUnknown, "Kubelet
        stopped posting node status.", with the unreachable taints)."""
        with self._lock:
            node = self._nodes[name]
            now = _now()
            healthy = {
                c["type"]: c for c in load_fixture("node-k3s-server.json")["status"]["conditions"]
            }
            taint: str | None = None
            for condition in node["status"]["conditions"]:
                kind = condition["type"]
                if ready is None:
                    wanted = {
                        "status": "Unknown",
                        "reason": reason or "NodeStatusUnknown",
                        "message": message or "Kubelet stopped posting node status.",
                    }
                    taint = "node.kubernetes.io/unreachable"
                elif kind != "Ready":
                    if kind not in healthy:
                        continue
                    wanted = {key: healthy[kind][key] for key in ("status", "reason", "message")}
                elif ready:
                    wanted = {
                        "status": "True",
                        "reason": reason or "KubeletReady",
                        "message": message or "kubelet is posting ready status",
                    }
                else:
                    wanted = {
                        "status": "False",
                        "reason": reason or "KubeletNotReady",
                        "message": message
                        or (
                            "container runtime network not ready: NetworkReady=false "
                            "reason:NetworkPluginNotReady message:Network plugin returns error: "
                            "cni plugin not initialized"
                        ),
                    }
                    taint = "node.kubernetes.io/not-ready"
                if condition["status"] != wanted["status"]:
                    condition["lastTransitionTime"] = now
                if ready is not None:
                    condition["lastHeartbeatTime"] = now  # Unknown: the kubelet went quiet
                condition.update(wanted)
            spec = node["spec"]
            taints = [
                t
                for t in spec.get("taints", [])
                if t["key"]
                not in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")
            ]
            if taint is not None:
                taints += [
                    {"effect": "NoSchedule", "key": taint, "timeAdded": now},
                    {"effect": "NoExecute", "key": taint, "timeAdded": now},
                ]
            if taints:
                spec["taints"] = taints
            else:
                spec.pop("taints", None)
            self._bump(node)

    def pod(self, name: str, namespace: str = "default") -> Obj:
        """A copy of the stored pod (as last shown to a client; reading it here advances
        nothing)."""
        with self._lock:
            record = self._pods.get((namespace, name))
            if record is None:
                raise KeyError(f"no pod {namespace}/{name} in the fake cluster")
            return copy.deepcopy(record.obj)

    def pods(self, namespace: str | None = None) -> list[Obj]:
        with self._lock:
            return [
                copy.deepcopy(r.obj)
                for (ns, _), r in self._pods.items()
                if namespace is None or ns == namespace
            ]

    def events(self, name: str, namespace: str = "default") -> list[tuple[str, str]]:
        """(reason, message) of what the kubelet reported for a pod, e.g. why its sandbox
        cannot be created."""
        with self._lock:
            record = self._pods.get((namespace, name))
            return list(record.events) if record is not None else []

    def add_namespace(self, name: str) -> None:
        with self._lock:
            self._namespaces[name] = self._namespace_object(name)

    def add_image(
        self,
        ref: str,
        files: Mapping[str, bytes | tuple[bytes, int]] | None = None,
        *,
        entrypoint: Sequence[str] | None = None,
        on_node: bool = True,
        in_registry: bool = False,
    ) -> str:
        """Give the node (`on_node`, as if imported) or the registry (`in_registry`) an image:
        its files by absolute path (bytes, executable; or (bytes, mode)) and its entrypoint.
        Returns the normalized reference."""
        normalized = normalize_image(ref)
        contents = {
            path: (data, 0o755) if isinstance(data, bytes) else data
            for path, data in (files or {}).items()
        }
        with self._lock:
            self._images[normalized] = _Image(
                contents, list(entrypoint) if entrypoint else None, on_node, in_registry
            )
        return normalized

    def runtime_classes(self) -> dict[str, Obj]:
        """The RuntimeClasses k3s deployed from the node's manifests directory."""
        if self.root is None:
            return {}
        out: dict[str, Obj] = {}
        directory = self.root / RUNTIMECLASS_DIR.lstrip("/")
        if not directory.is_dir():
            return out
        for path in sorted(directory.iterdir()):
            if path.suffix not in (".yaml", ".yml", ".json") or not path.is_file():
                continue
            if path.with_name(path.name + ".skip").exists():
                continue
            try:
                docs = list(yaml.safe_load_all(path.read_text()))
            except yaml.YAMLError:
                continue  # k3s logs the error and applies nothing from the file
            for doc in docs:
                if (
                    isinstance(doc, dict)
                    and doc.get("kind") == "RuntimeClass"
                    and doc.get("apiVersion") == "node.k8s.io/v1"
                    and isinstance(doc.get("metadata"), dict)
                    and doc["metadata"].get("name")
                ):
                    out[str(doc["metadata"]["name"])] = doc
        return out

    def gatekeeper_crash(self, crash: bool = True) -> None:
        """Make Gatekeeper's controller-manager exit 1 at start (crash-looping, so its webhook has
        no endpoint), or start again: what no file on the node can say."""
        with self._lock:
            self._addons.crash = crash

    def sync(self) -> None:
        """Let k3s's deploy controller, the helm-controller and Gatekeeper catch up with the node's
        files now (every request does it too)."""
        with self._lock:
            _addons().sync(self)

    def objects(self, key: str) -> dict[tuple[str, str], Obj]:
        """The add-on controllers' objects of `key` ("group/resource", e.g. "batch/jobs"), by
        (namespace, name)."""
        with self._lock:
            _addons().sync(self)
            return copy.deepcopy(self._addons.objects.get(key, {}))

    def set_readyz(self, ok: bool) -> None:
        """Make /readyz answer 500 with the failing checks (as during a k3s start or an etcd
        outage), or ok again."""
        with self._lock:
            self._readyz_ok = ok

    def fail(
        self,
        code: int = 500,
        *,
        times: int | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        """Answer API requests (not discovery; only `method`, only paths containing `path`) with
        `code` and a Status object; `times` limits how often."""
        with self._lock:
            self._faults.append(_Fault(code, times, method, path))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    # --- internals -----------------------------------------------------------------------------

    def _groups(self) -> dict[str, tuple[str, Sequence[_Resource]]]:
        return {**_GROUPS, **_addons().groups(self)}

    def _core_resources(self) -> tuple[_Resource, ...]:
        resources: tuple[_Resource, ...] = _addons().CORE_RESOURCES
        return _CORE + resources

    def _namespace_object(self, name: str) -> Obj:
        return {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "creationTimestamp": _now(),
                "labels": {"kubernetes.io/metadata.name": name},
                "name": name,
                "resourceVersion": str(self._resource_version),
                "uid": str(uuid.uuid4()),
            },
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        }

    def _bump(self, obj: Obj) -> None:
        self._resource_version += 1
        obj["metadata"]["resourceVersion"] = str(self._resource_version)

    def _fault_for(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.method is not None and fault.method != method:
                    continue
                if fault.path is not None and fault.path not in path:
                    continue
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                return fault
        return None

    def _record(self, request: Request) -> None:
        with self._lock:
            self._requests.append(request)

    # admission --------------------------------------------------------------------------------

    def _create_pod(self, namespace: str, body: Obj, dry_run: bool = False) -> Obj:
        if namespace not in self._namespaces:
            raise _not_found("namespaces", namespace)
        if body.get("kind", "Pod") != "Pod":
            raise ApiError(
                400,
                "BadRequest",
                f"the object provided is unrecognized (must be of type Pod): {body.get('kind')}",
            )
        pod = copy.deepcopy(body)
        meta = pod.setdefault("metadata", {})
        spec = pod.setdefault("spec", {})
        if meta.get("namespace") not in (None, "", namespace):
            raise ApiError(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the "
                "request",
            )
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        name = str(meta.get("name") or "")
        errors = []
        if not name:
            errors.append(
                (
                    "metadata.name",
                    "Required value: name or generateName is required",
                    "FieldValueRequired",
                )
            )
        elif not _K8S_NAME.match(name) or len(name) > 253:
            errors.append(
                (
                    "metadata.name",
                    f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of '
                    "lower case alphanumeric characters, '-' or '.', and must start and end with "
                    "an alphanumeric character (e.g. 'example.com', regex used for validation is "
                    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
                    "FieldValueInvalid",
                )
            )
        containers = spec.get("containers")
        if not containers:
            errors.append(("spec.containers", "Required value", "FieldValueRequired"))
        else:
            for i, container in enumerate(containers):
                if not container.get("image"):
                    errors.append(
                        (f"spec.containers[{i}].image", "Required value", "FieldValueRequired")
                    )
        if errors:
            message = f'Pod "{name}" is invalid: ' + (
                errors[0][0] + ": " + errors[0][1]
                if len(errors) == 1
                else "[" + ", ".join(f"{f}: {m}" for f, m, _ in errors) + "]"
            )
            raise ApiError(
                422,
                "Invalid",
                message,
                {
                    "name": name,
                    "kind": "Pod",
                    "causes": [{"reason": r, "message": m, "field": f} for f, m, r in errors],
                },
            )
        if (namespace, name) in self._pods:
            raise ApiError(
                409,
                "AlreadyExists",
                f'pods "{name}" already exists',
                {"name": name, "kind": "pods"},
            )
        handler: str | None = None
        rc_name = spec.get("runtimeClassName")
        if rc_name:
            runtime_class = self.runtime_classes().get(rc_name)
            if runtime_class is None:
                raise ApiError(
                    403,
                    "Forbidden",
                    f'pods "{name}" is forbidden: pod rejected: RuntimeClass "{rc_name}" not found',
                    {"name": name, "kind": "pods"},
                )
            handler = str(runtime_class.get("handler") or "")
            scheduling = runtime_class.get("scheduling") or {}
            selector = scheduling.get("nodeSelector") or {}
            merged = dict(spec.get("nodeSelector") or {})
            for key, value in selector.items():
                if key in merged and merged[key] != value:
                    # The RuntimeClass admission plugin (plugin/pkg/admission/runtimeclass).
                    raise ApiError(
                        403,
                        "Forbidden",
                        f'pods "{name}" is forbidden: conflict: '
                        f"runtimeClass.scheduling.nodeSelector[{key}] = {value}; "
                        f"pod.spec.nodeSelector[{key}] = {merged[key]}",
                        {"name": name, "kind": "pods"},
                    )
                merged[key] = value
            if merged:
                spec["nodeSelector"] = merged
            tolerations = list(spec.get("tolerations") or [])
            for toleration in scheduling.get("tolerations") or []:
                if toleration not in tolerations:
                    tolerations.append(toleration)
            if tolerations:
                spec["tolerations"] = tolerations
        self._default_pod(pod, namespace)
        # The validating webhooks come last in admission, on the defaulted object.
        self._local.warnings = _addons().admit(self, namespace, pod, dry_run)
        if dry_run:
            pod["metadata"].pop("resourceVersion", None)
            return copy.deepcopy(pod)
        record = _PodRecord(pod, handler)
        self._pods[(namespace, name)] = record
        return copy.deepcopy(pod)

    def _default_pod(self, pod: Obj, namespace: str) -> None:
        """What the API server's defaulting and admission add to a new pod."""
        meta, spec = pod["metadata"], pod["spec"]
        meta["namespace"] = namespace
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta.pop("resourceVersion", None)
        self._resource_version += 1
        meta["resourceVersion"] = str(self._resource_version)
        volume = f"kube-api-access-{secrets.token_hex(3)[:5]}"
        for container in spec["containers"]:
            image = str(container["image"])
            tag = image.rsplit("/", 1)[-1]
            latest = "@" not in image and (":" not in tag or tag.endswith(":latest"))
            container.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
            container.setdefault("resources", {})
            container.setdefault("terminationMessagePath", "/dev/termination-log")
            container.setdefault("terminationMessagePolicy", "File")
            container.setdefault("volumeMounts", []).append(
                {
                    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                    "name": volume,
                    "readOnly": True,
                }
            )
        spec.setdefault("dnsPolicy", "ClusterFirst")
        spec.setdefault("enableServiceLinks", True)
        spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
        spec.setdefault("priority", 0)
        spec.setdefault("restartPolicy", "Always")
        spec.setdefault("schedulerName", "default-scheduler")
        spec.setdefault("securityContext", {})
        spec.setdefault("serviceAccount", "default")
        spec.setdefault("serviceAccountName", "default")
        spec.setdefault("terminationGracePeriodSeconds", 30)
        tolerations = spec.setdefault("tolerations", [])
        for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"):
            if not any(t.get("key") == key for t in tolerations):
                tolerations.append(
                    {
                        "effect": "NoExecute",
                        "key": key,
                        "operator": "Exists",
                        "tolerationSeconds": 300,
                    }
                )
        spec.setdefault("volumes", []).append(
            {
                "name": volume,
                "projected": {
                    "defaultMode": 420,
                    "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {
                            "configMap": {
                                "items": [{"key": "ca.crt", "path": "ca.crt"}],
                                "name": "kube-root-ca.crt",
                            }
                        },
                        {
                            "downwardAPI": {
                                "items": [
                                    {
                                        "fieldRef": {
                                            "apiVersion": "v1",
                                            "fieldPath": "metadata.namespace",
                                        },
                                        "path": "namespace",
                                    }
                                ]
                            }
                        },
                    ],
                },
            }
        )
        resources = [c.get("resources") or {} for c in spec["containers"]]
        pod["status"] = {
            "phase": "Pending",
            "qosClass": "BestEffort" if not any(resources) else "Burstable",
        }
        pod["apiVersion"] = "v1"
        pod["kind"] = "Pod"

    # the scheduler and the kubelet -----------------------------------------------------------

    def _observe(self, record: _PodRecord) -> None:
        """A client reads the pod: let the scheduler and this node's kubelet move it on."""
        pod = record.obj
        spec, status = pod["spec"], pod["status"]
        if not spec.get("nodeName"):
            node, message = self._schedule(pod)
            if node is None:
                status["conditions"] = [
                    {
                        "lastProbeTime": None,
                        "lastTransitionTime": _now(),
                        "message": message,
                        "reason": "Unschedulable",
                        "status": "False",
                        "type": "PodScheduled",
                    }
                ]
                self._bump(pod)
                return
            spec["nodeName"] = node
        if spec["nodeName"] != self.node_name or spec["nodeName"] not in self._nodes:
            return  # no kubelet here for that node: it stays Pending
        if record.outcome is None:
            record.outcome = self._run(record)
            if record.outcome.stage in ("sandbox", "create", "pull"):
                kind = {"sandbox": "FailedCreatePodSandBox", "create": "Failed", "pull": "Failed"}
                record.events.append((kind[record.outcome.stage], record.outcome.message))
            status["startTime"] = _now()
        self._show(record, record.reads)
        record.reads += 1
        self._bump(pod)

    def _schedule(self, pod: Obj) -> tuple[str | None, str]:
        """The scheduler's filters that matter here: cordon, NoSchedule taints, nodeSelector.
        Among the nodes that fit, the local one (the only one with a kubelet) is taken."""
        selector = pod["spec"].get("nodeSelector") or {}
        tolerations = pod["spec"].get("tolerations") or []
        reasons: dict[str, int] = {}
        order = sorted(self._nodes, key=lambda n: n != self.node_name)
        for name in order:
            node = self._nodes[name]
            labels = node["metadata"].get("labels") or {}
            taints = [
                t
                for t in (node["spec"].get("taints") or [])
                if t.get("effect") == "NoSchedule" and not _tolerates(tolerations, t)
            ]
            if node["spec"].get("unschedulable"):
                why = "1 node(s) were unschedulable"
            elif taints:
                why = (
                    f"1 node(s) had untolerated taint {{{taints[0]['key']}: "
                    f"{taints[0].get('value', '')}}}"
                )
            elif any(labels.get(k) != v for k, v in selector.items()):
                why = "1 node(s) didn't match Pod's node affinity/selector"
            else:
                return name, ""
            reasons[why] = reasons.get(why, 0) + 1
        total = len(self._nodes)
        detail = ", ".join(f"{count}{why[1:]}" for why, count in sorted(reasons.items()))
        message = (
            f"0/{total} nodes are available: {detail}."
            if detail
            else (f"0/{total} nodes are available.")
        )
        return None, (
            f"{message} preemption: 0/{total} nodes are available: {total} Preemption is not "
            "helpful for scheduling."
        )

    def _run(self, record: _PodRecord) -> _Outcome:
        """What containerd and crun on this node do with the pod's first container."""
        if self.root is None:
            raise FakeKubeError(
                "tests/support/fakekube.py: FakeCluster(root=...) is needed to run pods"
            )
        runtime = _Runtime(self, self.root)
        pod = record.obj
        spec = pod["spec"]
        if len(spec["containers"]) != 1 or spec.get("initContainers"):
            raise FakeKubeError(
                "tests/support/fakekube.py runs pods of one container (no init containers) only"
            )
        handler = record.handler or "runc"
        try:
            runtimes = runtime.runtimes()
        except _TomlError as exc:
            return _sandbox_failure(
                "rpc error: code = Unavailable desc = connection error: containerd is not "
                f"running (k3s could not start it with the rendered config.toml: {exc})"
            )
        config = runtimes.get(handler)
        if config is None:
            return _sandbox_failure(
                "rpc error: code = Unknown desc = failed to get sandbox runtime: "
                f'no runtime for "{handler}" is configured'
            )
        binary = str((config.get("options") or {}).get("BinaryName") or "")
        kind = "runc"
        wasm_runtimes: list[str] = []
        if binary:
            if not runtime.under(binary).is_file():
                return _sandbox_failure(
                    "rpc error: code = Unknown desc = failed to create containerd task: failed to "
                    "create shim task: OCI runtime create failed: unable to retrieve OCI runtime "
                    f'error: exec: "{binary}": stat {binary}: no such file or directory: unknown'
                )
            version = runtime.runtime_version(binary)
            if version is None:
                return _sandbox_failure(
                    "rpc error: code = Unknown desc = failed to create containerd task: failed to "
                    f"create shim task: OCI runtime create failed: {binary} did not run "
                    "(`--version` failed): unknown"
                )
            first = version.splitlines()[0] if version else ""
            kind = "crun" if first.startswith("crun version") else "runc"
            wasm_runtimes = [
                token.split(":", 1)[1]
                for token in version.split()
                if token.startswith("+WASM:") and ":" in token
            ]
        patterns = [str(p) for p in config.get("pod_annotations") or []]
        passed = {
            key: str(value)
            for key, value in (pod["metadata"].get("annotations") or {}).items()
            if any(go_filepath_match(p, key) for p in patterns)
        }
        if kind == "crun" and wasm_runtimes and _crun_takes_wasm(passed, ["/pause"]):
            return _sandbox_failure(
                "rpc error: code = Unknown desc = failed to start sandbox container: crun ran "
                "/pause as a Wasm module (the Wasm annotation applies to the sandbox too)"
            )
        container = spec["containers"][0]
        image = normalize_image(str(container["image"]))
        pulled = self._pull(image, str(container.get("imagePullPolicy") or "IfNotPresent"))
        if isinstance(pulled, _Outcome):
            return pulled
        if container.get("command"):
            argv = [*container["command"], *(container.get("args") or [])]
        elif pulled.entrypoint:
            argv = [*pulled.entrypoint, *(container.get("args") or [])]
        else:
            return _Outcome(
                "create",
                "CreateContainerError",
                "failed to generate container spec: no command specified",
                started=False,
            )
        entry = self._container_file(runtime, spec, container, pulled, argv[0])
        env = {
            str(e["name"]): str(e.get("value", ""))
            for e in container.get("env") or []
            if isinstance(e, dict) and "name" in e
        }
        if kind == "crun" and wasm_runtimes and _crun_takes_wasm(passed, argv):
            wasm = wasm_runtimes[0]
            library = WASM_LIBRARIES.get(wasm, f"lib{wasm}.so")
            if not runtime.find_library(library):
                return _start_error(
                    f"could not load `{library}`: `{library}: cannot open shared object file: "
                    "No such file or directory`"
                )
            if entry is None or not entry[0].startswith(b"\0asm"):
                return _Outcome("exited", "Error", "", 1)
            code, output = _run_wasm(entry[0], argv, env)
            return _Outcome("exited", "Completed" if code == 0 else "Error", "", code, output)
        # crun (or runc) execs the command as a native program.
        if entry is None:
            if kind == "crun":
                return _start_error(
                    f"executable file `{argv[0]}` not found in $PATH: No such file or directory"
                )
            return _start_error(
                "runc create failed: unable to start container process: exec: "
                f'"{argv[0]}": stat {argv[0]}: no such file or directory'
            )
        data, mode = entry
        if not mode & 0o111:
            return _start_error(
                f"the path `{argv[0]}` exists but it is not executable: Operation not permitted"
            )
        if data.startswith((b"\x7fELF", b"#!")):
            raise FakeKubeError(
                f"tests/support/fakekube.py runs Wasm modules only; {argv[0]} is a native program"
            )
        if kind == "crun":
            line = json.dumps(
                {
                    "msg": f"exec container process `{argv[0]}`: Exec format error",
                    "level": "error",
                    "time": _crun_time(),
                },
                separators=(",", ":"),
            )
            return _Outcome("exited", "Error", "", 1, (line + "\n").encode())
        return _Outcome("exited", "Error", "", 1, f"exec {argv[0]}: exec format error\n".encode())

    def _pull(self, image: str, policy: str) -> _Image | _Outcome:
        known = self._images.get(image)
        on_node = (known is not None and known.on_node) or image in self._node_images()
        in_registry = (known is not None and known.in_registry) or image in self._node_images()
        if policy == "Never" and not on_node:
            return _Outcome(
                "pull",
                "ErrImageNeverPull",
                f'Container image "{image}" is not present with pull policy of Never',
                started=False,
            )
        if (policy == "Always" or not on_node) and not in_registry:
            return _Outcome(
                "pull",
                "ErrImagePull",
                f'failed to pull and unpack image "{image}": failed to resolve reference '
                f'"{image}": {image}: not found',
                started=False,
            )
        return known if known is not None else _Image({}, None, True, True)

    def _node_images(self) -> set[str]:
        node = self._nodes.get(self.node_name) or {}
        names: set[str] = set()
        for entry in (node.get("status") or {}).get("images") or []:
            names.update(normalize_image(n) for n in entry.get("names") or [])
        return names

    @staticmethod
    def _container_file(
        runtime: _Runtime, spec: Obj, container: Obj, image: _Image, path: str
    ) -> tuple[bytes, int] | None:
        """The file at `path` in the container: through a hostPath volume under the root, or
        from the image."""
        volumes = {v.get("name"): v for v in spec.get("volumes") or []}
        mounts = sorted(
            container.get("volumeMounts") or [],
            key=lambda m: len(str(m.get("mountPath", ""))),
            reverse=True,
        )
        for mount in mounts:
            mount_path = str(mount.get("mountPath", "")).rstrip("/")
            if path != mount_path and not path.startswith(mount_path + "/"):
                continue
            host = (volumes.get(mount.get("name")) or {}).get("hostPath")
            if not host:
                return None
            host_file = runtime.under(str(host["path"]).rstrip("/") + path[len(mount_path) :])
            if not host_file.is_file():
                return None
            return host_file.read_bytes(), host_file.stat().st_mode
        return image.files.get(path)

    def _show(self, record: _PodRecord, read: int) -> None:
        """Write the pod's status for its `read`-th read (from 0) since the kubelet took it."""
        pod, outcome = record.obj, record.outcome
        assert outcome is not None
        spec, status = pod["spec"], pod["status"]
        container = spec["containers"][0]
        name = str(container["name"])
        view = self._view(outcome, read)
        first = read == 0
        if first or view != self._view(outcome, read - 1):
            record.changed_at = _now()  # what the kubelet reports changes at this read
        changed = record.changed_at
        node = self._nodes[self.node_name]
        host_ip = next(
            (
                a["address"]
                for a in node["status"].get("addresses", [])
                if a["type"] == "InternalIP"
            ),
            "127.0.0.1",
        )
        status["hostIP"] = host_ip
        status["hostIPs"] = [{"ip": host_ip}]
        sandbox_up = outcome.stage != "sandbox"
        if sandbox_up:
            octet = int(hashlib.sha256(pod["metadata"]["uid"].encode()).hexdigest()[:2], 16) % 250
            status["podIP"] = f"10.42.0.{octet + 2}"
            status["podIPs"] = [{"ip": status["podIP"]}]
        image = normalize_image(str(container["image"]))
        container_id = (
            "containerd://" + hashlib.sha256((pod["metadata"]["uid"] + name).encode()).hexdigest()
        )
        image_id = image.rsplit(":", 1)[0] + "@sha256:" + hashlib.sha256(image.encode()).hexdigest()
        base = {"image": image, "name": name, "ready": False, "restartCount": 0, "started": False}
        if view == "running":
            state: Obj = {"running": {"startedAt": status["startTime"]}}
            entry = {
                **base,
                "containerID": container_id,
                "imageID": image_id,
                "lastState": {},
                "ready": True,
                "started": True,
                "state": state,
            }
            phase = "Running"
            ready = True
        elif view == "creating" or outcome.stage == "sandbox":
            entry = {
                **base,
                "imageID": "",
                "lastState": {},
                "state": {"waiting": {"reason": "ContainerCreating"}},
            }
            phase, ready = "Pending", False
        elif outcome.stage in ("pull", "create"):
            reason = outcome.reason
            message = outcome.message
            if outcome.reason == "ErrImagePull" and not first:
                reason, message = "ImagePullBackOff", f'Back-off pulling image "{image}"'
            entry = {
                **base,
                "imageID": "",
                "lastState": {},
                "state": {"waiting": {"message": message, "reason": reason}},
            }
            phase, ready = "Pending", False
        else:
            terminated: Obj = {
                "containerID": container_id,
                "exitCode": outcome.exit_code,
                "finishedAt": changed,
                "reason": outcome.reason,
                "startedAt": status["startTime"] if outcome.started else _TIME_ZERO,
            }
            if outcome.message:
                terminated["message"] = outcome.message
            policy = spec.get("restartPolicy", "Always")
            restarts = policy == "Always" or (policy == "OnFailure" and outcome.exit_code != 0)
            if restarts:
                entry = {
                    **base,
                    "containerID": container_id,
                    "imageID": image_id,
                    "lastState": {"terminated": terminated},
                    "restartCount": 1,
                    "state": {
                        "waiting": {
                            "message": f"back-off 10s restarting failed container={name} "
                            f"pod={pod['metadata']['name']}_{pod['metadata']['namespace']}"
                            f"({pod['metadata']['uid']})",
                            "reason": "CrashLoopBackOff",
                        }
                    },
                }
                phase, ready = "Running", False
            else:
                entry = {
                    **base,
                    "containerID": container_id,
                    "imageID": image_id,
                    "lastState": {},
                    "state": {"terminated": terminated},
                }
                phase = "Succeeded" if outcome.exit_code == 0 else "Failed"
                ready = False
        status["phase"] = phase
        status["containerStatuses"] = [entry]
        status["conditions"] = self._conditions(status, phase, ready, sandbox_up, name, changed)

    def _view(self, outcome: _Outcome, read: int) -> str:
        """What a read shows: "creating" (the first of `pod_startup_reads`), "running" (the
        rest, for a container that starts), or "final"."""
        if read >= self.pod_startup_reads:
            return "running" if outcome.stage == "running" else "final"
        if read == 0 or outcome.stage in ("sandbox", "create", "pull"):
            return "creating"
        return "running"

    @staticmethod
    def _conditions(
        status: Obj, phase: str, ready: bool, sandbox_up: bool, name: str, changed: str
    ) -> list[Obj]:
        start = status.get("startTime", changed)
        now = changed

        def cond(
            kind: str, value: bool, reason: str | None = None, message: str | None = None
        ) -> Obj:
            out: Obj = {
                "lastProbeTime": None,
                "lastTransitionTime": start if value else now,
                "status": "True" if value else "False",
                "type": kind,
            }
            if reason:
                out["reason"] = reason
            if message:
                out["message"] = message
            return out

        unready = f"containers with unready status: [{name}]"
        if phase in ("Succeeded", "Failed"):
            done = "PodCompleted" if phase == "Succeeded" else "PodFailed"
            return [
                cond("PodReadyToStartContainers", False),
                cond("Initialized", True, "PodCompleted" if phase == "Succeeded" else None),
                cond("Ready", False, done),
                cond("ContainersReady", False, done),
                cond("PodScheduled", True),
            ]
        return [
            cond("PodReadyToStartContainers", sandbox_up),
            cond("Initialized", True),
            cond(
                "Ready", ready, None if ready else "ContainersNotReady", None if ready else unready
            ),
            cond(
                "ContainersReady",
                ready,
                None if ready else "ContainersNotReady",
                None if ready else unready,
            ),
            cond("PodScheduled", True),
        ]


# --- HTTP --------------------------------------------------------------------------------------


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: Any, cluster: FakeCluster):
        self.cluster = cluster
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up, or speaking plain http to the https port, is not worth a
        # traceback; anything else is.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError, ssl.SSLError)):
            return
        super().handle_error(request, client_address)


_DISCOVERY_PATHS = re.compile(
    r"^/(api|apis|api/v1|apis/[^/]+|apis/[^/]+/[^/]+|version|openapi/.*)$"
)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    @property
    def cluster(self) -> FakeCluster:
        return self.server.cluster

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        path, query = split.path, split.query
        body = self._body()
        code = 500
        try:
            code, content_type, payload = self._answer(method, path, parse_qs(query), body)
        except ApiError as exc:
            code, content_type, payload = (
                exc.code,
                "application/json",
                json.dumps(exc.status).encode(),
            )
        except FakeKubeError as exc:
            error = status_object(500, "InternalError", f"Internal error occurred: {exc}")
            code, content_type, payload = 500, "application/json", json.dumps(error).encode()
        self.cluster._record(
            Request(
                method,
                path,
                query,
                self.headers.get("Accept", ""),
                self.headers.get("Content-Type", ""),
                code,
            )
        )
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-cache, private")
        for warning in getattr(self.cluster._local, "warnings", None) or []:
            # k8s.io/apiserver/pkg/warning: `299 - "text"`, which kubectl prints as "Warning: text".
            self.send_header("Warning", '299 - "' + warning.replace('"', '\\"') + '"')
        self.cluster._local.warnings = []
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(payload)

    def _json(
        self, obj: Any, code: int = 200, content_type: str = "application/json"
    ) -> tuple[int, str, bytes]:
        return code, content_type, json.dumps(obj).encode()

    def _answer(
        self, method: str, path: str, query: dict[str, list[str]], body: bytes
    ) -> tuple[int, str, bytes]:
        cluster = self.cluster
        if (
            cluster.ca is not None
            and self.headers.get("Authorization") != f"Bearer {cluster.token}"
        ):
            raise ApiError(401, "Unauthorized", "Unauthorized")
        if path in ("/readyz", "/livez", "/healthz") and method == "GET":
            with cluster._lock:
                ok = cluster._readyz_ok
            if ok or path != "/readyz":
                return 200, "text/plain; charset=utf-8", b"ok"
            checks = (
                "[+]ping ok\n[+]log ok\n[-]etcd failed: reason withheld\n[+]etcd-readiness ok\n"
                "[+]informer-sync ok\n[+]poststarthook/start-apiserver-admission-initializer ok\n"
                "[+]shutdown ok\nreadyz check failed\n"
            )
            return 500, "text/plain; charset=utf-8", checks.encode()
        if _DISCOVERY_PATHS.match(path) and method == "GET":
            with cluster._lock:
                _addons().sync(cluster)
                return self._discovery(path)
        fault = cluster._fault_for(method, path)
        if fault is not None:
            raise ApiError(
                fault.code,
                "InternalError" if fault.code == 500 else "ServiceUnavailable",
                "Internal error occurred: injected by tests/support/fakekube.py"
                if fault.code == 500
                else "the server is currently unable to handle the request",
            )
        parts = [p for p in path.split("/") if p]
        with cluster._lock:
            _addons().sync(cluster)
            if parts[:2] == ["api", "v1"]:
                return self._core(method, parts[2:], query, body)
            if parts[:3] == ["apis", "node.k8s.io", "v1"]:
                return self._node_k8s(method, parts[3:])
            if len(parts) >= 4 and parts[0] == "apis" and method == "GET":
                found = _addons().answer(cluster, parts[1], parts[2], parts[3:], query)
                if found is not None:
                    return self._json(found)
        raise ApiError(404, "NotFound", "the server could not find the requested resource")

    # discovery

    def _discovery(self, path: str) -> tuple[int, str, bytes]:
        cluster = self.cluster
        wanted = _wants_aggregated(self.headers.get("Accept", ""))
        aggregated = cluster.aggregated_discovery and wanted in ("v2", "v2beta1")
        if path == "/version":
            major, minor = re.findall(r"\d+", cluster.k3s_version)[:2]
            return self._json(
                {
                    "major": major,
                    "minor": minor,
                    "gitVersion": cluster.k3s_version,
                    "gitCommit": "abcd12340000000000000000000000000000000",
                    "gitTreeState": "clean",
                    "buildDate": "2024-08-20T01:13:28Z",
                    "goVersion": "go1.22.5",
                    "compiler": "gc",
                    "platform": "linux/amd64",
                }
            )
        if path == "/api":
            if aggregated:
                assert wanted is not None
                doc = _aggregated_list(
                    [_aggregated_group("", "v1", cluster._core_resources())], wanted
                )
                return self._json(doc, content_type=_aggregated_type(wanted))
            return self._json(
                {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{cluster.port}"}
                    ],
                }
            )
        if path == "/apis":
            if aggregated:
                assert wanted is not None
                groups = [
                    _aggregated_group(name, version, resources)
                    for name, (version, resources) in cluster._groups().items()
                ]
                return self._json(
                    _aggregated_list(groups, wanted), content_type=_aggregated_type(wanted)
                )
            return self._json(
                {
                    "kind": "APIGroupList",
                    "apiVersion": "v1",
                    "groups": [
                        {
                            "name": name,
                            "versions": [{"groupVersion": f"{name}/{version}", "version": version}],
                            "preferredVersion": {
                                "groupVersion": f"{name}/{version}",
                                "version": version,
                            },
                        }
                        for name, (version, _) in cluster._groups().items()
                    ],
                }
            )
        if path.startswith("/openapi/v3"):
            return self._json(_openapi_v3(path, cluster.k3s_version))
        if path == "/api/v1":
            return self._json(_resource_list("v1", cluster._core_resources()))
        parts = path.strip("/").split("/")
        served = cluster._groups()
        if parts[0] == "apis" and len(parts) >= 2 and parts[1] in served:
            version, resources = served[parts[1]]
            if len(parts) == 2:
                entry = {"groupVersion": f"{parts[1]}/{version}", "version": version}
                return self._json(
                    {
                        "kind": "APIGroup",
                        "apiVersion": "v1",
                        "name": parts[1],
                        "versions": [entry],
                        "preferredVersion": entry,
                    }
                )
            if parts[2] == version:
                return self._json(_resource_list(f"{parts[1]}/{version}", resources))
        raise ApiError(404, "NotFound", "the server could not find the requested resource")

    # core/v1

    def _core(
        self, method: str, parts: list[str], query: dict[str, list[str]], body: bytes
    ) -> tuple[int, str, bytes]:
        cluster = self.cluster
        if parts == ["nodes"] and method == "GET":
            return self._json(_list("NodeList", cluster._nodes.values(), cluster))
        if len(parts) == 2 and parts[0] == "nodes":
            node = cluster._nodes.get(parts[1])
            if node is None:
                raise _not_found("nodes", parts[1])
            if method == "GET":
                return self._json(node)
            if method == "PATCH":
                return self._json(self._patch(node, "nodes", body))
        if parts == ["namespaces"] and method == "GET":
            return self._json(_list("NamespaceList", cluster._namespaces.values(), cluster))
        if len(parts) == 2 and parts[0] == "namespaces" and method == "GET":
            ns = cluster._namespaces.get(parts[1])
            if ns is None:
                raise _not_found("namespaces", parts[1])
            return self._json(ns)
        if parts == ["pods"] and method == "GET":
            for record in cluster._pods.values():
                cluster._observe(record)
            return self._json(_list("PodList", _selected(cluster._pods.values(), query), cluster))
        if method == "GET":
            found = _addons().answer(cluster, "", "v1", parts, query)
            if found is not None:
                return self._json(found)
        if len(parts) >= 3 and parts[0] == "namespaces" and parts[2] == "pods":
            return self._pods(method, parts[1], parts[3:], query, body)
        raise ApiError(404, "NotFound", "the server could not find the requested resource")

    def _pods(
        self,
        method: str,
        namespace: str,
        rest: list[str],
        query: dict[str, list[str]],
        body: bytes,
    ) -> tuple[int, str, bytes]:
        cluster = self.cluster
        if not rest:
            if method == "GET":
                records = [r for (ns, _), r in cluster._pods.items() if ns == namespace]
                for record in records:
                    cluster._observe(record)
                return self._json(_list("PodList", _selected(records, query), cluster))
            if method == "POST":
                try:
                    obj = json.loads(body)
                except ValueError as exc:
                    raise ApiError(400, "BadRequest", f"the body is not JSON: {exc}") from exc
                if not isinstance(obj, dict):
                    raise ApiError(400, "BadRequest", "the body is not an object")
                dry_run = query.get("dryRun") == ["All"]
                return self._json(cluster._create_pod(namespace, obj, dry_run), 201)
        name = rest[0]
        found = cluster._pods.get((namespace, name))
        if found is None:
            raise _not_found("pods", name)
        record = found
        if len(rest) == 1 and method == "GET":
            cluster._observe(record)
            return self._json(record.obj)
        if len(rest) == 1 and method == "DELETE":
            del cluster._pods[(namespace, name)]
            gone = copy.deepcopy(record.obj)
            gone["metadata"]["deletionTimestamp"] = _now()
            gone["metadata"]["deletionGracePeriodSeconds"] = 0
            return self._json(gone)
        if rest[1:] == ["log"] and method == "GET":
            return self._logs(record, query)
        raise ApiError(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )

    def _logs(self, record: _PodRecord, query: dict[str, list[str]]) -> tuple[int, str, bytes]:
        cluster = self.cluster
        pod = record.obj
        name = pod["metadata"]["name"]
        containers = [str(c["name"]) for c in pod["spec"]["containers"]]
        wanted = (query.get("container") or [""])[0]
        if wanted and wanted not in containers:
            raise ApiError(400, "BadRequest", f"container {wanted} is not valid for pod {name}")
        if not wanted and len(containers) > 1:
            raise ApiError(
                400,
                "BadRequest",
                f"a container name must be specified for pod {name}, choose one of: "
                f"[{' '.join(containers)}]",
            )
        container = wanted or containers[0]
        if not pod["spec"].get("nodeName"):
            cluster._observe(record)
        if not pod["spec"].get("nodeName") or pod["spec"]["nodeName"] != cluster.node_name:
            # Not on a node with a kubelet (yet): the API server has nowhere to stream from.
            return 200, "text/plain", b""
        if record.outcome is None or not pod["status"].get("containerStatuses"):
            cluster._observe(record)
        state = pod["status"]["containerStatuses"][0]["state"]
        if "waiting" in state and not pod["status"]["containerStatuses"][0].get("lastState"):
            reason = state["waiting"].get("reason", "")
            why = (
                "trying and failing to pull image"
                if reason in ("ErrImagePull", "ImagePullBackOff")
                else reason
            )
            raise ApiError(
                400,
                "BadRequest",
                f'container "{container}" in pod "{name}" is waiting to start: {why}',
            )
        assert record.outcome is not None
        logs = record.outcome.logs
        tail = (query.get("tailLines") or [""])[0]
        if tail.isdigit():
            lines = logs.splitlines(keepends=True)
            logs = b"".join(lines[len(lines) - int(tail) :] if int(tail) else [])
        return 200, "text/plain", logs

    def _patch(self, obj: Obj, resource: str, body: bytes) -> Obj:
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        try:
            patch = json.loads(body)
        except ValueError as exc:
            raise ApiError(400, "BadRequest", f"the patch is not JSON: {exc}") from exc
        if content_type == "application/merge-patch+json":
            patched = merge_patch(obj, patch)
        elif content_type == "application/strategic-merge-patch+json":
            patched = strategic_merge_patch(obj, patch)
        else:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types "
                "include: application/merge-patch+json, application/strategic-merge-patch+json "
                "(tests/support/fakekube.py)",
            )
        name = obj["metadata"]["name"]
        wanted = (
            (patch.get("metadata") or {}).get("resourceVersion")
            if isinstance(patch, dict)
            else None
        )
        if wanted and wanted != obj["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {resource} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
                {"name": name, "kind": resource},
            )
        if patched["metadata"].get("name") != name:
            raise ApiError(
                400, "BadRequest", "the name of the object does not match the name on the URL"
            )
        obj.clear()
        obj.update(patched)
        self.cluster._bump(obj)
        return obj

    # node.k8s.io/v1

    def _node_k8s(self, method: str, parts: list[str]) -> tuple[int, str, bytes]:
        classes = self.cluster.runtime_classes()
        if parts == ["runtimeclasses"] and method == "GET":
            return self._json(
                _list("RuntimeClassList", classes.values(), self.cluster, "node.k8s.io/v1")
            )
        if len(parts) == 2 and parts[0] == "runtimeclasses" and method == "GET":
            if parts[1] not in classes:
                raise _not_found("runtimeclasses", parts[1], "node.k8s.io")
            return self._json(classes[parts[1]])
        raise ApiError(404, "NotFound", "the server could not find the requested resource")


def _openapi_v3(path: str, version: str) -> Obj:
    """Just enough OpenAPI v3 for kubectl to see that pods take `fieldValidation`, so it leaves
    validation to the server (k8s.io/client-go/openapi3 and kubectl's QueryParamVerifierV3:
    the PATCH operation tagged with the kind lists the parameter) instead of downloading
    /openapi/v2, which the fake does not serve."""
    if path == "/openapi/v3":
        return {"paths": {"api/v1": {"serverRelativeURL": "/openapi/v3/api/v1?hash=0"}}}
    if path != "/openapi/v3/api/v1":
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    parameter = {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": version},
        "paths": {
            "/api/v1/namespaces/{namespace}/pods/{name}": {
                "patch": {
                    "x-kubernetes-group-version-kind": {
                        "group": "",
                        "version": "v1",
                        "kind": "Pod",
                    },
                    "parameters": [parameter],
                    "responses": {},
                }
            }
        },
    }


def _addons() -> Any:
    # Imported when first used: tests/support/fakegatekeeper.py imports this module.
    from tests.support import fakegatekeeper

    return fakegatekeeper


def _selected(records: Iterable[_PodRecord], query: dict[str, list[str]]) -> list[Obj]:
    selector = (query.get("labelSelector") or [""])[0]
    matches = _addons().label_selector_matches
    return [r.obj for r in records if matches(selector, r.obj["metadata"].get("labels") or {})]


def _aggregated_type(version: str) -> str:
    return f"application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList"


def _list(kind: str, items: Iterable[Obj], cluster: FakeCluster, api_version: str = "v1") -> Obj:
    # List items carry no kind/apiVersion on the wire; kubectl fills them in for printing.
    out = []
    for item in items:
        copied = copy.deepcopy(item)
        copied.pop("kind", None)
        copied.pop("apiVersion", None)
        out.append(copied)
    return {
        "kind": kind,
        "apiVersion": api_version,
        "metadata": {"resourceVersion": str(cluster._resource_version)},
        "items": out,
    }
