"""The real CRI path on the Wasm host: containerd 1.7's CRI, k3s's config, agentd's runtime."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from agentd.core.paths import CRUN_WASM_RUNTIME
from agentd.plan import render
from tests.e2e import wasmhost

E2E_DIR = Path(__file__).resolve().parent
WORK_DIR = wasmhost.WORK_DIR / "cri"
DEBIAN12_CRUN_CACHE = wasmhost.CACHE_DIR / "debian12-crun"

# The k3s release whose base template config_containerd() renders: one with containerd 1.7
# (v1.7.11-k3s2, its go.mod) and the `{{ template "base" . }}` extension; agentd renders
# config.toml.tmpl (containerd 1.x) for it.
K3S_RELEASE = "v1.29.3+k3s1"
K3S_COMMIT = "8aecc26b0f167d5e9e4e9fbcfd5a471488bf5957"
# What k3s sets for a node at that release (pkg/agent/config, pkg/cli/cmds/const_linux.go).
DATA_DIR = "/var/lib/rancher/k3s"
CONTAINERD_DIR = f"{DATA_DIR}/agent/etc/containerd"
CONTAINERD_ROOT = f"{DATA_DIR}/agent/containerd"
CONTAINERD_STATE = "/run/k3s/containerd"
CONTAINERD_SOCKET = f"{CONTAINERD_STATE}/containerd.sock"
PAUSE_IMAGE = "rancher/mirrored-pause:3.6"
# k3s looks for runtimes on this PATH, not its own (pkg/agent/containerd/config_linux.go), and
# adds a runtime for each binary it finds (runtimes.go): name -> (runtime_type, binary).
K3S_RUNTIMES_PATH = (
    "/usr/local/nvidia/toolkit",
    "/opt/kwasm/bin",
    "/usr/sbin",
    "/usr/local/sbin",
    "/usr/bin",
    "/usr/local/bin",
)
K3S_RUNTIMES = {
    "crun": ("io.containerd.runc.v2", "crun"),
    "nvidia": ("io.containerd.runc.v2", "nvidia-container-runtime"),
    "nvidia-experimental": ("io.containerd.runc.v2", "nvidia-container-runtime-experimental"),
    "lunatic": ("io.containerd.lunatic.v1", "containerd-shim-lunatic-v1"),
    "slight": ("io.containerd.slight.v1", "containerd-shim-slight-v1"),
    "spin": ("io.containerd.spin.v2", "containerd-shim-spin-v2"),
    "wws": ("io.containerd.wws.v1", "containerd-shim-wws-v1"),
    "wasmedge": ("io.containerd.wasmedge.v1", "containerd-shim-wasmedge-v1"),
    "wasmer": ("io.containerd.wasmer.v1", "containerd-shim-wasmer-v1"),
    "wasmtime": ("io.containerd.wasmtime.v1", "containerd-shim-wasmtime-v1"),
}

# agentd installs its crun artifact here; in the tree it is the wrapper around Debian 13's crun.
CRUN_ARTIFACT = "/usr/local/bin/crun"
DEBIAN12_CRUN = "/usr/local/bin/crun-1.8.1"
HELLO_IMAGE = "localhost/agentd/hello-wasm:e2e"
HELLO_MODULE = "/hello.wasm"
PROBE_LINE = "agentd-wasm-probe-ok"
# The guide's Hello Wasm pod: crun runs a command ending in .wasm with WasmEdge.
WASM_ANNOTATIONS = {"module.wasm.image/variant": "compat-smart"}
# CAP_SYS_RESOURCE: without it nothing here may lower an oom_score_adj (see in_user_namespace).
CAP_SYS_RESOURCE = 24
PROTOC = ("python3", "-m", "grpc_tools.protoc")


def config_containerd(
    template: str,
    *,
    extra_runtimes: Mapping[str, tuple[str, str]],
    in_user_namespace: bool,
    systemd_cgroup: bool = False,
) -> str:
    """config.toml as k3s renders it from `template` (agentd's config.toml.tmpl): stands in for
    k3s's template rendering (templates.ParseTemplateFromConfig), which cannot run here.

    The base is k3s's own `ContainerdConfigTemplate` (pkg/agent/templates/templates_linux.go,
    which templates.go adds as the template "base") at K3S_RELEASE v1.29.3+k3s1, K3S_COMMIT
    8aecc26b0f16 ("Update to v1.29.3-k3s1"), bundling containerd v1.7.11-k3s2. It is rendered
    for this host with the values k3s fills in: program k3s; its data dir's opt, root and
    registry paths; no SELinux; unprivileged ports and ICMP (kernel >= 4.11); no cgroup
    disabling; the default pause image; snapshotter overlayfs; no default runtime; no flannel
    (this host has no CNI: the [cni] table and its bin/conf dirs are left out, as k3s does with
    --flannel-backend=none); no blockio/RDT config; no private registry; the `extra_runtimes`
    k3s finds (k3s_runtimes); `systemd_cgroup` (false: no systemd runs the tree); and
    `in_user_namespace` (k3s's IsRunningInUserNS, which adds disable_apparmor and
    restrict_oom_score_adj). Whitespace follows Go's template output for these values. Only the
    action agentd's template uses, `{{ template "base" . }}`, is expanded; any other refuses."""
    action = '{{ template "base" . }}'
    if template.count("{{") != 1 or action not in template:
        raise ValueError(f"not a template this stand-in renders (only {action}): {template!r}")
    cri = '[plugins."io.containerd.grpc.v1.cri"'
    userns = (
        "\n  disable_apparmor = true\n  restrict_oom_score_adj = true\n"
        if in_user_namespace
        else ""
    )
    runtimes = "".join(
        f'\n{cri}.containerd.runtimes."{name}"]\n'
        f'  runtime_type = "{runtime_type}"\n'
        f'{cri}.containerd.runtimes."{name}".options]\n'
        f'  BinaryName = "{binary}"\n'
        f"  SystemdCgroup = {str(systemd_cgroup).lower()}\n"
        for name, (runtime_type, binary) in sorted(extra_runtimes.items())  # Go: sorted keys
    )
    systemd = str(systemd_cgroup).lower()
    base = (
        "# File generated by k3s. DO NOT EDIT. Use config.toml.tmpl instead.\n"
        "version = 2\n"
        "\n"
        '[plugins."io.containerd.internal.v1.opt"]\n'
        f'  path = "{CONTAINERD_ROOT}"\n'
        f"{cri}]\n"
        '  stream_server_address = "127.0.0.1"\n'
        '  stream_server_port = "10010"\n'
        "  enable_selinux = false\n"
        "  enable_unprivileged_ports = true\n"
        "  enable_unprivileged_icmp = true"
        f"{userns}"
        f'\n  sandbox_image = "{PAUSE_IMAGE}"\n'
        f"\n{cri}.containerd]\n"
        '  snapshotter = "overlayfs"\n'
        "  disable_snapshot_annotations = true\n"
        "  \n"
        "\n"
        "\n"
        "\n"
        f"{cri}.containerd.runtimes.runc]\n"
        '  runtime_type = "io.containerd.runc.v2"\n'
        "\n"
        f"{cri}.containerd.runtimes.runc.options]\n"
        f"  SystemdCgroup = {systemd}\n"
        "\n"
        f"{cri}.registry]\n"
        f'  config_path = "{CONTAINERD_DIR}/certs.d"\n'
        "\n"
        "\n"
        "\n"
        "\n"
        "\n"
        f"{runtimes}\n"
    )
    return template.replace(action, base)


def k3s_runtimes(root: Path) -> dict[str, tuple[str, str]]:
    """The runtimes k3s would add on this tree: each binary of K3S_RUNTIMES found first on
    K3S_RUNTIMES_PATH (exec.LookPath: an executable file)."""
    found = {}
    for name, (runtime_type, binary) in K3S_RUNTIMES.items():
        for directory in K3S_RUNTIMES_PATH:
            candidate = root / directory.lstrip("/") / binary
            if candidate.is_file() and candidate.stat().st_mode & 0o111:
                found[name] = (runtime_type, f"{directory}/{binary}")
                break
    return found


def can_lower_oom_score_adj() -> bool:
    """Whether this process has CAP_SYS_RESOURCE, which lowering an oom_score_adj takes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
    return False


def crun_wrapper(real: str) -> str:
    """A crun at BinaryName that runs `real` with --cgroup-manager=disabled: this machine runs
    cgroup v1/hybrid, which crun refuses, so the tree has a fresh cgroup2 without controllers
    (wasmhost.run). The runc shim passes --systemd-cgroup for SystemdCgroup = true (agentd's
    table), which would override that: it is dropped. Everything else reaches `real` as is."""
    return (
        "#!/bin/sh\n"
        "# tests/e2e/cri.py: no cgroup manager on this machine's cgroup2 without controllers.\n"
        'for arg; do shift; [ "$arg" = --systemd-cgroup ] || set -- "$@" "$arg"; done\n'
        f'exec {real} --cgroup-manager=disabled "$@"\n'
    )


def oci_archive(path: Path, name: str, files: Mapping[str, bytes], entrypoint: str) -> None:
    """An OCI image layout tarball (what `ctr images import` loads) of one uncompressed layer
    holding `files` (mode 0755), for linux/amd64, named `name` (containerd's image-name
    annotation), running `entrypoint`."""
    layer_buffer = io.BytesIO()
    with tarfile.open(fileobj=layer_buffer, mode="w", format=tarfile.PAX_FORMAT) as layer_tar:
        for member, data in sorted(files.items()):
            info = tarfile.TarInfo(member.lstrip("/"))
            info.size = len(data)
            info.mode = 0o755
            layer_tar.addfile(info, io.BytesIO(data))
    layer = layer_buffer.getvalue()
    blobs: dict[str, bytes] = {}

    def blob(media_type: str, data: bytes) -> dict[str, Any]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": [entrypoint], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": blob("application/vnd.oci.image.config.v1+json", _json(config)),
        "layers": [blob("application/vnd.oci.image.layer.v1.tar", layer)],
    }
    descriptor = blob("application/vnd.oci.image.manifest.v1+json", _json(manifest))
    descriptor["platform"] = {"architecture": "amd64", "os": "linux"}
    descriptor["annotations"] = {"io.containerd.image.name": name}
    index = {"schemaVersion": 2, "manifests": [descriptor]}
    entries = {
        "oci-layout": _json({"imageLayoutVersion": "1.0.0"}),
        "index.json": _json(index),
        **{f"blobs/sha256/{d.split(':')[1]}": data for d, data in blobs.items()},
    }
    with tarfile.open(path, "w") as archive:
        for member, data in entries.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


# The node's part k3s plays (start containerd with its flags, load the images), then the
# kubelet's (cri_client.py), in a PID namespace of its own: nothing started here outlives it.
NODE_SCRIPT = f"""
set -eu
for d in {CONTAINERD_ROOT} /run/k3s /var/log/pods; do mkdir -p "$d"; mount -t tmpfs tmpfs "$d"; done
# containerd copies the node's resolv.conf into a hostNetwork sandbox; the tree has none.
[ -e /etc/resolv.conf ] || : > /etc/resolv.conf
containerd -c {CONTAINERD_DIR}/config.toml -a {CONTAINERD_SOCKET} \\
    --state {CONTAINERD_STATE} --root {CONTAINERD_ROOT} > /out/containerd.log 2>&1 &
containerd=$!
i=0
until ctr -a {CONTAINERD_SOCKET} version > /dev/null 2>&1; do
    i=$((i + 1)); [ "$i" -lt 200 ] || {{ echo "containerd did not start" >&2; exit 3; }}; sleep 0.1
done
for image in /images/*.tar; do
    ctr -a {CONTAINERD_SOCKET} -n k8s.io images import "$image" >> /out/import.log 2>&1
done
python3 /e2e/cri_client.py /gen /out/spec.json /out/result.json
kill "$containerd"; wait "$containerd" || true
"""


@dataclass
class Scenario:
    """A pod run through the CRI with one containerd template, and what it must show."""

    name: str
    what: str
    template: str  # agentd's config.toml.tmpl (or a variant of it)
    expect: Callable[[dict[str, Any]], list[str]]  # the result -> what did not hold
    result: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def expect_prints(result: dict[str, Any]) -> list[str]:
    container = result.get("container", {})
    failed = []
    if "error" in result:
        failed.append(f"a CRI call failed: {result['error']}")
    if container.get("exit_code") != 0 or container.get("state") != "CONTAINER_EXITED":
        failed.append(f"the container did not exit 0: {container}")
    if PROBE_LINE not in (result.get("log") or ""):
        failed.append(f"{PROBE_LINE!r} is not in the CRI log")
    return failed


def expect_exec_format_error(result: dict[str, Any]) -> list[str]:
    container = result.get("container", {})
    log = result.get("log") or ""
    failed = []
    if "error" in result:
        failed.append(f"a CRI call failed: {result['error']}")
    if container.get("exit_code") in (None, 0):
        failed.append(f"the container did not fail: {container}")
    if "Exec format error" not in log:
        failed.append("crun's `Exec format error` is not in the CRI log")
    if PROBE_LINE in log:
        failed.append(f"{PROBE_LINE!r} is in the CRI log: the module ran")
    return failed


def expect_spec_refused(result: dict[str, Any]) -> list[str]:
    """crun 1.8.1 refuses a spec with ociVersion 1.2.0 (tried: 1.0.2 and 1.1.0 pass), and Debian
    13's containerd is built with runtime-spec 1.2.0 (its Built-Using), so not even the pod's
    sandbox starts. (k3s v1.29.3+k3s1's go.mod pins runtime-spec to a 1.0.3 pre-release: with
    k3s's own containerd, crun 1.8.1 would start the pod and exec the module natively, as
    without pod_annotations; not tried, no k3s here.)"""
    error = result.get("error", {})
    failed = []
    if error.get("step") != "RunPodSandbox":
        failed.append(f"RunPodSandbox did not fail: {error or result.get('container')}")
    if "unknown version specified" not in error.get("details", ""):
        failed.append("crun's `unknown version specified` is not in the error")
    if PROBE_LINE in (result.get("log") or ""):
        failed.append(f"{PROBE_LINE!r} is in the CRI log: the module ran")
    return failed


def agentd_template(crun_path: str) -> str:
    return render.containerd_template(K3S_RELEASE, crun_path).decode()


def without_pod_annotations(template: str) -> str:
    """agentd's template less its pod_annotations line: the runtime table as k3s's own crun."""
    lines = template.splitlines(keepends=True)
    kept = [line for line in lines if not line.lstrip().startswith("pod_annotations")]
    if len(kept) != len(lines) - 1:
        raise ValueError("agentd's template has no single pod_annotations line")
    return "".join(kept)


def scenarios() -> list[Scenario]:
    return [
        Scenario(
            "hello-wasm",
            f"the guide's Hello Wasm pod ({CRUN_WASM_RUNTIME}, compat-smart) prints",
            agentd_template(CRUN_ARTIFACT),
            expect_prints,
        ),
        Scenario(
            "no-pod-annotations",
            "the same runtime table without pod_annotations: crun execs the module natively",
            without_pod_annotations(agentd_template(CRUN_ARTIFACT)),
            expect_exec_format_error,
        ),
        Scenario(
            "debian12-crun",
            "the template names Debian 12's crun 1.8.1 (no Wasm): no pod starts at all",
            agentd_template(DEBIAN12_CRUN),
            expect_spec_refused,
        ),
    ]


def _in_tree(root: Path, inside: str) -> Path:
    return root / inside.lstrip("/")


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def debian12_crun(work: Path, log: Path) -> Path:
    """Debian 12's crun binary: its .deb (`apt-get download crun` on this Debian 12 machine,
    kept in build/e2e-cache/debian12-crun/) unpacked with dpkg-deb -x."""
    DEBIAN12_CRUN_CACHE.mkdir(parents=True, exist_ok=True)
    debs = sorted(DEBIAN12_CRUN_CACHE.glob("crun_1.8.*.deb"))
    if not debs:
        _host(["apt-get", "download", "crun"], log, cwd=DEBIAN12_CRUN_CACHE)
        debs = sorted(DEBIAN12_CRUN_CACHE.glob("crun_1.8.*.deb"))
        if not debs:
            raise wasmhost.WasmHostError("apt-get download crun brought no crun 1.8 (Debian 12's)")
    unpacked = work / "debian12-crun"
    if unpacked.exists():
        shutil.rmtree(unpacked)
    _host(["dpkg-deb", "-x", str(debs[-1]), str(unpacked)], log)
    return unpacked / "usr" / "bin" / "crun"


def _host(argv: Sequence[str], log: Path, cwd: Optional[Path] = None) -> str:
    result = subprocess.run(
        list(argv), cwd=cwd, capture_output=True, text=True, check=False, timeout=600
    )
    with log.open("a") as handle:
        handle.write(f"$ {' '.join(argv)}\n{result.stdout}{result.stderr}")
    if result.returncode != 0:
        raise wasmhost.WasmHostError(f"{' '.join(argv)} failed (exit {result.returncode}), {log}")
    return result.stdout


def _tree(root: Path, argv: Sequence[str], log: Path, **kwargs: Any) -> str:
    result = wasmhost.run(root, argv, **kwargs)
    with log.open("a") as handle:
        handle.write(f"$ {' '.join(argv)}\n{result.stdout}{result.stderr}")
    if result.returncode != 0:
        raise wasmhost.WasmHostError(
            f"{' '.join(argv)} exited {result.returncode} in the tree, {log}:\n"
            + (result.stdout + result.stderr)[-2000:]
        )
    return result.stdout


@dataclass
class Node:
    """The prepared tree and what the scenarios share: stubs, images, crun binaries."""

    root: Path
    work: Path
    log: Path
    versions: dict[str, str]


def prepare_node(work: Path, log: Path, refresh: bool = False) -> tuple[Node, dict[str, float]]:
    """The Wasm host tree (wasmhost.prepare) with everything the scenarios need: the CRI stubs
    compiled from Debian's api.proto, the pause program built in it, the two OCI archives, the
    crun wrappers and Debian 12's crun. Timings by step."""
    timings: dict[str, float] = {}
    start = time.monotonic()
    tree = wasmhost.prepare(work / "root", log, refresh=refresh)
    root = tree.path
    timings["tree (cache)" if tree.cached else "tree (made)"] = time.monotonic() - start
    if tree.debootstrap_seconds is not None:
        timings["of which debootstrap"] = tree.debootstrap_seconds

    start = time.monotonic()
    gen = work / "gen"
    if gen.exists():
        shutil.rmtree(gen)
    (gen / "proto").mkdir(parents=True)
    proto = _in_tree(root, "/usr/share/gocode/src/k8s.io/cri-api/pkg/apis/runtime/v1/api.proto")
    # Only the Go generator's options use gogoproto; protoc for Python has no gogo.proto.
    kept = [line for line in proto.read_text().splitlines() if "gogoproto" not in line]
    (gen / "proto" / "api.proto").write_text("\n".join(kept) + "\n")
    _tree(
        root,
        [
            *PROTOC,
            "-I/gen/proto",
            "--python_out=/gen",
            "--grpc_python_out=/gen",
            "/gen/proto/api.proto",
        ],
        log,
        binds=[(gen, "/gen")],
    )
    timings["CRI stubs"] = time.monotonic() - start

    start = time.monotonic()
    images = work / "images"
    if images.exists():
        shutil.rmtree(images)
    images.mkdir()
    built = work / "built"
    built.mkdir(exist_ok=True)
    _tree(
        root,
        ["gcc", "-static", "-O2", "-o", "/built/pause", "/src/pause.c"],
        log,
        binds_ro=[(E2E_DIR / "pause", "/src")],
        binds=[(built, "/built")],
    )
    oci_archive(
        images / "pause.tar",
        f"docker.io/{PAUSE_IMAGE}",
        {"/pause": (built / "pause").read_bytes()},
        "/pause",
    )
    module = built / "hello.wasm"
    _host([sys.executable, "-m", "agentd", "probe-wasm", "--out", str(module)], log)
    oci_archive(
        images / "hello-wasm.tar", HELLO_IMAGE, {HELLO_MODULE: module.read_bytes()}, HELLO_MODULE
    )
    timings["images"] = time.monotonic() - start

    start = time.monotonic()
    _write(_in_tree(root, CRUN_ARTIFACT), crun_wrapper("/usr/bin/crun"), 0o755)
    crun12 = _in_tree(root, "/usr/local/lib/crun-1.8.1/crun")
    crun12.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(debian12_crun(work, log), crun12)
    _write(_in_tree(root, DEBIAN12_CRUN), crun_wrapper("/usr/local/lib/crun-1.8.1/crun"), 0o755)
    _in_tree(root, f"{CONTAINERD_DIR}/certs.d").mkdir(parents=True, exist_ok=True)
    timings["crun binaries"] = time.monotonic() - start

    versions = wasmhost.package_versions(root, ("containerd", "crun", "wasmedge"))
    versions["crun 1.8.1 (Debian 12)"] = _tree(
        root, ["/usr/local/lib/crun-1.8.1/crun", "--version"], log
    ).splitlines()[0]
    return Node(root, work, log, versions), timings


def run_scenario(node: Node, scenario: Scenario, timeout: float = 120.0) -> None:
    """The scenario's template rendered into config.toml (as k3s would), containerd started with
    it and the pod run through the CRI; the result and timing are kept on the scenario."""
    start = time.monotonic()
    out = node.work / "runs" / scenario.name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    template_path = render.containerd_template_path(K3S_RELEASE)
    config = config_containerd(
        scenario.template,
        extra_runtimes=k3s_runtimes(node.root),
        in_user_namespace=not can_lower_oom_score_adj(),
    )
    _write(_in_tree(node.root, template_path), scenario.template)
    _write(_in_tree(node.root, f"{CONTAINERD_DIR}/config.toml"), config)
    (out / "config.toml").write_text(config)
    spec = {
        "socket": CONTAINERD_SOCKET,
        "handler": CRUN_WASM_RUNTIME,
        "pod": {
            "name": "hello-wasm",
            "namespace": "default",
            "uid": f"e2e-{scenario.name}",
            "annotations": WASM_ANNOTATIONS,
        },
        "container": {"name": "hello", "image": HELLO_IMAGE},
        "timeout": 30,
    }
    (out / "spec.json").write_text(json.dumps(spec, indent=2))
    completed = wasmhost.run(
        node.root,
        ["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", NODE_SCRIPT],
        binds_ro=[
            (E2E_DIR, "/e2e"),
            (node.work / "gen", "/gen"),
            (node.work / "images", "/images"),
        ],
        binds=[(out, "/out")],
        cgroup2=True,
        timeout=timeout,
    )
    result_file = out / "result.json"
    if result_file.exists():
        scenario.result = json.loads(result_file.read_text())
    else:
        scenario.result = {"error": {"step": "node", "code": f"exit {completed.returncode}"}}
    scenario.result["node_exit"] = completed.returncode
    if completed.returncode != 0:
        scenario.result["node_output"] = (completed.stdout + completed.stderr)[-2000:]
    scenario.seconds = time.monotonic() - start


def main(args: Optional[Sequence[str]] = None) -> int:
    """`python3 -m tests.e2e.cri [--refresh]`: the CRI scenarios on the real Wasm host; each
    result printed, exit 1 when any expectation failed."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--refresh", action="store_true", help="debootstrap even when cached")
    parser.add_argument("--work", type=Path, default=WORK_DIR)
    options = parser.parse_args(args)
    work: Path = options.work
    work.mkdir(parents=True, exist_ok=True)
    log = work / "cri.log"
    log.write_text("")
    total = time.monotonic()
    node, timings = prepare_node(work, log, options.refresh)
    for step, seconds in timings.items():
        print(f"{step}: {seconds:.1f} s")
    for name, version in node.versions.items():
        print(f"{name}: {version}")
    print(f"k3s base template: {K3S_RELEASE} ({K3S_COMMIT[:8]}), stand-in rendering")
    failures = 0
    runs = scenarios()
    for scenario in runs:
        run_scenario(node, scenario)
        failed = scenario.expect(scenario.result)
        failures += bool(failed)
        verdict = "ok" if not failed else "FAILED"
        print(f"\n== {scenario.name}: {verdict} ({scenario.seconds:.1f} s): {scenario.what}")
        print(json.dumps(scenario.result, indent=2, sort_keys=True))
        for reason in failed:
            print(f"   not so: {reason}")
    print(f"\n{len(runs) - failures} passed, {failures} failed")
    print(f"total {time.monotonic() - total:.1f} s (log: {log})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
