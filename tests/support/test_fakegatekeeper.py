"""The real kubectl against the fake's k3s deploy controller, helm-controller and Gatekeeper.

The node's files are the ones agentd writes (agentd.plan.addons renders the HelmChart and the
policies from the guide's fixture); the chart and image archives are real tarballs.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentd.desired.model import Gatekeeper
from agentd.plan.addons import helmchart_manifest, policies_manifest
from tests.support.fakekube import FakeCluster, kubectl
from tests.support.standins import real_kubectl

pytestmark = pytest.mark.skipif(real_kubectl() is None, reason="no real kubectl")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GUIDE = yaml.safe_load((FIXTURES / "gatekeeper/policies/guide.yaml").read_text())
IMAGE = "openpolicyagent/gatekeeper:v3.15.1"
MANIFESTS = "var/lib/rancher/k3s/server/manifests"
UNTRUSTED_POD = json.dumps(
    {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "untrusted", "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "untrusted/image:latest"}]},
    }
)
REFUSED = (
    'Error from server (Forbidden): error when creating "STDIN": admission webhook '
    '"validation.gatekeeper.sh" denied the request: [no-untrusted-images] image '
    "untrusted/image:latest is from an untrusted registry"
)
UNREACHABLE = (
    'Error from server (InternalError): error when creating "STDIN": Internal error occurred: '
    'failed calling webhook "validation.gatekeeper.sh": failed to call webhook: Post '
    '"https://gatekeeper-webhook-service.gatekeeper-system.svc:443/v1/admit?timeout=3s": '
    'no endpoints available for service "gatekeeper-webhook-service"'
)


def _chart(version: str = "3.15.1", name: str = "gatekeeper") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = f"apiVersion: v2\nname: {name}\nversion: {version}\n".encode()
        info = tarfile.TarInfo(f"{name}/Chart.yaml")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Node:
    """A server node's files as agentd writes them, and the real kubectl against the fake."""

    def __init__(self, root: Path, cluster: FakeCluster):
        self.root = root
        self.cluster = cluster
        self.kubeconfig = cluster.kubeconfig(root / "kubeconfig")

    def write(self, path: str, data: bytes) -> None:
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    def addon(
        self, values: dict[str, Any] | None = None, chart: bytes | None = None, **extra: Any
    ) -> None:
        gatekeeper = Gatekeeper.model_validate(
            {
                "version": "3.15.1",
                "chart": {"url": "https://mirror.example/gk.tgz", "sha256": "0" * 64},
                "values": values or {},
                "policies": GUIDE,
                **extra,
            }
        )
        self.write(f"{MANIFESTS}/agentd-addon-gatekeeper.yaml", helmchart_manifest(gatekeeper))
        policies = policies_manifest(gatekeeper)
        assert policies is not None
        self.write(f"{MANIFESTS}/agentd-addon-gatekeeper-policies.yaml", policies)
        if chart is not None:
            self.write("var/lib/rancher/k3s/server/static/charts/gatekeeper.tgz", chart)

    def __call__(self, *args: str, stdin: str | None = None) -> Any:
        return kubectl(self.kubeconfig, *args, home=self.root, stdin=stdin)

    def json(self, *args: str) -> Any:
        result = self(*args, "-o", "json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def probe(self, pod: str = UNTRUSTED_POD) -> Any:
        return self("create", "--dry-run=server", "-o", "json", "-f", "-", stdin=pod)


@pytest.fixture
def node(tmp_path: Path) -> Any:
    root = tmp_path / "root"
    root.mkdir()
    with FakeCluster(root) as cluster:
        yield Node(root, cluster)


def _schema_check(obj: Any, schema: dict[str, Any], where: str = "") -> None:
    """Every field of `obj` is in the CRD's structural schema, with its type."""
    kind = schema.get("type")
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "integer": int}
    if kind in types:
        assert isinstance(obj, types[kind]), f"{where}: {obj!r} is not {kind}"
    if isinstance(obj, dict) and "properties" in schema:
        for key, value in obj.items():
            assert key in schema["properties"], f"{where}.{key} is not in the CRD's schema"
            _schema_check(value, schema["properties"][key], f"{where}.{key}")
    if isinstance(obj, list) and "items" in schema:
        for i, item in enumerate(obj):
            _schema_check(item, schema["items"], f"{where}[{i}]")


def _crd_schema(name: str) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all((FIXTURES / name).read_text()) if d]
    schema: dict[str, Any] = docs[0]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _containers(pods: list[Any]) -> list[Any]:
    return [p["status"]["containerStatuses"][0] for p in pods]


def test_a_chart_in_static_charts_installs_gatekeeper_with_the_real_shapes(node: Node) -> None:
    node.cluster.add_image(IMAGE)
    node.addon(chart=_chart())
    chart = node.json("get", "helmchart", "-n", "kube-system", "gatekeeper")
    assert chart["status"]["jobName"] == "helm-install-gatekeeper"
    assert {c["type"]: c["status"] for c in chart["status"]["conditions"]} == {
        "JobCreated": "True",
        "Failed": "False",
    }
    _schema_check(chart, _crd_schema("helm-controller/helmchart-crd.yaml"), "helmchart")
    job = node.json("get", "job", "-n", "kube-system", "helm-install-gatekeeper")
    assert job["metadata"]["labels"] == {"helmcharts.helm.cattle.io/chart": "gatekeeper"}
    assert job["spec"]["backoffLimit"] == 1000
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["name"] == "helm"
    assert container["args"] == [
        "install",
        "--namespace",
        "gatekeeper-system",
        "--create-namespace",
        "--version",
        "3.15.1",
    ]
    assert job["status"]["succeeded"] == 1
    assert job["status"]["conditions"][0]["type"] == "Complete"
    logs = node("logs", "-n", "kube-system", "job/helm-install-gatekeeper", "--tail=20")
    assert logs.returncode == 0, logs.stderr
    assert len(logs.stdout.splitlines()) == 20
    assert "STATUS: deployed" in logs.stdout
    addons = node.json("get", "addon", "-n", "kube-system")["items"]
    by_name = {a["metadata"]["name"]: a for a in addons}
    policies = by_name["agentd-addon-gatekeeper-policies"]
    assert policies["spec"]["source"] == f"/{MANIFESTS}/agentd-addon-gatekeeper-policies.yaml"
    assert len(policies["spec"]["checksum"]) == 64
    assert {"Group": "templates.gatekeeper.sh", "Version": "v1", "Kind": "ConstraintTemplate"} in (
        policies["status"]["gvks"]
    )
    pods = node.json("get", "pods", "-n", "gatekeeper-system")["items"]
    planes = sorted(p["metadata"]["labels"]["control-plane"] for p in pods)
    assert planes == ["audit-controller"] + ["controller-manager"] * 3
    assert all(c["ready"] and c["image"] == f"docker.io/{IMAGE}" for c in _containers(pods))
    endpoints = node.json(
        "get", "endpoints", "-n", "gatekeeper-system", "gatekeeper-webhook-service"
    )
    assert len(endpoints["subsets"][0]["addresses"]) == 3
    assert endpoints["subsets"][0]["ports"][0]["port"] == 8443
    vwc = node.json(
        "get", "validatingwebhookconfiguration", "gatekeeper-validating-webhook-configuration"
    )
    hooks = {h["name"]: h for h in vwc["webhooks"]}
    assert hooks["validation.gatekeeper.sh"]["failurePolicy"] == "Ignore"  # the chart's default
    assert hooks["validation.gatekeeper.sh"]["timeoutSeconds"] == 3
    assert hooks["check-ignore-label.gatekeeper.sh"]["failurePolicy"] == "Fail"
    node.json("get", "mutatingwebhookconfiguration", "gatekeeper-mutating-webhook-configuration")
    templates = node.json("get", "constrainttemplates")["items"]
    assert sorted(t["metadata"]["name"] for t in templates) == [
        "k8suntrustedregistry",
        "k8swasmruntimeclass",
    ]
    for template in templates:
        _schema_check(template, _crd_schema("gatekeeper/constrainttemplate-crd-v3.15.1.yaml"))
    constraint = node.json("get", "k8suntrustedregistry", "no-untrusted-images")
    assert constraint["spec"]["parameters"] == {"registries": ["untrusted/"]}


def test_the_guides_untrusted_image_is_refused_and_a_dry_run_creates_nothing(node: Node) -> None:
    node.cluster.add_image(IMAGE)
    node.addon(chart=_chart())
    refused = node.probe()
    assert refused.returncode == 1
    assert refused.stderr.strip() == REFUSED
    assert node("create", "-f", "-", stdin=UNTRUSTED_POD).stderr.strip() == REFUSED
    trusted = UNTRUSTED_POD.replace("untrusted/image:latest", "registry.local/app:1")
    admitted = node.probe(trusted)
    assert admitted.returncode == 0, admitted.stderr
    assert json.loads(admitted.stdout)["metadata"]["name"] == "untrusted"
    missing = node("get", "pod", "untrusted", "-n", "default")
    assert missing.stderr.strip() == 'Error from server (NotFound): pods "untrusted" not found'


def test_a_missing_chart_fails_the_job_with_helms_message(node: Node) -> None:
    node.addon()
    job = node.json("get", "job", "-n", "kube-system", "helm-install-gatekeeper")
    assert job["status"]["active"] == 1
    assert "succeeded" not in job["status"]
    logs = node("logs", "-n", "kube-system", "job/helm-install-gatekeeper", "--tail=20")
    assert logs.stdout.splitlines()[-1] == (
        "Error: INSTALLATION FAILED: failed to fetch "
        "https://10.43.0.1:443/static/charts/gatekeeper.tgz : 404 Not Found"
    )
    pod = node.json("get", "pods", "-n", "kube-system")["items"][0]
    status = pod["status"]["containerStatuses"][0]
    assert status["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert status["lastState"]["terminated"]["exitCode"] == 1
    assert node.json("get", "pods", "-n", "gatekeeper-system")["items"] == []
    unserved = node("get", "constrainttemplates")
    assert 'the server doesn\'t have a resource type "constrainttemplates"' in unserved.stderr
    assert node.probe().returncode == 0  # no webhook registered: admitted


def test_a_chart_that_is_not_a_gzip_fails_as_helms_loader_does(node: Node) -> None:
    node.addon(chart=b"version: 3.15.1\n")
    logs = node("logs", "-n", "kube-system", "job/helm-install-gatekeeper")
    assert logs.stdout.splitlines()[-1] == (
        "Error: INSTALLATION FAILED: file '/home/klipper-helm/.cache/helm/repository/"
        "gatekeeper.tgz' does not appear to be a gzipped archive; got 'text/plain; charset=utf-8'"
    )


def test_helm_ignores_the_version_of_a_chart_given_by_url(node: Node) -> None:
    node.cluster.add_image(IMAGE)
    node.addon(chart=_chart(version="3.14.0"))
    job = node.json("get", "job", "-n", "kube-system", "helm-install-gatekeeper")
    assert job["status"]["succeeded"] == 1
    pods = node.json("get", "pods", "-n", "gatekeeper-system")["items"]
    assert {p["metadata"]["labels"]["helm.sh/chart"] for p in pods} == {"gatekeeper-3.14.0"}


def test_without_the_image_pods_back_off_and_fail_blocks_every_pod(node: Node) -> None:
    node.addon({"validatingWebhookFailurePolicy": "Fail"}, chart=_chart())
    pods = node.json("get", "pods", "-n", "gatekeeper-system")["items"]
    reasons = {c["state"]["waiting"]["reason"] for c in _containers(pods)}
    assert reasons <= {"ErrImagePull", "ImagePullBackOff"}
    again = node.json("get", "pods", "-n", "gatekeeper-system")["items"]
    assert {c["state"]["waiting"]["reason"] for c in _containers(again)} == {"ImagePullBackOff"}
    endpoints = node.json(
        "get", "endpoints", "-n", "gatekeeper-system", "gatekeeper-webhook-service"
    )
    assert "addresses" not in endpoints["subsets"][0]
    assert len(endpoints["subsets"][0]["notReadyAddresses"]) == 3
    blocked = node.probe(UNTRUSTED_POD.replace("untrusted/image:latest", "registry.local/app:1"))
    assert blocked.stderr.strip() == UNREACHABLE
    # gatekeeper-system itself is outside the webhook's namespaceSelector
    own = UNTRUSTED_POD.replace('"default"', '"gatekeeper-system"')
    assert node.probe(own).returncode == 0


def test_with_ignore_an_unreachable_webhook_admits(node: Node) -> None:
    node.addon(chart=_chart())
    assert node.probe().returncode == 0


def test_an_image_archive_in_agent_images_makes_the_pods_ready(node: Node) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        manifest = json.dumps([{"Config": "c.json", "RepoTags": [IMAGE], "Layers": []}]).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
    node.write("var/lib/rancher/k3s/agent/images/gatekeeper.tar", buf.getvalue())
    node.addon(chart=_chart())
    pods = node.json("get", "pods", "-n", "gatekeeper-system")["items"]
    assert all(c["ready"] for c in _containers(pods))


def test_a_crash_looping_controller_manager_leaves_no_endpoint(node: Node) -> None:
    node.cluster.add_image(IMAGE)
    node.addon({"validatingWebhookFailurePolicy": "Fail"}, chart=_chart())
    node.cluster.gatekeeper_crash(True)
    pods = node.json(
        "get", "pods", "-n", "gatekeeper-system", "-l", "control-plane=controller-manager"
    )
    assert {c["state"]["waiting"]["reason"] for c in _containers(pods["items"])} == {
        "CrashLoopBackOff"
    }
    assert node.probe().stderr.strip() == UNREACHABLE


def test_config_exclusions_and_warn_constraints(node: Node) -> None:
    node.cluster.add_image(IMAGE)
    config = {"match": [{"excludedNamespaces": ["kube-*"], "processes": ["*"]}]}
    node.addon(chart=_chart(), config=config)
    in_kube_system = UNTRUSTED_POD.replace('"default"', '"kube-system"')
    assert node.probe(in_kube_system).returncode == 0
    warned = [dict(p) for p in GUIDE]
    warned[1] = {**warned[1], "spec": {**warned[1]["spec"], "enforcementAction": "warn"}}
    node.addon(chart=_chart(), policies=warned)
    result = node.probe()
    assert result.returncode == 0, result.stderr
    assert (
        "Warning: [no-untrusted-images] image untrusted/image:latest is from an untrusted "
        "registry" in result.stderr
    )
