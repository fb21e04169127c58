"""The health-gated rollback on the real Wasm host: a change to a crun without Wasm undone."""

from __future__ import annotations

import json
import time
from typing import Any, Optional

import yaml

from tests.e2e import realmirror
from tests.e2e.wasm_scenario import (
    DESIRED,
    Scenario,
    component,
    findings,
    healthy,
    shown,
    tail,
)

SETTINGS = "/etc/wasm-edge/agentd.yaml"
# The rollback scenario's health settings: a window that outlasts all of it (the default, 10
# minutes, would too; the run should not depend on a default), and the remedies on.
ROLLBACK_SETTINGS = {
    "apiVersion": "agentd/v1",
    "kind": "AgentSettings",
    "health": {"remediate": True, "remediationBackoff": "10m", "rollbackWindow": "1h"},
}


def state_doc(s: Scenario, tag: str) -> dict[str, Any]:
    """state.json as `agentd status --json` shows it."""
    doc = s.agentd(f"{tag}-status-json", "status", "--json").json()
    return doc if isinstance(doc, dict) else {}


def crun_sha256(s: Scenario) -> Optional[str]:
    crun = s.root / "usr/local/bin/crun"
    return realmirror.sha256_file(crun) if crun.is_file() else None


def crun_without_wasm(s: Scenario) -> None:
    """Generation N+1 asks Debian 12's crun 1.8.1, which has no Wasm: apply installs it (the
    change is watched), check names the real cause (crun.no-wasm; crun.too-old beside it, from
    the default minimumVersion 1.8.5), check --act (what the daemon's health cycle runs in a
    worker) puts back the kept 1.21 and blocks the change for that generation."""
    settings = s.root / SETTINGS.lstrip("/")
    settings.write_text(yaml.safe_dump(ROLLBACK_SETTINGS, sort_keys=False))
    (s.out / "agentd.yaml").write_text(settings.read_text())
    old, new = realmirror.DEBIAN12_CRUN_VERSION, realmirror.CRUN_VERSION
    s.desire({"agentd_e2e": "present"}, crun=(old, s.mirror.crun_debian12))
    generation = s.generation
    plan = s.agentd("nowasm-plan", "plan", "--desired", DESIRED, "--detailed-exitcode")
    s.expect(
        "nowasm.plan",
        plan.returncode == 2 and f"downgrade crun {new} -> {old}" in plan.stdout,
        f"plan: downgrade crun {new} -> {old} (exit 2)",
        tail(plan.stdout),
    )
    apply = s.agentd("nowasm-apply", "apply", "--desired", DESIRED, "--json")
    doc = apply.json() or {}
    steps = [a for a in doc.get("actions") or [] if a.get("component") == "crun"]
    s.expect(
        "nowasm.apply",
        apply.returncode == 0
        and doc.get("outcome") == "converged"
        and [(a.get("action"), a.get("from"), a.get("to"), a.get("status")) for a in steps]
        == [("downgrade", new, old, "done")],
        f"apply downgrades crun {new} -> {old} from the mirror",
        f"exit {apply.returncode} outcome={doc.get('outcome')}: {json.dumps(steps)}",
    )
    s.expect(
        "nowasm.installed",
        crun_sha256(s) == s.mirror.crun_debian12.sha256,
        "/usr/local/bin/crun is Debian 12's binary (the sha256 the desired state pins)",
        str(crun_sha256(s)),
    )
    real = s.sh(["/usr/local/bin/crun", "--version"], "nowasm-crun-version")
    s.expect(
        "nowasm.real",
        real.returncode == 0
        and real.stdout.startswith(f"crun version {old}\n")
        and "+WASM" not in real.stdout,
        f"Debian 12's crun runs in the Debian 13 tree: crun version {old}, no +WASM",
        real.text(),
    )
    watch = (state_doc(s, "nowasm").get("watch") or {}).get("crun") or {}
    s.expect(
        "nowasm.watch",
        watch.get("from") == new
        and watch.get("to") == old
        and watch.get("generation") == generation
        and watch.get("healthyBefore") is True
        and float(watch.get("until") or 0) - time.time() > 1800,
        f"state: the change is watched (healthy before, generation {generation}, 1 h window)",
        json.dumps(watch),
    )
    detect = s.agentd("nowasm-detect", "detect", "--json")
    crun = component(detect, "crun")
    s.expect(
        "nowasm.detect",
        crun.get("version") == old
        and crun.get("path") == "/usr/local/bin/crun"
        and not any(str(f).startswith("WASM") for f in crun.get("features") or []),
        f"detect: crun {old} at /usr/local/bin/crun, no WASM feature",
        json.dumps(crun),
    )
    check = s.agentd("nowasm-check", "check", "--json")
    cdoc = check.json() or {}
    codes = [f.get("code") for f in findings(check)]
    s.expect(
        "nowasm.check",
        check.returncode == 2 and cdoc.get("healthy") is False and cdoc.get("wasmReady") is False,
        "check: unhealthy, Wasm not ready (exit 2)",
        shown(check),
    )
    s.expect(
        "nowasm.check-cause",
        any(
            f.get("code") == "crun.no-wasm" and f"crun {old}" in str(f.get("message"))
            for f in findings(check)
        ),
        f"check: crun.no-wasm names crun {old} as built without Wasm",
        shown(check),
    )
    s.expect(
        "nowasm.check-only-crun",
        all(f.get("component") == "crun" for f in findings(check) if f.get("severity") != "info"),
        "check: every finding is about crun (WasmEdge and its plugin are untouched)",
        shown(check),
    )
    s.expect(
        "nowasm.check-due",
        (cdoc.get("due") or {}).get("rollbacks") == ["crun"] and not cdoc.get("acted"),
        "check: a rollback of crun is due; plain check does nothing",
        json.dumps({"due": cdoc.get("due"), "acted": cdoc.get("acted"), "codes": codes}),
    )
    act = s.agentd("nowasm-act", "check", "--act", "--json")
    adoc = act.json() or {}
    acted = adoc.get("acted") or []
    rollbacks = [
        (a.get("rollback"), a.get("ok"), a.get("from"), a.get("to"))
        for a in acted
        if "rollback" in a
    ]
    s.expect(
        "nowasm.act-rollback",
        rollbacks == [("crun", True, old, new)],
        f"check --act rolls crun back {old} -> {new}",
        json.dumps(acted),
    )
    s.expect(
        "nowasm.act-no-reinstall",
        not [a for a in acted if "rollback" not in a],
        f"check --act does nothing else (no reinstall of crun {old}: the rollback is the fix)",
        json.dumps(acted),
    )
    s.expect(
        "nowasm.act-after",
        act.returncode == 0 and adoc.get("healthy") is True and adoc.get("wasmReady") is True,
        "check --act: healthy and Wasm ready after the rollback",
        shown(act),
    )
    s.expect(
        "nowasm.restored",
        crun_sha256(s) == s.mirror.crun.sha256,
        f"/usr/local/bin/crun is the kept {new} again (its sha256)",
        str(crun_sha256(s)),
    )
    real = s.sh(["/usr/local/bin/crun", "--version"], "nowasm-restored-crun-version")
    s.expect(
        "nowasm.restored-real",
        f"crun version {new}" in real.stdout and "+WASM:wasmedge" in real.stdout,
        f"crun --version: {new} with +WASM:wasmedge",
        real.text(),
    )
    healthy(s, "nowasm-rolled-back", refused=True)
    plan = s.agentd("nowasm-blocked-plan", "plan", "--desired", DESIRED)
    s.expect(
        "nowasm.plan-says-blocked",
        "rolled back" in plan.stdout
        and f"not tried again for generation {generation}" in plan.stdout,
        f"plan: the downgrade was rolled back, not tried again for generation {generation}",
        tail(plan.stdout),
    )
    status = s.agentd("nowasm-status", "status")
    s.expect(
        "nowasm.status",
        f"rolled back crun {old} -> {new}" in status.stdout
        and f"not retried for generation {generation}" in status.stdout
        and "watching crun" not in status.stdout,
        f"status: crun rolled back {old} -> {new}, not retried for generation {generation}",
        status.text(),
    )
    again = s.agentd("nowasm-reapply", "apply", "--desired", DESIRED, "--json")
    rdoc = again.json() or {}
    s.expect(
        "nowasm.reapply",
        again.returncode == 0
        and not [a for a in rdoc.get("actions") or [] if a.get("component") == "crun"]
        and crun_sha256(s) == s.mirror.crun.sha256,
        f"apply of generation {generation} again: crun is left at {new}",
        f"exit {again.returncode}: {tail(again.text())}",
    )
    second = s.agentd("nowasm-act-again", "check", "--act", "--json")
    sdoc = second.json() or {}
    s.expect(
        "nowasm.act-again",
        second.returncode == 0
        and not sdoc.get("acted")
        and not sdoc.get("due")
        and sdoc.get("healthy") is True
        and crun_sha256(s) == s.mirror.crun.sha256,
        "a second check --act does nothing: healthy, nothing due",
        json.dumps({"acted": sdoc.get("acted"), "due": sdoc.get("due")}) + "\n" + shown(second),
    )
