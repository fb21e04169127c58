"""Health checks: small units that look at the node, name what is wrong and its real cause."""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from agentd.core.paths import (
    CONTAINERD_DIR,
    CRUN_WASM_RUNTIME,
    K3S_CONFIG,
    K3S_UNITS,
    PROBE_RUNTIME_CLASS,
    RUNTIMECLASS_MANIFEST,
    SYSTEMD_DIR,
    Paths,
)
from agentd.core.versions import compare, parse_version
from agentd.facts.model import ComponentFacts, Facts, HostFacts
from agentd.health.probe import PROBE_OUTPUT, probe_module
from agentd.system.commands import CommandResult, run_command
from agentd.system.files import atomic_write

# The checks take the desired state as JSON (DesiredState.model_dump): the daemon runs them
# from the copy the last run kept, without loading pydantic.
Desired = Mapping[str, Any]

SEVERITIES = ("critical", "error", "warning", "info")
UNHEALTHY = frozenset({"critical", "error"})
GIB = 1 << 30
# The install guide's prerequisites: servers, and edge devices (k3s agents).
MINIMUMS = {
    "server": {"cpus": 2, "memory": 4 * GIB, "disk": 20 * 10**9},
    "agent": {"cpus": 1, "memory": 2 * GIB, "disk": 10 * 10**9},
}
# A "4 GB" board reports less: firmware and the kernel keep some for themselves.
MEMORY_SLACK = 0.85
MIN_FREE_DISK = 1 * GIB  # below this an artifact download or a k3s image pull fails
KERNEL_MINIMUM, KERNEL_RECOMMENDED = (5, 4), (5, 10)
DEFAULT_CRUN_MINIMUM = "1.8.5"  # the guide's figure; a setting of the desired state
# Where the dynamic loader looks without the cache (and where agentd installs libwasmedge).
LIBRARY_DIRS = (
    "/usr/local/lib",
    "/usr/local/lib64",
    "/usr/lib",
    "/usr/lib64",
    "/lib",
    "/lib64",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib/arm-linux-gnueabihf",
)
SUPPORTED_OS = {"debian": "11", "ubuntu": "20.04", "raspbian": "11", "rhel": "8", "centos": "8"}
SUPPORTED_OS_ALIASES = {"rocky": "rhel", "almalinux": "rhel"}
PROBE_POD = "agentd-wasm-probe"
NO_SOCKET_PLUGIN = (
    "There is no WasmEdge socket plugin to install: sockets and DNS are built into WasmEdge's "
    "WASI. A guest resolves names only if it was built with the wasmedge_wasi_socket crate (a "
    "plain wasm32-wasi build has no DNS), and it reads the DNS servers from /etc/resolv.conf in "
    "its sandbox."
)


@dataclass(frozen=True)
class Finding:
    """One thing wrong (or worth knowing), with its cause and what to do about it."""

    code: str
    severity: str  # critical, error, warning, info
    component: str
    message: str
    remedy: str
    # A fix agentd itself can apply: "converge" (install what the desired state says),
    # "reinstall:<component>", "restart:k3s", "ldconfig". None: a person has to act.
    fix: Optional[str] = None

    @property
    def unhealthy(self) -> bool:
        return self.severity in UNHEALTHY

    def to_json(self) -> dict[str, Any]:
        out = {
            "code": self.code,
            "severity": self.severity,
            "component": self.component,
            "message": self.message,
            "remedy": self.remedy,
        }
        if self.fix:
            out["fix"] = self.fix
        return out


@dataclass
class CheckInput:
    """What the checks look at: the node's paths and facts, and what it should be."""

    paths: Paths
    facts: Facts
    desired: Optional[Desired] = None
    node_name: str = ""
    probe_image: Optional[str] = None
    probe_namespace: str = "default"
    probe_timeout: float = 60.0
    runner: Callable[..., CommandResult] = run_command
    # Filled in by the checks for the ones after them (so one cause is reported once).
    notes: dict[str, Any] = field(default_factory=dict)


def wanted(inp: CheckInput, name: str) -> Optional[Mapping[str, Any]]:
    """The desired component `name` when it should be present, else None."""
    comp = ((inp.desired or {}).get("components") or {}).get(name)
    if isinstance(comp, Mapping) and comp.get("state", "present") == "present":
        return comp
    return None


def unwanted(inp: CheckInput, name: str) -> bool:
    """The desired state says `name` must be absent."""
    comp = ((inp.desired or {}).get("components") or {}).get(name)
    return isinstance(comp, Mapping) and comp.get("state") == "absent"


# --- preflight: the guide's prerequisites ---------------------------------------------------------


def _role(inp: CheckInput) -> str:
    k3s = wanted(inp, "k3s")
    if k3s is not None:
        return str(k3s.get("role", "server"))
    if inp.paths.under(f"{SYSTEMD_DIR}/k3s-agent.service").exists():
        return "agent"
    return "server" if inp.paths.under(f"{SYSTEMD_DIR}/k3s.service").exists() else "agent"


def _gb(n: float) -> str:
    return f"{n / 10**9:.1f} GB"


def check_host(inp: CheckInput) -> list[Finding]:
    """CPU cores, memory and disk against the guide's minimums; arch, OS, kernel, cgroup v2."""
    host: HostFacts = inp.facts.host
    role = _role(inp)
    need = MINIMUMS[role]
    who = "a k3s server" if role == "server" else "an edge node (k3s agent)"
    found: list[Finding] = []
    if host.arch not in ("amd64", "arm64", "armv7"):
        found.append(
            Finding(
                "host.arch",
                "error",
                "host",
                f"architecture {host.arch} is not supported (amd64, arm64, armv7 are)",
                "run agentd on an amd64, arm64 or armv7 node",
            )
        )
    if host.cpus < need["cpus"]:
        found.append(
            Finding(
                "host.cpus",
                "warning",
                "host",
                f"{host.cpus} CPU core(s); {who} needs at least {need['cpus']}",
                f"give this node at least {need['cpus']} cores",
            )
        )
    if host.memory_bytes < need["memory"] * MEMORY_SLACK:
        found.append(
            Finding(
                "host.memory",
                "warning",
                "host",
                f"{host.memory_bytes / GIB:.1f} GiB of memory; {who} needs "
                f"{need['memory'] // GIB} GiB",
                f"give this node at least {need['memory'] // GIB} GiB of memory",
            )
        )
    if host.disk_total_bytes and host.disk_total_bytes < need["disk"] * 0.9:
        found.append(
            Finding(
                "host.disk-size",
                "warning",
                "host",
                f"the disk holding /var/lib is {_gb(host.disk_total_bytes)}; {who} needs "
                f"{_gb(need['disk'])}",
                "use a larger disk or SD card for /var/lib",
            )
        )
    if host.disk_total_bytes and host.disk_free_bytes < MIN_FREE_DISK:
        found.append(
            Finding(
                "host.disk-free",
                "error",
                "host",
                f"only {host.disk_free_bytes / GIB:.2f} GiB free where /var/lib is: downloads "
                "and image pulls will fail",
                "free space under /var/lib (old images: `k3s crictl rmi --prune`)",
            )
        )
    elif host.disk_total_bytes and host.disk_free_bytes < host.disk_total_bytes * 0.1:
        found.append(
            Finding(
                "host.disk-free",
                "warning",
                "host",
                f"{host.disk_free_bytes / GIB:.1f} GiB free where /var/lib is (under 10%)",
                "free space under /var/lib before it runs out",
            )
        )
    found += _kernel(host.kernel) + _os(host.os)
    if host.cgroup_v2 is False:
        found.append(
            Finding(
                "host.cgroup-v1",
                "warning",
                "host",
                "the node runs cgroup v1; crun's systemd cgroup driver and k3s expect cgroup v2",
                "boot with systemd.unified_cgroup_hierarchy=1 (the default on Debian 11+)",
            )
        )
    return found


def _kernel(release: str) -> list[Finding]:
    match = re.match(r"^(\d+)\.(\d+)", release)
    if not match:
        return []
    version = (int(match.group(1)), int(match.group(2)))
    if version < KERNEL_MINIMUM:
        return [
            Finding(
                "host.kernel",
                "error",
                "host",
                f"kernel {release} is older than 5.4, the oldest k3s + crun are supported on",
                "upgrade the kernel to 5.10 or later",
            )
        ]
    if version < KERNEL_RECOMMENDED:
        return [
            Finding(
                "host.kernel",
                "warning",
                "host",
                f"kernel {release} is older than 5.10, the recommended minimum",
                "upgrade the kernel to 5.10 or later",
            )
        ]
    return []


def _os(os_name: str) -> list[Finding]:
    parts = os_name.split()
    if not parts or parts[0] == "unknown":
        return []
    family = SUPPORTED_OS_ALIASES.get(parts[0], parts[0])
    minimum = SUPPORTED_OS.get(family)
    if minimum is None:
        return [
            Finding(
                "host.os",
                "warning",
                "host",
                f"{os_name} is not one of the systems k3s + WasmEdge are set up on here "
                "(Debian 11+, Ubuntu 20.04+, Raspberry Pi OS 11+, RHEL/CentOS 8+)",
                "expect to check each component by hand on this system",
            )
        ]
    if len(parts) > 1 and compare(parts[1], minimum) < 0:
        return [
            Finding(
                "host.os",
                "warning",
                "host",
                f"{os_name} is older than {family} {minimum}",
                f"upgrade to {family} {minimum} or later",
            )
        ]
    return []


# --- k3s ------------------------------------------------------------------------------------------


def _k3s_unit(inp: CheckInput) -> str:
    k3s = wanted(inp, "k3s")
    if k3s is not None:
        return K3S_UNITS[str(k3s.get("role", "server"))]
    agent = K3S_UNITS["agent"]
    return agent if inp.paths.under(f"{SYSTEMD_DIR}/{agent}").exists() else K3S_UNITS["server"]


def _last_line(result: CommandResult) -> str:
    lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
    return lines[-1].strip()[:300] if lines else f"exit code {result.returncode}"


class Kube:
    """`k3s kubectl` on this node (it finds the cluster through /etc/rancher/k3s/k3s.yaml)."""

    def __init__(self, inp: CheckInput, k3s: Path) -> None:
        self.inp = inp
        self.k3s = k3s

    def __call__(self, *args: str, stdin: Optional[bytes] = None, timeout: float = 20) -> Any:
        # Commands run without HOME: kubectl would keep its discovery cache in the working
        # directory. It goes to the state dir instead.
        cache = self.inp.paths.state_dir / "kube-cache"
        return self.inp.runner(
            [str(self.k3s), "kubectl", f"--cache-dir={cache}", *args],
            timeout,
            input_bytes=stdin,
        )

    def json(self, *args: str) -> tuple[Optional[dict[str, Any]], CommandResult]:
        result = self(*args, "-o", "json")
        if not result.ok:
            return None, result
        try:
            data = json.loads(result.stdout)
        except ValueError:
            return None, result
        return (data if isinstance(data, dict) else None), result


def check_k3s(inp: CheckInput) -> list[Finding]:
    """k3s installed, its unit active, the API answering, this node Ready. One finding when k3s
    is not there or not running, never a cascade of failures behind it."""
    paths, found = inp.paths, inp.facts.component("k3s")
    if not found.installed:
        if wanted(inp, "k3s") is not None:
            return [
                Finding(
                    "k3s.missing",
                    "error",
                    "k3s",
                    "k3s is in the desired state but not installed",
                    "let agentd converge (agentd apply)",
                    "converge",
                )
            ]
        return [
            Finding(
                "k3s.absent",
                "info",
                "k3s",
                "k3s is not installed: the cluster checks are skipped",
                "nothing to do unless this node should run k3s",
            )
        ]
    unit = _k3s_unit(inp)
    systemctl = paths.find_binary("systemctl")
    if systemctl is not None:
        state = inp.runner([str(systemctl), "is-active", unit], 10)
        active = state.stdout.strip() or "unknown"
        if active != "active":
            return [
                Finding(
                    "k3s.inactive",
                    "error",
                    "k3s",
                    f"{unit} is {active}: the cluster checks are skipped",
                    f"systemctl restart {unit}; see journalctl -u {unit}",
                    "restart:k3s",
                )
            ]
    if not paths.under("/etc/rancher/k3s/k3s.yaml").exists():
        inp.notes["api"] = False
        if unit == K3S_UNITS["agent"]:
            why, remedy = "a k3s agent has none", "nothing to do: a server checks the cluster"
        else:
            why = "k3s writes it at its first start"
            remedy = f"start k3s (systemctl start {unit}) if it has never run"
        return [
            Finding(
                "k3s.no-kubeconfig",
                "info",
                "k3s",
                f"no /etc/rancher/k3s/k3s.yaml ({why}): the API and node checks are skipped",
                remedy,
            )
        ]
    kube = Kube(inp, paths.under(found.path or "/usr/local/bin/k3s"))
    ready = kube("get", "--raw", "/readyz")
    if not ready.ok or ready.stdout.strip() != "ok":
        inp.notes["api"] = False
        return [
            Finding(
                "k3s.api-unreachable",
                "error",
                "k3s",
                f"the Kubernetes API does not answer: {_last_line(ready)}",
                f"check journalctl -u {unit}; the API server listens on 127.0.0.1:6443",
                "restart:k3s",
            )
        ]
    inp.notes["api"] = True
    inp.notes["kube"] = kube
    node, result = kube.json("get", "node", inp.node_name)
    if node is None:
        return [
            Finding(
                "k3s.node-missing",
                "error",
                "k3s",
                f"node {inp.node_name!r} is not in the cluster: {_last_line(result)}",
                "set health.nodeName in /etc/wasm-edge/agentd.yaml if k3s names this node "
                "otherwise (node-name in its config)",
            )
        ]
    inp.notes["node"] = node
    conditions = (node.get("status") or {}).get("conditions") or []
    ready_cond = next((c for c in conditions if c.get("type") == "Ready"), None)
    if ready_cond is None or ready_cond.get("status") != "True":
        why = (ready_cond or {}).get("message") or (ready_cond or {}).get("reason") or "unknown"
        return [
            Finding(
                "k3s.node-not-ready",
                "error",
                "k3s",
                f"node {inp.node_name} is not Ready: {why}",
                f"see kubectl describe node {inp.node_name} and journalctl -u {unit}",
            )
        ]
    return []


# --- crun -----------------------------------------------------------------------------------------


def crun_minimum(inp: CheckInput) -> str:
    crun = ((inp.desired or {}).get("components") or {}).get("crun")
    minimum = crun.get("minimumVersion") if isinstance(crun, Mapping) else None
    return str(minimum) if minimum else DEFAULT_CRUN_MINIMUM


def _template(paths: Paths) -> tuple[Optional[str], Optional[str]]:
    """(node path, text) of the containerd template agentd writes, whichever version exists."""
    for name in ("config-v3.toml.tmpl", "config.toml.tmpl"):
        node_path = f"{CONTAINERD_DIR}/{name}"
        try:
            return node_path, paths.under(node_path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
    return None, None


def _runtime_table(text: str) -> str:
    """The crun-wasm runtime's lines in a containerd template ("" when it has none)."""
    lines = text.splitlines()
    out: list[str] = []
    inside = False
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("["):
            inside = CRUN_WASM_RUNTIME in stripped
        if inside:
            out.append(stripped)
    return "\n".join(out)


def glob_match(pattern: str, name: str) -> bool:
    """Go's filepath.Match, which containerd uses for pod_annotations: `*` and `?` never match
    a `/` (so `*.wasm.*` does not let `module.wasm.image/variant` through)."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        elif c == "[":
            end = pattern.find("]", i + 2)
            if end == -1:
                return False  # Go: ErrBadPattern
            body = pattern[i + 1 : end]
            out += "[" + ("^" + body[1:] if body.startswith("^") else body) + "]"
            i = end
        else:
            out += re.escape(c)
        i += 1
    return re.fullmatch(out, name) is not None


def passes_wasm_annotation(table: str) -> bool:
    """Whether the runtime's pod_annotations let module.wasm.image/variant through to crun."""
    match = re.search(r"^pod_annotations\s*=\s*\[([^\]]*)\]", table, re.MULTILINE)
    if not match:
        return False
    patterns = re.findall(r'"([^"]*)"|\'([^\']*)\'', match.group(1))
    return any(glob_match(a or b, "module.wasm.image/variant") for a, b in patterns if a or b)


def _binary_name(table: str) -> Optional[str]:
    match = re.search(r'BinaryName\s*=\s*"([^"]+)"', table)
    return match.group(1) if match else None


def _crun_facts(inp: CheckInput) -> tuple[Optional[str], ComponentFacts]:
    """The crun containerd runs for Wasm pods (the template's BinaryName, else the first found)."""
    _, text = _template(inp.paths)
    named = _binary_name(_runtime_table(text)) if text else None
    detected = inp.facts.component("crun")
    if named is None or named == detected.path:
        return detected.path, detected
    from agentd.facts.detect import parse_crun_version  # noqa: PLC0415

    binary = inp.paths.under(named)
    if not binary.exists():
        return named, ComponentFacts(installed=False)
    result = inp.runner([str(binary), "--version"], 10)
    parsed = parse_crun_version(result.stdout) if result.ok else None
    if parsed is None:
        return named, ComponentFacts(installed=True, path=named, error=_last_line(result))
    return named, ComponentFacts(
        installed=True, path=named, version=parsed[0], commit=parsed[1], features=parsed[2]
    )


def libwasmedge_dirs(paths: Paths) -> list[Path]:
    """The directories the loader searches: ld.so.conf(.d) entries, then the default ones."""
    dirs: list[str] = []
    conf_files = [paths.under("/etc/ld.so.conf")]
    with contextlib.suppress(OSError):
        conf_files += sorted(paths.under("/etc/ld.so.conf.d").glob("*.conf"))
    for conf in conf_files:
        try:
            text = conf.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for raw in text.splitlines():
            entry = raw.split("#", 1)[0].strip()
            if entry.startswith("/"):
                dirs.append(entry)
    return [paths.under(d) for d in dict.fromkeys([*dirs, *LIBRARY_DIRS])]


def libwasmedge_found(inp: CheckInput) -> Optional[str]:
    for directory in libwasmedge_dirs(inp.paths):
        candidate = directory / "libwasmedge.so.0"
        if candidate.exists():
            return inp.paths.host_view(candidate)
    return None


def _crun_fix(inp: CheckInput) -> Optional[str]:
    return "reinstall:crun" if wanted(inp, "crun") is not None else None


def check_crun(inp: CheckInput) -> list[Finding]:
    """crun present, at least the minimum version, built with a Wasm handler, and able to load
    libwasmedge when that handler is wasmedge."""
    path, crun = _crun_facts(inp)
    inp.notes["crun"] = crun
    if not crun.installed:
        want = wanted(inp, "crun") is not None
        where = f" ({path}, named by the containerd template)" if path else ""
        return [
            Finding(
                "crun.missing",
                "error" if want else "warning",
                "crun",
                f"no crun{where}: Wasm pods cannot run",
                "install a crun built with Wasm support (components.crun in the desired state)",
                "converge" if want else None,
            )
        ]
    if crun.version is None:
        return [
            Finding(
                "crun.broken",
                "error",
                "crun",
                f"{path} does not run: {crun.error}",
                "reinstall crun",
                _crun_fix(inp),
            )
        ]
    found: list[Finding] = []
    minimum = crun_minimum(inp)
    if parse_version(minimum) is not None and compare(crun.version, minimum) < 0:
        found.append(
            Finding(
                "crun.too-old",
                "error",
                "crun",
                f"crun {crun.version} at {path} is older than the minimum {minimum} "
                "(components.crun.minimumVersion)",
                f"install crun {minimum} or later",
                _crun_fix(inp),
            )
        )
    handlers = crun.wasm_handlers
    if not handlers:
        shown = " ".join(f"+{f}" for f in crun.features) or "none"
        found.append(
            Finding(
                "crun.no-wasm",
                "error",
                "crun",
                f"crun {crun.version} at {path} was built without Wasm support (features: "
                f"{shown}; a Wasm build lists +WASM:wasmedge)",
                "install a crun built with WasmEdge (the distribution's crun has no Wasm)",
                _crun_fix(inp),
            )
        )
    elif "wasmedge" in handlers:
        library = libwasmedge_found(inp)
        if library is None:
            want = wanted(inp, "wasmedge") is not None
            found.append(
                Finding(
                    "crun.no-libwasmedge",
                    "error",
                    "crun",
                    f"crun {crun.version} runs Wasm with WasmEdge, but libwasmedge.so.0 is not "
                    "in any library directory: every Wasm pod fails to start",
                    "install WasmEdge (its library goes to /usr/local/lib) and run ldconfig",
                    "converge" if want else None,
                )
            )
        elif inp.paths.root == Path("/") and not _in_loader_cache(inp):
            found.append(
                Finding(
                    "crun.ldconfig",
                    "error",
                    "crun",
                    f"{library} exists but the loader's cache does not list it",
                    "run ldconfig",
                    "ldconfig",
                )
            )
    return found


def _in_loader_cache(inp: CheckInput) -> bool:
    result = inp.runner(["ldconfig", "-p"], 10)
    return not result.ok or "libwasmedge.so.0 " in result.stdout


# --- containerd -----------------------------------------------------------------------------------


def check_containerd(inp: CheckInput) -> list[Finding]:
    """The template k3s renders containerd's config from has the crun-wasm runtime, with the
    pod_annotations that carry module.wasm.image/variant to crun."""
    k3s = inp.facts.component("k3s")
    if not k3s.installed and wanted(inp, "k3s") is None:
        return []
    node_path, text = _template(inp.paths)
    if text is None:
        return [
            Finding(
                "containerd.no-runtime",
                "error",
                "containerd",
                f"no containerd template in {CONTAINERD_DIR}: containerd has no crun-wasm "
                "runtime, so Wasm pods run as native programs",
                "let agentd write it (agentd apply), then restart k3s",
                "converge",
            )
        ]
    table = _runtime_table(text)
    inp.notes["template"] = table
    if not table:
        return [
            Finding(
                "containerd.no-runtime",
                "error",
                "containerd",
                f"{node_path} has no {CRUN_WASM_RUNTIME} runtime",
                "let agentd rewrite it (agentd apply), then restart k3s",
                "converge",
            )
        ]
    if not passes_wasm_annotation(table):
        return [
            Finding(
                "containerd.no-annotations",
                "error",
                "containerd",
                f"the {CRUN_WASM_RUNTIME} runtime in {node_path} passes no "
                "module.wasm.image/* pod annotations: crun never sees the Wasm variant and runs "
                "the .wasm file as a native program (a failed pod, empty logs)",
                "let agentd rewrite the template (agentd apply), then restart k3s",
                "converge",
            )
        ]
    rendered = inp.paths.under(f"{CONTAINERD_DIR}/config.toml")
    if k3s.installed and rendered.exists():
        try:
            current = rendered.read_text(encoding="utf-8", errors="replace")
        except OSError:
            current = ""
        if CRUN_WASM_RUNTIME not in current:
            return [
                Finding(
                    "containerd.not-rendered",
                    "warning",
                    "containerd",
                    f"k3s has not rendered {node_path} into config.toml yet: it does so at start",
                    "restart k3s",
                    "restart:k3s",
                )
            ]
    return []


# --- WasmEdge -------------------------------------------------------------------------------------


def _wasmedge_fix(inp: CheckInput) -> Optional[str]:
    return "reinstall:wasmedge" if wanted(inp, "wasmedge") is not None else None


def check_wasmedge(inp: CheckInput) -> list[Finding]:
    """WasmEdge runs a tiny WASI program, and loads every plugin in its plugin directory."""
    wasmedge = inp.facts.component("wasmedge")
    desired = wanted(inp, "wasmedge")
    if not wasmedge.installed:
        if desired is not None:
            return [
                Finding(
                    "wasmedge.missing",
                    "error",
                    "wasmedge",
                    "WasmEdge is in the desired state but not installed",
                    "let agentd converge (agentd apply)",
                    "converge",
                )
            ]
        return []
    if wasmedge.version is None:
        return [
            Finding(
                "wasmedge.broken",
                "error",
                "wasmedge",
                f"{wasmedge.path} does not run: {wasmedge.error}",
                "reinstall WasmEdge",
                _wasmedge_fix(inp),
            )
        ]
    found = _run_probe(inp, wasmedge)
    runtime = wasmedge.version
    lists_plugins = compare(runtime, "0.14.0") >= 0
    for plugin in wasmedge.plugins:
        if not lists_plugins or plugin.version is not None:
            continue
        component = f"wasmedge/plugins/{plugin.name}"
        desired_names = {
            str(p.get("name"))
            for p in (desired.get("plugins") or [] if desired else [])
            if isinstance(p, Mapping) and p.get("state", "present") == "present"
        }
        found.append(
            Finding(
                "wasmedge.plugin-not-loaded",
                "error",
                component,
                f"WasmEdge {runtime} does not load {plugin.path}: a plugin built for another "
                "WasmEdge version is skipped without a word",
                f"install the {plugin.name} plugin built for WasmEdge {runtime}",
                f"reinstall:{component}" if plugin.name in desired_names else None,
            )
        )
    return found


def _run_probe(inp: CheckInput, wasmedge: ComponentFacts) -> list[Finding]:
    assert wasmedge.path is not None
    probe = inp.paths.state_dir / "probe" / "agentd-probe.wasm"
    try:
        if not probe.is_file() or probe.read_bytes() != probe_module():
            atomic_write(probe, probe_module(), 0o644)
    except OSError as exc:
        return [
            Finding(
                "wasmedge.probe-unwritable",
                "warning",
                "wasmedge",
                f"cannot write the probe program: {exc}",
                "check /var/lib/wasm-edge",
            )
        ]
    result = inp.runner([str(inp.paths.under(wasmedge.path)), str(probe)], 30)
    if result.ok and result.stdout.encode() == PROBE_OUTPUT:
        return []
    return [
        Finding(
            "wasmedge.probe-failed",
            "error",
            "wasmedge",
            f"WasmEdge {wasmedge.version} could not run a one-line WASI program: "
            f"{_last_line(result)}",
            "reinstall WasmEdge; run `wasmedge --version` by hand to see what fails",
            _wasmedge_fix(inp),
        )
    ]


# --- DNS in Wasm workloads ------------------------------------------------------------------------


def check_dns(inp: CheckInput) -> list[Finding]:
    """What makes name resolution fail inside Wasm workloads, checked from the node's side."""
    wasmedge = inp.facts.component("wasmedge")
    found: list[Finding] = []
    if wasmedge.installed and wasmedge.version:
        if compare(wasmedge.version, "0.10.0") < 0:
            found.append(
                Finding(
                    "dns.wasmedge-too-old",
                    "warning",
                    "wasmedge",
                    f"WasmEdge {wasmedge.version} predates sock_getaddrinfo, which the "
                    "wasmedge_wasi_socket crate calls to resolve names: DNS fails in guests",
                    "install WasmEdge 0.13.5 or later. " + NO_SOCKET_PLUGIN,
                )
            )
        elif compare(wasmedge.version, "0.12.0") == 0:
            found.append(
                Finding(
                    "dns.wasmedge-0.12.0",
                    "warning",
                    "wasmedge",
                    "WasmEdge 0.12.0's getaddrinfo is broken (WasmEdge issue 2440): name "
                    "lookups fail in guests",
                    "install WasmEdge 0.12.1 or later. " + NO_SOCKET_PLUGIN,
                )
            )
    resolv = _resolv_conf(inp)
    if resolv is not None and not inp.paths.under(resolv).exists():
        found.append(
            Finding(
                "dns.no-resolv-conf",
                "error",
                "host",
                f"{resolv} does not exist: the kubelet copies it into every pod's sandbox, and "
                "a Wasm guest reads its DNS servers there",
                f"create {resolv} (or point k3s's resolv-conf at one). " + NO_SOCKET_PLUGIN,
            )
        )
    return found


def _resolv_conf(inp: CheckInput) -> Optional[str]:
    """The resolv.conf the kubelet hands to pods: k3s's resolv-conf setting, else the host's."""
    k3s = wanted(inp, "k3s")
    config = k3s.get("config") if k3s is not None else None
    if isinstance(config, Mapping) and isinstance(config.get("resolv-conf"), str):
        return str(config["resolv-conf"])
    try:
        text = inp.paths.under(K3S_CONFIG).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    match = re.search(r"^resolv-conf:\s*['\"]?([^'\"\s]+)", text, re.MULTILINE)
    if match:
        return match.group(1)
    if not inp.facts.component("k3s").installed and k3s is None:
        return None
    return "/etc/resolv.conf"


# --- the Wasm workload probe ----------------------------------------------------------------------


def _runtime_class(inp: CheckInput) -> Optional[str]:
    """agentd's probe RuntimeClass (crun-wasm, no node selector) where the node's manifest has
    it, else the first crun-wasm RuntimeClass of the desired state."""
    try:
        text = inp.paths.under(RUNTIMECLASS_MANIFEST).read_text(encoding="utf-8")
    except OSError:
        text = ""
    if re.search(rf"^\s*name:\s*{PROBE_RUNTIME_CLASS}\s*$", text, re.MULTILINE):
        return PROBE_RUNTIME_CLASS
    for rc in (inp.desired or {}).get("runtimeClasses") or []:
        if isinstance(rc, Mapping) and rc.get("handler") == CRUN_WASM_RUNTIME:
            return str(rc.get("name"))
    return None


def probe_manifest(name: str, namespace: str, runtime_class: str, node: str, image: str) -> str:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "agentd"},
            # crun picks its Wasm handler by this annotation (compat-smart: for a .wasm command).
            "annotations": {"module.wasm.image/variant": "compat-smart"},
        },
        "spec": {
            "runtimeClassName": runtime_class,
            "nodeName": node,
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "probe",
                    "image": image,
                    "command": ["/probe.wasm"],
                    # An edge node may be offline: use the image it has (`k3s ctr images
                    # import`), pull only when it has none.
                    "imagePullPolicy": "IfNotPresent",
                }
            ],
        },
    }
    return json.dumps(pod)


def check_workload(inp: CheckInput, findings: Sequence[Finding]) -> list[Finding]:
    """Run a Wasm pod on this node; empty logs are traced to their real cause, in order."""
    kube = inp.notes.get("kube")
    if inp.probe_image is None or not isinstance(kube, Kube):
        return []
    runtime_class = _runtime_class(inp)
    if runtime_class is None:
        return [
            Finding(
                "wasm.no-runtimeclass",
                "warning",
                "k3s",
                f"no RuntimeClass with handler {CRUN_WASM_RUNTIME}: the Wasm probe cannot run",
                "add one to runtimeClasses in the desired state",
            )
        ]
    name = f"{PROBE_POD}-{re.sub(r'[^a-z0-9-]', '-', inp.node_name.lower())}"[:63].strip("-")
    ns = inp.probe_namespace
    kube("delete", "pod", name, "-n", ns, "--ignore-not-found", "--wait=false")
    manifest = probe_manifest(name, ns, runtime_class, inp.node_name, inp.probe_image)
    created = kube("create", "--validate=false", "-f", "-", stdin=manifest.encode())
    if not created.ok:
        return [
            Finding(
                "wasm.probe-rejected",
                "error",
                "k3s",
                f"the Wasm probe pod was refused: {_last_line(created)}",
                f"check RuntimeClass {runtime_class} and the probe image",
            )
        ]
    try:
        pod = _wait_terminal(kube, name, ns, inp.probe_timeout)
        logs = kube("logs", name, "-n", ns)
    finally:
        kube("delete", "pod", name, "-n", ns, "--ignore-not-found", "--wait=false")
    phase = ((pod or {}).get("status") or {}).get("phase", "Unknown")
    if phase == "Succeeded" and logs.ok and logs.stdout.encode().strip() == PROBE_OUTPUT.strip():
        return []
    if phase not in ("Succeeded", "Failed"):
        return [
            Finding(
                "wasm.probe-stuck",
                "warning",
                "k3s",
                f"the Wasm probe pod is still {phase} after {inp.probe_timeout:g}s",
                f"kubectl describe pod {name} -n {ns} (image pull, scheduling)",
            )
        ]
    lines = logs.stdout.strip().splitlines() if logs.ok else []
    return [_empty_logs(findings, phase, pod or {}, lines[-1][:300] if lines else "")]


def _wait_terminal(kube: Kube, name: str, ns: str, timeout: float) -> Optional[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    pod: Optional[dict[str, Any]] = None
    while True:
        pod, _ = kube.json("get", "pod", name, "-n", ns)
        phase = ((pod or {}).get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed") or time.monotonic() >= deadline:
            return pod
        time.sleep(1.0)


def _empty_logs(
    findings: Sequence[Finding], phase: str, pod: dict[str, Any], output: str
) -> Finding:
    """The guide's "kubectl logs is empty": the probe's line never came. Traced through the real
    causes in order; crun's own error line, when it left one, is quoted."""
    said = f" (its log: {output})" if output else " with empty logs"
    by_code = {f.code: f for f in findings}
    causes = (
        ("crun.no-wasm", "crun has no Wasm support"),
        ("containerd.no-annotations", "containerd does not pass the Wasm annotations to crun"),
        ("containerd.no-runtime", "containerd has no crun-wasm runtime"),
        ("crun.no-libwasmedge", "crun cannot load libwasmedge.so.0"),
        ("crun.ldconfig", "crun cannot load libwasmedge.so.0 (the loader cache is stale)"),
        ("crun.too-old", "crun is older than the minimum"),
    )
    for code, cause in causes:
        if code in by_code:
            source = by_code[code]
            return Finding(
                "wasm.empty-logs",
                "error",
                source.component,
                f"the Wasm probe pod {phase.lower()}{said} because {cause}: {source.message}",
                source.remedy,
                source.fix,
            )
    state = _terminated(pod)
    return Finding(
        "wasm.empty-logs",
        "error",
        "k3s",
        f"the Wasm probe pod {phase.lower()}{said}, and none of the known causes (crun without "
        f"Wasm, annotations not passed, libwasmedge missing, crun too old) is present: {state}",
        "check that the probe image's /probe.wasm prints the probe line "
        "(`agentd probe-wasm > probe.wasm` writes agentd's)",
    )


def _terminated(pod: dict[str, Any]) -> str:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        term = (status.get("state") or {}).get("terminated")
        if term:
            return (
                f"exit code {term.get('exitCode')} ({term.get('reason') or 'no reason'}) "
                f"{term.get('message') or ''}".strip()
            )
    return "no container status"


# --- all of them ----------------------------------------------------------------------------------

CHECKS: tuple[Callable[[CheckInput], list[Finding]], ...] = (
    check_host,
    check_k3s,
    check_crun,
    check_containerd,
    check_wasmedge,
    check_dns,
)


def run_checks(inp: CheckInput) -> list[Finding]:
    """Every check in order, then the workload probe, which explains with the others' findings."""
    findings: list[Finding] = []
    for check in CHECKS:
        findings += check(inp)
    findings += check_workload(inp, findings)
    return findings


def healthy(findings: Sequence[Finding]) -> bool:
    return not any(f.unhealthy for f in findings)


WASM_STACK = ("crun", "containerd", "wasmedge")


def wasm_ready(findings: Sequence[Finding]) -> bool:
    """Whether Wasm pods can run here: nothing wrong with crun, containerd, WasmEdge or a
    workload probe (the node label follows this)."""
    return not any(
        f.unhealthy and (f.component in WASM_STACK or f.code.startswith(("wasm.", "crun.")))
        for f in findings
    )
