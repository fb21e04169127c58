"""k3s's deploy controller and helm-controller, and OPA Gatekeeper 3.15.1, for fakekube.py.

`FakeCluster` (fakekube.py) calls this module at every request, so what a client sees follows
from the node's real files under the cluster's `root`, as on a k3s server:

- the deploy controller (k3s-io/k3s pkg/deploy/controller.go, pkg/apis/k3s.cattle.io/v1/types.go):
  one `Addon` (k3s.cattle.io/v1, kube-system, named after the file without its extension) per
  .yaml/.yml/.json file of server/manifests (none for a file with `<file>.skip` beside it), spec
  {source: the path, checksum: sha256 hex of the file}, status {gvks: [{Group, Version, Kind}]}
  (schema.GroupVersionKind has no json tags); each document whose kind the cluster serves is
  applied. A kind that is not served yet (Gatekeeper's before its chart is installed, a
  constraint kind before the controller made its CRD) is skipped and applied at a later pass,
  as k3s retries a failed apply.
- the helm-controller (k3s-io/helm-controller v0.17.7, the release of
  tests/fixtures/helm-controller/helmchart-crd.yaml, pkg/controllers/chart/chart.go): for a
  HelmChart NAME in NAMESPACE, the Job `helm-install-NAME` in NAMESPACE (label
  helmcharts.helm.cattle.io/chart=NAME, container `helm`, args `install --namespace T
  --create-namespace --version V`, restartPolicy OnFailure, backoffLimit 1000) and status
  {jobName, conditions [JobCreated True "Job created", Failed False]} as OnChange sets them.
  The job's pod runs klipper-helm's `entry` (k3s-io/klipper-helm), which substitutes
  %{KUBERNETES_API}% with the in-cluster API address (10.43.0.1:443) and runs `helm install`.
  helm (helm/helm v3.16.4) ignores --version for a chart given as a URL
  (pkg/downloader/chart_downloader.go ResolveChartVersion returns the URL as it is), so the
  chart installed is whatever the tarball holds. The job fails, its pod crash-looping with the
  logs ending in helm's message, when the chart cannot be loaded: `Error: INSTALLATION FAILED:
  failed to fetch URL : 404 Not Found` (pkg/getter/httpgetter.go: k3s's static handler answers
  404 for a missing file), `... does not appear to be a gzipped archive; got '...'`
  (pkg/chart/loader/archive.go), `Chart.yaml file is missing` (pkg/chart/loader/load.go). With
  restartPolicy OnFailure the kubelet restarts the container in place: status.failed stays 0
  and the job stays active until 1000 restarts.
- Gatekeeper (open-policy-agent/gatekeeper v3.15.1 charts/gatekeeper/templates, values in
  tests/fixtures/gatekeeper/values-v3.15.1.yaml merged with the HelmChart's valuesContent):
  namespace gatekeeper-system labelled admission.gatekeeper.sh/ignore=no-self-managing (the
  post-install hook namespace-post-install.yaml); Deployments gatekeeper-controller-manager
  (`replicas`) and gatekeeper-audit (1) with their pods (the templates' labels, container
  `manager`, image `image.repository:image.release`), Running and Ready iff the node has the
  image (`add_image`, the node's status.images, or an archive in agent/images whose docker-save
  manifest.json RepoTags or OCI index.json ref-name annotations name it: .tar and .tar.gz are
  read, .tar.zst is not), else ErrImagePull/ImagePullBackOff; the Service
  gatekeeper-webhook-service and its Endpoints (ready addresses: Ready controller-manager pods,
  port 8443); the Validating- and MutatingWebhookConfigurations; its CRDs (ConstraintTemplate,
  Config, and, once a controller-manager pod runs, one constraint kind per template).
- admission of a pod create (kubernetes staging/src/k8s.io/apiserver/pkg/admission/plugin/
  webhook/validating/dispatcher.go): the webhook validation.gatekeeper.sh is called unless its
  namespaceSelector leaves the namespace out (label admission.gatekeeper.sh/ignore, the
  release's namespace, validatingWebhookExemptNamespacesLabels). No ready endpoint: with
  failurePolicy Fail, `500 Internal error occurred: failed calling webhook
  "validation.gatekeeper.sh": failed to call webhook: Post "https://gatekeeper-webhook-service.
  gatekeeper-system.svc:443/v1/admit?timeout=3s": no endpoints available for service
  "gatekeeper-webhook-service"`; with Ignore, admitted. Reached: namespaces a Config excludes
  for the webhook are admitted (pkg/webhook/policy.go skipExcludedNamespace), else every
  constraint matching the pod (match.kinds, namespaces, excludedNamespaces) is evaluated with its
  template's Rego (regopy), input {review, parameters}; `deny` violations refuse with `403
  admission webhook "validation.gatekeeper.sh" denied the request: [NAME] MSG` (one line per
  violation, joined by "\\n": policy.go getValidationMessages and Handle, then
  webhook/errors/statuserror.go ToStatusErr), `warn` ones add a Warning header, `dryrun` ones
  nothing.

One knob says what the files cannot: `state(cluster).crash = True` (FakeCluster.gatekeeper_crash)
makes the controller-manager's container exit 1, so its pods crash-loop and the webhook has no
endpoint.
"""

from __future__ import annotations

import copy
import fnmatch
import gzip
import hashlib
import io
import json
import tarfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import yaml

from tests.support.fakekube import (
    ApiError,
    FakeKubeError,
    Obj,
    _not_found,
    _now,
    _Outcome,
    _PodRecord,
    _Resource,
    normalize_image,
)

if TYPE_CHECKING:
    from tests.support.fakekube import FakeCluster

MANIFESTS_DIR = "/var/lib/rancher/k3s/server/manifests"
STATIC_DIR = "/var/lib/rancher/k3s/server/static"
IMAGES_DIR = "/var/lib/rancher/k3s/agent/images"
VALUES = Path(__file__).resolve().parents[1] / "fixtures" / "gatekeeper" / "values-v3.15.1.yaml"
# What klipper-helm's entry puts for %{KUBERNETES_API}%: the kubernetes Service's address.
IN_CLUSTER_API = "10.43.0.1:443"
# k3s sets helm-controller's job image to its pinned klipper-helm; it is in k3s's airgap image
# list, so the fake's node has it.
KLIPPER_HELM_IMAGE = "rancher/klipper-helm:v0.8.4-build20240523"
CHART_LABEL = "helmcharts.helm.cattle.io/chart"
IGNORE_LABEL = "admission.gatekeeper.sh/ignore"
VALIDATION_WEBHOOK = "validation.gatekeeper.sh"
_ALL = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")

# (group, version) -> resources served always (k3s's own CRDs and built-in APIs) ...
BASE_GROUPS: dict[str, tuple[str, tuple[_Resource, ...]]] = {
    "k3s.cattle.io": ("v1", (_Resource("addons", "Addon", True, _ALL, (), "addon"),)),
    "helm.cattle.io": (
        "v1",
        (
            _Resource("helmcharts", "HelmChart", True, _ALL, ("hc",), "helmchart"),
            _Resource("helmchartconfigs", "HelmChartConfig", True, _ALL, (), "helmchartconfig"),
        ),
    ),
    "batch": (
        "v1",
        (
            _Resource(
                "jobs", "Job", True, _ALL, (), "job", (("status", "Job", ("get",)),), ("all",)
            ),
        ),
    ),
    "apps": (
        "v1",
        (
            _Resource(
                "deployments", "Deployment", True, _ALL, ("deploy",), "deployment", (), ("all",)
            ),
        ),
    ),
    "admissionregistration.k8s.io": (
        "v1",
        (
            _Resource(
                "mutatingwebhookconfigurations",
                "MutatingWebhookConfiguration",
                False,
                _ALL,
                (),
                "mutatingwebhookconfiguration",
            ),
            _Resource(
                "validatingwebhookconfigurations",
                "ValidatingWebhookConfiguration",
                False,
                _ALL,
                (),
                "validatingwebhookconfiguration",
            ),
        ),
    ),
}
CORE_RESOURCES = (
    _Resource("endpoints", "Endpoints", True, _ALL, ("ep",), "endpoints"),
    _Resource("services", "Service", True, _ALL, ("svc",), "service", (), ("all",)),
)
# ... and Gatekeeper's, once its chart is installed (charts/gatekeeper/crds).
GATEKEEPER_GROUPS: dict[str, tuple[str, tuple[_Resource, ...]]] = {
    "templates.gatekeeper.sh": (
        "v1",
        (
            _Resource(
                "constrainttemplates", "ConstraintTemplate", False, _ALL, (), "constrainttemplate"
            ),
        ),
    ),
    "config.gatekeeper.sh": (
        "v1alpha1",
        (_Resource("configs", "Config", True, _ALL, (), "config"),),
    ),
}
CONSTRAINTS_GROUP = "constraints.gatekeeper.sh"


@dataclass
class AddonState:
    """What the controllers made, by "group/resource" then (namespace, name)."""

    objects: dict[str, dict[tuple[str, str], Obj]] = field(default_factory=dict)
    crash: bool = False
    pods: dict[tuple[str, str], str] = field(default_factory=dict)  # pod -> outcome key


def state(cluster: FakeCluster) -> AddonState:
    found: AddonState = cluster._addons
    return found


def groups(cluster: FakeCluster) -> dict[str, tuple[str, tuple[_Resource, ...]]]:
    """The API groups served now, beyond core/v1 and node.k8s.io."""
    out = dict(BASE_GROUPS)
    st = state(cluster)
    if _installed(st):
        out.update(GATEKEEPER_GROUPS)
        kinds = _constraint_kinds(cluster)
        if kinds:
            out[CONSTRAINTS_GROUP] = (
                "v1beta1",
                tuple(
                    _Resource(
                        k.lower(), k, False, _ALL, (), k.lower(), (), ("constraint", "constraints")
                    )
                    for k in sorted(kinds)
                ),
            )
    return out


def _installed(st: AddonState) -> bool:
    return ("apps/deployments") in st.objects and any(
        ns == "gatekeeper-system" for ns, _ in st.objects["apps/deployments"]
    )


def _constraint_kinds(cluster: FakeCluster) -> set[str]:
    """Kinds whose CRD Gatekeeper's template controller made: it runs in the controller-manager."""
    st = state(cluster)
    if not _controller_running(cluster):
        return set()
    kinds = set()
    for template in st.objects.get("templates.gatekeeper.sh/constrainttemplates", {}).values():
        kind = (((template.get("spec") or {}).get("crd") or {}).get("spec") or {}).get("names", {})
        if kind.get("kind"):
            kinds.add(str(kind["kind"]))
    return kinds


# --- the deploy controller ------------------------------------------------------------------


def sync(cluster: FakeCluster) -> None:
    """Bring every controller's objects up to date with the node's files (called under the
    cluster's lock); a few passes, as the controllers converge on each other's results."""
    if cluster.root is None:
        return
    for _ in range(4):
        before = _fingerprint(state(cluster))
        _deploy(cluster)
        _helm_controller(cluster)
        _gatekeeper(cluster)
        if _fingerprint(state(cluster)) == before:
            return


def _fingerprint(st: AddonState) -> str:
    return json.dumps(
        {
            k: sorted(
                f"{ns}/{n}:{o['metadata'].get('resourceVersion')}" for (ns, n), o in v.items()
            )
            for k, v in st.objects.items()
        },
        sort_keys=True,
    )


def _put(cluster: FakeCluster, key: str, namespace: str, obj: Obj) -> Obj:
    """Store `obj` keeping the identity of what was there; a new resourceVersion only when it
    changed."""
    store = state(cluster).objects.setdefault(key, {})
    meta = obj.setdefault("metadata", {})
    name = str(meta["name"])
    if namespace:
        meta["namespace"] = namespace
    old = store.get((namespace, name))
    if old is not None:
        for k in ("uid", "creationTimestamp", "resourceVersion", "generation"):
            if k in old["metadata"]:
                meta[k] = old["metadata"][k]
        if old == obj:
            return old
        if old.get("spec") != obj.get("spec"):
            meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
    else:
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", _now())
        meta.setdefault("generation", 1)
    cluster._bump(obj)
    store[(namespace, name)] = obj
    return obj


def _served(cluster: FakeCluster, api_version: str, kind: str) -> Optional[tuple[str, _Resource]]:
    group, _, version = api_version.rpartition("/")
    served = groups(cluster).get(group)
    if served is None or served[0] != version:
        return None
    for r in served[1]:
        if r.kind == kind:
            return f"{group}/{r.name}", r
    return None


def _deploy(cluster: FakeCluster) -> None:
    assert cluster.root is not None
    directory = cluster.root / MANIFESTS_DIR.lstrip("/")
    if not directory.is_dir():
        return
    for path in sorted(directory.iterdir()):
        if path.suffix not in (".yaml", ".yml", ".json") or not path.is_file():
            continue
        if path.with_name(path.name + ".skip").exists():
            continue
        data = path.read_bytes()
        try:
            docs = [d for d in yaml.safe_load_all(data) if isinstance(d, dict)]
        except yaml.YAMLError:
            docs = []  # k3s records an error event and applies nothing from the file
        gvks = []
        for doc in docs:
            api_version, kind = str(doc.get("apiVersion") or ""), str(doc.get("kind") or "")
            meta = doc.get("metadata")
            if not isinstance(meta, dict) or not meta.get("name"):
                continue
            group, _, version = api_version.rpartition("/")
            gvk = {"Group": group, "Version": version, "Kind": kind}
            if kind == "Namespace" and api_version == "v1":
                if meta["name"] not in cluster._namespaces:
                    cluster.add_namespace(str(meta["name"]))
                gvks.append(gvk)
                continue
            if kind == "RuntimeClass":  # served by fakekube from the same files
                gvks.append(gvk)
                continue
            served = _served(cluster, api_version, kind)
            if served is None:
                continue
            key, resource = served
            obj = copy.deepcopy(doc)
            obj.pop("status", None)
            namespace = str(meta.get("namespace") or "default") if resource.namespaced else ""
            old = state(cluster).objects.get(key, {}).get((namespace, str(meta["name"])))
            if old is not None and "status" in old:
                obj["status"] = old["status"]
            _put(cluster, key, namespace, obj)
            gvks.append(gvk)
        addon = {
            "apiVersion": "k3s.cattle.io/v1",
            "kind": "Addon",
            "metadata": {"name": path.name[: -len(path.suffix)]},
            "spec": {
                "source": f"{MANIFESTS_DIR}/{path.name}",
                "checksum": hashlib.sha256(data).hexdigest(),
            },
            "status": {"gvks": gvks} if gvks else {},
        }
        _put(cluster, "k3s.cattle.io/addons", "kube-system", addon)


# --- the helm-controller and klipper-helm ---------------------------------------------------


@dataclass
class _Chart:
    name: str
    version: str


def _load_chart(cluster: FakeCluster, url: str) -> tuple[Optional[_Chart], str]:
    """The chart helm installs from `url` (as the job's pod sees it), or helm's error."""
    assert cluster.root is not None
    prefix = f"https://{IN_CLUSTER_API}/static/"
    if not url.startswith(prefix):
        host = url.split("/")[2] if "://" in url else url
        return None, (
            f'Error: INSTALLATION FAILED: Get "{url}": dial tcp: lookup {host} on 10.43.0.10:53: '
            "no such host"
        )
    path = cluster.root / STATIC_DIR.lstrip("/") / url[len(prefix) :]
    if not path.is_file():
        return None, f"Error: INSTALLATION FAILED: failed to fetch {url} : 404 Not Found"
    data = path.read_bytes()
    cached = f"/home/klipper-helm/.cache/helm/repository/{path.name}"
    if not data.startswith(b"\x1f\x8b\x08"):
        detected = "text/plain; charset=utf-8" if _is_text(data) else "application/octet-stream"
        return None, (
            f"Error: INSTALLATION FAILED: file '{cached}' does not appear to be a gzipped "
            f"archive; got '{detected}'"
        )
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            chart_yaml = next(
                (m for n, m in members.items() if n.count("/") == 1 and n.endswith("/Chart.yaml")),
                None,
            )
            if chart_yaml is None:
                return None, "Error: INSTALLATION FAILED: Chart.yaml file is missing"
            extracted = tar.extractfile(chart_yaml)
            assert extracted is not None
            meta = yaml.safe_load(extracted.read()) or {}
    except (tarfile.TarError, OSError, EOFError, yaml.YAMLError) as exc:
        return None, f"Error: INSTALLATION FAILED: {exc}"
    return _Chart(str(meta.get("name") or ""), str(meta.get("version") or "")), ""


def _is_text(data: bytes) -> bool:
    try:
        data[:512].decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\x00" not in data[:512]


def _helm_args(spec: Obj) -> list[str]:
    """helm's arguments for the HelmChart's spec: install, namespace, version."""
    args = ["install"]
    if spec.get("targetNamespace"):
        args += ["--namespace", str(spec["targetNamespace"])]
    if spec.get("createNamespace"):
        args.append("--create-namespace")
    if spec.get("version"):
        args += ["--version", str(spec["version"])]
    return args


def _klipper_log(chart: Obj, resolved: str, error: str) -> bytes:
    """The tail of what klipper-helm's entry prints (bash -x traces on stderr) on the way to
    `helm install`, then helm's own output."""
    spec = chart["spec"]
    name = chart["metadata"]["name"]
    args = _helm_args(spec)
    joined = " ".join(args)
    target = spec.get("targetNamespace") or chart["metadata"]["namespace"]
    values = " --values /config/values-01_HelmChart.yaml" if spec.get("valuesContent") else ""
    lines = [
        "+ helm_repo_init",
        "+ grep -q -e 'https\\?://'",
        "+ echo 'chart path is a url, skipping repo update'",
        "chart path is a url, skipping repo update",
        "+ helm repo remove stable",
        "Error: no repositories configured",
        "+ true",
        "+ return",
        f"+ helm_update {joined}",
        f"++ helm status --namespace {target} {name} --output json",
        "++ jq -r '[.info.status,.version,.apply_method]|@tsv'",
        "+ read -r STATUS REVISION APPLY_METHOD _",
        "Error: release: not found",
        "+ [[ -z '' ]]",
        "+ [[ -z '' ]]",
        "+ echo 'Installing helm chart'",
        f"+ helm {joined} {name} {resolved}{values}",
    ]
    if error:
        lines.append(error)
    else:
        lines += [
            f"NAME: {name}",
            f"NAMESPACE: {spec.get('targetNamespace') or chart['metadata']['namespace']}",
            "STATUS: deployed",
            "REVISION: 1",
            "TEST SUITE: None",
            "+ exit",
        ]
    return ("\n".join(lines) + "\n").encode()


def _helm_controller(cluster: FakeCluster) -> None:
    st = state(cluster)
    for (namespace, name), chart in list(st.objects.get("helm.cattle.io/helmcharts", {}).items()):
        spec = chart.get("spec") or {}
        job_name = f"helm-install-{name}"
        url = str(spec.get("chart") or "")
        if spec.get("repo"):
            resolved, loaded, error = (
                url,
                None,
                (
                    f"Error: INSTALLATION FAILED: tests/support/fakegatekeeper.py models charts "
                    f"given by URL only, not from repo {spec['repo']}"
                ),
            )
        else:
            resolved = url.replace("%{KUBERNETES_API}%", IN_CLUSTER_API)
            loaded, error = _load_chart(cluster, resolved)
        job = _job(cluster, chart, job_name, namespace, error)
        status = copy.deepcopy(chart.get("status") or {})
        status["jobName"] = job_name
        status["conditions"] = [
            {
                "type": "JobCreated",
                "status": "True",
                "reason": "Job created",
                "message": f"Applying HelmChart using Job {namespace}/{job_name}",
            },
            {"type": "Failed", "status": "False"},
        ]
        if chart.get("status") != status:
            updated = copy.deepcopy(chart)
            updated["status"] = status
            _put(cluster, "helm.cattle.io/helmcharts", namespace, updated)
        log = _klipper_log(chart, resolved, error)
        _job_pod(cluster, job, log, 1 if error else 0)
        if loaded is not None and loaded.name == "gatekeeper":
            target = str(spec.get("targetNamespace") or namespace)
            try:
                values = yaml.safe_load(str(spec.get("valuesContent") or "")) or {}
            except yaml.YAMLError:
                values = {}
            st.objects.setdefault("_releases", {})[(target, name)] = {
                "metadata": {"name": name, "resourceVersion": loaded.version},
                "chart": {"version": loaded.version},
                "values": values if isinstance(values, dict) else {},
            }


def _job(cluster: FakeCluster, chart: Obj, name: str, namespace: str, error: str) -> Obj:
    spec = chart.get("spec") or {}
    chart_name = chart["metadata"]["name"]
    old = state(cluster).objects.get("batch/jobs", {}).get((namespace, name))
    uid = old["metadata"]["uid"] if old else str(uuid.uuid4())
    args = _helm_args(spec)
    target = str(spec.get("targetNamespace") or namespace)
    env = [
        {"name": "NAME", "value": chart_name},
        {"name": "VERSION", "value": str(spec.get("version") or "")},
        {"name": "REPO", "value": str(spec.get("repo") or "")},
        {"name": "HELM_DRIVER", "value": "secret"},
        {"name": "CHART_NAMESPACE", "value": namespace},
        {"name": "CHART", "value": str(spec.get("chart") or "")},
        {"name": "HELM_VERSION", "value": str(spec.get("helmVersion") or "")},
        {"name": "TARGET_NAMESPACE", "value": target},
        {"name": "AUTH_PASS_CREDENTIALS", "value": "false"},
        {"name": "INSECURE_SKIP_TLS_VERIFY", "value": "false"},
        {"name": "PLAIN_HTTP", "value": "false"},
    ]
    selector_labels = {"batch.kubernetes.io/controller-uid": uid}
    pod_labels = {
        CHART_LABEL: chart_name,
        "batch.kubernetes.io/controller-uid": uid,
        "batch.kubernetes.io/job-name": name,
        "controller-uid": uid,
        "job-name": name,
    }
    now = old["status"].get("startTime") if old else _now()
    if error:
        status: Obj = {
            "active": 1,
            "ready": 0,
            "startTime": now,
            "terminating": 0,
            "uncountedTerminatedPods": {},
        }
    else:
        status = {
            "completionTime": now,
            "conditions": [
                {
                    "lastProbeTime": now,
                    "lastTransitionTime": now,
                    "status": "True",
                    "type": "Complete",
                }
            ],
            "ready": 0,
            "startTime": now,
            "succeeded": 1,
            "terminating": 0,
            "uncountedTerminatedPods": {},
        }
    job: Obj = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "uid": uid,
            "labels": {CHART_LABEL: chart_name},
            "ownerReferences": [
                {
                    "apiVersion": "helm.cattle.io/v1",
                    "blockOwnerDeletion": True,
                    "controller": True,
                    "kind": "HelmChart",
                    "name": chart_name,
                    "uid": chart["metadata"]["uid"],
                }
            ],
        },
        "spec": {
            "backoffLimit": 1000,
            "completionMode": "NonIndexed",
            "completions": 1,
            "manualSelector": False,
            "parallelism": 1,
            "podReplacementPolicy": "TerminatingOrFailed",
            "selector": {"matchLabels": selector_labels},
            "suspend": False,
            "template": {
                "metadata": {
                    "annotations": {
                        "helmcharts.helm.cattle.io/configHash": "SHA256="
                        + hashlib.sha256(str(spec.get("valuesContent") or "").encode())
                        .hexdigest()
                        .upper()
                    },
                    "labels": pod_labels,
                },
                "spec": {
                    "containers": [
                        {
                            "name": "helm",
                            "image": KLIPPER_HELM_IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "args": args,
                            "env": env,
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]},
                                "readOnlyRootFilesystem": True,
                            },
                            "volumeMounts": [
                                {"mountPath": "/home/klipper-helm/.helm", "name": "klipper-helm"},
                                {"mountPath": "/home/klipper-helm/.cache", "name": "klipper-cache"},
                                {
                                    "mountPath": "/home/klipper-helm/.config",
                                    "name": "klipper-config",
                                },
                                {"mountPath": "/tmp", "name": "tmp"},
                                {"mountPath": "/config", "name": "values"},
                                {"mountPath": "/chart", "name": "content"},
                            ],
                        }
                    ],
                    "nodeSelector": {"kubernetes.io/os": "linux"},
                    "priorityClassName": "system-cluster-critical",
                    "restartPolicy": "OnFailure",
                    "securityContext": {
                        "runAsNonRoot": True,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "serviceAccount": f"helm-{chart_name}",
                    "serviceAccountName": f"helm-{chart_name}",
                    "volumes": [
                        {"emptyDir": {"medium": "Memory"}, "name": v}
                        for v in ("klipper-helm", "klipper-cache", "klipper-config", "tmp")
                    ]
                    + [
                        {
                            "name": "values",
                            "secret": {
                                "defaultMode": 420,
                                "secretName": f"chart-values-{chart_name}",
                            },
                        },
                        {
                            "configMap": {
                                "defaultMode": 420,
                                "name": f"chart-content-{chart_name}",
                            },
                            "name": "content",
                        },
                    ],
                },
            },
        },
        "status": status,
    }
    return _put(cluster, "batch/jobs", namespace, job)


def _job_pod(cluster: FakeCluster, job: Obj, log: bytes, exit_code: int) -> None:
    namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
    suffix = hashlib.sha256(job["metadata"]["uid"].encode()).hexdigest()[:5]
    outcome = _Outcome(
        "exited", "Completed" if exit_code == 0 else "Error", exit_code=exit_code, logs=log
    )
    _ensure_pod(cluster, namespace, f"{name}-{suffix}", job["spec"]["template"], job, outcome)


# --- pods the controllers own ---------------------------------------------------------------


def _ensure_pod(
    cluster: FakeCluster, namespace: str, name: str, template: Obj, owner: Obj, outcome: _Outcome
) -> None:
    """The pod `name` from `template`, bound to this node, reaching `outcome`; made again when
    the outcome changes (as a new pod, or a restarted container, would show)."""
    key = repr((outcome.stage, outcome.reason, outcome.exit_code, outcome.logs))
    st = state(cluster)
    if st.pods.get((namespace, name)) == key and (namespace, name) in cluster._pods:
        return
    if namespace not in cluster._namespaces:
        cluster.add_namespace(namespace)
    pod: Obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": dict((template.get("metadata") or {}).get("labels") or {}),
            "ownerReferences": [
                {
                    "apiVersion": owner["apiVersion"],
                    "blockOwnerDeletion": True,
                    "controller": True,
                    "kind": owner["kind"],
                    "name": owner["metadata"]["name"],
                    "uid": owner["metadata"]["uid"],
                }
            ],
        },
        "spec": copy.deepcopy(template["spec"]),
    }
    annotations = (template.get("metadata") or {}).get("annotations")
    if annotations:
        pod["metadata"]["annotations"] = dict(annotations)
    pod["spec"]["nodeName"] = cluster.node_name
    cluster._default_pod(pod, namespace)
    pod["status"]["startTime"] = _now()
    cluster._pods[(namespace, name)] = _PodRecord(pod, None, outcome)
    st.pods[(namespace, name)] = key


# --- Gatekeeper -----------------------------------------------------------------------------


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base.get(k), v)
        return out
    return copy.deepcopy(over)


def _values(release: Obj) -> Obj:
    defaults = yaml.safe_load(VALUES.read_text())
    merged: Obj = _merge(defaults, release["values"])
    return merged


def _release(cluster: FakeCluster) -> Optional[tuple[str, str, Obj]]:
    for (namespace, name), release in state(cluster).objects.get("_releases", {}).items():
        return namespace, name, release
    return None


def _controller_running(cluster: FakeCluster) -> bool:
    return bool(_ready_pods(cluster, "controller-manager"))


def _ready_pods(cluster: FakeCluster, plane: str) -> list[Obj]:
    found = _release(cluster)
    if found is None:
        return []
    namespace = found[0]
    out = []
    for (ns, _), record in cluster._pods.items():
        labels = record.obj["metadata"].get("labels") or {}
        if ns != namespace or labels.get("control-plane") != plane:
            continue
        if record.outcome is not None and record.outcome.stage == "running":
            out.append(record.obj)
    return out


def _gatekeeper(cluster: FakeCluster) -> None:
    found = _release(cluster)
    if found is None:
        return
    namespace, release_name, release = found
    values = _values(release)
    if namespace not in cluster._namespaces:
        cluster.add_namespace(namespace)
    ns_labels = cluster._namespaces[namespace]["metadata"].setdefault("labels", {})
    ns_labels.setdefault(IGNORE_LABEL, "no-self-managing")
    chart_version = release["chart"]["version"]
    labels = {
        "app": "gatekeeper",
        "chart": "gatekeeper",
        "gatekeeper.sh/system": "yes",
        "heritage": "Helm",
        "release": release_name,
    }
    image = f"{values['image']['repository']}:{values['image']['release']}"
    for deploy, plane, operation, replicas in (
        ("gatekeeper-controller-manager", "controller-manager", "webhook", int(values["replicas"])),
        ("gatekeeper-audit", "audit-controller", "audit", 1),
    ):
        selector = {**labels, "control-plane": plane, "gatekeeper.sh/operation": operation}
        pod_labels = {
            **(values.get("podLabels") or {}),
            "helm.sh/chart": f"gatekeeper-{chart_version}".replace("+", "_"),
            "app.kubernetes.io/name": "gatekeeper",
            "app.kubernetes.io/instance": release_name,
            "app.kubernetes.io/version": chart_version,
            "app.kubernetes.io/managed-by": "Helm",
            **selector,
        }
        template_hash = hashlib.sha256(json.dumps(pod_labels, sort_keys=True).encode()).hexdigest()[
            :10
        ]
        container = {
            "name": "manager",
            "image": image,
            "imagePullPolicy": str(values["image"].get("pullPolicy") or "IfNotPresent"),
            "command": ["/manager"],
            "args": [f"--operation={operation}"],
            "ports": [{"containerPort": 8443, "name": "webhook-server", "protocol": "TCP"}]
            if operation == "webhook"
            else [],
        }
        template = {
            "metadata": {"labels": {**pod_labels, "pod-template-hash": template_hash}},
            "spec": {
                "automountServiceAccountToken": True,
                "containers": [container],
                "priorityClassName": "system-cluster-critical",
                "restartPolicy": "Always",
                "serviceAccountName": "gatekeeper-admin",
            },
        }
        outcome = _pod_outcome(cluster, image, str(container["imagePullPolicy"]), operation)
        ready = replicas if outcome.stage == "running" else 0
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": deploy, "labels": {**selector}},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": selector},
                "template": {"metadata": {"labels": pod_labels}, "spec": template["spec"]},
            },
            "status": {
                "observedGeneration": 1,
                "replicas": replicas,
                "updatedReplicas": replicas,
                **({"readyReplicas": ready, "availableReplicas": ready} if ready else {}),
                **({} if ready else {"unavailableReplicas": replicas}),
            },
        }
        stored = _put(cluster, "apps/deployments", namespace, deployment)
        owner = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": f"{deploy}-{template_hash}",
                "uid": str(uuid.UUID(hashlib.md5(stored["metadata"]["uid"].encode()).hexdigest())),
            },
        }
        for i in range(replicas):
            suffix = hashlib.sha256(f"{stored['metadata']['uid']}{i}".encode()).hexdigest()[:5]
            _ensure_pod(
                cluster, namespace, f"{deploy}-{template_hash}-{suffix}", template, owner, outcome
            )
    service_selector = {
        **labels,
        "control-plane": "controller-manager",
        "gatekeeper.sh/operation": "webhook",
    }
    _put(
        cluster,
        "/services",
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "gatekeeper-webhook-service", "labels": labels},
            "spec": {
                "clusterIP": "10.43.87.121",
                "clusterIPs": ["10.43.87.121"],
                "ports": [
                    {
                        "name": "https-webhook-server",
                        "port": 443,
                        "protocol": "TCP",
                        "targetPort": "webhook-server",
                    }
                ],
                "selector": service_selector,
                "type": "ClusterIP",
            },
        },
    )
    _put(cluster, "/endpoints", namespace, _endpoints(cluster, namespace, labels))
    if not values.get("disableValidatingWebhook"):
        _put(
            cluster,
            "admissionregistration.k8s.io/validatingwebhookconfigurations",
            "",
            _vwc(values, namespace, labels),
        )
    if not values.get("disableMutation"):
        _put(
            cluster,
            "admissionregistration.k8s.io/mutatingwebhookconfigurations",
            "",
            _mwc(values, namespace, labels),
        )
    if _controller_running(cluster):
        made: dict[tuple[str, str], Obj] = state(cluster).objects.get(
            "templates.gatekeeper.sh/constrainttemplates", {}
        )
        for made_template in made.values():
            if (made_template.get("status") or {}).get("created") is not True:
                made_template["status"] = {"created": True}
                cluster._bump(made_template)


def _pod_outcome(cluster: FakeCluster, image: str, policy: str, operation: str) -> _Outcome:
    normalized = normalize_image(image)
    if normalized not in _archive_images(cluster):
        pulled = cluster._pull(normalized, policy)
        if isinstance(pulled, _Outcome):
            return pulled
    if operation == "webhook" and state(cluster).crash:
        return _Outcome(
            "exited",
            "Error",
            exit_code=1,
            logs=b'{"level":"error","msg":"unable to start manager","error":"crash injected by '
            b'tests/support/fakegatekeeper.py (FakeCluster.gatekeeper_crash)"}\n',
        )
    return _Outcome("running")


def _archive_images(cluster: FakeCluster) -> set[str]:
    """Images named by the archives in agent/images (docker save's manifest.json RepoTags, an
    OCI layout's index.json annotations)."""
    assert cluster.root is not None
    directory = cluster.root / IMAGES_DIR.lstrip("/")
    names: set[str] = set()
    if not directory.is_dir():
        return names
    for path in sorted(directory.iterdir()):
        if not path.name.endswith((".tar", ".tar.gz", ".tgz")):
            continue  # .tar.zst, .tar.lz4, .tar.bz2: not read here
        try:
            with tarfile.open(path, "r:*") as tar:
                for member in ("manifest.json", "index.json"):
                    try:
                        extracted = tar.extractfile(member)
                    except KeyError:
                        continue
                    if extracted is None:
                        continue
                    doc = json.loads(extracted.read())
                    if member == "manifest.json" and isinstance(doc, list):
                        for entry in doc:
                            names.update(normalize_image(t) for t in entry.get("RepoTags") or [])
                    elif isinstance(doc, dict):
                        for entry in doc.get("manifests") or []:
                            annotations = entry.get("annotations") or {}
                            for key in (
                                "io.containerd.image.name",
                                "org.opencontainers.image.ref.name",
                            ):
                                ref = annotations.get(key)
                                if ref and ("/" in ref or ":" in ref):
                                    names.add(normalize_image(ref))
        except (tarfile.TarError, OSError, EOFError, ValueError, gzip.BadGzipFile):
            continue
    return names


def _endpoints(cluster: FakeCluster, namespace: str, labels: dict[str, str]) -> Obj:
    ready: list[Obj] = []
    not_ready: list[Obj] = []
    for (ns, _), record in sorted(cluster._pods.items()):
        pod = record.obj
        if (
            ns != namespace
            or (pod["metadata"].get("labels") or {}).get("control-plane") != "controller-manager"
        ):
            continue
        cluster._observe(record)
        ip = pod["status"].get("podIP")
        if not ip:
            continue
        address = {
            "ip": ip,
            "nodeName": cluster.node_name,
            "targetRef": {
                "kind": "Pod",
                "name": pod["metadata"]["name"],
                "namespace": ns,
                "uid": pod["metadata"]["uid"],
            },
        }
        conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions") or []}
        (ready if conditions.get("Ready") == "True" else not_ready).append(address)
    subset: Obj = {}
    if ready:
        subset["addresses"] = ready
    if not_ready:
        subset["notReadyAddresses"] = not_ready
    obj: Obj = {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": "gatekeeper-webhook-service", "labels": labels},
    }
    if subset:
        subset["ports"] = [{"name": "https-webhook-server", "port": 8443, "protocol": "TCP"}]
        obj["subsets"] = [subset]
    return obj


def _vwc(values: Obj, namespace: str, labels: dict[str, str]) -> Obj:
    timeout = int(values["validatingWebhookTimeoutSeconds"])
    expressions: list[Obj] = [
        {"key": IGNORE_LABEL, "operator": "DoesNotExist"},
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [namespace]},
    ]
    for key, listed in (values.get("validatingWebhookExemptNamespacesLabels") or {}).items():
        expressions.append({"key": key, "operator": "NotIn", "values": list(listed)})
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {
            "name": values["validatingWebhookName"],
            "labels": labels,
            "annotations": dict(values.get("validatingWebhookAnnotations") or {}),
        },
        "webhooks": [
            {
                "admissionReviewVersions": ["v1", "v1beta1"],
                "clientConfig": {
                    "service": {
                        "name": "gatekeeper-webhook-service",
                        "namespace": namespace,
                        "path": "/v1/admit",
                        "port": 443,
                    }
                },
                "failurePolicy": values["validatingWebhookFailurePolicy"],
                "matchPolicy": "Exact",
                "name": VALIDATION_WEBHOOK,
                "namespaceSelector": {"matchExpressions": expressions},
                "objectSelector": dict(values.get("validatingWebhookObjectSelector") or {}),
                "rules": [
                    {
                        "apiGroups": ["*"],
                        "apiVersions": ["*"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": [
                            "*",
                            "pods/ephemeralcontainers",
                            "pods/exec",
                            "pods/log",
                            "pods/eviction",
                            "pods/portforward",
                            "pods/proxy",
                            "pods/attach",
                            "pods/binding",
                            "deployments/scale",
                            "replicasets/scale",
                            "statefulsets/scale",
                            "replicationcontrollers/scale",
                            "services/proxy",
                            "nodes/proxy",
                            "services/status",
                        ],
                        "scope": "*",
                    }
                ],
                "sideEffects": "None",
                "timeoutSeconds": timeout,
            },
            {
                "admissionReviewVersions": ["v1", "v1beta1"],
                "clientConfig": {
                    "service": {
                        "name": "gatekeeper-webhook-service",
                        "namespace": namespace,
                        "path": "/v1/admitlabel",
                        "port": 443,
                    }
                },
                "failurePolicy": values["validatingWebhookCheckIgnoreFailurePolicy"],
                "matchPolicy": "Exact",
                "name": "check-ignore-label.gatekeeper.sh",
                "namespaceSelector": {
                    "matchExpressions": [
                        {
                            "key": "kubernetes.io/metadata.name",
                            "operator": "NotIn",
                            "values": [namespace],
                        }
                    ]
                },
                "objectSelector": {},
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["*"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["namespaces"],
                        "scope": "*",
                    }
                ],
                "sideEffects": "None",
                "timeoutSeconds": timeout,
            },
        ],
    }


def _mwc(values: Obj, namespace: str, labels: dict[str, str]) -> Obj:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": values["mutatingWebhookName"], "labels": labels},
        "webhooks": [
            {
                "admissionReviewVersions": ["v1", "v1beta1"],
                "clientConfig": {
                    "service": {
                        "name": "gatekeeper-webhook-service",
                        "namespace": namespace,
                        "path": "/v1/mutate",
                        "port": 443,
                    }
                },
                "failurePolicy": values["mutatingWebhookFailurePolicy"],
                "matchPolicy": "Exact",
                "name": "mutation.gatekeeper.sh",
                "namespaceSelector": {
                    "matchExpressions": [
                        {"key": IGNORE_LABEL, "operator": "DoesNotExist"},
                        {
                            "key": "kubernetes.io/metadata.name",
                            "operator": "NotIn",
                            "values": [namespace],
                        },
                    ]
                },
                "objectSelector": dict(values.get("mutatingWebhookObjectSelector") or {}),
                "reinvocationPolicy": values["mutatingWebhookReinvocationPolicy"],
                "rules": [
                    {
                        "apiGroups": ["*"],
                        "apiVersions": ["*"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["*"],
                        "scope": "*",
                    }
                ],
                "sideEffects": "None",
                "timeoutSeconds": int(values["mutatingWebhookTimeoutSeconds"]),
            }
        ],
    }


# --- admission ------------------------------------------------------------------------------


def _selector_matches(expressions: list[Obj], labels: dict[str, str]) -> bool:
    for e in expressions:
        key, op, listed = e["key"], e["operator"], e.get("values") or []
        if op == "DoesNotExist" and key in labels:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "In" and labels.get(key) not in listed:
            return False
        if op == "NotIn" and key in labels and labels[key] in listed:
            return False
    return True


def _ns_match(pattern: str, namespace: str) -> bool:
    # Gatekeeper's wildcard: a trailing (prefix) or leading (suffix) `*`.
    return fnmatch.fnmatchcase(namespace, pattern) if "*" in pattern else pattern == namespace


def admit(cluster: FakeCluster, namespace: str, pod: Obj, dry_run: bool) -> list[str]:
    """Run the validating webhooks on a pod create: raise the apiserver's error, or return the
    warnings to send."""
    sync(cluster)
    st = state(cluster)
    found = _release(cluster)
    configs = st.objects.get("admissionregistration.k8s.io/validatingwebhookconfigurations", {})
    if found is None or not configs:
        return []
    gk_namespace = found[0]
    ns_labels = dict(cluster._namespaces[namespace]["metadata"].get("labels") or {})
    warnings: list[str] = []
    for config in configs.values():
        for hook in config["webhooks"]:
            if hook["name"] != VALIDATION_WEBHOOK:
                continue
            if not _selector_matches(
                (hook.get("namespaceSelector") or {}).get("matchExpressions") or [], ns_labels
            ):
                continue
            endpoints = st.objects.get("/endpoints", {}).get(
                (gk_namespace, "gatekeeper-webhook-service")
            )
            reachable = bool(
                endpoints and any(s.get("addresses") for s in endpoints.get("subsets") or [])
            )
            if not reachable:
                if hook.get("failurePolicy") == "Ignore":
                    continue
                service = hook["clientConfig"]["service"]
                host = f"{service['name']}.{service['namespace']}.svc:{service.get('port', 443)}"
                url = f"https://{host}{service['path']}?timeout={hook['timeoutSeconds']}s"
                reason = (
                    f'failed calling webhook "{hook["name"]}": failed to call webhook: Post '
                    f'"{url}": no endpoints available for service "{service["name"]}"'
                )
                raise ApiError(
                    500,
                    "InternalError",
                    f"Internal error occurred: {reason}",
                    {"causes": [{"message": reason}]},
                )
            denied, warned = _review(cluster, namespace, pod, dry_run)
            warnings += warned
            if denied:
                raise ApiError(
                    403,
                    "Forbidden",
                    f'admission webhook "{hook["name"]}" denied the request: ' + "\n".join(denied),
                )
    return warnings


def _excluded_by_config(cluster: FakeCluster, namespace: str) -> bool:
    for config in state(cluster).objects.get("config.gatekeeper.sh/configs", {}).values():
        for match in (config.get("spec") or {}).get("match") or []:
            processes = match.get("processes") or []
            if "*" not in processes and "webhook" not in processes:
                continue
            if any(_ns_match(p, namespace) for p in match.get("excludedNamespaces") or []):
                return True
    return False


def _constraint_matches(constraint: Obj, namespace: str) -> bool:
    match = (constraint.get("spec") or {}).get("match") or {}
    kinds = match.get("kinds")
    if kinds and not any(
        ("" in (k.get("apiGroups") or []) or "*" in (k.get("apiGroups") or []))
        and ("Pod" in (k.get("kinds") or []) or "*" in (k.get("kinds") or []))
        for k in kinds
    ):
        return False
    if match.get("scope") == "Cluster":
        return False
    listed = match.get("namespaces")
    if listed and not any(_ns_match(p, namespace) for p in listed):
        return False
    return not any(_ns_match(p, namespace) for p in match.get("excludedNamespaces") or [])


def _review(
    cluster: FakeCluster, namespace: str, pod: Obj, dry_run: bool
) -> tuple[list[str], list[str]]:
    """Gatekeeper's validation handler: the deny and the warn messages."""
    if _excluded_by_config(cluster, namespace):
        return [], []
    import regopy  # type: ignore[import-untyped,import-not-found,unused-ignore]  # the `rego` extra: regopy 0.4.6

    st = state(cluster)
    templates = {
        str(
            (((t.get("spec") or {}).get("crd") or {}).get("spec") or {})
            .get("names", {})
            .get("kind")
            or ""
        ): t
        for t in st.objects.get("templates.gatekeeper.sh/constrainttemplates", {}).values()
    }
    review = {
        "uid": str(uuid.uuid4()),
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
        "requestResource": {"group": "", "version": "v1", "resource": "pods"},
        "name": pod["metadata"].get("name", ""),
        "namespace": namespace,
        "operation": "CREATE",
        "userInfo": {
            "username": "system:admin",
            "groups": ["system:masters", "system:authenticated"],
        },
        "object": pod,
        "oldObject": None,
        "dryRun": dry_run,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
    }
    denied: list[str] = []
    warned: list[str] = []
    kinds = _constraint_kinds(cluster)
    for key in sorted(k for k in st.objects if k.startswith(CONSTRAINTS_GROUP + "/")):
        for (_, cname), constraint in sorted(st.objects[key].items()):
            template = templates.get(str(constraint.get("kind")))
            if template is None or constraint.get("kind") not in kinds:
                continue
            if not _constraint_matches(constraint, namespace):
                continue
            target = ((template.get("spec") or {}).get("targets") or [{}])[0]
            rego = str(target.get("rego") or "")
            interpreter = regopy.Interpreter()
            interpreter.add_module("template", rego)
            for i, lib in enumerate(target.get("libs") or []):
                interpreter.add_module(f"lib{i}", str(lib))
            interpreter.set_input_json(
                json.dumps(
                    {
                        "review": review,
                        "parameters": (constraint.get("spec") or {}).get("parameters") or {},
                    }
                )
            )
            package = next(
                line.split()[1] for line in rego.splitlines() if line.strip().startswith("package ")
            )
            # regopy 0.4.6's Output.ok() returns None whatever happened (it drops the
            # result of rego_output_ok): read the text, which is JSON only on success.
            text = str(interpreter.query(f"data.{package}.violation"))
            try:
                result = json.loads(text)
            except ValueError as exc:
                raise FakeKubeError(f"the Rego of {template['metadata']['name']}: {text}") from exc
            violations = (result.get("expressions") or [[]])[0] if isinstance(result, dict) else []
            action = str((constraint.get("spec") or {}).get("enforcementAction") or "deny")
            for violation in violations or []:
                message = f"[{cname}] {violation.get('msg', '')}"
                if action == "deny":
                    denied.append(message)
                elif action == "warn":
                    warned.append(message)
    return denied, warned


# --- reads ----------------------------------------------------------------------------------


def label_selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """A labelSelector query (k=v, k==v, k!=v, k, !k, k in (a,b), k notin (a,b))."""
    if not selector:
        return True
    parts, depth, current = [], 0, ""
    for ch in selector:
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        depth += ch == "("
        depth -= ch == ")"
        current += ch
    parts.append(current)
    for raw in parts:
        term = raw.strip()
        if " notin " in term or " in " in term:
            key, _, rest = term.partition(" notin " if " notin " in term else " in ")
            values = {v.strip() for v in rest.strip().strip("()").split(",")}
            has = labels.get(key.strip()) in values
            if (" notin " in term) == has:
                return False
        elif "!=" in term:
            key, _, value = term.partition("!=")
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, _, value = term.replace("==", "=").partition("=")
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term and term not in labels:
            return False
    return True


def answer(
    cluster: FakeCluster, group: str, version: str, parts: list[str], query: dict[str, list[str]]
) -> Optional[Obj]:
    """GET of a resource this module serves (`parts` after /apis/GROUP/VERSION or /api/v1), or
    None when it serves no such path."""
    served = groups(cluster).get(group) if group else ("v1", CORE_RESOURCES)
    if served is None or served[0] != version:
        return None
    namespace = ""
    if len(parts) >= 3 and parts[0] == "namespaces":
        namespace, parts = parts[1], parts[2:]
    if not parts or len(parts) > 2:
        return None
    resource = next((r for r in served[1] if r.name == parts[0]), None)
    if resource is None or (namespace and not resource.namespaced):
        return None
    store = state(cluster).objects.get(f"{group}/{resource.name}", {})
    if len(parts) == 2:
        obj = store.get((namespace, parts[1]) if resource.namespaced else ("", parts[1]))
        if obj is None or (resource.namespaced and not namespace):
            raise _not_found(resource.name, parts[1], group)
        return obj
    selector = (query.get("labelSelector") or [""])[0]
    items = [
        o
        for (ns, _), o in sorted(store.items())
        if (not namespace or ns == namespace)
        and label_selector_matches(selector, o["metadata"].get("labels") or {})
    ]
    api_version = f"{group}/{version}" if group else "v1"
    out: Obj = {
        "kind": f"{resource.kind}List",
        "apiVersion": api_version,
        "metadata": {"resourceVersion": str(cluster._resource_version)},
        "items": [],
    }
    builtin = group in ("", "batch", "apps", "admissionregistration.k8s.io")
    for item in items:
        copied = copy.deepcopy(item)
        if builtin:  # built-in list items carry no kind/apiVersion; custom resources keep theirs
            copied.pop("kind", None)
            copied.pop("apiVersion", None)
        out["items"].append(copied)
    return out
