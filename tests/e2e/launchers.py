"""The package's launcher on a tree's own python3, without booting it (checks="launcher")."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.e2e.armv7 import AS_IF_AARCH64, BUNDLE_PROBE, bundle_probe_checks
from tests.e2e.container import NODE_ENV
from tests.e2e.hosts import HostSpec
from tests.e2e.packages import Built
from tests.e2e.scenario import E2EFailure, HostResult, Step
from tests.support.standins import ARCHES, Mirror, desired_document, write_yaml


def _in_tree(
    tree: Path, name: str, argv: list[str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """One command in the tree (systemd-nspawn --pipe: its own /proc, no boot)."""
    full = [
        "systemd-nspawn",
        "--quiet",
        f"--directory={tree}",
        f"--machine=e2e-{name}",
        "--register=no",
        "--keep-unit",
        "--pipe",
        "--timezone=off",
        *(f"--setenv={k}={v}" for k, v in NODE_ENV.items()),
        *argv,
    ]
    return subprocess.run(
        full, capture_output=True, text=True, errors="replace", timeout=timeout, check=False
    )


def check_launcher(
    spec: HostSpec,
    tree: Path,
    built: Built,
    mirror: Mirror,
    result: HostResult,
    progress: Callable[[str], None],
) -> None:
    """The .deb's /usr unpacked (no maintainer scripts, no systemd), then
    `agentd --version`, which pydantic-core the launcher imports, `agentd validate` (pydantic
    at work) and `agentd detect`, also as if the kernel said aarch64."""
    start = time.monotonic()
    progress(f"{spec.name}: the launcher on the tree's python3 ...")
    step = Step("launcher on this python3: its own pydantic-core, validate, detect", 0.0, False)
    result.steps.append(step)
    try:
        # Beside the tree, then only usr/ copied in: dpkg-deb -x straight into a merged-/usr
        # tree replaces its /lib symlink with the package's lib/ (the unit) and the loader,
        # /lib/ld-linux-armhf.so.3, is gone.
        unpacked = tree.parent / "package"
        subprocess.run(["dpkg-deb", "-x", str(built.first), str(unpacked)], check=True)
        subprocess.run(["cp", "-a", f"{unpacked}/usr/.", str(tree / "usr")], check=True)
        doc = desired_document("http://127.0.0.1:9", mirror, arches=ARCHES)
        write_yaml(tree / "root" / "desired.yaml", doc)
        limit = 300 * spec.slow / 20
        python = _in_tree(tree, spec.name, ["python3", "--version"], limit).stdout.strip()
        result.figures["python"] = python
        version = _in_tree(tree, spec.name, ["agentd", "--version"], limit)
        if version.returncode != 0:
            raise E2EFailure(f"agentd --version on {python}: {version.stderr.strip()[-800:]}")
        result.figures["agentd_version"] = version.stdout.strip()
        probe_out = _in_tree(tree, spec.name, ["python3", "-I", "-c", BUNDLE_PROBE], limit)
        if probe_out.returncode != 0:
            raise E2EFailure(f"the bundle on {python}: {probe_out.stderr.strip()[-800:]}")
        probe = json.loads(probe_out.stdout)
        result.figures["bundle"] = {probe["python"]: probe["core"]}
        wrong = bundle_probe_checks(probe)
        if wrong:
            raise E2EFailure(f"the bundle on {python}: {wrong}")
        validate = _in_tree(tree, spec.name, ["agentd", "validate", "/root/desired.yaml"], limit)
        if validate.returncode != 0 or "no 32-bit ARM (armv7) build" not in validate.stderr:
            raise E2EFailure(
                f"agentd validate: exit {validate.returncode}: {validate.stderr.strip()[-800:]}"
            )
        arches = []
        for argv in (
            ["agentd", "detect", "--json"],
            ["python3", "-I", "-c", AS_IF_AARCH64, "detect", "--json"],
        ):
            out = _in_tree(tree, spec.name, argv, limit)
            host = (json.loads(out.stdout) if out.returncode == 0 else {}).get("host") or {}
            arches.append(host.get("arch"))
        if arches != ["armv7", "armv7"]:
            raise E2EFailure(f"agentd detect (plain, uname saying aarch64): {arches}")
        step.ok = True
        step.detail = f"{python}: {probe['core']}; validate: 0 (warned); detect: {arches}"
    except (E2EFailure, subprocess.SubprocessError, ValueError) as exc:
        step.detail = str(exc)
        raise E2EFailure(str(exc)) from exc
    finally:
        step.seconds = time.monotonic() - start
        verdict = "ok" if step.ok else "FAILED"
        progress(f"{spec.name}: launcher: {verdict} ({step.seconds:.1f} s): {step.detail}")
