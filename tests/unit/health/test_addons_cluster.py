"""Gatekeeper's health through the real kubectl, against the fake's k3s, helm-controller and
Gatekeeper (tests/support/fakegatekeeper.py), with the files agentd's plan writes."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Optional

import yaml

from agentd.desired.model import Gatekeeper
from agentd.health.findings import Finding, healthy
from agentd.health.run import HealthRun, examine
from agentd.plan.addons import helmchart_manifest, policies_manifest
from agentd.state.store import AgentState, save_state
from agentd.system.host import Host
from tests.support.fakekube import FakeCluster
from tests.support.k3sarchives import chart_archive, image_archive
from tests.support.node import Node
from tests.unit.health.sandbox import SERVER, codes, config, install, needs_kubectl

pytestmark = needs_kubectl

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
GUIDE = yaml.safe_load((FIXTURES / "gatekeeper/policies/guide.yaml").read_text())
IMAGE = "openpolicyagent/gatekeeper:v3.15.1"
CHART = "/var/lib/rancher/k3s/server/static/charts/gatekeeper.tgz"
MANIFESTS = "/var/lib/rancher/k3s/server/manifests"
IMAGES = "/var/lib/rancher/k3s/agent/images"


def gatekeeper(values: Optional[dict[str, Any]] = None, policies: bool = True) -> dict[str, Any]:
    return {
        "version": "3.15.1",
        "chart": {"url": "https://mirror.example/gatekeeper-3.15.1.tgz", "sha256": "0" * 64},
        "values": values or {},
        "policies": GUIDE if policies else [],
    }


def place(root: Path, addon: dict[str, Any], chart: bool = True) -> dict[str, Any]:
    """What `agentd apply` leaves on a server for `addon`: the HelmChart and policies manifests
    (agentd's own renderers) and the chart; returns the desired state the checks get."""
    model = Gatekeeper.model_validate(addon)
    install(root, f"{MANIFESTS}/agentd-addon-gatekeeper.yaml", helmchart_manifest(model), 0o644)
    policies = policies_manifest(model)
    if policies is not None:
        install(root, f"{MANIFESTS}/agentd-addon-gatekeeper-policies.yaml", policies, 0o644)
    if chart:
        chart_archive(root / CHART.lstrip("/"), "gatekeeper", "3.15.1")
    desired = copy.deepcopy(SERVER)
    desired["addons"] = {"gatekeeper": addon}
    desired["images"] = [{"name": "gatekeeper", "artifacts": {}}]
    return desired


def check(root: Path, desired: dict[str, Any], probe: bool = False) -> HealthRun:
    probe_settings = {"enabled": probe, "image": "untrusted/image:latest", "namespace": "default"}
    cfg = config(gatekeeperProbe=probe_settings)
    return examine(Host.at(root), cfg, desired, AgentState())


def gatekeeper_findings(run: HealthRun) -> list[Finding]:
    return [f for f in run.findings if f.component == "addons/gatekeeper"]


def test_an_installed_gatekeeper_refuses_the_guide_s_untrusted_image(
    server: Path, cluster: FakeCluster
) -> None:
    cluster.add_image(IMAGE)
    run = check(server, place(server, gatekeeper()), probe=True)
    (refused,) = gatekeeper_findings(run)
    assert refused.code == "gatekeeper.probe-refused"
    assert 'admission webhook "validation.gatekeeper.sh" denied the request: ' in refused.message
    assert "untrusted/image:latest" in refused.message
    assert run.healthy, codes(run.findings)
    assert run.wasm_ready
    # A server-side dry run: nothing was created.
    assert cluster.pods("default") == []


def test_without_policies_the_untrusted_image_is_admitted(
    server: Path, cluster: FakeCluster
) -> None:
    cluster.add_image(IMAGE)
    run = check(server, place(server, gatekeeper(policies=False)), probe=True)
    assert codes(gatekeeper_findings(run)) == ["gatekeeper.policy-not-enforced"]
    assert not run.healthy


def test_a_helmchart_k3s_never_applied(server: Path, cluster: FakeCluster) -> None:
    desired = place(server, gatekeeper())
    (server / MANIFESTS.lstrip("/") / "agentd-addon-gatekeeper.yaml").unlink()
    (finding,) = gatekeeper_findings(check(server, desired))
    assert finding.code == "gatekeeper.helmchart-missing"
    assert finding.fix == "converge"  # agentd's own file is gone: converging writes it again


def test_a_chart_missing_from_static_charts_fails_the_install_job_with_helm_s_words(
    server: Path, cluster: FakeCluster
) -> None:
    run = check(server, place(server, gatekeeper(), chart=False))
    (failing,) = gatekeeper_findings(run)
    assert failing.code == "gatekeeper.install-failing"
    assert "Gatekeeper's install job kube-system/helm-install-gatekeeper has failed" in (
        failing.message
    )
    # helm's own line, quoted from the job pod's log (through kubectl logs).
    assert "Error: INSTALLATION FAILED: failed to fetch https://10.43.0.1:443/static/charts/" in (
        failing.message
    )
    assert "404 Not Found" in failing.message
    assert CHART in failing.remedy
    assert not run.healthy


def test_images_missing_on_an_airgapped_node_and_a_blocking_webhook(
    server: Path, cluster: FakeCluster
) -> None:
    desired = place(server, gatekeeper({"validatingWebhookFailurePolicy": "Fail"}))
    run = check(server, desired, probe=True)
    assert codes(gatekeeper_findings(run)) == [
        "gatekeeper.images-missing",
        "gatekeeper.webhook-blocking",
    ]
    images, blocking = gatekeeper_findings(run)
    assert IMAGE in images.message
    assert "no image archive of the desired state holds it" in images.message
    assert "under images: in the desired state" in images.remedy
    assert blocking.severity == "critical"
    assert "every new pod, Wasm pods" in blocking.message
    # Admission is the cluster's: the node's own Wasm stack stays ready (and labelled).
    assert run.wasm_ready
    # The archive agentd places for images: makes the pods Ready (this k3s imports it).
    image_archive(server / f"{IMAGES.lstrip('/')}/gatekeeper.tar", [f"docker.io/{IMAGE}"])
    after = check(server, desired, probe=True)
    assert codes(gatekeeper_findings(after)) == ["gatekeeper.probe-refused"]
    assert after.healthy, codes(after.findings)


def test_with_failure_policy_ignore_an_unreachable_webhook_enforces_nothing(
    server: Path, cluster: FakeCluster
) -> None:
    cluster.add_image(IMAGE)
    desired = place(server, gatekeeper())
    cluster.gatekeeper_crash(True)
    try:
        run = check(server, desired, probe=True)
    finally:
        cluster.gatekeeper_crash(False)
    assert codes(gatekeeper_findings(run)) == [
        "gatekeeper.pods-not-ready",
        "gatekeeper.webhook-unreachable",
    ]
    pods, webhook = gatekeeper_findings(run)
    assert "CrashLoopBackOff" in pods.message
    assert "audit" not in pods.message  # only the controller-manager crashes
    assert webhook.severity == "warning"
    assert "no policy is enforced" in webhook.message
    assert healthy([webhook])  # a warning alone; the pods' error is what makes it unhealthy
    assert not run.healthy


def test_agentd_check_on_the_command_line_reports_the_blocking_webhook(
    server: Path, cluster: FakeCluster
) -> None:
    """`agentd check` as a person runs it: the settings file turns the probe on, the desired
    state is the one the last run kept; exit 0 while Gatekeeper refuses the untrusted pod, 2
    once its controller-manager crash-loops behind failurePolicy Fail."""
    cluster.add_image(IMAGE)
    desired = place(server, gatekeeper({"validatingWebhookFailurePolicy": "Fail"}))
    state = AgentState()
    state.desired = desired
    save_state(Host.at(server).paths, state)
    settings = {"health": {"nodeName": "edge-1", "gatekeeperProbe": {"enabled": True}}}
    install(server, "/etc/wasm-edge/agentd.yaml", yaml.safe_dump(settings).encode(), 0o644)
    node = Node(server)
    res = node.agentd("check", "--json")
    assert res.code == 0, res.stdout + res.stderr
    found = {f["code"]: f for f in res.json()["findings"]}
    assert "untrusted/image:latest" in found["gatekeeper.probe-refused"]["message"]
    cluster.gatekeeper_crash(True)
    res = node.agentd("check")
    assert res.code == 2, res.stdout + res.stderr
    assert "UNHEALTHY" in res.stdout
    assert "gatekeeper.webhook-blocking" in res.stdout
    assert "gatekeeper.probe" not in res.stdout  # the probe would only repeat the webhook's cause
