"""The WasmEdge checks: it runs a WASI probe and loads its plugins; what breaks DNS in guests."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Optional

from agentd.core.paths import K3S_CONFIG
from agentd.core.versions import compare
from agentd.facts.configs import MAX_CONFIG_BYTES
from agentd.facts.detect import without_wasmedge_log_lines
from agentd.facts.model import ComponentFacts
from agentd.health.crun import ldconfig_finding, libwasmedge_found
from agentd.health.findings import CheckInput, Finding, last_line, wanted
from agentd.health.probe import PROBE_OUTPUT, probe_module
from agentd.system.commands import node_commands
from agentd.system.files import atomic_write, read_bytes_limited
from agentd.system.readfile import read_text_bounded

NO_SOCKET_PLUGIN = (
    "There is no WasmEdge socket plugin to install: sockets and DNS are built into WasmEdge's "
    "WASI. A guest resolves names only if it was built with the wasmedge_wasi_socket crate (a "
    "plain wasm32-wasi build has no DNS), and it reads the DNS servers from /etc/resolv.conf in "
    "its sandbox."
)


def _wasmedge_fix(inp: CheckInput) -> Optional[str]:
    return "reinstall:wasmedge" if wanted(inp, "wasmedge") is not None else None


def _unfound_library(inp: CheckInput, wasmedge: ComponentFacts) -> Optional[str]:
    """libwasmedge.so.0 where it is on disk, when the loader does not find it from there (its
    cache is stale or missing): then ldconfig, not a reinstall, is what WasmEdge needs."""
    library = libwasmedge_found(inp, wasmedge.path)
    if library is None or not node_commands(inp.paths).as_node:
        return None
    return library if ldconfig_finding(inp, wasmedge.path, library) is not None else None


def _failure(inp: CheckInput, wasmedge: ComponentFacts, code: str, said: str) -> Finding:
    library = _unfound_library(inp, wasmedge)
    if library is not None:
        return Finding(
            code,
            "error",
            "wasmedge",
            f"{said}: {library} is there but the loader does not find it (its cache is stale "
            "or missing)",
            "run ldconfig",
            "ldconfig",
        )
    remedy = "reinstall WasmEdge"
    if code == "wasmedge.probe-failed":
        remedy += "; run `wasmedge --version` by hand to see what fails"
    return Finding(code, "error", "wasmedge", said, remedy, _wasmedge_fix(inp))


def check_wasmedge(inp: CheckInput) -> list[Finding]:
    """WasmEdge runs a tiny WASI program, and loads every plugin in its plugin directory."""
    wasmedge = inp.facts.component("wasmedge")
    desired = wanted(inp, "wasmedge")
    if not wasmedge.installed:
        # On armv7 the plan refuses WasmEdge (no build exists); host.armv7-no-wasm says so, and
        # a "converge" fix here would be tried, and fail to help, on every health cycle.
        if desired is not None and inp.facts.host.arch != "armv7":
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
            _failure(
                inp, wasmedge, "wasmedge.broken", f"{wasmedge.path} does not run: {wasmedge.error}"
            )
        ]
    found = _run_probe(inp, wasmedge)
    failed = failed_plugins(inp, wasmedge)
    found += [f for _, f in failed]
    explained = {path for paths_, _ in failed for path in paths_}
    runtime = wasmedge.version
    lists_plugins = compare(runtime, "0.14.0") >= 0
    for plugin in wasmedge.plugins:
        if not lists_plugins or plugin.version is not None or plugin.path in explained:
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


# "load library failed:<file, or the library a plugin needs>: <the loader's reason>"
_LOAD_FAILED_RE = re.compile(r"^load library failed:(.+?): (.+)$")


def failed_plugins(inp: CheckInput, wasmedge: ComponentFacts) -> list[tuple[list[str], Finding]]:
    """One warning per plugin-load failure WasmEdge logged, with the plugin files it concerns.

    WasmEdge still runs and says its version; only its error lines say what did not load. A
    file that is no shared object is named (`...:/usr/lib/x86_64-linux-gnu/wasmedge/x.so: file
    too short`); a plugin whose own library is missing is not, only that library is
    (`...:libagentde2edep.so: cannot open shared object file`, tests/fixtures/real/): then the
    plugin files that list it among their libraries, and cannot get it, are named."""
    from agentd.facts.loader import needs_missing  # noqa: PLC0415

    found: list[tuple[list[str], Finding]] = []
    head = f"{wasmedge.path} {wasmedge.version}"
    for error in wasmedge.load_errors:
        match = _LOAD_FAILED_RE.match(error)
        if match is None:
            continue
        what, why = match.groups()
        if what.startswith("/"):
            message = f"{head} cannot load the plugin {what}: {why}"
            remedy = f"remove {what}, or put the plugin built for WasmEdge {wasmedge.version} there"
            found.append(([what], _load_failed(message, remedy)))
            continue
        suspects = [
            p.path
            for p in wasmedge.plugins
            if p.version is None and needs_missing(inp.paths, inp.paths.under(p.path), what)
        ]
        said = f'WasmEdge says "{error}"'
        if suspects:
            named = ", ".join(suspects)
            message = (
                f"{head} cannot load the plugin {named}, which needs {what}: {said}, naming only "
                "the library"
            )
            remedy = f"install {what} where the loader finds it (then ldconfig), or remove {named}"
        else:
            message = (
                f"{head} cannot load a plugin that needs {what}: {said}. It does not name the "
                f"plugin file, and none of its plugin files lists {what} among its own libraries "
                "(a library of theirs may need it)"
            )
            remedy = (
                f"install {what} where the loader finds it (then ldconfig), or remove the plugin "
                "that needs it (`ldd` on each file in WasmEdge's plugin directory shows which)"
            )
        found.append((suspects, _load_failed(message, remedy)))
    # "loading failed: invalid path, Code: 0x100" comes with every failure above; anything else
    # is said as WasmEdge said it.
    rest = [e for e in wasmedge.load_errors if not _LOAD_FAILED_RE.match(e)]
    if rest and (not found or any(not e.startswith("loading failed:") for e in rest)):
        message = f"{head} cannot load a plugin: " + "; ".join(rest)
        remedy = "remove the file named, or install the library it needs"
        found.append(([], _load_failed(message, remedy)))
    return found


def _load_failed(message: str, remedy: str) -> Finding:
    return Finding("wasmedge.plugin-load-failed", "warning", "wasmedge", message, remedy, None)


def _run_probe(inp: CheckInput, wasmedge: ComponentFacts) -> list[Finding]:
    assert wasmedge.path is not None
    probe = inp.paths.state_dir / "probe" / "agentd-probe.wasm"
    module = probe_module()
    try:
        if not probe.is_file() or read_bytes_limited(probe, len(module), follow=False) != module:
            atomic_write(probe, module, 0o644)
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
    # A plugin WasmEdge cannot load is logged on stdout before the program's own output, on
    # every run (tests/fixtures/real/): that is reported once, as wasmedge.plugin-load-failed.
    printed = without_wasmedge_log_lines(result.stdout)
    if result.ok and printed.encode() == PROBE_OUTPUT:
        return []
    said = f"WasmEdge {wasmedge.version} could not run a one-line WASI program: {last_line(result)}"
    return [_failure(inp, wasmedge, "wasmedge.probe-failed", said)]


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
        text = read_text_bounded(inp.paths.under(K3S_CONFIG), MAX_CONFIG_BYTES)
    except OSError:
        text = ""
    match = re.search(r"^resolv-conf:\s*['\"]?([^'\"\s]+)", text, re.MULTILINE)
    if match:
        return match.group(1)
    if not inp.facts.component("k3s").installed and k3s is None:
        return None
    return "/etc/resolv.conf"
