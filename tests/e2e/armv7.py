"""What is true of a real armv7 node, checked on the armhf host (packaging/README.md)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.e2e.scenario import Scenario

REFUSED = "refused: WasmEdge publishes no 32-bit ARM (armv7) build, and this node is armv7"
FINDING = "host.armv7-no-wasm"
CAN_RUN = "it runs k3s and crun with ordinary Linux containers, not Wasm workloads"
# The launcher under this python3 with the kernel's machine name replaced: what a 64-bit
# kernel says to a 32-bit userland (Raspberry Pi OS 32-bit on a Pi 4 or 5). qemu-user answers
# uname(2) from the CPU it emulates, so nothing else makes an armhf process see "aarch64".
AS_IF_AARCH64 = (
    "import os, runpy, sys\n"
    "real = os.uname()\n"
    "os.uname = lambda: os.uname_result(tuple(real)[:4] + ('aarch64',))\n"
    "sys.argv = ['agentd', *sys.argv[1:]]\n"
    "runpy.run_path('/usr/bin/agentd', run_name='__main__')\n"
)
# Which pydantic-core the launcher imports on this python3, and what the interpreter is.
BUNDLE_PROBE = (
    "import importlib.machinery, importlib.util, platform, struct\n"
    "loader = importlib.machinery.SourceFileLoader('launcher', '/usr/bin/agentd')\n"
    "spec = importlib.util.spec_from_loader('launcher', loader)\n"
    "launcher = importlib.util.module_from_spec(spec)\n"
    "loader.exec_module(launcher)\n"
    "launcher.activate(launcher.LIB)\n"
    "import json, pydantic, pydantic_core._pydantic_core as core\n"
    "print(json.dumps({'python': platform.python_version(), 'machine': platform.machine(),\n"
    "    'pointer': struct.calcsize('P'), 'core': core.__file__, 'pydantic': pydantic.__file__}))\n"
)


def bundle_probe_checks(probe: dict[str, Any]) -> list[str]:
    """What is wrong with BUNDLE_PROBE's answer on an armhf python3 (nothing: [])."""
    wrong = []
    major, minor = probe["python"].split(".")[:2]
    abi = f"cp{major}{minor}"
    core = str(probe["core"])
    if not core.startswith(f"/usr/lib/wasm-edge-agentd/{abi}/pydantic_core/"):
        wrong.append(f"pydantic-core imported from {core}, not the bundle's {abi}")
    if not core.endswith(f"-{major}{minor}-arm-linux-gnueabihf.so"):
        wrong.append(f"pydantic-core {core} is not the armv7l (arm-linux-gnueabihf) build")
    if not str(probe["pydantic"]).startswith("/usr/lib/wasm-edge-agentd/common/"):
        wrong.append(f"pydantic imported from {probe['pydantic']}")
    if probe["pointer"] != 4:
        wrong.append(f"a {probe['pointer'] * 8}-bit interpreter")
    return wrong


def _detected_arch(text: str) -> object:
    doc = json.loads(text)
    return (doc.get("host") or doc.get("facts", {}).get("host") or {}).get("arch")


def armv7_node(s: Scenario) -> None:
    """detect, the 64-bit-kernel rule, the bundle's pydantic-core, WasmEdge refused (the rest
    converged, by the steps before), and the health checks' word on Wasm."""
    with s.step("armv7: detect says armv7, also as if the kernel said aarch64") as step:
        plain = _detected_arch(s.node.run(["agentd", "detect", "--json"], timeout=120).stdout)
        s.check(plain == "armv7", f"agentd detect: arch {plain!r}")
        faked = s.node.run(
            ["python3", "-I", "-c", AS_IF_AARCH64, "detect", "--json"], timeout=120
        ).stdout
        as_aarch64 = _detected_arch(faked)
        s.check(as_aarch64 == "armv7", f"detect with uname saying aarch64: {as_aarch64!r}")
        # What setarch does under qemu-user (recorded, not asserted: it is qemu's answer).
        tried = []
        for persona in ("linux64", "linux32", "aarch64"):
            out = s.node.run(["setarch", persona, "uname", "-m"], check=False)
            said = (out.stdout + out.stderr).strip().splitlines()
            tried.append(f"setarch {persona} uname -m: exit {out.returncode} {said[:1]}")
        s.observe("; ".join(tried))
        probe = json.loads(s.node.run(["python3", "-I", "-c", BUNDLE_PROBE], timeout=120).stdout)
        wrong = bundle_probe_checks(probe)
        s.check(not wrong, f"the bundle on {probe['python']}: {wrong}")
        s.result.figures["bundle"] = {probe["python"]: probe["core"]}
        step.detail = f"detect: {plain}; uname aarch64 -> {as_aarch64}; {probe['core']}"

    with s.step("armv7: WasmEdge refused with its reason, k3s and crun converged") as step:
        last = s.status().get("lastRun") or {}
        acted = [a.get("component") for a in last.get("actions") or []]
        s.check(
            not any(str(c).startswith("wasmedge") for c in acted),
            f"WasmEdge actions on armv7: {acted}",
        )
        s.check(
            {"crun", "k3s"} <= set(acted), f"generation 1 did not install k3s and crun: {acted}"
        )
        reasons = {u.get("component"): str(u.get("reason")) for u in last.get("unchanged") or []}
        s.check(
            reasons.get("wasmedge", "").startswith(REFUSED),
            f"the run's unchanged entry for wasmedge: {reasons.get('wasmedge')!r}",
        )
        warnings = " ".join(str(w) for w in last.get("warnings") or [])
        s.check("no 32-bit ARM (armv7) build" in warnings, f"the run's warnings: {warnings!r}")
        s.check(not s.node.exists("/usr/local/bin/wasmedge"), "wasmedge was installed on armv7")
        plan = s.node.run(["agentd", "plan"], check=False, timeout=180)
        s.check(REFUSED in plan.stdout, f"agentd plan does not say why: {plan.stdout[-800:]!r}")
        line = next(ln.strip() for ln in plan.stdout.splitlines() if REFUSED in ln)
        step.detail = f"agentd plan: {line}"

    with s.step("armv7: the health checks say what the node can and cannot run") as step:
        out = s.node.run(["agentd", "check", "--json"], check=False, timeout=300)
        s.check(FINDING in out.stdout, f"agentd check has no {FINDING}: {out.stdout[-800:]!r}")
        s.check(CAN_RUN in out.stdout, f"the {FINDING} message: {out.stdout[-800:]!r}")
        found = [ln.strip() for ln in out.stdout.splitlines() if CAN_RUN in ln]
        step.detail = found[0][:400] if found else ""
