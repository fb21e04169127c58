"""Gatekeeper's health on a k3s server, from recorded API objects (fixtures/kube/README.md)."""

from __future__ import annotations

import copy
import io
import json
import subprocess
import sys
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from agentd.health.addons import archive_images, check_addons, normalized
from agentd.health.findings import CheckInput, Finding, healthy
from agentd.health.kube import Kube
from agentd.health.run import check_input
from agentd.system.commands import CommandResult
from agentd.system.host import Host
from tests.unit.health.sandbox import SERVER, codes, config, inputs, install, k3s_node

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "kube"
MANIFEST = "/var/lib/rancher/k3s/server/manifests/agentd-addon-gatekeeper.yaml"
IMAGES = "/var/lib/rancher/k3s/agent/images"
GATEKEEPER_IMAGE = "openpolicyagent/gatekeeper:v3.15.1"
DESIRED: dict[str, Any] = {
    **SERVER,
    "addons": {"gatekeeper": {"version": "3.15.1", "chart": {"url": "x", "sha256": "0" * 64}}},
    "images": [{"name": "gatekeeper", "artifacts": {}}],
}
# kubectl's own words for a missing object and a resource type the server does not serve.
HELM_LOG = (
    "+ helm_v3 install --namespace gatekeeper-system --create-namespace --version 3.15.1 "
    "gatekeeper https://10.43.0.1:443/static/charts/gatekeeper.tgz\n"
    "Error: INSTALLATION FAILED: failed to fetch https://10.43.0.1:443/static/charts/"
    "gatekeeper.tgz : 404 Not Found\n"
)
DENIED = (
    'Error from server (Forbidden): error when creating "STDIN": admission webhook '
    '"validation.gatekeeper.sh" denied the request: [untrusted-registry] image '
    "untrusted/image:latest comes from an untrusted registry"
)


def fixture(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return doc


def ok(obj: Any) -> CommandResult:
    return CommandResult((), 0, json.dumps(obj) if not isinstance(obj, str) else obj, "")


def not_found(kind: str, name: str) -> CommandResult:
    return CommandResult((), 1, "", f'Error from server (NotFound): {kind} "{name}" not found\n')


def complete(job: dict[str, Any]) -> dict[str, Any]:
    done = copy.deepcopy(job)
    done["status"] = {
        "completionTime": "2026-12-03T09:01:50Z",
        "conditions": [
            {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached"},
            {"type": "Complete", "status": "True", "reason": "CompletionsReached"},
        ],
        "ready": 0,
        "startTime": "2026-12-03T09:00:02Z",
        "succeeded": 1,
        "terminating": 0,
        "uncountedTerminatedPods": {},
    }
    return done


class Cluster:
    """A scripted `k3s kubectl`: each answer keyed by its arguments; every call is recorded."""

    def __init__(self, **answers: CommandResult) -> None:
        self.answers = {
            "helmchart": ok(fixture("helmchart-gatekeeper.json")),
            "job": ok(complete(fixture("job-helm-install-gatekeeper.json"))),
            "jobpods": ok({"apiVersion": "v1", "kind": "List", "items": []}),
            "logs": ok(HELM_LOG),
            "webhook": ok(fixture("vwc-gatekeeper.json")),
            "pods": ok(fixture("pods-gatekeeper-ready.json")),
            "endpoints": ok(ready_endpoints()),
            "probe": CommandResult((), 1, "", DENIED + "\n"),
        }
        self.answers.update(answers)
        self.calls: list[list[str]] = []

    def __call__(
        self, argv: Sequence[str], timeout: float, input_bytes: Optional[bytes] = None
    ) -> CommandResult:
        args = list(argv[3:])  # k3s kubectl --cache-dir=...
        self.calls.append(args)
        key = {
            ("get", "helmchart"): "helmchart",
            ("get", "job"): "job",
            ("get", "validatingwebhookconfiguration"): "webhook",
            ("get", "endpoints"): "endpoints",
            ("create", "--dry-run=server"): "probe",
        }.get((args[0], args[1]))
        if args[:2] == ["get", "pods"]:
            key = "jobpods" if "kube-system" in args else "pods"
        elif args[0] == "logs":
            key = "logs"
        assert key is not None, args
        if key == "probe":
            assert input_bytes is not None
            pod = json.loads(input_bytes)
            assert pod["spec"]["containers"][0]["image"] == "untrusted/image:latest"
        return self.answers[key]


def ready_endpoints() -> dict[str, Any]:
    ep = fixture("endpoints-gatekeeper-webhook-service.json")
    subset = ep["subsets"][0]
    subset["addresses"] = subset.pop("notReadyAddresses")
    return ep


@pytest.fixture
def node(tmp_path: Path) -> Path:
    root = tmp_path / "node"
    k3s_node(root)  # k3s v1.30.4+k3s1: it imports agent/images at start only
    install(root, MANIFEST, b"# agentd's HelmChart\n", 0o644)
    return root


def run(
    root: Path,
    cluster: Cluster,
    desired: Mapping[str, Any] = DESIRED,
    probe: bool = False,
    kube: bool = True,
) -> list[Finding]:
    inp: CheckInput = inputs(root, dict(desired))
    inp.runner = cluster
    if kube:
        inp.notes["kube"] = Kube(inp, root / "usr/local/bin/k3s")
    if probe:
        inp.gatekeeper_probe_image = "untrusted/image:latest"
    return check_addons(inp)


def only(findings: list[Finding]) -> Finding:
    assert len(findings) == 1, codes(findings)
    return findings[0]


@pytest.mark.parametrize(
    "case",
    [
        lambda d: {k: v for k, v in d.items() if k != "addons"},
        lambda d: {
            **d,
            "components": {**d["components"], "k3s": {**d["components"]["k3s"], "role": "agent"}},
        },
        None,  # no working kube: check_k3s found the API down
    ],
)
def test_nothing_is_asked_without_gatekeeper_on_a_working_server(
    node: Path, case: Optional[Callable[[dict[str, Any]], dict[str, Any]]]
) -> None:
    cluster = Cluster()
    desired = case(DESIRED) if case else DESIRED
    assert run(node, cluster, desired, kube=case is not None) == []
    assert cluster.calls == []


def test_a_helmchart_k3s_has_not_applied_names_its_file_and_where_to_look(node: Path) -> None:
    cluster = Cluster(helmchart=not_found("helmcharts.helm.cattle.io", "gatekeeper"))
    finding = only(run(node, cluster))
    assert finding.code == "gatekeeper.helmchart-missing"
    assert finding.severity == "error"
    assert MANIFEST in finding.message
    assert "k3s kubectl describe addon -n kube-system agentd-addon-gatekeeper" in finding.remedy
    assert "journalctl -u k3s.service" in finding.remedy
    assert finding.fix is None
    assert len(cluster.calls) == 1  # nothing behind a missing HelmChart is asked


def test_a_cluster_without_helm_controller_says_so(node: Path) -> None:
    said = 'error: the server doesn\'t have a resource type "helmchart"\n'
    finding = only(run(node, Cluster(helmchart=CommandResult((), 1, "", said))))
    assert finding.code == "gatekeeper.no-helm-controller"
    assert "disable-helm-controller" in finding.remedy


def test_an_install_job_still_running_is_not_unhealthy(node: Path) -> None:
    cluster = Cluster(job=ok(fixture("job-helm-install-gatekeeper.json")))
    findings = run(node, cluster)
    assert codes(findings) == ["gatekeeper.installing"]
    assert healthy(findings)
    assert not any(c[0] == "logs" for c in cluster.calls)


def test_a_failing_upgrade_under_a_blocking_webhook_says_both(node: Path) -> None:
    """An upgrade's job failing while the release before it still has its webhook registered:
    that webhook, down with failurePolicy Fail, is the cluster-wide emergency."""
    pod = fixture("pod-helm-install-crashloop.json")
    cluster = Cluster(
        job=ok(fixture("job-helm-install-gatekeeper.json")),
        jobpods=ok({"kind": "List", "items": [pod]}),
        webhook=ok(down("Fail")),
        endpoints=not_found("endpoints", "gatekeeper-webhook-service"),
    )
    assert codes(run(node, cluster)) == [
        "gatekeeper.install-failing",
        "gatekeeper.webhook-blocking",
    ]


def test_an_install_job_that_gave_up(node: Path) -> None:
    job = fixture("job-helm-install-gatekeeper.json")
    job["status"] = {
        "conditions": [
            {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded"},
            {
                "type": "Failed",
                "status": "True",
                "reason": "BackoffLimitExceeded",
                "message": "Job has reached the specified backoff limit",
            },
        ],
        "failed": 1,
        "startTime": "2026-12-03T09:00:02Z",
    }
    finding = only(run(node, Cluster(job=ok(job))))
    assert finding.code == "gatekeeper.install-failed"
    assert "Job has reached the specified backoff limit" in finding.message
    assert "its pods are gone" in finding.message
    assert "k3s kubectl delete job -n kube-system helm-install-gatekeeper" in finding.remedy


def test_a_job_helm_controller_could_not_create(node: Path) -> None:
    chart = fixture("helmchart-gatekeeper.json")
    chart["status"] = {
        "conditions": [
            {"type": "JobCreated", "status": "False"},
            {
                "type": "Failed",
                "status": "True",
                "reason": "Job create failed",
                "message": "Failed to generate Job: secrets not found",
            },
        ]
    }
    cluster = Cluster(helmchart=ok(chart), job=not_found("jobs.batch", "helm-install-gatekeeper"))
    finding = only(run(node, cluster))
    assert finding.code == "gatekeeper.install-failed"
    assert "Job create failed: Failed to generate Job: secrets not found" in finding.message


def test_a_webhook_configuration_gone_after_the_install(node: Path) -> None:
    name = "gatekeeper-validating-webhook-configuration"
    cluster = Cluster(webhook=not_found("validatingwebhookconfigurations", name))
    finding = only(run(node, cluster))
    assert finding.code == "gatekeeper.webhook-missing"
    assert name in finding.message
    assert "no policy is enforced" in finding.message


def down(policy: str) -> dict[str, Any]:
    config = fixture("vwc-gatekeeper.json")
    config["webhooks"][0]["failurePolicy"] = policy
    return config


def docker_archive(tags: list[str]) -> bytes:
    """A `docker save` archive's index: manifest.json with RepoTags (its layers left out)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        data = json.dumps([{"Config": "blobs/sha256/aa", "RepoTags": tags, "Layers": []}]).encode()
        member = tarfile.TarInfo("manifest.json")
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    return out.getvalue()


@pytest.mark.parametrize(
    ("archive", "data", "said"),
    [
        (
            "gatekeeper.tar",
            docker_archive([GATEKEEPER_IMAGE]),
            "gatekeeper.tar in /var/lib/rancher/k3s/agent/images holds it, but k3s "
            "v1.30.4+k3s1 imports that directory only at its start",
        ),
        (
            "gatekeeper.tar",
            docker_archive(["openpolicyagent/gatekeeper-crds:v3.15.1"]),
            "no image archive of the desired state holds it (placed: gatekeeper.tar)",
        ),
        ("gatekeeper.tar.zst", b"(zstd)", "gatekeeper.tar.zst in /var/lib/rancher/k3s/agent"),
    ],
)
def test_missing_images_are_traced_to_the_node_s_archives(
    node: Path, archive: str, data: bytes, said: str
) -> None:
    install(node, f"{IMAGES}/{archive}", data, 0o644)
    cluster = Cluster(pods=ok(fixture("pods-gatekeeper-image-pull.json")))
    finding = only(run(node, cluster))
    assert finding.code == "gatekeeper.images-missing"
    assert said in finding.message
    if archive == "gatekeeper.tar" and GATEKEEPER_IMAGE.encode() in data:
        assert "systemctl restart k3s.service" in finding.remedy
        assert finding.fix is None  # a server's restart stops the cluster's API: a person's call


def test_a_webhook_service_with_no_endpoints_object_is_unreachable(node: Path) -> None:
    cluster = Cluster(
        webhook=ok(down("Fail")),
        endpoints=not_found("endpoints", "gatekeeper-webhook-service"),
    )
    assert codes(run(node, cluster)) == ["gatekeeper.webhook-blocking"]


def test_a_probe_refused_for_another_reason_is_reported_as_it_is(node: Path) -> None:
    cluster = Cluster(probe=not_found("namespaces", "default"))
    finding = only(run(node, cluster, probe=True))
    assert (finding.code, finding.severity) == ("gatekeeper.probe-error", "error")
    assert 'namespaces "default" not found' in finding.message
    assert ["create", "--dry-run=server", "-o", "json", "-f", "-"] in cluster.calls


def test_the_probe_is_opt_in_and_takes_its_image_from_the_settings(tmp_path: Path) -> None:
    host = Host.at(tmp_path)
    assert check_input(host, config(), None, None).gatekeeper_probe_image is None
    on = config(gatekeeperProbe={"enabled": True, "image": "evil/x:1", "namespace": "apps"})
    inp = check_input(host, on, None, None)
    assert (inp.gatekeeper_probe_image, inp.gatekeeper_probe_namespace) == ("evil/x:1", "apps")


def test_archive_images_reads_docker_and_oci_indexes(tmp_path: Path) -> None:
    docker = tmp_path / "a.tar"
    docker.write_bytes(docker_archive(["busybox", "registry.local:5000/x/y:2"]))
    assert archive_images(docker) == {
        "docker.io/library/busybox:latest",
        "registry.local:5000/x/y:2",
    }
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": "sha256:" + "b" * 64,
                "size": 1,
                "annotations": {
                    "io.containerd.image.name": "docker.io/openpolicyagent/gatekeeper:v3.15.1",
                    "org.opencontainers.image.ref.name": "v3.15.1",
                },
            }
        ],
    }
    oci = tmp_path / "b.tar.gz"
    with tarfile.open(oci, "w:gz") as tar:
        data = json.dumps(index).encode()
        member = tarfile.TarInfo("index.json")
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    assert archive_images(oci) == {"docker.io/openpolicyagent/gatekeeper:v3.15.1"}
    broken = tmp_path / "c.tar"
    broken.write_bytes(b"not a tar")
    assert archive_images(broken) is None
    assert normalized(GATEKEEPER_IMAGE) == "docker.io/openpolicyagent/gatekeeper:v3.15.1"
    assert normalized("localhost/x") == "localhost/x:latest"


def test_a_node_without_add_ons_never_imports_their_checks() -> None:
    """The daemon's memory stays its own where there are no add-ons (most nodes)."""
    code = (
        "import sys\n"
        "from agentd.health import checks\n"
        "from agentd.health.findings import CheckInput\n"
        "from pathlib import Path\nfrom agentd.core.paths import Paths\n"
        "inp = CheckInput(paths=Paths(Path('/nonexistent')), facts=None, desired={})\n"
        "assert checks.check_addons(inp) == []\n"
        "print('agentd.health.addons' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.stdout.strip() == "False", out.stderr
