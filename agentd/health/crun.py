"""The crun check: present, new enough, built with Wasm, able to load libwasmedge."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

from agentd.core.paths import Paths
from agentd.core.versions import compare, parse_version
from agentd.facts.model import ComponentFacts
from agentd.health.containerd import binary_name, containerd_template, runtime_table
from agentd.health.findings import CheckInput, Finding, last_line, wanted

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
