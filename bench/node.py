"""The benchmark's node: stand-in releases on a local mirror, its desired state, and agentd."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.standins import node_arch  # noqa: E402

ARCH = node_arch()
STATE_DIR = "var/lib/wasm-edge"
# What agentd keeps for itself under a root (its state, cache and kept versions; its metrics), and
# where the playbook keeps its downloads: neither is part of the node state the two tools build.
AGENTD_OWN = (STATE_DIR, "var/lib/prometheus")
ANSIBLE_OWN = ("var/cache/ansible-bench",)


def agentd_argv() -> list[str]:
    """agentd as a node starts it: the console script beside this interpreter (else -m)."""
    script = Path(sys.executable).with_name("agentd")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "agentd"]


def apply_args(root: Path, desired: Path) -> list[str]:
    """The arguments of one `agentd apply` of `desired` on the sandbox `root` (JSON result)."""
    return [
        "--root",
        str(root),
        "--log-format",
        "json",
        "apply",
        "--desired",
        str(desired),
        "--json",
    ]


def apply_argv(root: Path, desired: Path) -> list[str]:
    """One `agentd apply` of `desired` on the sandbox `root`, its result as JSON on stdout."""
    return [*agentd_argv(), *apply_args(root, desired)]


def forget_noop(root: Path) -> None:
    """Drop the stored no-op digest, so the next apply loads, detects and plans in full."""
    state_file = root / STATE_DIR / "state.json"
    state = json.loads(state_file.read_text())
    state["noop"] = None
    state_file.write_text(json.dumps(state))


def _file_name(url: str) -> str:
    return unquote(urlsplit(url).path.rsplit("/", 1)[-1])


def ansible_vars(doc: dict[str, Any], root: Path) -> dict[str, Any]:
    """The playbook's variables for agentd's desired state `doc`: the same URLs and checksums."""
    parts = doc["components"]

    def pinned(section: dict[str, Any]) -> dict[str, str]:
        artifact = section["artifacts"][ARCH]
        return {"url": artifact["url"], "sha256": artifact["sha256"]}

    wasmedge = parts["wasmedge"]
    return {
        "root": str(root),
        "crun": {**pinned(parts["crun"]), "version": parts["crun"]["version"]},
        "k3s": {**pinned(parts["k3s"]), "version": parts["k3s"]["version"]},
        "wasmedge": {
            **pinned(wasmedge),
            "version": wasmedge["version"],
            "file": _file_name(wasmedge["artifacts"][ARCH]["url"]),
            "top": f"WasmEdge-{wasmedge['version']}-Linux",
        },
        "plugins": [
            {
                "name": plugin["name"],
                **pinned(plugin),
                "file": _file_name(plugin["artifacts"][ARCH]["url"]),
            }
            for plugin in wasmedge.get("plugins", [])
        ],
        "ansible_python_interpreter": sys.executable,
    }


def node_files(root: Path, skip: tuple[str, ...]) -> dict[str, tuple[str, str, int]]:
    """Every file and symlink under `root` but `skip`: (kind, sha256 or link target, mode)."""
    found: dict[str, tuple[str, str, int]] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if any(rel == s or rel.startswith(s + "/") for s in skip):
            continue
        if path.is_symlink():
            found[rel] = ("symlink", os.readlink(path), 0)
        elif path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found[rel] = ("file", digest, path.stat().st_mode & 0o7777)
    return found


def differences(
    a: dict[str, tuple[str, str, int]], b: dict[str, tuple[str, str, int]]
) -> list[str]:
    """What differs between two `node_files` listings, one line each."""
    out = [f"only in the first: {p}" for p in sorted(a.keys() - b.keys())]
    out += [f"only in the second: {p}" for p in sorted(b.keys() - a.keys())]
    for p in sorted(a.keys() & b.keys()):
        if a[p] != b[p]:
            out.append(
                f"differs: {p}: {a[p][0]} {a[p][1][:16]} {a[p][2]:o} vs "
                f"{b[p][0]} {b[p][1][:16]} {b[p][2]:o}"
            )
    return out
