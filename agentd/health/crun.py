"""The crun check: present, new enough, built with Wasm, able to load libwasmedge."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

from agentd.core.versions import compare, parse_version
from agentd.facts.loader import find_library, parse_ldconfig_cache
from agentd.facts.model import ComponentFacts
from agentd.health.containerd import binary_name, containerd_template, runtime_table
from agentd.health.findings import CheckInput, Finding, last_line, wanted
from agentd.system.commands import node_commands

DEFAULT_CRUN_MINIMUM = "1.8.5"  # the guide's figure; a setting of the desired state


def crun_minimum(inp: CheckInput) -> str:
    crun = ((inp.desired or {}).get("components") or {}).get("crun")
    minimum = crun.get("minimumVersion") if isinstance(crun, Mapping) else None
    return str(minimum) if minimum else DEFAULT_CRUN_MINIMUM


def _crun_facts(inp: CheckInput) -> tuple[Optional[str], ComponentFacts]:
    """The crun containerd runs for Wasm pods (the template's BinaryName, else the first found)."""
    _, text = containerd_template(inp.paths)
    named = binary_name(runtime_table(text)) if text else None
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
        return named, ComponentFacts(installed=True, path=named, error=last_line(result))
    return named, ComponentFacts(
        installed=True, path=named, version=parsed[0], commit=parsed[1], features=parsed[2]
    )


LIBWASMEDGE = "libwasmedge.so.0"


def libwasmedge_found(inp: CheckInput, crun: Optional[str] = None) -> Optional[str]:
    """Where crun (at node path `crun`) would load libwasmedge.so.0 from once ldconfig has run:
    its own RUNPATH, ld.so.conf's directories, /usr/local/lib, the system dirs."""
    binary = inp.paths.under(crun) if crun else None
    found = find_library(inp.paths, LIBWASMEDGE, binary)
    return inp.paths.host_view(found) if found is not None else None


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
                _no_wasm_remedy(path, crun),
                _crun_fix(inp),
            )
        )
    elif "wasmedge" in handlers:
        library = libwasmedge_found(inp, path)
        if library is None:
            found.append(_no_libwasmedge(inp, path, crun))
        elif node_commands(inp.paths).as_node:
            # `ldconfig -p` reads the cache of the root it runs in: this host's, or a real OS
            # tree's when agentd runs the tree's programs inside it; of a sandbox, nothing.
            late = ldconfig_finding(inp, path, library)
            if late is not None:
                found.append(late)
    return found


def _no_wasm_remedy(path: Optional[str], crun: ComponentFacts) -> str:
    remedy = "install a crun built with WasmEdge (components.crun; it goes to /usr/local/bin)"
    if crun.managed:
        return remedy
    # Whether a distribution's crun has Wasm depends on the release: Debian 12's crun 1.8.1 has
    # none, Debian 13's 1.21 has +WASM:wasmedge (tests/fixtures/real/crun_version_debian1*).
    return f"{remedy}: the crun at {path}, from the distribution or another tool, has no Wasm"


def _no_libwasmedge(inp: CheckInput, path: Optional[str], crun: ComponentFacts) -> Finding:
    """A Wasm crun without its library: crun dlopens libwasmedge.so.0 only when a Wasm container
    starts, so `crun --version` works and every Wasm pod fails with crun's `could not load
    `libwasmedge.so.0`` (tests/fixtures/real/crun_run_wasm_no_libwasmedge). Debian 13's crun
    1.21 is such a crun: built with +WASM:wasmedge, it only Suggests libwasmedge0."""
    want = wanted(inp, "wasmedge") is not None
    if crun.managed:
        remedy = "install WasmEdge (components.wasmedge; its library goes to /usr/local/lib)"
    else:
        remedy = (
            "install the distribution's WasmEdge library (Debian 13: `apt-get install "
            "libwasmedge0`; its crun only Suggests it), or WasmEdge itself (components.wasmedge"
            "; its library goes to /usr/local/lib)"
        )
    crun_wanted = wanted(inp, "crun") or {}
    note = ""
    if crun_wanted.get("source") == "package" and not want:
        note = (
            "; components.crun.source: package installs the distribution's crun, not the "
            "library its Wasm handler loads"
        )
    return Finding(
        "crun.no-libwasmedge",
        "error",
        "crun",
        f"crun {crun.version} at {path} is built with +WASM:wasmedge and loads libwasmedge.so.0 "
        "only when a Wasm container starts, but no library directory has it: `crun --version` "
        'works, and every Wasm pod fails with crun\'s "could not load `libwasmedge.so.0`"' + note,
        f"{remedy}, then run ldconfig",
        "converge" if want else None,
    )


def ldconfig_finding(inp: CheckInput, crun: Optional[str], library: str) -> Optional[Finding]:
    """Whether crun (at node path `crun`) finds `library` at run time, asking `ldconfig -p`
    when the answer depends on the loader's cache.

    The loader searches crun's RUNPATH and the system dirs (Debian's multiarch dirs among
    them) with or without /etc/ld.so.cache: crun runs a Wasm container with no cache at all
    when libwasmedge is there (tests/fixtures/real/crun_run_wasm_no_cache). Any other directory
    (agentd's /usr/local/lib, one from ld.so.conf) is found only through the cache
    (tests/fixtures/real/crun_run_wasm_lib_in_usr_local_no_cache)."""
    binary = inp.paths.under(crun) if crun else None
    if find_library(inp.paths, LIBWASMEDGE, binary, cache=False) is not None:
        return None
    cache = inp.runner(["ldconfig", "-p"], 10)
    state = parse_ldconfig_cache(cache, (LIBWASMEDGE,))
    if state in ("listed", "unknown"):
        return None
    where = library.rsplit("/", 1)[0]
    if state == "no-cache":
        said = "".join(cache.stderr.strip().splitlines())
        message = (
            f"{library} exists, but there is no loader cache (`ldconfig -p`: {said}), and "
            f"without one the loader does not search {where}: every Wasm pod fails with crun's "
            '"could not load `libwasmedge.so.0`"'
        )
    else:
        message = f"{library} exists but the loader's cache does not list it"
    return Finding("crun.ldconfig", "error", "crun", message, "run ldconfig", "ldconfig")
