"""The real kubectl against the fake k3s API server, and the probe pods the fake node runs.

The fake (tests/support/fakekube.py) stands in for the API server, and for the kubelet, containerd
and
crun running a pod on this node; kubectl is the machine's real one. Node state is written here
as agentd writes it (stand-in binaries, agentd.render's template and RuntimeClasses), not by
running agentd.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from agentd.desired.model import RuntimeClass
from agentd.health.probe import PROBE_OUTPUT, probe_module
from agentd.plan.render import containerd_template, containerd_template_path, runtimeclass_manifest
from tests.support.fakekube import (
    FakeCluster,
    go_filepath_match,
    k3s_node,
    kubectl,
    load_fixture,
    merge_patch,
    normalize_image,
    parse_toml_tables,
    strategic_merge_patch,
)
from tests.support.standins import crun_binary, real_kubectl

pytestmark = pytest.mark.skipif(
    real_kubectl() is None, reason="no real kubectl (Debian: apt-get install kubernetes-client)"
)

PROBE_IMAGE = "registry.local/agentd-wasm-probe:1"
# crun 1.21's own messages, recorded on Debian 13 (tests/fixtures/real/README.md).
REAL = Path(__file__).resolve().parents[1] / "fixtures" / "real"
CRUN_WASM = "crun-wasm"  # agentd's runtime and RuntimeClass name (README: "Where reality differs")


# --- the node, written the way agentd writes it ------------------------------------------------


def _put(root: Path, node_path: str, data: bytes, mode: int = 0o644) -> Path:
    path = root / node_path.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


def wasm_node(
    root: Path,
    *,
    crun_wasm: bool = True,
    pod_annotations: bool = True,
    libwasmedge: bool = True,
    k3s_version: str = "v1.30.4+k3s1",
) -> Path:
    """A node as agentd leaves it: crun 1.15 (stand-in) in /usr/local/bin, WasmEdge's library in
    /usr/local/lib, agentd's containerd template and RuntimeClass manifest."""
    _put(root, "/usr/local/bin/crun", crun_binary("1.15", wasm=crun_wasm), 0o755)
    if libwasmedge:
        _put(root, "/usr/local/lib/libwasmedge.so.0.1.0", b"stand-in library")
        (root / "usr/local/lib/libwasmedge.so.0").symlink_to("libwasmedge.so.0.1.0")
    template = containerd_template(k3s_version, "/usr/local/bin/crun").decode()
    if not pod_annotations:
        template = "".join(
            line for line in template.splitlines(True) if "pod_annotations" not in line
        )
    _put(root, containerd_template_path(k3s_version), template.encode())
    classes = [
        RuntimeClass(name=CRUN_WASM, handler=CRUN_WASM, nodeSelector={"wasm-runtime": "enabled"})
    ]
    _put(
        root,
        "/var/lib/rancher/k3s/server/manifests/agentd-runtimeclasses.yaml",
        runtimeclass_manifest(classes),
    )
    return root


def probe_pod(
    name: str = "agentd-wasm-probe",
    *,
    runtime_class: str = CRUN_WASM,
    node: str | None = "edge-1",
    image: str = PROBE_IMAGE,
    restart_policy: str = "Never",
    extra_spec: Mapping[str, Any] | None = None,
) -> str:
    spec: dict[str, Any] = {
        "runtimeClassName": runtime_class,
        "restartPolicy": restart_policy,
        "containers": [{"name": "probe", "image": image, "command": ["/probe.wasm"]}],
        **(extra_spec or {}),
    }
    if node is not None:
        spec["nodeName"] = node
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": "default",
                "annotations": {"module.wasm.image/variant": "compat-smart"},
            },
            "spec": spec,
        }
    )


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[FakeCluster]:
    """One fake server for the module; `kube` resets it for every test."""
    with FakeCluster() as fake:
        yield fake


class Kube:
    """The real kubectl against the module's cluster, with this test's own HOME (cache)."""

    def __init__(self, cluster: FakeCluster, tmp: Path):
        self.cluster = cluster
        self.root = tmp / "root"
        self.root.mkdir()
        self.home = tmp / "home"
        self.config = cluster.kubeconfig(tmp / "kubeconfig")

    def __call__(self, *args: str, stdin: str | None = None) -> Any:
        return kubectl(self.config, *args, home=self.home, stdin=stdin)

    def json(self, *args: str) -> Any:
        result = self(*args, "-o", "json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def create(self, manifest: str) -> Any:
        return self("create", "--validate=false", "-f", "-", "-o", "json", stdin=manifest)

    def run_probe(self, manifest: str | None = None, name: str = "agentd-wasm-probe") -> Any:
        """Create the probe pod, then read it as a health check does: the pod and its logs."""
        created = self.create(manifest or probe_pod(name))
        assert created.returncode == 0, created.stderr
        pod = self.json("get", "pod", name, "-n", "default")
        logs = self("logs", name, "-n", "default")
        return pod, logs


@pytest.fixture
def kube(cluster: FakeCluster, tmp_path: Path) -> Iterator[Kube]:
    cluster.reset()
    k = Kube(cluster, tmp_path)
    cluster.root = k.root
    cluster.add_image(PROBE_IMAGE, {"/probe.wasm": probe_module()})
    yield k
    cluster.pod_startup_reads = 0


def _last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def _container(pod: Mapping[str, Any]) -> Any:
    return pod["status"]["containerStatuses"][0]


def _conditions(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {c["type"]: c for c in obj["status"]["conditions"]}


# --- /readyz, discovery, the connection --------------------------------------------------------


def test_readyz_answers_ok(kube: Kube) -> None:
    result = kube("get", "--raw", "/readyz")
    assert (result.returncode, result.stdout) == (0, "ok")


def test_readyz_failing_prints_the_checks_kubectl_shows(kube: Kube) -> None:
    kube.cluster.set_readyz(False)
    result = kube("get", "--raw", "/readyz")
    assert result.returncode == 1
    assert result.stdout == ""
    assert _last_line(result.stderr).startswith(
        'Error from server (InternalError): an error on the server ("[+]ping ok'
    )
    assert "[-]etcd failed: reason withheld" in result.stderr
    assert "readyz check failed" in result.stderr


def test_discovery_is_served_and_cached_in_this_tests_home(kube: Kube) -> None:
    kube.cluster.clear_requests()
    assert kube("get", "node", "edge-1", "-o", "name").stdout == "node/edge-1\n"
    first = [(r.method, r.path) for r in kube.cluster.requests]
    assert ("GET", "/api") in first
    assert ("GET", "/api/v1/nodes/edge-1") in first
    cache = kube.home / ".kube" / "cache" / "discovery" / f"127.0.0.1_{kube.cluster.port}"
    assert cache.is_dir()
    kube.cluster.clear_requests()
    assert kube("get", "node", "edge-1", "-o", "name").returncode == 0
    again = [r.path for r in kube.cluster.requests]
    assert "/api" not in again  # discovery came from the cache
    assert "/apis" not in again


def test_old_kubectl_walks_the_legacy_discovery(tmp_path: Path) -> None:
    """kubectl before 1.26 (Debian 12 ships 1.20) reads /api, /apis and each group version;
    newer ones fall back to that walk when the server has no aggregated discovery."""
    with FakeCluster(aggregated_discovery=False) as legacy:
        config = legacy.kubeconfig(tmp_path / "kubeconfig")
        result = kubectl(config, "get", "node", "edge-1", "-o", "name", home=tmp_path)
        assert (result.returncode, result.stdout) == (0, "node/edge-1\n")
        paths = [r.path for r in legacy.requests]
        assert {"/api", "/apis", "/api/v1", "/apis/node.k8s.io/v1"} <= set(paths)
        api = next(r for r in legacy.requests if r.path == "/api")
        assert api.status == 200


def test_plain_http_serves_without_credentials(tmp_path: Path) -> None:
    """tls=False: http://, and no authentication (kubectl sends credentials over https only)."""
    with FakeCluster(tls=False) as plain:
        config = plain.kubeconfig(tmp_path / "kubeconfig")
        assert plain.url.startswith("http://127.0.0.1:")
        assert "certificate-authority-data" not in config.read_text()
        result = kubectl(config, "get", "node", "edge-1", "-o", "name", home=tmp_path)
        assert (result.returncode, result.stdout) == (0, "node/edge-1\n")


def test_a_wrong_token_is_refused(kube: Kube, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text(kube.config.read_text().replace(kube.cluster.token, "not-the-token"))
    result = kubectl(wrong, "get", "--raw", "/readyz", home=tmp_path / "other")
    assert result.returncode == 1
    assert _last_line(result.stderr).startswith("error: You must be logged in to the server")


def test_a_stopped_server_refuses_and_a_restarted_one_answers(tmp_path: Path) -> None:
    """k3s not running: kubectl's own message, exit code 1; a restart keeps the port."""
    with FakeCluster() as fake:
        config = fake.kubeconfig(tmp_path / "kubeconfig")
        port = fake.port
        fake.stop()
        for args in (("get", "--raw", "/readyz"), ("get", "node", "edge-1", "-o", "json")):
            result = kubectl(config, *args, home=tmp_path)
            assert result.returncode == 1
            assert result.stdout == ""
            assert _last_line(result.stderr) == (
                f"The connection to the server 127.0.0.1:{port} was refused - did you specify "
                "the right host or port?"
            )
        fake.start()
        assert fake.port == port
        assert kubectl(config, "get", "--raw", "/readyz", home=tmp_path).stdout == "ok"


def test_a_server_error_reaches_kubectl_as_a_status(kube: Kube) -> None:
    kube.cluster.fail(500, times=1, path="/nodes/")
    failed = kube("get", "node", "edge-1", "-o", "json")
    assert failed.returncode == 1
    assert _last_line(failed.stderr) == (
        "Error from server (InternalError): Internal error occurred: injected by "
        "tests/support/fakekube.py"
    )
    assert kube("get", "node", "edge-1", "-o", "json").returncode == 0  # only once


# --- nodes -------------------------------------------------------------------------------------


def test_get_node_has_the_shape_of_a_k3s_server_node(kube: Kube) -> None:
    node = kube.json("get", "node", "edge-1")
    assert (node["apiVersion"], node["kind"], node["metadata"]["name"]) == ("v1", "Node", "edge-1")
    labels, annotations = node["metadata"]["labels"], node["metadata"]["annotations"]
    assert labels["node-role.kubernetes.io/control-plane"] == "true"
    assert labels["node.kubernetes.io/instance-type"] == "k3s"
    assert labels["kubernetes.io/hostname"] == "edge-1"
    assert annotations["k3s.io/hostname"] == "edge-1"
    assert json.loads(annotations["k3s.io/node-args"])[0] == "server"
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == "v1.30.4+k3s1"
    assert info["containerRuntimeVersion"] == "containerd://1.7.20-k3s1"
    ready = _conditions(node)["Ready"]
    assert (ready["status"], ready["reason"]) == ("True", "KubeletReady")
    assert node == kube.cluster.node("edge-1")


def test_get_nodes_lists_every_node(kube: Kube) -> None:
    kube.cluster.add_node(k3s_node("edge-2", role="agent", arch="arm64"))
    listing = kube.json("get", "nodes")
    assert listing["kind"] == "List"
    names = {item["metadata"]["name"]: item for item in listing["items"]}
    assert set(names) == {"edge-1", "edge-2"}
    assert all(item["kind"] == "Node" for item in listing["items"])
    agent = names["edge-2"]["metadata"]["labels"]
    assert "node-role.kubernetes.io/control-plane" not in agent
    assert agent["kubernetes.io/arch"] == "arm64"


def test_a_missing_node_is_notfound(kube: Kube) -> None:
    result = kube("get", "node", "x", "-o", "json")
    assert result.returncode == 1
    assert result.stdout == ""
    assert _last_line(result.stderr) == 'Error from server (NotFound): nodes "x" not found'


def test_a_not_ready_node_shows_the_reason_and_the_taints(kube: Kube) -> None:
    kube.cluster.set_node_ready("edge-1", False, message="PLEG is not healthy")
    node = kube.json("get", "node", "edge-1")
    ready = _conditions(node)["Ready"]
    assert (ready["status"], ready["reason"], ready["message"]) == (
        "False",
        "KubeletNotReady",
        "PLEG is not healthy",
    )
    assert {(t["key"], t["effect"]) for t in node["spec"]["taints"]} == {
        ("node.kubernetes.io/not-ready", "NoSchedule"),
        ("node.kubernetes.io/not-ready", "NoExecute"),
    }
    kube.cluster.set_node_ready("edge-1", None)  # the kubelet stopped posting
    unknown = kube.cluster.node("edge-1")
    assert {(c["status"], c["reason"]) for c in unknown["status"]["conditions"]} == {
        ("Unknown", "NodeStatusUnknown")
    }
    assert _conditions(unknown)["Ready"]["message"] == "Kubelet stopped posting node status."
    assert {t["key"] for t in unknown["spec"]["taints"]} == {"node.kubernetes.io/unreachable"}
    kube.cluster.set_node_ready("edge-1", True)
    healthy = kube.cluster.node("edge-1")
    assert "taints" not in healthy["spec"]
    assert _conditions(healthy)["MemoryPressure"]["reason"] == "KubeletHasSufficientMemory"
    assert _conditions(healthy)["Ready"]["status"] == "True"


def test_label_a_node_and_remove_the_label(kube: Kube) -> None:
    added = kube("label", "node", "edge-1", "wasm-runtime=enabled", "--overwrite")
    assert (added.returncode, added.stdout) == (0, "node/edge-1 labeled\n")
    assert kube.cluster.node("edge-1")["metadata"]["labels"]["wasm-runtime"] == "enabled"
    patch = [r for r in kube.cluster.requests if r.method == "PATCH"][-1]
    assert patch.content_type == "application/merge-patch+json"
    again = kube("label", "node", "edge-1", "wasm-runtime=enabled", "--overwrite")
    assert again.stdout == "node/edge-1 not labeled\n"
    removed = kube("label", "node", "edge-1", "wasm-runtime-")
    assert removed.returncode == 0
    assert removed.stdout in ("node/edge-1 unlabeled\n", "node/edge-1 labeled\n")  # kubectl < 1.27
    labels = kube.cluster.node("edge-1")["metadata"]["labels"]
    assert "wasm-runtime" not in labels
    assert labels["node-role.kubernetes.io/control-plane"] == "true"  # the rest is untouched
    missing = kube("label", "node", "nope", "wasm-runtime=enabled")
    assert _last_line(missing.stderr) == 'Error from server (NotFound): nodes "nope" not found'


def test_annotate_a_node_and_remove_an_annotation(kube: Kube) -> None:
    result = kube(
        "annotate",
        "node",
        "edge-1",
        "--overwrite",
        "agentd.wasm-edge.io/generation=12",
        "agentd.wasm-edge.io/result=converged",
    )
    assert result.returncode == 0
    assert result.stdout.startswith("node/edge-1 annotate")  # kubectl 1.27 drops the "d"
    annotations = kube.cluster.node("edge-1")["metadata"]["annotations"]
    assert annotations["agentd.wasm-edge.io/generation"] == "12"
    assert annotations["agentd.wasm-edge.io/result"] == "converged"
    assert annotations["k3s.io/hostname"] == "edge-1"
    assert kube("annotate", "node", "edge-1", "agentd.wasm-edge.io/generation-").returncode == 0
    annotations = kube.cluster.node("edge-1")["metadata"]["annotations"]
    assert "agentd.wasm-edge.io/generation" not in annotations
    assert annotations["agentd.wasm-edge.io/result"] == "converged"


# --- pods: the API server's part ---------------------------------------------------------------


def test_create_answers_the_pending_pod_with_the_servers_defaults(kube: Kube) -> None:
    wasm_node(kube.root)
    created = kube.create(probe_pod("p1", image="registry.local/probe"))
    assert created.returncode == 0, created.stderr
    pod = json.loads(created.stdout)
    assert pod["status"] == {"phase": "Pending", "qosClass": "BestEffort"}
    spec = pod["spec"]
    assert spec["serviceAccountName"] == "default"
    assert spec["containers"][0]["imagePullPolicy"] == "Always"  # no tag means :latest
    assert spec["containers"][0]["terminationMessagePath"] == "/dev/termination-log"
    assert {t["key"] for t in spec["tolerations"]} == {
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    }
    assert spec["volumes"][0]["name"].startswith("kube-api-access-")
    # The RuntimeClass's scheduling.nodeSelector is merged in at admission.
    assert spec["nodeSelector"] == {"wasm-runtime": "enabled"}
    again = kube.create(probe_pod("p1"))
    assert _last_line(again.stderr) == (
        'Error from server (AlreadyExists): error when creating "STDIN": pods "p1" already exists'
    )


def test_an_unknown_runtimeclass_is_rejected_at_creation(kube: Kube) -> None:
    wasm_node(kube.root)
    result = kube.create(probe_pod("p2", runtime_class="wasmedge"))
    assert result.returncode == 1
    assert _last_line(result.stderr) == (
        'Error from server (Forbidden): error when creating "STDIN": pods "p2" is forbidden: '
        'pod rejected: RuntimeClass "wasmedge" not found'
    )
    assert kube.cluster.pods() == []


def test_a_nodeselector_conflicting_with_the_runtimeclass_is_rejected(kube: Kube) -> None:
    wasm_node(kube.root)
    result = kube.create(probe_pod("p10", extra_spec={"nodeSelector": {"wasm-runtime": "no"}}))
    assert result.returncode == 1
    assert _last_line(result.stderr) == (
        'Error from server (Forbidden): error when creating "STDIN": pods "p10" is forbidden: '
        "conflict: runtimeClass.scheduling.nodeSelector[wasm-runtime] = enabled; "
        "pod.spec.nodeSelector[wasm-runtime] = no"
    )


def test_a_not_ready_node_takes_no_new_pods(kube: Kube) -> None:
    wasm_node(kube.root)
    kube.cluster.set_node_ready("edge-1", False)
    assert kube("label", "node", "edge-1", "wasm-runtime=enabled").returncode == 0
    assert kube.create(probe_pod("p11", node=None)).returncode == 0
    scheduled = _conditions(kube.json("get", "pod", "p11", "-n", "default"))["PodScheduled"]
    assert scheduled["message"].startswith(
        "0/1 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }."
    )


def test_delete_a_pod_then_ignore_that_it_is_gone(kube: Kube) -> None:
    wasm_node(kube.root)
    assert kube.create(probe_pod("p3")).returncode == 0
    deleted = kube("delete", "pod", "p3", "-n", "default", "--ignore-not-found", "--wait=false")
    assert (deleted.returncode, deleted.stdout) == (0, 'pod "p3" deleted\n')
    assert kube.cluster.pods() == []
    gone = kube("delete", "pod", "p3", "-n", "default", "--ignore-not-found", "--wait=false")
    assert (gone.returncode, gone.stdout, gone.stderr) == (0, "", "")
    missing = kube("get", "pod", "p3", "-n", "default", "-o", "json")
    assert _last_line(missing.stderr) == 'Error from server (NotFound): pods "p3" not found'


# --- pods: what the node does with the probe ---------------------------------------------------


def test_the_probe_succeeds_on_a_working_node(kube: Kube) -> None:
    wasm_node(kube.root)
    pod, logs = kube.run_probe()
    assert pod["status"]["phase"] == "Succeeded"
    terminated = _container(pod)["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (0, "Completed")
    assert (logs.returncode, logs.stdout) == (0, PROBE_OUTPUT.decode())
    # The same fields, in the same places, as a recorded Succeeded pod.
    real = load_fixture("pod-succeeded.json")
    assert set(pod["status"]) == set(real["status"])
    assert [c["type"] for c in pod["status"]["conditions"]] == [
        c["type"] for c in real["status"]["conditions"]
    ]
    assert _conditions(pod)["Ready"]["reason"] == "PodCompleted"
    assert set(_container(pod)) == set(_container(real))
    assert set(terminated) == set(_container(real)["state"]["terminated"])
    assert _container(pod)["containerID"].startswith("containerd://")


def test_crun_without_wasm_runs_the_module_as_a_native_program(kube: Kube) -> None:
    """crun without +WASM: execs /probe.wasm, which fails with ENOEXEC; crun reports it on the
    container's stderr (after the container started), so the logs hold crun's error line and
    never the probe's output."""
    wasm_node(kube.root, crun_wasm=False)
    pod, logs = kube.run_probe()
    assert pod["status"]["phase"] == "Failed"
    terminated = _container(pod)["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (1, "Error")
    assert _conditions(pod)["Ready"]["reason"] == "PodFailed"
    assert logs.returncode == 0
    line = json.loads(logs.stdout)
    assert line["msg"] == "exec container process `/probe.wasm`: Exec format error"
    assert line["level"] == "error"
    assert PROBE_OUTPUT.decode() not in logs.stdout


def test_a_template_without_pod_annotations_hides_the_variant_from_crun(kube: Kube) -> None:
    wasm_node(kube.root, pod_annotations=False)
    pod, logs = kube.run_probe()
    assert pod["status"]["phase"] == "Failed"
    assert _container(pod)["state"]["terminated"]["exitCode"] == 1
    assert json.loads(logs.stdout)["msg"].endswith("Exec format error")
    # The message is crun's own, as the real crun 1.21 prints it for a .wasm it execs natively.
    real = (REAL / "crun_run_wasm_no_annotation.stderr").read_text().strip()
    assert json.loads(logs.stdout)["msg"] == real


def test_a_module_without_an_execute_bit_and_no_annotation_is_refused_as_crun_does(
    kube: Kube,
) -> None:
    wasm_node(kube.root, pod_annotations=False)
    kube.cluster.add_image(PROBE_IMAGE, {"/probe.wasm": (probe_module(), 0o644)})
    pod, _ = kube.run_probe()
    terminated = _container(pod)["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (128, "StartError")
    real = (REAL / "crun_run_wasm_no_annotation_mode0644.stderr").read_text().strip()
    assert f"OCI runtime create failed: {real}: unknown" in terminated["message"]


def test_without_libwasmedge_crun_cannot_start_the_container(kube: Kube) -> None:
    wasm_node(kube.root, libwasmedge=False)
    pod, logs = kube.run_probe()
    assert pod["status"]["phase"] == "Failed"
    terminated = _container(pod)["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (128, "StartError")
    assert terminated["startedAt"] == "1970-01-01T00:00:00Z"
    assert terminated["message"] == (
        "failed to create containerd task: failed to create shim task: OCI runtime create "
        f"failed: {(REAL / 'crun_run_wasm_no_libwasmedge.stderr').read_text().strip()}: unknown"
    )
    assert (logs.returncode, logs.stdout) == (0, "")


def test_the_pod_goes_pending_then_running_then_succeeded(kube: Kube) -> None:
    wasm_node(kube.root)
    kube.cluster.pod_startup_reads = 2
    assert kube.create(probe_pod("p4")).returncode == 0
    states = []
    for _ in range(3):
        pod = kube.json("get", "pod", "p4", "-n", "default")
        states.append((pod["status"]["phase"], next(iter(_container(pod)["state"]))))
    assert states == [("Pending", "waiting"), ("Running", "running"), ("Succeeded", "terminated")]
    assert kube("logs", "p4", "-n", "default").stdout == PROBE_OUTPUT.decode()


def test_logs_of_a_pod_still_creating_are_refused_like_the_kubelet(kube: Kube) -> None:
    wasm_node(kube.root)
    kube.cluster.pod_startup_reads = 5
    assert kube.create(probe_pod("p5")).returncode == 0
    logs = kube("logs", "p5", "-n", "default")
    assert logs.returncode == 1
    assert _last_line(logs.stderr) == (
        'Error from server (BadRequest): container "probe" in pod "p5" is waiting to start: '
        "ContainerCreating"
    )


def test_an_unlabelled_node_leaves_the_pod_unschedulable_until_labelled(kube: Kube) -> None:
    wasm_node(kube.root)
    assert kube.create(probe_pod("p6", node=None)).returncode == 0
    pod = kube.json("get", "pod", "p6", "-n", "default")
    assert pod["status"]["phase"] == "Pending"
    scheduled = _conditions(pod)["PodScheduled"]
    assert (scheduled["status"], scheduled["reason"]) == ("False", "Unschedulable")
    assert scheduled["message"].startswith(
        "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
    )
    assert kube("label", "node", "edge-1", "wasm-runtime=enabled").returncode == 0
    pod = kube.json("get", "pod", "p6", "-n", "default")
    assert (pod["spec"]["nodeName"], pod["status"]["phase"]) == ("edge-1", "Succeeded")


def test_an_image_the_node_cannot_pull_keeps_the_pod_pending(kube: Kube) -> None:
    wasm_node(kube.root)
    assert kube.create(probe_pod("p7", image="registry.local/elsewhere:2")).returncode == 0
    first = kube.json("get", "pod", "p7", "-n", "default")
    assert first["status"]["phase"] == "Pending"
    assert _container(first)["state"]["waiting"]["reason"] == "ErrImagePull"
    assert "registry.local/elsewhere:2" in _container(first)["state"]["waiting"]["message"]
    later = kube.json("get", "pod", "p7", "-n", "default")
    assert _container(later)["state"]["waiting"]["reason"] == "ImagePullBackOff"
    logs = kube("logs", "p7", "-n", "default")
    assert _last_line(logs.stderr) == (
        'Error from server (BadRequest): container "probe" in pod "p7" is waiting to start: '
        "trying and failing to pull image"
    )


def test_the_module_can_come_from_a_hostpath_volume(kube: Kube) -> None:
    """The pause image every k3s node has, and the module from the node's own disk."""
    wasm_node(kube.root)
    _put(kube.root, "/var/lib/wasm-edge/probe/probe.wasm", probe_module())
    manifest = probe_pod(
        "p8",
        image="rancher/mirrored-pause:3.6",
        extra_spec={"volumes": [{"name": "m", "hostPath": {"path": "/var/lib/wasm-edge/probe"}}]},
    )
    doc = json.loads(manifest)
    doc["spec"]["containers"][0]["volumeMounts"] = [{"name": "m", "mountPath": "/probe"}]
    doc["spec"]["containers"][0]["command"] = ["/probe/probe.wasm"]
    pod, logs = kube.run_probe(json.dumps(doc), "p8")
    assert pod["status"]["phase"] == "Succeeded"
    assert logs.stdout == PROBE_OUTPUT.decode()


def test_without_the_runtime_in_containerd_the_sandbox_never_starts(kube: Kube) -> None:
    wasm_node(kube.root)
    (kube.root / containerd_template_path("v1.30.4+k3s1").lstrip("/")).unlink()
    pod, logs = kube.run_probe(name="agentd-wasm-probe")
    assert pod["status"]["phase"] == "Pending"
    assert _container(pod)["state"]["waiting"]["reason"] == "ContainerCreating"
    assert _conditions(pod)["PodReadyToStartContainers"]["status"] == "False"
    assert logs.returncode == 1
    assert kube.cluster.events("agentd-wasm-probe") == [
        (
            "FailedCreatePodSandBox",
            "Failed to create pod sandbox: rpc error: code = Unknown desc = failed to get "
            'sandbox runtime: no runtime for "crun-wasm" is configured',
        )
    ]


def test_a_template_defining_crun_again_breaks_containerd(kube: Kube) -> None:
    """k3s's base template already has runtimes."crun" when crun is on its PATH; TOML forbids
    a second definition, so containerd does not start and no pod sandbox can be made."""
    wasm_node(kube.root)
    path = kube.root / containerd_template_path("v1.30.4+k3s1").lstrip("/")
    path.write_text(path.read_text().replace('"crun-wasm"', '"crun"'))
    runtime_classes = kube.root / "var/lib/rancher/k3s/server/manifests/agentd-runtimeclasses.yaml"
    runtime_classes.write_text(
        runtime_classes.read_text().replace("handler: crun-wasm", "handler: crun")
    )
    pod, _ = kube.run_probe()
    assert _container(pod)["state"]["waiting"]["reason"] == "ContainerCreating"
    (reason, message) = kube.cluster.events("agentd-wasm-probe")[0]
    assert reason == "FailedCreatePodSandBox"
    assert "is defined twice" in message


def test_restart_policy_always_crash_loops_instead_of_failing(kube: Kube) -> None:
    wasm_node(kube.root, libwasmedge=False)
    created = kube.create(probe_pod("p9", restart_policy="Always"))
    assert created.returncode == 0
    pod = kube.json("get", "pod", "p9", "-n", "default")
    assert pod["status"]["phase"] == "Running"
    status = _container(pod)
    assert status["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert status["lastState"]["terminated"]["reason"] == "StartError"
    real = load_fixture("pod-crashloop-start-error.json")
    assert set(status) == set(_container(real))
    assert set(status["lastState"]["terminated"]) == set(
        _container(real)["lastState"]["terminated"]
    )
    assert _conditions(pod)["Ready"]["reason"] == "ContainersNotReady"


def test_a_containerd_2_node_reads_the_v3_template(tmp_path: Path) -> None:
    """k3s v1.32.2+k3s1 bundles containerd 2, which reads config-v3.toml.tmpl."""
    root = tmp_path / "root"
    wasm_node(root, k3s_version="v1.32.2+k3s1")
    assert (root / "var/lib/rancher/k3s/agent/etc/containerd/config-v3.toml.tmpl").is_file()
    node = k3s_node(
        "edge-1",
        kubelet_version="v1.32.2+k3s1",
        container_runtime_version="containerd://2.0.2-k3s2",
    )
    with FakeCluster(root, nodes=[node]) as fake:
        fake.add_image(PROBE_IMAGE, {"/probe.wasm": probe_module()})
        config = fake.kubeconfig(tmp_path / "kubeconfig")
        home = tmp_path / "home"
        created = kubectl(
            config, "create", "--validate=false", "-f", "-", home=home, stdin=probe_pod()
        )
        assert created.returncode == 0, created.stderr
        logs = kubectl(config, "logs", "agentd-wasm-probe", "-n", "default", home=home)
        assert logs.stdout == PROBE_OUTPUT.decode()
        assert fake.pod("agentd-wasm-probe")["status"]["phase"] == "Succeeded"


def test_runtimeclasses_come_from_the_nodes_manifests(kube: Kube) -> None:
    wasm_node(kube.root)
    manifests = kube.root / "var/lib/rancher/k3s/server/manifests"
    (manifests / "other.yaml").write_text(
        "apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata:\n  name: spin\nhandler: spin\n"
    )
    (manifests / "other.yaml.skip").write_text("")  # k3s's off switch for one file
    listing = kube.json("get", "runtimeclasses")
    # agentd's manifest carries its probe class beside the desired ones.
    assert [rc["metadata"]["name"] for rc in listing["items"]] == [CRUN_WASM, "agentd-wasm-probe"]
    one = kube.json("get", "runtimeclass", CRUN_WASM)
    assert one["handler"] == CRUN_WASM
    assert one["scheduling"] == {"nodeSelector": {"wasm-runtime": "enabled"}}


# --- the pieces, on their own ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("module.wasm.image/*", "module.wasm.image/variant", True),
        ("*.wasm.*", "module.wasm.image/variant", False),  # `*` never crosses `/`
        ("*.wasm.*", "io.wasm.runtime", True),
        ("wasm.*", "wasm.handler", True),
        ("run.oci.handler", "run.oci.handler", True),
        ("run.oci.handler", "run.oci.handlers", False),
        ("module.wasm.image/?ariant", "module.wasm.image/variant", True),
        ("[^m]*", "module", False),
    ],
)
def test_pod_annotation_patterns_match_like_go_filepath_match(
    pattern: str, key: str, matches: bool
) -> None:
    assert go_filepath_match(pattern, key) is matches


@pytest.mark.parametrize("k3s_version", ["v1.30.4+k3s1", "v1.32.2+k3s1"])
def test_agentds_templates_parse_to_a_runtime_table(k3s_version: str) -> None:
    tables = parse_toml_tables(containerd_template(k3s_version, "/usr/local/bin/crun").decode())
    runtime = next(v for k, v in tables.items() if k[-1:] == (CRUN_WASM,))
    options = next(v for k, v in tables.items() if k[-2:] == (CRUN_WASM, "options"))
    assert runtime["runtime_type"] == "io.containerd.runc.v2"
    assert "module.wasm.image/*" in runtime["pod_annotations"]
    assert options == {"BinaryName": "/usr/local/bin/crun", "SystemdCgroup": True}


def test_a_table_defined_twice_is_an_error() -> None:
    with pytest.raises(ValueError, match="defined twice"):
        parse_toml_tables("[a]\nx = 1\n[a]\ny = 2\n")
    assert parse_toml_tables("[a]\nxs = [\n  'p',\n  \"q\",\n]\n")[("a",)] == {"xs": ["p", "q"]}


def test_merge_and_strategic_merge_patches() -> None:
    node = {"metadata": {"labels": {"a": "1", "b": "2"}, "name": "n"}}
    assert merge_patch(node, {"metadata": {"labels": {"a": None, "c": "3"}}}) == {
        "metadata": {"labels": {"b": "2", "c": "3"}, "name": "n"}
    }
    assert strategic_merge_patch(
        node, {"metadata": {"labels": {"$patch": "replace", "z": "9"}}}
    ) == {"metadata": {"labels": {"z": "9"}, "name": "n"}}
    assert node == {"metadata": {"labels": {"a": "1", "b": "2"}, "name": "n"}}  # not modified


def test_image_references_are_normalized_like_containerd() -> None:
    assert normalize_image("busybox") == "docker.io/library/busybox:latest"
    assert normalize_image("rancher/mirrored-pause:3.6") == "docker.io/rancher/mirrored-pause:3.6"
    assert normalize_image("registry.local:5000/p") == "registry.local:5000/p:latest"
    assert normalize_image("r.io/p@sha256:ab") == "r.io/p@sha256:ab"
