"""The WasmEdge checks: it runs a WASI probe and loads its plugins; what breaks DNS in guests."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Optional

from agentd.core.paths import K3S_CONFIG
from agentd.core.versions import compare
from agentd.facts.model import ComponentFacts
from agentd.health.findings import CheckInput, Finding, last_line, wanted
from agentd.health.probe import PROBE_OUTPUT, probe_module
from agentd.system.files import atomic_write

NO_SOCKET_PLUGIN = (
    "There is no WasmEdge socket plugin to install: sockets and DNS are built into WasmEdge's "
    "WASI. A guest resolves names only if it was built with the wasmedge_wasi_socket crate (a "
    "plain wasm32-wasi build has no DNS), and it reads the DNS servers from /etc/resolv.conf in "
    "its sandbox."
)


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
    if wasmedge.load_errors:
        # WasmEdge still runs and says its version; only these lines name what did not load
        # (a file that is no shared object, or a plugin whose own library is missing).
        found.append(
            Finding(
                "wasmedge.plugin-load-failed",
                "warning",
                "wasmedge",
                f"{wasmedge.path} {wasmedge.version} cannot load a plugin: "
                + "; ".join(wasmedge.load_errors),
                "remove the file named, or install the library it needs",
                None,
            )
        )
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
            f"{last_line(result)}",
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
