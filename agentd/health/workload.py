"""The Wasm workload probe: a pod on this node, its empty logs traced to their real cause."""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from agentd.core.paths import CRUN_WASM_RUNTIME, PROBE_RUNTIME_CLASS, RUNTIMECLASS_MANIFEST
from agentd.facts.configs import MAX_CONFIG_BYTES
from agentd.health.findings import CheckInput, Finding, last_line
from agentd.health.kube import Kube
from agentd.health.probe import PROBE_OUTPUT
from agentd.system.readfile import read_text_bounded

PROBE_POD = "agentd-wasm-probe"


def _runtime_class(inp: CheckInput) -> Optional[str]:
    """agentd's probe RuntimeClass (crun-wasm, no node selector) where the node's manifest has
    it, else the first crun-wasm RuntimeClass of the desired state."""
    try:
        text = read_text_bounded(inp.paths.under(RUNTIMECLASS_MANIFEST), MAX_CONFIG_BYTES)
    except OSError:
        text = ""
    if re.search(rf"^\s*name:\s*{PROBE_RUNTIME_CLASS}\s*$", text, re.MULTILINE):
        return PROBE_RUNTIME_CLASS
    for rc in (inp.desired or {}).get("runtimeClasses") or []:
        if isinstance(rc, Mapping) and rc.get("handler") == CRUN_WASM_RUNTIME:
            return str(rc.get("name"))
    return None


def probe_manifest(name: str, namespace: str, runtime_class: str, node: str, image: str) -> str:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "agentd"},
            # crun picks its Wasm handler by this annotation (compat-smart: for a .wasm command).
            "annotations": {"module.wasm.image/variant": "compat-smart"},
        },
        "spec": {
            "runtimeClassName": runtime_class,
            "nodeName": node,
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "probe",
                    "image": image,
                    "command": ["/probe.wasm"],
                    # An edge node may be offline: use the image it has (`k3s ctr images
                    # import`), pull only when it has none.
                    "imagePullPolicy": "IfNotPresent",
                }
            ],
        },
    }
    return json.dumps(pod)


def check_workload(inp: CheckInput, findings: Sequence[Finding]) -> list[Finding]:
    """Run a Wasm pod on this node; empty logs are traced to their real cause, in order."""
    kube = inp.notes.get("kube")
    if inp.probe_image is None or not isinstance(kube, Kube):
        return []
    runtime_class = _runtime_class(inp)
    if runtime_class is None:
        return [
            Finding(
                "wasm.no-runtimeclass",
                "warning",
                "k3s",
                f"no RuntimeClass with handler {CRUN_WASM_RUNTIME}: the Wasm probe cannot run",
                "add one to runtimeClasses in the desired state",
            )
        ]
    name = f"{PROBE_POD}-{re.sub(r'[^a-z0-9-]', '-', inp.node_name.lower())}"[:63].strip("-")
    ns = inp.probe_namespace
    kube("delete", "pod", name, "-n", ns, "--ignore-not-found", "--wait=false")
    manifest = probe_manifest(name, ns, runtime_class, inp.node_name, inp.probe_image)
    created = kube("create", "--validate=false", "-f", "-", stdin=manifest.encode())
    if not created.ok:
        return [
            Finding(
                "wasm.probe-rejected",
                "error",
                "k3s",
                f"the Wasm probe pod was refused: {last_line(created)}",
                f"check RuntimeClass {runtime_class} and the probe image",
            )
        ]
    try:
        pod = _wait_terminal(kube, name, ns, inp.probe_timeout)
        logs = kube("logs", name, "-n", ns)
    finally:
        kube("delete", "pod", name, "-n", ns, "--ignore-not-found", "--wait=false")
    phase = ((pod or {}).get("status") or {}).get("phase", "Unknown")
    if phase == "Succeeded" and logs.ok and logs.stdout.encode().strip() == PROBE_OUTPUT.strip():
        return []
    if phase not in ("Succeeded", "Failed"):
        return [
            Finding(
                "wasm.probe-stuck",
                "warning",
                "k3s",
                f"the Wasm probe pod is still {phase} after {inp.probe_timeout:g}s",
                f"kubectl describe pod {name} -n {ns} (image pull, scheduling)",
            )
        ]
    lines = logs.stdout.strip().splitlines() if logs.ok else []
    return [trace_empty_logs(findings, phase, pod or {}, lines)]


def _wait_terminal(kube: Kube, name: str, ns: str, timeout: float) -> Optional[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    pod: Optional[dict[str, Any]] = None
    while True:
        pod, _ = kube.json("get", "pod", name, "-n", ns)
        phase = ((pod or {}).get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed") or time.monotonic() >= deadline:
            return pod
        time.sleep(1.0)


# crun's own errors about the container's process, as it writes them on the container's stderr
# (plain under `crun run`, tests/fixtures/real/crun_run_wasm_*.stderr; one JSON object per line
# with "msg" under containerd, which runs crun with --log-format=json).
_CRUN_ERROR_RE = re.compile(
    r"^(exec container process `[^`]+`: .+|could not load `[^`]+`: .+"
    r"|the path `[^`]+` exists but it is not executable: .+)$"
)


def crun_error(lines: Sequence[str]) -> Optional[str]:
    """crun's own error line in a container's log, the last one, else None."""
    said: Optional[str] = None
    for raw in lines:
        line = raw.strip()
        with contextlib.suppress(ValueError):
            doc = json.loads(line)
            if isinstance(doc, dict) and isinstance(doc.get("msg"), str):
                line = doc["msg"]
        if _CRUN_ERROR_RE.match(line):
            said = line[:300]
    return said


# What a cause does to the probe pod: crun execs the module as a native program (its log ends
# with "Exec format error"), or crun cannot start the container at all (empty log).
_NATIVE = (
    ("crun.no-wasm", "crun has no Wasm support"),
    ("containerd.no-annotations", "containerd does not pass the Wasm annotations to crun"),
)
_NOT_STARTED = (
    ("containerd.no-runtime", "containerd has no crun-wasm runtime"),
    ("crun.no-libwasmedge", "crun cannot load libwasmedge.so.0"),
    ("crun.ldconfig", "crun cannot load libwasmedge.so.0 (the loader cache is stale)"),
    ("crun.too-old", "crun is older than the minimum"),
)


def trace_empty_logs(
    findings: Sequence[Finding], phase: str, pod: dict[str, Any], lines: Sequence[str]
) -> Finding:
    """The guide's "kubectl logs is empty": the probe's line never came. Traced through the real
    causes in order; crun's own error line, when it left one, is quoted, and says which causes
    fit: after "Exec format error" crun ran the module as a native program."""
    output = lines[-1][:300] if lines else ""
    said = f" (its log: {output})" if output else " with empty logs"
    crun_said = crun_error(lines)
    native = crun_said is not None and crun_said.endswith("Exec format error")
    by_code = {f.code: f for f in findings}
    for code, cause in _NATIVE if native else (*_NATIVE, *_NOT_STARTED):
        if code in by_code:
            source = by_code[code]
            return Finding(
                "wasm.empty-logs",
                "error",
                source.component,
                f"the Wasm probe pod {phase.lower()}{said} because {cause}: {source.message}",
                source.remedy,
                source.fix,
            )
    if native:
        return Finding(
            "wasm.empty-logs",
            "error",
            "containerd",
            f"the Wasm probe pod {phase.lower()}: its log is crun's own error ({crun_said}): "
            "crun executed the module as a native program, so no Wasm handler took it: the "
            "module.wasm.image/variant annotation did not reach crun, or the pod did not run "
            "with a Wasm crun",
            "check the probe RuntimeClass's handler (crun-wasm), that containerd's crun-wasm "
            "runtime names a crun built with +WASM:wasmedge, and its pod_annotations "
            '(["module.wasm.image/variant", ...])',
        )
    state = _terminated(pod)
    return Finding(
        "wasm.empty-logs",
        "error",
        "k3s",
        f"the Wasm probe pod {phase.lower()}{said}, and none of the known causes (crun without "
        f"Wasm, annotations not passed, libwasmedge missing, crun too old) is present: {state}",
        "check that the probe image's /probe.wasm prints the probe line "
        "(`agentd probe-wasm > probe.wasm` writes agentd's)",
    )


def _terminated(pod: dict[str, Any]) -> str:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        term = (status.get("state") or {}).get("terminated")
        if term:
            return (
                f"exit code {term.get('exitCode')} ({term.get('reason') or 'no reason'}) "
                f"{term.get('message') or ''}".strip()
            )
    return "no container status"
