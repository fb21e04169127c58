"""`agentd --root TREE` over the real Debian 13 Wasm tree, run from this host: the real answers."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

from agentd.system.host import Host
from tests.e2e import wasmhost

REPO = Path(__file__).resolve().parents[2]
WORK_DIR = REPO / "build" / "e2e-root-tree"
MULTIARCH_LIB = "usr/lib/x86_64-linux-gnu"
# A check of the tree may warn about this host (cgroup v1, no k3s); these say a real program
# was misread, or that the loader cache agentd refreshed is not the one the check reads.
WRONG = {"crun.broken", "wasmedge.broken", "wasmedge.probe-failed", "crun.ldconfig"}


class RootTreeError(AssertionError):
    """agentd under --root did not give the tree's real answer."""


def agentd(tree: Path, *argv: str, user: Optional[str] = None) -> dict[str, Any]:
    """`python3 -m agentd --root TREE ARGV --json`, its JSON; as `user` (a uid) through setpriv
    and the system's python3, which the unprivileged user can read."""
    python = [sys.executable]
    if user is not None:
        python = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "python3"]
    result = subprocess.run(
        [*python, "-m", "agentd", "--root", str(tree), *argv, "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(REPO), "LC_ALL": "C"},
        timeout=300,
        check=False,
    )
    try:
        doc = json.loads(result.stdout)
    except ValueError as exc:
        raise RootTreeError(
            f"agentd {' '.join(argv)} (exit {result.returncode}) printed no JSON: "
            f"{(result.stdout + result.stderr).strip()[-2000:]}"
        ) from exc
    if not isinstance(doc, dict):
        raise RootTreeError(f"agentd {' '.join(argv)} printed {doc!r}")
    return doc


def _forget_versions(tree: Path) -> None:
    # Each step must run the tree's programs, not read what an earlier step cached.
    (tree / "var/lib/wasm-edge/facts-cache.json").unlink(missing_ok=True)


def expect(condition: bool, what: str, doc: Any) -> None:
    if not condition:
        raise RootTreeError(f"{what}:\n{json.dumps(doc, indent=1)[-3000:]}")


def expect_real_stack(tree: Path, wasmedge_path: str) -> None:
    """detect: crun 1.21 with +WASM:wasmedge and WasmEdge 0.14.1; check: none of WRONG."""
    _forget_versions(tree)
    facts = agentd(tree, "detect")
    crun, wasmedge = facts["components"]["crun"], facts["components"]["wasmedge"]
    expect(crun.get("version") == "1.21", "crun is not 1.21", crun)
    expect("WASM:wasmedge" in crun.get("features", []), "crun has no +WASM:wasmedge", crun)
    expect(wasmedge.get("version") == "0.14.1", "WasmEdge is not 0.14.1", wasmedge)
    expect(wasmedge.get("path") == wasmedge_path, f"WasmEdge is not {wasmedge_path}", wasmedge)
    check = agentd(tree, "check")
    codes = {f["code"] for f in check["findings"]}
    expect(not codes & WRONG, f"the check found {sorted(codes & WRONG)}", check)
    expect(check["wasmReady"] is True, "the check says Wasm is not ready", check)


def expect_debian_stack(tree: Path) -> None:
    """Debian's own WasmEdge (/usr/bin, its library in the multiarch directory) and crun."""
    expect_real_stack(tree, "/usr/bin/wasmedge")


def expect_not_root_says_why(tree: Path) -> None:
    """As an unprivileged user agentd cannot chroot: the error says so, never just "broken"."""
    _forget_versions(tree)
    facts = agentd(tree, "detect", user="65534")
    for name in ("crun", "wasmedge"):
        error = str(facts["components"][name].get("error"))
        expect(f"not run inside {tree} (chroot needs root)" in error, f"{name}: {error}", facts)


def install_like_agentd(tree: Path) -> None:
    """WasmEdge as agentd installs it (bin to /usr/local/bin, the library to /usr/local/lib,
    found through the loader's cache only) on a tree without Debian's libwasmedge0: its
    library gone and the tree's cache rebuilt without it, as dpkg's ldconfig trigger does."""
    held = tree.parent / "libwasmedge"
    held.mkdir(exist_ok=True)
    for library in sorted((tree / MULTIARCH_LIB).glob("libwasmedge.so*")):
        library.rename(held / library.name)
    wasmhost.run(tree, ["ldconfig"], check=True)
    shutil.copy2(tree / "usr/bin/wasmedge", tree / "usr/local/bin/wasmedge")
    for library in sorted(held.iterdir()):
        library.rename(tree / "usr/local/lib" / library.name)
    held.rmdir()


def expect_ldconfig_visible(tree: Path) -> None:
    """WasmEdge installed as agentd does: before ldconfig the tree's wasmedge cannot load its
    library and the check says the cache is stale; after the run's ldconfig (recorded, and run
    in the tree) both are right."""
    install_like_agentd(tree)
    _forget_versions(tree)
    wasmedge = agentd(tree, "detect")["components"]["wasmedge"]
    expect(
        "libwasmedge.so.0" in str(wasmedge.get("error")), "wasmedge ran without ldconfig", wasmedge
    )
    check = agentd(tree, "check")
    codes = {f["code"] for f in check["findings"]}
    expect("crun.ldconfig" in codes, "the check did not see the stale loader cache", check)
    host = Host.at(tree)
    host.services.ldconfig()  # what an apply's WasmEdge install and the "ldconfig" fix call
    expect(host.services.calls == ["ldconfig"], "ldconfig was not recorded", host.services.calls)
    expect_real_stack(tree, "/usr/local/bin/wasmedge")


def run_all(target: Path) -> list[tuple[str, float]]:
    """Every scenario on a fresh tree at `target`, with the seconds each took."""
    log = target.parent / "wasmhost.log"
    timings: list[tuple[str, float]] = []
    start = time.monotonic()
    tree = wasmhost.prepare(target, log).path.resolve()
    timings.append(("prepare", time.monotonic() - start))
    steps: list[tuple[str, Callable[[Path], None]]] = [
        ("the Debian stack, detected and checked", expect_debian_stack),
        ("an agentd-installed WasmEdge and ldconfig", expect_ldconfig_visible),
    ]
    if shutil.which("setpriv") and Path("/usr/bin/python3").exists():
        steps.insert(0, ("not root: said why", expect_not_root_says_why))
    try:
        for name, step in steps:
            began = time.monotonic()
            step(tree)
            timings.append((name, time.monotonic() - began))
    finally:
        left = wasmhost.mounts_under(tree)
        if left:
            raise RootTreeError(f"mounts left under {tree}: {', '.join(left)}")
    wasmhost.remove(tree)
    return timings


def main(args: Optional[Sequence[str]] = None) -> int:
    """`python3 -m tests.e2e.root_tree`: agentd --root over the real Debian 13 Wasm tree (root)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--target", type=Path, default=WORK_DIR / "root")
    options = parser.parse_args(args)
    if os.geteuid() != 0:
        print("skipped: the tree's programs run inside it only as root (chroot)")
        return 0
    try:
        timings = run_all(options.target)
    except (RootTreeError, wasmhost.WasmHostError) as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    for name, seconds in timings:
        print(f"ok {seconds:5.1f} s  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
