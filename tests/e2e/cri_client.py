"""Stands in for the kubelet only; checked against the real CRI API (stubs from its api.proto)."""

# Run inside the Wasm host (`python3 /e2e/cri_client.py GEN SPEC OUT`) with Debian 13's
# python3-grpcio and the stubs tests/e2e/cri.py compiles from the CRI's own api.proto (Debian's
# golang-github-kubernetes-cri-api-dev): every message and call below is checked against the real
# CRI API by protobuf and by containerd, not by our beliefs. It does the kubelet's part of the
# guide's Hello Wasm pod: RunPodSandbox (pod annotations, runtime handler), CreateContainer (log
# path), StartContainer, waiting for the exit, reading the CRI log file; nothing else.

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

CALL_TIMEOUT = 60.0


def _load(gen: str) -> tuple[Any, Any, Any]:
    """grpc and the stubs made from api.proto (imported by name: they exist in the tree only)."""
    sys.path.insert(0, gen)
    grpc = importlib.import_module("grpc")
    api = importlib.import_module("api_pb2")
    stubs = importlib.import_module("api_pb2_grpc")
    return grpc, api, stubs


def _error(grpc: Any, step: str, exc: Exception) -> dict[str, str]:
    if isinstance(exc, grpc.RpcError):
        return {"step": step, "code": exc.code().name, "details": exc.details()}
    return {"step": step, "code": type(exc).__name__, "details": str(exc)}


def run_pod(spec: dict[str, Any], gen: str) -> dict[str, Any]:
    """The pod of `spec` (socket, handler, pod{name, namespace, uid, annotations},
    container{name, image}, timeout) from start to exit; the statuses, log and any failed step."""
    grpc, api, stubs = _load(gen)
    channel = grpc.insecure_channel(f"unix://{spec['socket']}")
    runtime = stubs.RuntimeServiceStub(channel)
    pod = spec["pod"]
    container = spec["container"]
    result: dict[str, Any] = {"handler": spec["handler"], "annotations": pod["annotations"]}
    log_dir = f"/var/log/pods/{pod['namespace']}_{pod['name']}_{pod['uid']}"
    log_path = f"{container['name']}/0.log"
    os.makedirs(f"{log_dir}/{container['name']}", exist_ok=True)
    # hostNetwork: there is no CNI on this host (test-hosts.md). Such a pod has no UTS namespace
    # of its own, so no hostname: crun refuses one ("hostname requires the UTS namespace").
    host_network = api.NamespaceOption(network=api.NODE)
    sandbox_config = api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(
            name=pod["name"], uid=pod["uid"], namespace=pod["namespace"], attempt=0
        ),
        log_directory=log_dir,
        labels={"io.kubernetes.pod.name": pod["name"]},
        annotations=pod["annotations"],
        linux=api.LinuxPodSandboxConfig(
            security_context=api.LinuxSandboxSecurityContext(namespace_options=host_network)
        ),
    )
    step = "Version"
    try:
        version = runtime.Version(api.VersionRequest(version="v1"), timeout=CALL_TIMEOUT)
        result["runtime"] = f"{version.runtime_name} {version.runtime_version}"
        result["runtime_api"] = version.runtime_api_version
        step = "RunPodSandbox"
        sandbox = runtime.RunPodSandbox(
            api.RunPodSandboxRequest(config=sandbox_config, runtime_handler=spec["handler"]),
            timeout=CALL_TIMEOUT,
        ).pod_sandbox_id
        step = "CreateContainer"
        container_id = runtime.CreateContainer(
            api.CreateContainerRequest(
                pod_sandbox_id=sandbox,
                config=api.ContainerConfig(
                    metadata=api.ContainerMetadata(name=container["name"], attempt=0),
                    image=api.ImageSpec(image=container["image"]),
                    log_path=log_path,
                    linux=api.LinuxContainerConfig(
                        security_context=api.LinuxContainerSecurityContext(
                            namespace_options=host_network
                        )
                    ),
                ),
                sandbox_config=sandbox_config,
            ),
            timeout=CALL_TIMEOUT,
        ).container_id
        step = "StartContainer"
        runtime.StartContainer(
            api.StartContainerRequest(container_id=container_id), timeout=CALL_TIMEOUT
        )
        step = "ContainerStatus"
        status = _wait_exited(runtime, api, container_id, float(spec["timeout"]))
        result["container"] = {
            "state": api.ContainerState.Name(status.state),
            "exit_code": status.exit_code,
            "reason": status.reason,
            "message": status.message,
        }
        step = "PodSandboxStatus"
        pod_status = runtime.PodSandboxStatus(
            api.PodSandboxStatusRequest(pod_sandbox_id=sandbox), timeout=CALL_TIMEOUT
        ).status
        result["sandbox"] = {"state": api.PodSandboxState.Name(pod_status.state)}
        step = "StopPodSandbox"
        runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=sandbox))
        runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=sandbox))
    except Exception as exc:  # the failed step is the result
        result["error"] = _error(grpc, step, exc)
    log = Path(log_dir, log_path)
    result["log"] = log.read_text(errors="replace") if log.exists() else None
    return result


def _wait_exited(runtime: Any, api: Any, container_id: str, timeout: float) -> Any:
    """ContainerStatus until the container has exited (or `timeout` seconds: then as it is)."""
    deadline = time.monotonic() + timeout
    while True:
        status = runtime.ContainerStatus(
            api.ContainerStatusRequest(container_id=container_id), timeout=CALL_TIMEOUT
        ).status
        if status.state == api.CONTAINER_EXITED or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def main(argv: list[str]) -> int:
    """`cri_client.py GEN SPEC OUT`: what run_pod saw for the pod of the JSON file SPEC, as JSON
    into OUT (stubs from the directory GEN)."""
    gen, spec, out = argv
    result = run_pod(json.loads(Path(spec).read_text()), gen)
    Path(out).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
