"""The containerd check: the template's crun-wasm runtime, and the pod annotations it passes."""

from __future__ import annotations

import re
from typing import Optional

from agentd.core.paths import CONTAINERD_DIR, CRUN_WASM_RUNTIME, Paths
from agentd.facts.configs import MAX_CONFIG_BYTES
from agentd.health.findings import CheckInput, Finding, wanted
from agentd.system.readfile import read_text_bounded


def containerd_template(paths: Paths) -> tuple[Optional[str], Optional[str]]:
    """(node path, text) of the containerd template agentd writes, whichever version exists."""
    for name in ("config-v3.toml.tmpl", "config.toml.tmpl"):
        node_path = f"{CONTAINERD_DIR}/{name}"
        try:
            return node_path, read_text_bounded(paths.under(node_path), MAX_CONFIG_BYTES)
        except OSError:
            continue
    return None, None


def runtime_table(text: str) -> str:
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


def binary_name(table: str) -> Optional[str]:
    """The crun the runtime table names (its BinaryName option), if it names one."""
    match = re.search(r'BinaryName\s*=\s*"([^"]+)"', table)
    return match.group(1) if match else None


def check_containerd(inp: CheckInput) -> list[Finding]:
    """The template k3s renders containerd's config from has the crun-wasm runtime, with the
    pod_annotations that carry module.wasm.image/variant to crun."""
    k3s = inp.facts.component("k3s")
    if not k3s.installed and wanted(inp, "k3s") is None:
        return []
    node_path, text = containerd_template(inp.paths)
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
    table = runtime_table(text)
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
            current = read_text_bounded(rendered, MAX_CONFIG_BYTES)
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
