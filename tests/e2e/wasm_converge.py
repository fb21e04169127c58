"""agentd converges the real Debian 13 Wasm host from a mirror of real bytes, then real faults."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from tests.e2e import realmirror, wasmhost
from tests.e2e.wasm_rollback import crun_without_wasm
from tests.e2e.wasm_scenario import (
    DESIRED,
    WORK_DIR,
    Outcome,
    Scenario,
    component,
    findings,
    healthy,
    naming,
    shown,
    tail,
)
from tests.support.mirror import MirrorServer

LIB = "/usr/local/lib"
PLUGIN_DIR = "/usr/local/lib/wasmedge"
# Debian's WasmEdge packages leave the tree before agentd converges it: with them, every
# libwasmedge fault would be hidden by the loader falling back to Debian's copy in the
# multiarch directory, and agentd's tarball would be the second WasmEdge on the node. The
# distribution's crun (1.21, +WASM:wasmedge, only Suggests libwasmedge0) stays: it is the host's.
PURGED = ("wasmedge", "libwasmedge-dev", "libwasmedge0")
PLUGIN_FILES = {
    "agentd_e2e": "libwasmedgePluginAgentdE2E.so",
    "agentd_notelf": "libwasmedgePluginNotELF.so",
    "agentd_nodep": "libwasmedgePluginAgentdNoDep.so",
}

# Expectations agentd does not meet yet: id -> what it said instead (observed on this host).
# A listed expectation that fails is reported as KNOWN and does not fail the run; one that
# passes fails it, so the list stays true (take the entry out once agentd is fixed).
KNOWN_DEFECTS: dict[str, str] = {}


def prepare(log: Path) -> tuple[Path, realmirror.RealMirror, dict[str, float]]:
    timings: dict[str, float] = {}
    mirror = realmirror.build()
    timings["mirror" + (" (cached)" if mirror.cached else " (cold)")] = mirror.seconds
    start = time.monotonic()
    tree = wasmhost.prepare(WORK_DIR / "root", log)
    timings["tree" + (" (cached)" if tree.cached else " (cold)")] = time.monotonic() - start
    result = wasmhost.run(tree.path, ["dpkg", "--purge", *PURGED], timeout=120)
    if result.returncode != 0:
        raise wasmhost.WasmHostError(f"dpkg --purge failed: {result.stdout}{result.stderr}")
    return tree.path, mirror, timings


# --- the scenario -------------------------------------------------------------------------------


def converge(s: Scenario) -> None:
    s.desire({"agentd_e2e": "present"})
    apply = s.agentd("apply", "apply", "--desired", DESIRED, "--json")
    doc = apply.json() or {}
    s.expect(
        "converge.apply",
        apply.returncode == 0 and doc.get("outcome") == "converged",
        "apply converges crun, WasmEdge and its plugin from the mirror",
        f"exit {apply.returncode}: {tail(apply.text())}",
    )
    s.expect(
        "converge.ldconfig",
        "ldconfig" in (doc.get("serviceCalls") or []),
        "apply runs ldconfig after installing libwasmedge into /usr/local/lib",
        json.dumps(doc.get("serviceCalls")),
    )
    node = s.root
    crun = node / "usr/local/bin/crun"
    s.expect(
        "converge.crun-artifact",
        crun.is_file() and realmirror.sha256_file(crun) == s.mirror.crun.sha256,
        "/usr/local/bin/crun is the crun built from Debian's source (Debian's /usr/bin/crun stays)",
        str(crun),
    )
    chain = {
        "libwasmedge.so": "libwasmedge.so.0",
        "libwasmedge.so.0": "libwasmedge.so.0.1.0",
    }
    links = {n: str(Path(LIB, n).relative_to("/")) for n in chain}
    s.expect(
        "converge.so-chain",
        all((node / links[n]).is_symlink() for n in chain)
        and all(Path((node / links[n]).readlink()).name == t for n, t in chain.items())
        and (node / "usr/local/lib/libwasmedge.so.0.1.0").is_file(),
        "libwasmedge.so -> libwasmedge.so.0 -> libwasmedge.so.0.1.0 in /usr/local/lib",
    )
    plugin = node / PLUGIN_DIR.lstrip("/") / PLUGIN_FILES["agentd_e2e"]
    s.expect("converge.plugin-file", plugin.is_file(), f"the plugin is at {PLUGIN_DIR}")
    version = s.sh(["/usr/local/bin/wasmedge", "--version"], "wasmedge-version")
    s.expect(
        "converge.wasmedge-lists-plugin",
        version.returncode == 0
        and "version 0.14.1" in version.stdout
        and '(plugin "agentd_e2e") version' in version.stdout
        and "[error]" not in version.stdout,
        "the installed wasmedge loads and lists the agentd_e2e plugin",
        version.text(),
    )
    crun_version = s.sh(["/usr/local/bin/crun", "--version"], "crun-version")
    s.expect(
        "converge.crun-wasm",
        "+WASM:wasmedge" in crun_version.stdout,
        "the built crun has +WASM:wasmedge",
        crun_version.text(),
    )
    healthy(s, "converged")


def broken_plugin(s: Scenario, name: str, cause: str) -> None:
    """A plugin WasmEdge cannot load, installed by agentd: named by its file and real cause;
    WasmEdge's version still known; WasmEdge itself not broken and still running Wasm."""
    file = PLUGIN_FILES[name]
    s.desire({"agentd_e2e": "present", name: "present"})
    apply = s.agentd(f"{name}-apply", "apply", "--desired", DESIRED, "--json")
    s.expect(
        f"{name}.apply",
        apply.returncode == 0 and (apply.json() or {}).get("outcome") == "converged",
        f"apply installs {name} (the bytes are what the desired state names)",
        tail(apply.text()),
    )
    real = s.sh(["/usr/local/bin/wasmedge", "--version"], f"{name}-wasmedge-version")
    s.expect(
        f"{name}.real",
        real.returncode == 0 and cause in real.stdout and "version 0.14.1" in real.stdout,
        f"the real wasmedge prints the load error ({cause}) on stdout and still its version",
        real.text(),
    )
    detect = s.agentd(f"{name}-detect", "detect", "--json")
    wasmedge = component(detect, "wasmedge")
    s.expect(
        f"{name}.detect-version",
        wasmedge.get("version") == realmirror.WASMEDGE_VERSION,
        "detect: WasmEdge's version is still known",
        json.dumps(wasmedge),
    )
    s.expect(
        f"{name}.detect-load-error",
        any(cause in e for e in wasmedge.get("loadErrors") or []),
        f"detect: the load error ({cause}) is reported",
        json.dumps(wasmedge),
    )
    check = s.agentd(f"{name}-check", "check", "--json")
    codes = [f.get("code") for f in findings(check)]
    s.expect(
        f"{name}.check-names-file-and-cause",
        bool(naming(check, file, cause)),
        f"check: a finding names {file} and the real cause ({cause})",
        shown(check),
    )
    s.expect(
        f"{name}.check-not-broken",
        "wasmedge.broken" not in codes,
        "check: WasmEdge is not called broken",
        shown(check),
    )
    s.expect(
        f"{name}.check-probe",
        "wasmedge.probe-failed" not in codes,
        "check: the WASI probe passes (it prints its line; the load errors come before it)",
        shown(check),
    )
    s.expect(
        f"{name}.check-no-wrong-cause",
        not naming(check, "built for another WasmEdge version"),
        "check: no finding blames another WasmEdge version (the plugin is built for 0.14.1)",
        shown(check),
    )
    s.expect(
        f"{name}.check-wasm-ready",
        (check.json() or {}).get("wasmReady") is True,
        "check: Wasm still ready (WasmEdge runs Wasm; only the plugin is missing)",
        shown(check),
    )
    s.desire({"agentd_e2e": "present", name: "absent"})
    undo = s.agentd(f"{name}-remove", "apply", "--desired", DESIRED, "--json")
    left = (s.root / PLUGIN_DIR.lstrip("/") / file).exists()
    s.expect(
        f"{name}.removed",
        undo.returncode == 0 and not left,
        f"state: absent removes {file}",
        tail(undo.text()),
    )
    healthy(s, f"{name}-removed")


def no_libwasmedge(s: Scenario) -> None:
    """libwasmedge gone from /usr/local/lib: named as the missing library; apply puts it back."""
    s.sh(["sh", "-c", f"rm -f {LIB}/libwasmedge.so*"], "nolib-rm")
    detect = s.agentd("nolib-detect", "detect", "--json")
    wasmedge = component(detect, "wasmedge")
    s.expect(
        "nolib.detect",
        wasmedge.get("version") is None and "libwasmedge.so.0" in str(wasmedge.get("error")),
        "detect: no version, the error names libwasmedge.so.0",
        json.dumps(wasmedge),
    )
    check = s.agentd("nolib-check", "check", "--json")
    s.expect(
        "nolib.check",
        check.returncode == 2
        and bool(naming(check, "libwasmedge.so.0"))
        and all("libwasmedge.so.0" in str(f.get("message")) for f in findings(check)),
        "check: unhealthy, and every finding names the missing libwasmedge.so.0",
        shown(check),
    )
    plan = s.agentd("nolib-plan", "plan", "--desired", DESIRED, "--detailed-exitcode")
    s.expect(
        "nolib.plan",
        plan.returncode == 2 and "install   wasmedge 0.14.1" in plan.stdout,
        "plan: reinstall WasmEdge (exit 2)",
        tail(plan.stdout),
    )
    s.expect(
        "nolib.plan-words",
        "downgrade" not in plan.stdout,
        "plan: a plugin of the same version is reinstalled, not called a downgrade",
        tail(plan.stdout),
    )
    apply = s.agentd("nolib-apply", "apply", "--desired", DESIRED, "--json")
    s.expect(
        "nolib.apply",
        apply.returncode == 0 and (s.root / "usr/local/lib/libwasmedge.so.0").exists(),
        "apply puts libwasmedge back (and runs ldconfig)",
        tail(apply.text()),
    )
    healthy(s, "nolib-fixed")


def loader_cache(s: Scenario, tag: str, fault: str) -> None:
    """/etc/ld.so.cache missing or stale (libwasmedge on disk, not in the cache): wasmedge
    cannot start; named as the loader cache, fixed by ldconfig (check --act)."""
    s.sh(["sh", "-c", fault], f"{tag}-fault")
    real = s.sh(["/usr/local/bin/wasmedge", "--version"], f"{tag}-wasmedge-version")
    s.expect(
        f"{tag}.real",
        real.returncode == 127 and "libwasmedge.so.0" in real.stderr,
        "the real wasmedge cannot find libwasmedge.so.0",
        real.text(),
    )
    detect = s.agentd(f"{tag}-detect", "detect", "--json")
    wasmedge = component(detect, "wasmedge")
    s.expect(
        f"{tag}.detect",
        wasmedge.get("version") is None and "libwasmedge.so.0" in str(wasmedge.get("error")),
        "detect: wasmedge does not run (no version from a cached answer), libwasmedge.so.0 named",
        json.dumps(wasmedge),
    )
    check = s.agentd(f"{tag}-check", "check", "--json")
    codes = [f.get("code") for f in findings(check)]
    s.expect(
        f"{tag}.check-ldconfig",
        "crun.ldconfig" in codes,
        "check: the loader cache does not list libwasmedge.so.0 (crun.ldconfig, fix ldconfig)",
        shown(check),
    )
    s.expect(
        f"{tag}.check-no-reinstall",
        not any(str(f.get("fix", "")).startswith("reinstall:") for f in findings(check)),
        "check: no reinstall offered (the files are fine; only ldconfig is due)",
        shown(check),
    )
    act = s.agentd(f"{tag}-act", "check", "--act", "--json")
    acted = [a.get("fix") for a in (act.json() or {}).get("acted") or []]
    s.expect(
        f"{tag}.act",
        "ldconfig" in acted,
        "check --act runs ldconfig",
        json.dumps((act.json() or {}).get("acted")),
    )
    s.sh(["ldconfig"], f"{tag}-ldconfig")  # whatever --act did, the next step starts sound
    healthy(s, f"{tag}-fixed")


STALE = (
    f"mkdir -p /root/aside && mv {LIB}/libwasmedge.so* /root/aside/ && ldconfig"
    f" && mv /root/aside/libwasmedge.so* {LIB}/"
)


def scenario(out: Path) -> tuple[list[Outcome], dict[str, float]]:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    start = time.monotonic()
    root, mirror, timings = prepare(WORK_DIR / "converge.log")
    steps: list[tuple[str, Callable[[Scenario], None]]] = [
        ("converge", converge),
        ("plugin not ELF", lambda s: broken_plugin(s, "agentd_notelf", "file too short")),
        (
            "plugin missing its library",
            lambda s: broken_plugin(s, "agentd_nodep", "libagentde2edep.so"),
        ),
        ("libwasmedge removed", no_libwasmedge),
        ("loader cache removed", lambda s: loader_cache(s, "nocache", "rm /etc/ld.so.cache")),
        ("loader cache stale", lambda s: loader_cache(s, "stale", STALE)),
        ("crun without Wasm rolled back", crun_without_wasm),
    ]
    with MirrorServer(mirror.directory) as server:
        s = Scenario(root, mirror, server.url, out)
        for name, step in steps:
            at = time.monotonic()
            step(s)
            timings[name] = time.monotonic() - at
    timings["total"] = time.monotonic() - start
    (out / "commands.json").write_text(json.dumps(s.commands, indent=1) + "\n")
    (out / "outcomes.json").write_text(json.dumps([o.__dict__ for o in s.outcomes], indent=1))
    wasmhost.remove(root)
    return s.outcomes, timings


def main(args: Optional[list[str]] = None) -> int:
    """`python3 -m tests.e2e.wasm_converge`: agentd converges the real Debian 13 Wasm host from
    a mirror of real bytes, then meets each real fault; exit 1 on any failed expectation (a
    KNOWN_DEFECTS entry that fails is reported, one that passes fails the run)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", type=Path, default=WORK_DIR / "outputs")
    options = parser.parse_args(args)
    outcomes, timings = scenario(options.out)
    failed = 0
    for o in outcomes:
        known = o.key in KNOWN_DEFECTS
        if o.ok and not known:
            print(f"ok      {o.key}: {o.message}")
            continue
        if o.ok:
            failed += 1
            print(f"FIXED   {o.key}: {o.message} (now true: take it out of KNOWN_DEFECTS)")
            continue
        label = "KNOWN  " if known else "FAILED "
        failed += 0 if known else 1
        print(f"{label} {o.key}: {o.message}")
        print("        " + o.observed.replace("\n", "\n        "))
    for name, seconds in timings.items():
        print(f"time    {name}: {seconds:.1f} s")
    print(f"outputs in {options.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
