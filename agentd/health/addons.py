"""Add-on checks: Gatekeeper's HelmChart, install job, pods and webhook, and the guide's test."""

from __future__ import annotations

import json
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from agentd.core.paths import (
    GATEKEEPER_CHART,
    GATEKEEPER_MANIFEST,
    GATEKEEPER_NAMESPACE,
    IMAGE_SUFFIXES,
    K3S_IMAGES_DIR,
    K3S_UNITS,
)
from agentd.core.versions import imports_while_running
from agentd.health.findings import CheckInput, Finding, last_line, wanted
from agentd.health.kube import Kube
from agentd.system.commands import CommandResult

# None of these findings carries a fix. What agentd owns (the manifest, the chart file, the
# image archives) every converge puts back already; the rest is helm-controller's and
# Gatekeeper's, and the moves that would look like fixes are not safe to make unasked:
# re-running the install job repeats a failure whose cause is unchanged, restarting a server's
# k3s (to import an archive) stops the cluster's API, and deleting the webhook configuration
# turns the cluster's policies off.
COMPONENT = "addons/gatekeeper"  # as the plan names it
CHART_NAMESPACE = "kube-system"
CHART_NAME = "gatekeeper"
CHART_LABEL = "helmcharts.helm.cattle.io/chart"  # on the install job's pods (chart.go job())
# Addon objects are named after their manifest file without its extension (k3s pkg/deploy).
ADDON = Path(GATEKEEPER_MANIFEST).name.rsplit(".", 1)[0]
# Gatekeeper 3.15.1's chart (charts/gatekeeper/templates, values.yaml).
WEBHOOK_CONFIG = "gatekeeper-validating-webhook-configuration"  # validatingWebhookName
WEBHOOK = "validation.gatekeeper.sh"
WEBHOOK_SERVICE = "gatekeeper-webhook-service"
DEPLOYMENTS = {"controller-manager": "webhook", "audit-controller": "audit"}  # control-plane label
PULL_FAILURES = frozenset({"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull"})
DENIED = f'admission webhook "{WEBHOOK}" denied the request'
PROBE_POD = "agentd-gatekeeper-probe"
MAX_INDEX_BYTES = 1 << 20
UNREADABLE = (".tar.lz4", ".tar.zst", ".tzst")


def _finding(code: str, severity: str, message: str, remedy: str) -> Finding:
    return Finding(code, severity, COMPONENT, message, remedy)


def _not_found(result: CommandResult) -> bool:
    return "(NotFound)" in result.stderr


def check_addons(inp: CheckInput) -> list[Finding]:
    """Gatekeeper on a k3s server whose desired state has it (no kubectl call otherwise): the
    HelmChart applied, its install job done, the pods Ready, the webhook answering."""
    gatekeeper = ((inp.desired or {}).get("addons") or {}).get("gatekeeper")
    k3s = wanted(inp, "k3s")
    kube = inp.notes.get("kube")
    if not isinstance(gatekeeper, Mapping) or k3s is None or not isinstance(kube, Kube):
        return []
    if k3s.get("role", "server") != "server":
        return []
    values = gatekeeper.get("values") or {}
    chart, result = kube.json("get", "helmchart", "-n", CHART_NAMESPACE, CHART_NAME)
    if chart is None:
        return [_chart_missing(inp, result)]
    done, findings = _install_job(kube, chart)
    if values.get("disableValidatingWebhook") is True:
        return findings + (_pods(inp, kube) if done else [])
    name = str(values.get("validatingWebhookName") or WEBHOOK_CONFIG)
    config, result = kube.json("get", "validatingwebhookconfiguration", name)
    if config is None:
        if not done:
            return findings  # the job's finding says why nothing is installed yet
        if not _not_found(result):
            return [*findings, _unreadable(f"ValidatingWebhookConfiguration {name}", result)]
        return [
            *findings,
            _finding(
                "gatekeeper.webhook-missing",
                "error",
                f"Gatekeeper's install job succeeded but its ValidatingWebhookConfiguration "
                f"{name} is not in the cluster: the API server never asks Gatekeeper, so no "
                "policy is enforced",
                "see who deleted it (k3s kubectl get events -A); running the install again puts "
                f"it back: k3s kubectl delete job -n {CHART_NAMESPACE} "
                f"{_job_name(chart)} (helm-controller creates the job again)",
            ),
        ]
    pods = _pods(inp, kube)
    webhook = _webhook(kube, config, pods)
    if webhook is not None:
        return [*findings, *pods, webhook]
    return [*findings, *pods, *_probe(inp, kube)]


def _chart_missing(inp: CheckInput, result: CommandResult) -> Finding:
    said = last_line(result)
    if "doesn't have a resource type" in said:
        return _finding(
            "gatekeeper.no-helm-controller",
            "error",
            f"the cluster has no HelmChart resource ({said}): k3s's helm-controller is off",
            "remove disable-helm-controller from k3s's configuration (components.k3s.config) "
            f"and restart k3s (systemctl restart {K3S_UNITS['server']})",
        )
    if not _not_found(result):
        return _unreadable(f"HelmChart {CHART_NAMESPACE}/{CHART_NAME}", result)
    if not inp.paths.under(GATEKEEPER_MANIFEST).exists():
        return Finding(
            "gatekeeper.helmchart-missing",
            "error",
            COMPONENT,
            f"the HelmChart {CHART_NAMESPACE}/{CHART_NAME} is not in the cluster, and agentd's "
            f"manifest {GATEKEEPER_MANIFEST} is gone",
            "let agentd converge (agentd apply): it writes the manifest again",
            "converge",
        )
    return _finding(
        "gatekeeper.helmchart-missing",
        "error",
        f"the HelmChart {CHART_NAMESPACE}/{CHART_NAME} is not in the cluster: k3s has not "
        f"applied {GATEKEEPER_MANIFEST}",
        f"see why in k3s kubectl describe addon -n {CHART_NAMESPACE} {ADDON} (its events) and "
        f"journalctl -u {K3S_UNITS['server']} (the deploy controller's errors)",
    )


def _unreadable(what: str, result: CommandResult) -> Finding:
    return _finding(
        "gatekeeper.unreadable",
        "warning",
        f"{what} could not be read: {last_line(result)}",
        "check the API server (k3s kubectl get --raw /readyz) and run agentd check again",
    )


def _job_name(chart: Mapping[str, Any]) -> str:
    # helm-controller names the job helm-install-NAME and records it in status.jobName.
    return str((chart.get("status") or {}).get("jobName") or f"helm-install-{CHART_NAME}")


def _conditions(obj: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The object's True conditions by type."""
    out: dict[str, Mapping[str, Any]] = {}
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if isinstance(cond, Mapping) and cond.get("status") == "True":
            out[str(cond.get("type"))] = cond
    return out


def _install_job(kube: Kube, chart: Mapping[str, Any]) -> tuple[bool, list[Finding]]:
    """Whether the install job succeeded, and what to say when it has not."""
    name = _job_name(chart)
    where = f"{CHART_NAMESPACE}/{name}"
    job, result = kube.json("get", "job", "-n", CHART_NAMESPACE, name)
    if job is None:
        if not _not_found(result):
            return False, [_unreadable(f"the install job {where}", result)]
        failed = _conditions(chart).get("Failed")  # helm-controller 0.15.14+ sets conditions
        if failed is not None:
            why = f"{failed.get('reason') or 'failed'}: {failed.get('message') or ''}".strip()
            return False, [
                _finding(
                    "gatekeeper.install-failed",
                    "error",
                    f"helm-controller could not run Gatekeeper's install job {where} ({why})",
                    f"k3s kubectl describe helmchart -n {CHART_NAMESPACE} {CHART_NAME}",
                )
            ]
        return False, [
            _finding(
                "gatekeeper.installing",
                "info",
                f"helm-controller has not created Gatekeeper's install job {where} yet",
                "wait; if it stays so, see journalctl -u k3s (helm-controller runs in k3s)",
            )
        ]
    conditions = _conditions(job)
    if "Complete" in conditions:
        return True, []
    status = job.get("status") or {}
    pods, _ = kube.json("get", "pods", "-n", CHART_NAMESPACE, "-l", f"{CHART_LABEL}={CHART_NAME}")
    items = [p for p in (pods or {}).get("items") or [] if isinstance(p, Mapping)]
    # The job's pods restart their container in place (restartPolicy OnFailure, chart.go): the
    # job controller counts those restarts against backoffLimit, status.failed stays 0.
    restarts = sum(
        int(c.get("restartCount") or 0)
        for p in items
        for c in (p.get("status") or {}).get("containerStatuses") or []
    )
    failures = int(status.get("failed") or 0) + restarts
    retry = (
        f"once the cause is fixed, k3s kubectl delete job -n {CHART_NAMESPACE} {name} runs it "
        "again (helm-controller creates it anew)"
    )
    if "Failed" in conditions:
        cond = conditions["Failed"]
        return False, [
            _finding(
                "gatekeeper.install-failed",
                "error",
                f"Gatekeeper's install job {where} failed and gave up ({cond.get('reason')}: "
                f"{cond.get('message')}){_helm_said(kube, items)}",
                f"{_install_hint()}; {retry}",
            )
        ]
    if failures > 0:
        limit = (job.get("spec") or {}).get("backoffLimit")
        return False, [
            _finding(
                "gatekeeper.install-failing",
                "error",
                f"Gatekeeper's install job {where} has failed {failures} time"
                f"{'s' if failures != 1 else ''} and keeps retrying (backoffLimit {limit})"
                f"{_helm_said(kube, items)}",
                f"{_install_hint()}; k3s kubectl logs -n {CHART_NAMESPACE} job/{name}",
            )
        ]
    return False, [
        _finding(
            "gatekeeper.installing",
            "info",
            f"Gatekeeper's install job {where} is running (helm install)",
            "wait for it to finish",
        )
    ]


def _install_hint() -> str:
    return (
        f"a chart that cannot be fetched or read: check {GATEKEEPER_CHART} (agentd places it) "
        "and that addons.gatekeeper.version is its version; values the chart refuses: check "
        "addons.gatekeeper.values"
    )


def _helm_said(kube: Kube, pods: Sequence[Mapping[str, Any]]) -> str:
    """Helm's own error line from the newest of the job's pods, as ': LINE', else ''."""
    if not pods:
        return ": its pods are gone (the job controller deletes them when it gives up)"
    newest = max(pods, key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp")))
    pod = str((newest.get("metadata") or {}).get("name"))
    logs = kube("logs", "-n", CHART_NAMESPACE, pod, "--tail=20")
    if not logs.ok:
        return f": its logs could not be read ({last_line(logs)})"
    lines = [line.strip() for line in logs.stdout.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    said = (errors or lines or ["(its log is empty)"])[-1]
    return f": {said[:300]}"


def _ready(pod: Mapping[str, Any]) -> bool:
    return "Ready" in _conditions(pod)


def _why_not_ready(pod: Mapping[str, Any]) -> tuple[str, list[str]]:
    """Why a pod is not Ready, and the images it cannot pull."""
    status = pod.get("status") or {}
    containers = [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]
    pulls = []
    for c in containers:
        waiting = (c.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in PULL_FAILURES:
            pulls.append(str(c.get("image")))
        if reason:
            message = f" ({waiting['message'][:200]})" if waiting.get("message") else ""
            return f"{reason}{message}", pulls
        if not c.get("ready") and (c.get("state") or {}).get("running"):
            return "running, its readiness probe failing", pulls
    for cond in status.get("conditions") or []:
        if cond.get("status") == "False" and cond.get("message"):
            return f"{cond.get('reason') or cond.get('type')}: {cond['message'][:200]}", pulls
    return str(status.get("phase") or "Unknown"), pulls


def _pods(inp: CheckInput, kube: Kube) -> list[Finding]:
    """Gatekeeper's Deployments' pods Ready; a pod that cannot pull its image says so, with
    what this node's airgap archives hold."""
    listed, result = kube.json("get", "pods", "-n", GATEKEEPER_NAMESPACE)
    if listed is None:
        return [_unreadable(f"the pods of {GATEKEEPER_NAMESPACE}", result)]
    pods = [
        p
        for p in listed.get("items") or []
        if isinstance(p, Mapping)
        and ((p.get("metadata") or {}).get("labels") or {}).get("control-plane") in DEPLOYMENTS
    ]
    if not pods:
        return [
            _finding(
                "gatekeeper.pods-not-ready",
                "error",
                f"Gatekeeper is installed but {GATEKEEPER_NAMESPACE} has none of its pods "
                "(controller-manager, audit)",
                f"k3s kubectl describe deployments -n {GATEKEEPER_NAMESPACE} (and their "
                "replicasets' events)",
            )
        ]
    waiting: dict[str, list[str]] = {}  # why -> the pods it holds back
    missing: set[str] = set()
    for pod in pods:
        if _ready(pod):
            continue
        why, pulls = _why_not_ready(pod)
        waiting.setdefault(why, []).append(str((pod.get("metadata") or {}).get("name")))
        missing.update(pulls)
    if not waiting:
        return []
    count = sum(len(names) for names in waiting.values())
    listed_reasons = "; ".join(
        f"{', '.join(names[:3])}{f' and {len(names) - 3} more' if len(names) > 3 else ''}: {why}"
        for why, names in waiting.items()
    )
    if missing:
        message, remedy = _images_missing(inp, sorted(missing))
        return [
            _finding(
                "gatekeeper.images-missing",
                "error",
                f"Gatekeeper's pods cannot start: {message} ({listed_reasons})",
                remedy,
            )
        ]
    return [
        _finding(
            "gatekeeper.pods-not-ready",
            "error",
            f"{count} of Gatekeeper's {len(pods)} pods are not Ready: {listed_reasons}",
            f"k3s kubectl describe pods -n {GATEKEEPER_NAMESPACE}; k3s kubectl logs -n "
            f"{GATEKEEPER_NAMESPACE} deploy/gatekeeper-controller-manager",
        )
    ]


def normalized(ref: str) -> str:
    """An image reference as containerd names it: docker.io/library/busybox:latest."""
    name = ref.strip()
    if "@" not in name and ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    first, _, rest = name.partition("/")
    if not rest:
        return f"docker.io/library/{name}"
    if "." not in first and ":" not in first and first != "localhost":
        return f"docker.io/{name}"
    return name


def archive_images(path: Path) -> Optional[set[str]]:
    """The images an archive holds (docker save's manifest.json RepoTags, an OCI layout's
    index.json image names), normalized; None when it cannot be read here (Python's tarfile
    has no lz4, nor zstd before 3.14)."""
    if path.name.lower().endswith(UNREADABLE):
        return None
    names: set[str] = set()
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                base = member.name.lstrip("./")
                if base not in ("manifest.json", "index.json") or not member.isfile():
                    continue
                if member.size > MAX_INDEX_BYTES:
                    continue
                data = tar.extractfile(member)
                if data is not None:
                    names.update(_refs(json.loads(data.read())))
    except (OSError, EOFError, tarfile.TarError, ValueError):  # EOFError: a truncated gzip
        return None
    return {normalized(n) for n in names}


def _refs(doc: Any) -> list[str]:
    out: list[str] = []
    if isinstance(doc, list):  # manifest.json (docker save)
        for entry in doc:
            if isinstance(entry, Mapping):
                out += [t for t in entry.get("RepoTags") or [] if isinstance(t, str)]
    elif isinstance(doc, Mapping):  # index.json (OCI layout, ctr export)
        for manifest in doc.get("manifests") or []:
            notes = (manifest.get("annotations") or {}) if isinstance(manifest, Mapping) else {}
            for key in ("io.containerd.image.name", "org.opencontainers.image.ref.name"):
                ref = notes.get(key)
                if isinstance(ref, str) and "/" in ref:  # a bare tag names no image
                    out.append(ref)
    return out


def _archives(inp: CheckInput) -> list[Path]:
    """The archives agentd placed for the desired state's images (NAME plus the suffix of its
    URL, in whatever case the URL spells it)."""
    names = {
        str(image.get("name"))
        for image in (inp.desired or {}).get("images") or []
        if isinstance(image, Mapping) and image.get("name")
    }
    try:
        files = sorted(inp.paths.under(K3S_IMAGES_DIR).iterdir())
    except OSError:
        return []
    placed = []
    for f in files:
        suffixes = [s for s in IMAGE_SUFFIXES if f.name.lower().endswith(s)]
        longest = max(suffixes, key=len) if suffixes else None  # .tar.zst, not .tar
        if longest and f.name[: -len(longest)] in names and f.is_file():
            placed.append(f)
    return placed


def _images_missing(inp: CheckInput, images: list[str]) -> tuple[str, str]:
    """What the pods lack, what this node's archives hold of it, and what to do."""
    archives = _archives(inp)
    held = {a: archive_images(a) for a in archives}
    wanted_refs = {normalized(i) for i in images}
    holders = sorted(a.name for a, refs in held.items() if refs and refs & wanted_refs)
    unread = sorted(a.name for a, refs in held.items() if refs is None)
    one = len(images) == 1
    lacking = f"{', '.join(images)} {'is' if one else 'are'} not on this node"
    them = "it" if one else "them"
    k3s = inp.facts.component("k3s").version
    unit = K3S_UNITS["server"]
    if holders:
        if imports_while_running(k3s):
            return (
                f"{lacking}, though {', '.join(holders)} in {K3S_IMAGES_DIR} holds {them} and k3s "
                f"{k3s} imports archives while running",
                f"see why the import failed: journalctl -u {unit} (k3s logs each import)",
            )
        return (
            f"{lacking}: {', '.join(holders)} in {K3S_IMAGES_DIR} holds {them}, but k3s "
            f"{k3s or '(version unknown)'} imports that directory only at its start",
            f"restart k3s when the cluster can spare its API for a moment (systemctl restart "
            f"{unit}); k3s v1.29.13, v1.30.9, v1.31.5, v1.32.0 and later import while running",
        )
    if unread:
        return (
            f"{lacking} and could not be pulled; {', '.join(unread)} in {K3S_IMAGES_DIR} may "
            f"hold {them} (agentd cannot read lz4 or zstd)",
            f"check which images {unread[0]} holds (its manifest.json or index.json) and "
            f"journalctl -u {unit}; else add an archive with them under images: in the "
            "desired state",
        )
    placed = f" (placed: {', '.join(a.name for a in archives)})" if archives else ""
    return (
        f"{lacking}, this node cannot pull {them}, and no image archive of the desired state "
        f"holds {them}{placed}",
        f"add an archive holding {', '.join(images)} under images: in the desired state (for "
        "an airgapped node), or give the node a registry it can reach (k3s.registries)",
    )


def _webhook(kube: Kube, config: Mapping[str, Any], pods: Sequence[Finding]) -> Optional[Finding]:
    """The webhook with no ready endpoint: what that does depends on its failurePolicy."""
    hooks = [w for w in config.get("webhooks") or [] if isinstance(w, Mapping)]
    hook = next((w for w in hooks if w.get("name") == WEBHOOK), None)
    if hook is None:
        return None
    service = (hook.get("clientConfig") or {}).get("service") or {}
    ns = str(service.get("namespace") or GATEKEEPER_NAMESPACE)
    name = str(service.get("name") or WEBHOOK_SERVICE)
    endpoints, result = kube.json("get", "endpoints", "-n", ns, name)
    if endpoints is None and not _not_found(result):
        return _unreadable(f"the endpoints of {ns}/{name}", result)
    subsets = (endpoints or {}).get("subsets") or []
    if any(isinstance(s, Mapping) and s.get("addresses") for s in subsets):
        return None
    # admissionregistration/v1 defaults failurePolicy to Fail.
    policy = str(hook.get("failurePolicy") or "Fail")
    because = f" because {pods[0].code} (above)" if pods else ""
    unreachable = (
        f"Gatekeeper's webhook {WEBHOOK} has no ready endpoint (service {ns}/{name}){because}"
    )
    fix = pods[0].remedy if pods else f"k3s kubectl get pods -n {GATEKEEPER_NAMESPACE}"
    config_name = (config.get("metadata") or {}).get("name")
    if policy == "Fail":
        # Wasm pods are refused like any other pod, but wasm_ready (and the node label) stays
        # with the node's own stack: admission is the cluster's, no node label routes around
        # it, and while the webhook is down the label change itself is refused (a node is
        # cluster-scoped, which a namespaceSelector never exempts).
        return _finding(
            "gatekeeper.webhook-blocking",
            "critical",
            f"{unreachable} and failurePolicy Fail: the API server refuses every create and "
            "update the webhook covers outside the exempt namespaces: every new pod, Wasm pods "
            "and helm-controller's own job pods included, and node label changes (agentd's "
            "wasm-runtime label too)",
            f"{fix}. To unblock the cluster at once: k3s kubectl delete "
            f"validatingwebhookconfiguration {config_name} (no webhook is called on webhook "
            "configurations; the next install job puts it back); setting "
            "validatingWebhookFailurePolicy: Ignore in addons.gatekeeper.values alone cannot "
            "take effect, as its install job's pod is refused too",
        )
    return _finding(
        "gatekeeper.webhook-unreachable",
        "warning",
        f"{unreachable} and failurePolicy {policy}: the API server admits everything, so no "
        "policy is enforced",
        fix,
    )


def probe_pod(image: str, namespace: str) -> bytes:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": PROBE_POD,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "agentd"},
        },
        "spec": {"containers": [{"name": "probe", "image": image}]},
    }
    return json.dumps(pod).encode()


def _probe(inp: CheckInput, kube: Kube) -> list[Finding]:
    """The guide's own test, as a server-side dry run (admission runs, nothing is created): a
    pod with an untrusted image must be refused by Gatekeeper."""
    image, ns = inp.gatekeeper_probe_image, inp.gatekeeper_probe_namespace
    if image is None:
        return []
    result = kube("create", "--dry-run=server", "-o", "json", "-f", "-", stdin=probe_pod(image, ns))
    what = f"a pod with image {image} in namespace {ns}"
    if result.ok:
        return [
            _finding(
                "gatekeeper.policy-not-enforced",
                "error",
                f"{what} was admitted: no Gatekeeper constraint refuses it",
                "check the policies in addons.gatekeeper.policies (k3s kubectl get constraints: "
                "their enforcementAction, match and totalViolations), and that the namespace is "
                "not exempt (Config's match, the admission.gatekeeper.sh/ignore label)",
            )
        ]
    said = last_line(result)
    if DENIED in said:
        return [
            _finding(
                "gatekeeper.probe-refused",
                "info",
                f"{what} was refused, as it should be: {said}",
                "nothing to do",
            )
        ]
    return [
        _finding(
            "gatekeeper.probe-error",
            "error",
            f"{what} could not be checked against Gatekeeper: {said}",
            "see the message; health.gatekeeperProbe sets the image and namespace",
        )
    ]
