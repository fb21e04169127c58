"""Remediation and health-gated rollback through the command line; the exit codes, the metrics."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.support.mirror import MirrorServer
from tests.support.node import Node
from tests.support.standins import (
    crun_binary,
    desired_document,
    set_unit_state,
    sha256_hex,
    systemctl_binary,
    write_yaml,
)
from tests.unit.health.sandbox import TEMPLATE, install


class CrunReleases:
    """A mirror of crun builds served over real HTTP: some with Wasm, some without."""

    def __init__(self, directory: Path, server: MirrorServer) -> None:
        self.dir = directory
        self.server = server

    def add(self, name: str, version: str, *, wasm: bool) -> dict[str, Any]:
        data = crun_binary(version, wasm=wasm)
        (self.dir / name).write_bytes(data)
        return {"url": f"{self.server.url}/{name}", "sha256": sha256_hex(data)}


@pytest.fixture
def releases(tmp_path: Path) -> Any:
    directory = tmp_path / "releases"
    directory.mkdir()
    with MirrorServer(directory) as server:
        yield CrunReleases(directory, server)


def crun_doc(generation: int, version: str, artifact: dict[str, Any], arch: str) -> dict[str, Any]:
    return {
        "apiVersion": "agentd/v1",
        "kind": "NodeState",
        "generation": generation,
        "components": {"crun": {"version": version, "artifacts": {arch: artifact}}},
    }


@pytest.fixture
def node(sandbox_root: Path) -> Node:
    """A sandbox node whose WasmEdge library is in place, so a Wasm crun can start."""
    install(sandbox_root, "/usr/local/lib/libwasmedge.so.0", b"\x7fELF", 0o644)
    install(sandbox_root, "/etc/resolv.conf", b"nameserver 10.0.0.53\n", 0o644)
    return Node(sandbox_root)


def crun_findings(doc: dict[str, Any]) -> list[str]:
    return [f["code"] for f in doc["findings"] if f["component"] == "crun"]


def test_a_change_that_breaks_a_component_is_rolled_back_and_not_retried(
    node: Node, releases: CrunReleases, arch: str
) -> None:
    good = releases.add("crun-1.15", "1.15", wasm=True)
    broken = releases.add("crun-1.16", "1.16", wasm=False)  # a release built without Wasm
    write_yaml(node.path("/etc/wasm-edge/desired.yaml"), crun_doc(1, "1.15", good, arch))
    assert node.agentd("apply", "--json").code == 0
    first = node.agentd("check", "--json").json()
    assert crun_findings(first) == []
    # Generation 2 upgrades crun to the broken build: installed, and watched.
    write_yaml(node.path("/etc/wasm-edge/desired.yaml"), crun_doc(2, "1.16", broken, arch))
    upgrade = node.agentd("apply", "--json")
    assert upgrade.code == 0, upgrade.stderr
    assert node.version_of("/usr/local/bin/crun") == "crun version 1.16"
    watch = node.state()["watch"]["crun"]
    assert (watch["from"], watch["to"], watch["healthyBefore"]) == ("1.15", "1.16", True)
    # The next health run finds it broken and puts 1.15 back.
    acted = node.agentd("check", "--act", "--json")
    doc = acted.json()
    # Unhealthy when checked; the rollback follows the check, then the node is checked again:
    # the report (and the exit code) is the node after the rollback.
    assert doc["before"]["healthy"] is False
    assert crun_findings(doc["before"]) == ["crun.no-wasm"]
    assert crun_findings(doc) == []
    assert acted.code == (0 if doc["healthy"] else 2)
    assert node.state()["health"]["findings"] == doc["findings"]
    assert [a["rollback"] for a in doc["acted"]] == ["crun"]
    assert doc["acted"][0]["ok"] is True
    assert (doc["acted"][0]["from"], doc["acted"][0]["to"]) == ("1.16", "1.15")
    assert node.version_of("/usr/local/bin/crun") == "crun version 1.15"
    state = node.state()
    assert state["blocked"]["crun"]["generation"] == 2
    assert state["blocked"]["crun"]["version"] == "1.16"
    assert "without Wasm support" in state["blocked"]["crun"]["reason"]
    assert "crun" not in state["watch"]
    assert state["counters"]["rollbacks"] == {"crun": 1}
    # plan says what apply will do: nothing, and why (found by tests/e2e/wasm_converge.py);
    # a refusal is exit 3 (issue 15.2).
    planned = node.agentd("plan", "--json", "--detailed-exitcode")
    assert planned.code == 3, planned.stdout
    assert planned.json()["actions"] == []
    assert [(r["kind"], r["subject"]) for r in planned.json()["refusals"]] == [
        ("rollback-block", "crun")
    ]
    blocked = next(u for u in planned.json()["unchanged"] if u["component"] == "crun")
    assert "rolled back" in blocked["reason"]
    # Converging generation 2 again does not retry the change, and says why.
    again = node.agentd("apply", "--json").json()
    assert again["actions"] == []
    note = next(u for u in again["unchanged"] if u["component"] == "crun")
    assert "rolled back" in note["reason"]
    assert "publish a new generation" in note["reason"]
    assert node.version_of("/usr/local/bin/crun") == "crun version 1.15"
    assert crun_findings(node.agentd("check", "--act", "--json").json()) == []
    # A new generation is tried again.
    write_yaml(node.path("/etc/wasm-edge/desired.yaml"), crun_doc(3, "1.16", broken, arch))
    assert node.agentd("apply", "--json").code == 0
    assert node.version_of("/usr/local/bin/crun") == "crun version 1.16"
    assert node.state()["blocked"] == {}


def test_no_rollback_of_what_was_broken_before_the_change(
    node: Node, releases: CrunReleases, arch: str
) -> None:
    old = releases.add("crun-1.14", "1.14", wasm=False)
    new = releases.add("crun-1.16", "1.16", wasm=False)
    write_yaml(node.path("/etc/wasm-edge/desired.yaml"), crun_doc(1, "1.14", old, arch))
    assert node.agentd("apply", "--json").code == 0
    write_yaml(node.path("/etc/wasm-edge/desired.yaml"), crun_doc(2, "1.16", new, arch))
    assert node.agentd("apply", "--json").code == 0
    assert node.state()["watch"]["crun"]["healthyBefore"] is False
    doc = node.agentd("check", "--act", "--json").json()
    assert [a.get("rollback") for a in doc.get("acted", [])] == [None]  # a fix, not a rollback
    assert node.version_of("/usr/local/bin/crun") == "crun version 1.16"


def test_a_fix_is_tried_at_most_once_per_backoff(
    node: Node, releases: CrunReleases, arch: str
) -> None:
    good = releases.add("crun-1.15", "1.15", wasm=True)
    write_yaml(node.path("/etc/wasm-edge/desired.yaml"), crun_doc(1, "1.15", good, arch))
    write_yaml(node.path("/etc/wasm-edge/agentd.yaml"), {"health": {"remediationBackoff": "5m"}})
    assert node.agentd("apply", "--json").code == 0
    # Someone puts a crun of the same version without Wasm in place: the version looks right,
    # so only the health check can tell.
    install(node.root, "/usr/local/bin/crun", crun_binary("1.15", wasm=False))
    doc = node.agentd("check", "--act", "--json").json()
    assert crun_findings(doc["before"]) == ["crun.no-wasm"]
    assert crun_findings(doc) == []  # checked again after the fix
    assert [(a["fix"], a["ok"]) for a in doc["acted"]] == [("reinstall:crun", True)]
    assert "+WASM:wasmedge" in node.read("/usr/local/bin/crun")
    assert crun_findings(node.agentd("check", "--act", "--json").json()) == []
    # A fix that does not help: the release itself lacks Wasm. One attempt, then the backoff.
    bad = releases.add("crun-1.15-nowasm", "1.15", wasm=False)
    write_yaml(node.path("/etc/wasm-edge/desired.yaml"), crun_doc(2, "1.15", bad, arch))
    install(node.root, "/usr/local/bin/crun", crun_binary("1.15", wasm=False))
    first = node.agentd("check", "--act", "--json").json()
    assert [a["fix"] for a in first["acted"]] == ["reinstall:crun"]
    assert crun_findings(first) == ["crun.no-wasm"]  # the fix did not help: still there after
    entry = node.state()["remediations"]["crun.no-wasm"]
    assert entry["attempts"] == 1
    second = node.agentd("check", "--act", "--json").json()
    assert "acted" not in second  # within the backoff: nothing is tried
    assert node.state()["remediations"]["crun.no-wasm"]["attempts"] == 1
    # The backoff runs out (the state says when): one more attempt, and the next wait doubles.
    state = node.state()
    state["remediations"]["crun.no-wasm"]["nextAt"] = 0
    node.path("/var/lib/wasm-edge/state.json").write_text(json.dumps(state))
    third = node.agentd("check", "--act", "--json").json()
    assert [a["fix"] for a in third["acted"]] == ["reinstall:crun"]
    after = node.state()["remediations"]["crun.no-wasm"]
    assert after["attempts"] == 2
    waited_first = entry["nextAt"] - _epoch(entry["lastAt"])
    waited_second = after["nextAt"] - _epoch(after["lastAt"])
    assert 295 <= waited_first <= 305
    assert 595 <= waited_second <= 605


def _epoch(stamp: str) -> float:
    import calendar
    import time

    return float(calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")))


def test_check_exit_codes(node: Node, releases: CrunReleases, arch: str) -> None:
    good = releases.add("crun-1.15", "1.15", wasm=True)
    write_yaml(node.path("/etc/wasm-edge/desired.yaml"), crun_doc(1, "1.15", good, arch))
    assert node.agentd("apply").code == 0
    healthy = node.agentd("check", "--json")
    doc = healthy.json()
    assert doc["healthy"] is (healthy.code == 0)
    unhealthy_codes = [f["code"] for f in doc["findings"] if f["severity"] in ("error", "critical")]
    assert (healthy.code == 0) == (unhealthy_codes == [])
    install(node.root, "/usr/local/bin/crun", crun_binary("1.15", wasm=False))
    assert node.agentd("check").code == 2
    node.path("/var/lib/wasm-edge/state.json").write_text("{not json")
    broken = node.agentd("check")
    assert broken.code == 1  # could not check
    assert "state.json is corrupt" in broken.stderr


def test_metrics_are_valid_prometheus_text(node: Node, releases: CrunReleases, arch: str) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    good = releases.add("crun-1.15", "1.15", wasm=True)
    write_yaml(node.path("/etc/wasm-edge/desired.yaml"), crun_doc(7, "1.15", good, arch))
    assert node.agentd("apply").code == 0
    assert node.agentd("apply").code == 0  # a no-op: counted, and the file rewritten
    install(node.root, "/usr/local/bin/crun", crun_binary("1.15", wasm=False))
    node.agentd("check")
    text = node.read("/var/lib/prometheus/node-exporter/agentd.prom")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert samples[("agentd_generation", ())] == 7
    assert samples[("agentd_last_run_success", ())] == 1
    assert samples[("agentd_component_info", (("component", "crun"), ("version", "1.15")))] == 1
    assert samples[("agentd_findings", (("code", "crun.no-wasm"), ("severity", "error")))] == 1
    assert samples[("agentd_healthy", ())] == 0
    assert samples[("agentd_runs_total", (("outcome", "converged"),))] == 2
    assert samples[("agentd_actions_total", (("action", "install"),))] >= 1
    assert families["agentd_runs"].type == "counter"
    assert families["agentd_generation"].type == "gauge"
    mode = stat.S_IMODE(node.path("/var/lib/prometheus/node-exporter/agentd.prom").stat().st_mode)
    assert mode == 0o644
    assert not list(node.path("/var/lib/prometheus/node-exporter").glob(".*"))  # no temp left


def test_fixes_that_rewrite_the_template_and_restart_k3s(
    sandbox_root: Path, mirror: MirrorServer, mirror_index: Any, arch: str
) -> None:
    """A template removed by hand is written again (the "converge" fix); a stopped k3s is
    restarted (under --root the systemctl calls are recorded, not made)."""
    node = Node(sandbox_root)
    install(sandbox_root, "/etc/resolv.conf", b"nameserver 10.0.0.53\n", 0o644)
    # The token the desired tokenFile names, as on a real node (else k3s.token-file-missing).
    install(sandbox_root, "/etc/wasm-edge/k3s-token", b"K10test\n", 0o600)
    write_yaml(
        node.path("/etc/wasm-edge/desired.yaml"),
        desired_document(mirror.url, mirror_index, arches=(arch,)),
    )
    assert node.agentd("apply").code == 0
    template = node.path(TEMPLATE)
    template.unlink()
    doc = node.agentd("check", "--act", "--json").json()
    assert "containerd.no-runtime" in [f["code"] for f in doc["before"]["findings"]]
    assert "containerd.no-runtime" not in [f["code"] for f in doc["findings"]]
    acted = {a["code"]: a for a in doc["acted"]}
    assert acted["containerd.no-runtime"]["fix"] == "converge"
    assert acted["containerd.no-runtime"]["ok"] is True
    assert b"pod_annotations" in template.read_bytes()
    # k3s stopped: the systemctl under the root says so, the fix restarts it.
    install(sandbox_root, "/usr/bin/systemctl", systemctl_binary())
    set_unit_state(sandbox_root, "k3s.service", "failed")
    doc = node.agentd("check", "--act", "--json").json()
    before = doc["before"]["findings"]
    assert [f["code"] for f in before if f["component"] == "k3s"] == ["k3s.inactive"]
    restart = next(a for a in doc["acted"] if a["code"] == "k3s.inactive")
    assert (restart["fix"], restart["ok"], restart["detail"]) == (
        "restart:k3s",
        True,
        "restarted k3s.service",
    )
    # Within the backoff the same finding is left alone.
    again = node.agentd("check", "--act", "--json").json()
    assert "acted" not in again
    assert node.state()["remediations"]["k3s.inactive"]["attempts"] == 1


def test_check_act_reports_the_node_after_its_fix_in_words(
    node: Node, releases: CrunReleases, arch: str
) -> None:
    good = releases.add("crun-1.15", "1.15", wasm=True)
    write_yaml(node.path("/etc/wasm-edge/desired.yaml"), crun_doc(1, "1.15", good, arch))
    assert node.agentd("apply", "--json").code == 0
    healthy_code = node.agentd("check", "--json").code
    install(node.root, "/usr/local/bin/crun", crun_binary("1.15", wasm=False))
    assert node.agentd("check", "--json").code == 2
    acted = node.agentd("check", "--act")
    assert acted.code == healthy_code  # the exit code is the state after the fix
    assert "before acting: " in acted.stdout
    assert "crun.no-wasm" in acted.stdout.split("\n")[0]
    assert "  acted: reinstall:crun for crun.no-wasm: done (apply " in acted.stdout
    assert " after acting: " in acted.stdout
