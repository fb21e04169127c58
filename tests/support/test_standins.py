"""The stand-ins for k3s, crun and WasmEdge keep the real contract; the mirror server works."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from agentd.desired.model import DesiredState, sanity_problems
from agentd.health.probe import PROBE_OUTPUT, probe_module
from tests.support.fakekube import FakeCluster
from tests.support.mirror import MirrorServer
from tests.support.standins import (
    PLUGIN_FILES,
    Mirror,
    build_mirror,
    crun_asset_name,
    crun_binary,
    desired_document,
    k3s_asset_name,
    k3s_binary,
    node_arch,
    plugin_asset_name,
    plugin_tarball,
    real_kubectl,
    set_unit_state,
    systemctl_binary,
    wasmedge_asset_name,
    wasmedge_tarball,
    write_k3s_kubeconfig,
    write_yaml,
)

REPO = Path(__file__).resolve().parents[2]
# Real crun's feature line as components.md gives it (Debian 12's crun 1.8.1, no Wasm).
DEBIAN_CRUN_FEATURES = "+SYSTEMD +SELINUX +APPARMOR +CAP +SECCOMP +EBPF +YAJL"


def _install(path: Path, data: bytes, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


def _run(*argv: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # The fixed environment the agent itself uses, so no caller variable changes the output.
    base = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
    return subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        timeout=10,
        check=False,
    )


def _extract(data: bytes, dest: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = tar.getmembers()
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # Python before 3.9.17 has no extraction filters
            tar.extractall(dest)
    return members


# --- k3s ---------------------------------------------------------------------------------------


def test_k3s_version_prints_the_real_two_lines(tmp_path: Path) -> None:
    """Stands in for `k3s --version` of the k3s release binary."""
    k3s = _install(tmp_path / "k3s", k3s_binary())
    result = _run(k3s, "--version")
    assert result.returncode == 0
    assert result.stdout == "k3s version v1.30.4+k3s1 (abcd1234)\ngo version go1.22.5\n"
    assert result.stderr == ""


def test_k3s_reproduces_the_components_md_sample(tmp_path: Path) -> None:
    k3s = _install(tmp_path / "k3s", k3s_binary("v1.32.0+k3s1", "cca8faca", go_version="go1.23.3"))
    assert (
        _run(k3s, "--version").stdout
        == "k3s version v1.32.0+k3s1 (cca8faca)\ngo version go1.23.3\n"
    )


@pytest.mark.parametrize("argv", [["server"], ["kubectl", "get", "nodes"], []])
def test_k3s_refuses_everything_else(tmp_path: Path, argv: list[str]) -> None:
    k3s = _install(tmp_path / "k3s", k3s_binary())
    result = _run(k3s, *argv)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "stand-in" in result.stderr


def test_k3s_asset_names_match_upstream() -> None:
    assert [k3s_asset_name(a) for a in ("amd64", "arm64", "armv7")] == [
        "k3s",
        "k3s-arm64",
        "k3s-armhf",
    ]
    with pytest.raises(ValueError, match="riscv64"):
        k3s_asset_name("riscv64")


def test_k3s_binary_refuses_a_version_that_would_break_the_script() -> None:
    with pytest.raises(ValueError, match="not a version"):
        k3s_binary("v1'; rm -rf /")


# `k3s server` / `k3s agent` as a systemd service: the stand-in for k3s's process under a unit.

SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _notify_socket(address: str) -> socket.socket:
    """A socket like systemd's notify socket: datagrams, the sender's credentials attached."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.settimeout(10)
    return sock


def _receive(sock: socket.socket) -> tuple[bytes, int]:
    """One notification and the PID the kernel says sent it (what NotifyAccess=main checks)."""
    data, ancillary, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(12))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid, _uid, _gid = struct.unpack("3i", payload[:12])
            return data, pid
    raise AssertionError("no SCM_CREDENTIALS on the notification")


def _start_service(k3s: Path, role: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as err:
        return subprocess.Popen(
            [str(k3s), role, "--write-kubeconfig-mode", "0644"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={"PATH": SERVICE_PATH, "LC_ALL": "C", **env},
        )


def _wait_for(log: Path, text: str) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        content = log.read_text()
        if text in content:
            return content
        time.sleep(0.02)
    raise AssertionError(f"{text!r} never appeared in {log}: {log.read_text()!r}")


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("python", [None, sys.executable])
def test_k3s_server_as_a_service_sends_ready_from_its_main_pid(
    tmp_path: Path, python: str | None
) -> None:
    """Stands in for k3s's server process under k3s.service (Type=notify, NotifyAccess=main):
    READY=1 arrives from the PID systemd started (the script execs the notifier), then it idles
    until SIGTERM and exits 0. `python=None` finds the node's python3 on the unit's PATH."""
    if python is None and not any(
        os.access(Path(d) / "python3", os.X_OK) for d in SERVICE_PATH.split(":")
    ):
        pytest.skip("no python3 on the service PATH")
    k3s = _install(tmp_path / "usr/local/bin/k3s", k3s_binary(python=python))
    address = str(tmp_path / "notify")
    log = tmp_path / "stderr"
    with _notify_socket(address) as sock:
        proc = _start_service(k3s, "server", {"NOTIFY_SOCKET": address}, log)
        try:
            message, sender = _receive(sock)
            assert message == b"READY=1\n"
            assert sender == proc.pid
            text = _wait_for(log, "idling until SIGTERM")
            assert "stand-in" in text
            assert "serves no API" in text
            time.sleep(0.2)
            assert proc.poll() is None, "the service exited on its own"
        finally:
            code = _stop(proc)
    assert code == 0
    assert f"k3s server (pid {proc.pid}) got signal {int(signal.SIGTERM)}" in log.read_text()


def test_k3s_server_notifies_an_abstract_socket(tmp_path: Path) -> None:
    """systemd may hand out NOTIFY_SOCKET=@name (the abstract namespace)."""
    k3s = _install(tmp_path / "usr/local/bin/k3s", k3s_binary(python=sys.executable))
    name = f"agentd-test-notify-{os.getpid()}-{time.monotonic_ns()}"
    with _notify_socket("\0" + name) as sock:
        proc = _start_service(k3s, "server", {"NOTIFY_SOCKET": "@" + name}, tmp_path / "err")
        try:
            message, sender = _receive(sock)
        finally:
            code = _stop(proc)
    assert (message, sender, code) == (b"READY=1\n", proc.pid, 0)


def test_k3s_agent_as_a_service_runs_without_a_notify_socket(tmp_path: Path) -> None:
    """k3s-agent.service is Type=exec: systemd gives no NOTIFY_SOCKET, only INVOCATION_ID. The
    agent stand-in runs until SIGTERM and sends nothing."""
    k3s = _install(tmp_path / "usr/local/bin/k3s", k3s_binary(python=sys.executable))
    log = tmp_path / "stderr"
    proc = _start_service(k3s, "agent", {"INVOCATION_ID": "0" * 32}, log)
    try:
        text = _wait_for(log, "idling until SIGTERM")
        assert "k3s agent running as a service" in text
        assert "no NOTIFY_SOCKET" in text
        assert proc.poll() is None
    finally:
        code = _stop(proc)
    assert code == 0


@pytest.mark.parametrize("role", ["server", "agent"])
def test_k3s_server_and_agent_by_hand_still_refuse(tmp_path: Path, role: str) -> None:
    """Outside systemd the stand-in never pretends to be a running k3s."""
    k3s = _install(tmp_path / "k3s", k3s_binary())
    result = _run(k3s, role)
    assert result.returncode == 1
    assert "stand-in" in result.stderr
    assert "as a systemd service" in result.stderr


def test_k3s_service_without_python_says_so(tmp_path: Path) -> None:
    k3s = _install(tmp_path / "k3s", k3s_binary(python=str(tmp_path / "no-python")))
    result = _run(k3s, "server", env={"INVOCATION_ID": "1" * 32})
    assert result.returncode == 1
    assert "needs python3" in result.stderr


# `k3s kubectl` runs the real kubectl; the API server is tests/support/fakekube.py's.
needs_kubectl = pytest.mark.skipif(
    real_kubectl() is None, reason="no real kubectl (Debian: apt-get install kubernetes-client)"
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[FakeCluster]:
    with FakeCluster() as fake:
        yield fake


def _k3s_node(root: Path) -> Path:
    """k3s installed as get.k3s.io installs it: /usr/local/bin/k3s and a kubectl link to it."""
    k3s = _install(root / "usr/local/bin/k3s", k3s_binary())
    (root / "usr/local/bin/kubectl").symlink_to("k3s")
    return k3s


def _refused(port: int | str) -> str:
    return (
        f"The connection to the server {port} was refused - did you specify the right host or port?"
    )


@needs_kubectl
def test_k3s_kubectl_uses_the_nodes_kubeconfig(tmp_path: Path, cluster: FakeCluster) -> None:
    """Stands in for `k3s kubectl` on a server node: /etc/rancher/k3s/k3s.yaml, as k3s's
    embedded kubectl reads it, run with agentd's fixed environment (no HOME)."""
    k3s = _k3s_node(tmp_path)
    cluster.write_k3s_kubeconfig(tmp_path)
    assert (tmp_path / "etc/rancher/k3s/k3s.yaml").stat().st_mode & 0o777 == 0o600
    readyz = _run(k3s, "kubectl", "get", "--raw", "/readyz")
    assert (readyz.returncode, readyz.stdout) == (0, "ok")
    via_link = _run(tmp_path / "usr/local/bin/kubectl", "get", "node", "edge-1", "-o", "name")
    assert (via_link.returncode, via_link.stdout) == (0, "node/edge-1\n")
    # kubectl's cache lives in the node's /root, inside the sandbox.
    assert (tmp_path / "root/.kube/cache/discovery").is_dir()


@needs_kubectl
def test_k3s_kubectl_without_a_kubeconfig_tries_localhost_8080(tmp_path: Path) -> None:
    """No /etc/rancher/k3s/k3s.yaml (an agent node, or a server before its first start):
    kubectl falls back to its default server, as the real `k3s kubectl` does."""
    k3s = _k3s_node(tmp_path)
    result = _run(k3s, "kubectl", "get", "--raw", "/readyz")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip().splitlines()[-1] == _refused("localhost:8080")


@needs_kubectl
def test_k3s_kubectl_when_k3s_is_not_running(tmp_path: Path) -> None:
    k3s = _k3s_node(tmp_path)
    with FakeCluster() as stopped:
        stopped.write_k3s_kubeconfig(tmp_path)
        port = stopped.port
    result = _run(k3s, "kubectl", "get", "node", "edge-1", "-o", "json")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == _refused(f"127.0.0.1:{port}")


@needs_kubectl
def test_k3s_kubectl_honours_kubeconfig_and_the_flag(tmp_path: Path, cluster: FakeCluster) -> None:
    """As k3s's kubectl: KUBECONFIG or --kubeconfig win over /etc/rancher/k3s/k3s.yaml."""
    k3s = _k3s_node(tmp_path)
    with FakeCluster() as stopped:
        write_k3s_kubeconfig(tmp_path, stopped.url, stopped.token, stopped.ca_pem)
    other = cluster.kubeconfig(tmp_path / "other.yaml")
    by_env = _run(k3s, "kubectl", "get", "--raw", "/readyz", env={"KUBECONFIG": str(other)})
    assert by_env.stdout == "ok"
    by_flag = _run(k3s, "kubectl", f"--kubeconfig={other}", "get", "--raw", "/readyz")
    assert by_flag.stdout == "ok"
    default = _run(k3s, "kubectl", "get", "--raw", "/readyz")
    assert default.returncode == 1


@pytest.mark.parametrize("tool", ["crictl", "ctr"])
def test_k3s_links_for_other_tools_are_refused(tmp_path: Path, tool: str) -> None:
    _k3s_node(tmp_path)
    (tmp_path / "usr/local/bin" / tool).symlink_to("k3s")
    result = _run(tmp_path / "usr/local/bin" / tool, "--version")
    assert (result.returncode, result.stdout) == (1, "")
    assert f"{tool} is not implemented" in result.stderr


# --- systemctl ---------------------------------------------------------------------------------


def _systemctl(root: Path) -> Path:
    return _install(root / "usr/bin/systemctl", systemctl_binary())


@pytest.mark.parametrize(
    ("state", "code"),
    [
        ("active", 0),
        ("reloading", 0),
        ("inactive", 3),
        ("failed", 3),
        ("activating", 3),
        ("deactivating", 3),
    ],
)
def test_systemctl_is_active_prints_the_state_and_its_exit_code(
    tmp_path: Path, state: str, code: int
) -> None:
    """Stands in for systemd 252's `systemctl is-active UNIT` (LSB: 3 = not running)."""
    systemctl = _systemctl(tmp_path)
    set_unit_state(tmp_path, "k3s.service", state)
    result = _run(systemctl, "is-active", "k3s.service")
    assert (result.returncode, result.stdout, result.stderr) == (code, f"{state}\n", "")


def test_systemctl_names_without_a_suffix_are_services(tmp_path: Path) -> None:
    systemctl = _systemctl(tmp_path)
    set_unit_state(tmp_path, "k3s", "active")
    assert (tmp_path / "run/systemctl-standin/k3s.service").read_text() == "active\n"
    result = _run(systemctl, "is-active", "k3s")
    assert (result.returncode, result.stdout) == (0, "active\n")


def test_systemctl_unknown_units_are_inactive_and_any_active_one_wins(tmp_path: Path) -> None:
    systemctl = _systemctl(tmp_path)
    set_unit_state(tmp_path, "k3s-agent.service", "active")
    unknown = _run(systemctl, "is-active", "nonexistent.service")
    assert (unknown.returncode, unknown.stdout) == (3, "inactive\n")
    both = _run(systemctl, "is-active", "k3s.service", "k3s-agent.service")
    assert (both.returncode, both.stdout) == (0, "inactive\nactive\n")


def test_systemctl_quiet_and_the_usage_errors(tmp_path: Path) -> None:
    systemctl = _systemctl(tmp_path)
    set_unit_state(tmp_path, "k3s.service", "failed")
    quiet = _run(systemctl, "--quiet", "is-active", "k3s.service")
    assert (quiet.returncode, quiet.stdout) == (3, "")
    assert _run(systemctl, "is-active", "-q", "k3s.service").stdout == ""
    none = _run(systemctl, "is-active")
    assert (none.returncode, none.stderr) == (1, "Too few arguments.\n")
    for argv in (["restart", "k3s.service"], ["is-active", "--user", "x"], []):
        refused = _run(systemctl, *argv)
        assert refused.returncode == 1
        assert "stand-in" in refused.stderr
    with pytest.raises(ValueError, match="ActiveState"):
        set_unit_state(tmp_path, "k3s.service", "running")


def test_systemctl_finds_its_root_from_where_it_is_installed(tmp_path: Path) -> None:
    outside = _install(tmp_path / "systemctl", systemctl_binary())
    result = _run(outside, "is-active", "k3s")
    assert result.returncode == 1
    assert "install it in a bin directory" in result.stderr


# --- crun --------------------------------------------------------------------------------------


def test_crun_without_wasm_reproduces_debian_12_exactly(tmp_path: Path) -> None:
    """Stands in for Debian 12's /usr/bin/crun (1.8.1, no Wasm), the sample in components.md."""
    crun = _install(
        tmp_path / "crun",
        crun_binary("1.8.1", wasm=False, commit="f8a096be060b22ccd3d5f3ebe44108517fbf6c30"),
    )
    result = _run(crun, "--version")
    assert result.returncode == 0
    assert result.stdout == (
        "crun version 1.8.1\n"
        "commit: f8a096be060b22ccd3d5f3ebe44108517fbf6c30\n"
        "rundir: /run/crun\n"
        "spec: 1.0.0\n"
        f"{DEBIAN_CRUN_FEATURES}\n"
    )


def test_crun_with_wasm_adds_the_wasmedge_token(tmp_path: Path) -> None:
    """Stands in for a crun 1.15 built with WasmEdge."""
    crun = _install(tmp_path / "crun", crun_binary())
    lines = _run(crun, "--version").stdout.splitlines()
    assert len(lines) == 5
    assert lines[0] == "crun version 1.15"
    assert lines[1].startswith("commit: ")
    assert len(lines[1].split()[1]) == 40
    int(lines[1].split()[1], 16)
    assert lines[2:4] == ["rundir: /run/crun", "spec: 1.0.0"]
    assert lines[4] == "+SYSTEMD +SELINUX +APPARMOR +CAP +SECCOMP +EBPF +WASM:wasmedge +YAJL"
    refused = _run(crun, "exec", "ctr")
    assert (refused.returncode, refused.stdout) == (1, "")


def _bundle(root: Path, annotations: dict[str, str], mode: int = 0o755) -> Path:
    """A bundle as `crun spec` makes it, running agentd's probe module as /probe.wasm."""
    bundle = root / "bundle"
    _install(bundle / "rootfs/probe.wasm", probe_module(), mode)
    spec = {"process": {"args": ["/probe.wasm"], "terminal": False}, "root": {"path": "rootfs"}}
    if annotations:
        spec["annotations"] = annotations
    (bundle / "config.json").write_text(json.dumps(spec))
    return bundle


COMPAT_SMART = {"module.wasm.image/variant": "compat-smart"}


def test_crun_with_wasm_but_no_libwasmedge_fails_at_container_start(tmp_path: Path) -> None:
    """Stands in for a Wasm-enabled crun whose libwasmedge.so.0 is missing, then installed: crun
    dlopens it when a Wasm container starts, so --version works either way."""
    crun = _install(tmp_path / "usr/local/bin/crun", crun_binary())
    assert _run(crun, "--version").stdout.startswith("crun version 1.15\n")
    bundle = _bundle(tmp_path, COMPAT_SMART)
    missing = _run(crun, "--cgroup-manager=disabled", "run", "--bundle", bundle, "probe")
    assert (missing.returncode, missing.stdout) == (1, "")
    assert missing.stderr == (
        "could not load `libwasmedge.so.0`: "
        "`libwasmedge.so.0: cannot open shared object file: No such file or directory`\n"
    )
    pytest.importorskip("wasmtime")
    _install(tmp_path / "usr/local/lib/libwasmedge.so.0", b"lib", 0o644)
    ran = _run(crun, "--cgroup-manager=disabled", "run", "--bundle", bundle, "probe")
    assert (ran.returncode, ran.stdout.encode(), ran.stderr) == (0, PROBE_OUTPUT, "")


def test_crun_without_a_wasm_handler_execs_the_module_natively(tmp_path: Path) -> None:
    crun = _install(tmp_path / "usr/local/bin/crun", crun_binary())
    _install(tmp_path / "usr/local/lib/libwasmedge.so.0", b"lib", 0o644)
    plain = _run(crun, "run", "--bundle", _bundle(tmp_path, {}), "probe")
    assert (plain.returncode, plain.stderr) == (
        1,
        "exec container process `/probe.wasm`: Exec format error\n",
    )
    no_wasm = _install(tmp_path / "usr/local/bin/crun", crun_binary("1.8.1", wasm=False))
    annotated = _run(no_wasm, "run", "--bundle", _bundle(tmp_path, COMPAT_SMART), "probe")
    assert annotated.stderr == "exec container process `/probe.wasm`: Exec format error\n"
    not_executable = _run(crun, "run", "--bundle", _bundle(tmp_path, {}, 0o644), "probe")
    assert not_executable.stderr == (
        "the path `/probe.wasm` exists but it is not executable: Operation not permitted\n"
    )


def test_crun_wasm_link_selects_the_handler_without_annotations(tmp_path: Path) -> None:
    crun_wasm = _install(tmp_path / "usr/bin/crun-wasm", crun_binary("1.21"))
    result = _run(crun_wasm, "run", "--bundle", _bundle(tmp_path, {}), "probe")
    assert result.stderr.startswith("could not load `libwasmedge.so.0`: `")


def test_crun_before_1_8_6_does_not_quote_the_loader_error(tmp_path: Path) -> None:
    crun = _install(tmp_path / "usr/bin/crun", crun_binary("1.8.1"))
    result = _run(crun, "run", "--bundle", _bundle(tmp_path, COMPAT_SMART), "probe")
    assert result.stderr == (
        "could not load `libwasmedge.so.0`: "
        "libwasmedge.so.0: cannot open shared object file: No such file or directory\n"
    )


def test_crun_asset_names() -> None:
    assert crun_asset_name("1.15", "amd64") == "crun-1.15-linux-amd64"
    assert crun_asset_name("1.15", "arm64") == "crun-1.15-linux-arm64"
    assert crun_asset_name("1.15", "armv7") == "crun-1.15-linux-armv7"


# --- WasmEdge ----------------------------------------------------------------------------------

WASMEDGE_MEMBERS = {
    "WasmEdge-0.14.1-Linux": ("dir", 0o755),
    "WasmEdge-0.14.1-Linux/bin": ("dir", 0o755),
    "WasmEdge-0.14.1-Linux/bin/wasmedge": ("file", 0o755),
    "WasmEdge-0.14.1-Linux/bin/wasmedgec": ("file", 0o755),
    "WasmEdge-0.14.1-Linux/include": ("dir", 0o755),
    "WasmEdge-0.14.1-Linux/include/wasmedge": ("dir", 0o755),
    "WasmEdge-0.14.1-Linux/include/wasmedge/version.h": ("file", 0o644),
    "WasmEdge-0.14.1-Linux/include/wasmedge/wasmedge.h": ("file", 0o644),
    "WasmEdge-0.14.1-Linux/lib64": ("dir", 0o755),
    "WasmEdge-0.14.1-Linux/lib64/libwasmedge.so": ("symlink", 0o777),
    "WasmEdge-0.14.1-Linux/lib64/libwasmedge.so.0": ("symlink", 0o777),
    "WasmEdge-0.14.1-Linux/lib64/libwasmedge.so.0.1.0": ("file", 0o644),
}


def _kind(member: tarfile.TarInfo) -> str:
    if member.isdir():
        return "dir"
    if member.issym():
        return "symlink"
    assert member.isfile(), member.name
    return "file"


def test_wasmedge_tarball_has_the_upstream_layout() -> None:
    """Stands in for WasmEdge-0.14.1-manylinux2014_x86_64.tar.gz."""
    with tarfile.open(fileobj=io.BytesIO(wasmedge_tarball()), mode="r:gz") as tar:
        members = tar.getmembers()
    assert {m.name: (_kind(m), m.mode) for m in members} == WASMEDGE_MEMBERS
    links = {m.name.rsplit("/", 1)[1]: m.linkname for m in members if m.issym()}
    assert links == {
        "libwasmedge.so": "libwasmedge.so.0",
        "libwasmedge.so.0": "libwasmedge.so.0.1.0",
    }
    # Parents come before their children, so a streaming extractor never meets a missing dir.
    names = [m.name for m in members]
    for i, name in enumerate(names):
        parent = name.rsplit("/", 1)[0]
        assert "/" not in name or parent in names[:i]


def test_wasmedge_tarball_is_deterministic() -> None:
    first = wasmedge_tarball("0.14.1", "arm64")
    assert first == wasmedge_tarball("0.14.1", "arm64")
    assert first != wasmedge_tarball("0.14.1", "amd64")
    assert first[4:8] == b"\0\0\0\0"  # no time in the gzip header
    with tarfile.open(fileobj=io.BytesIO(first), mode="r:gz") as tar:
        assert {m.mtime for m in tar.getmembers()} == {1_700_000_000}


def test_wasmedge_version_prints_argv0_then_version(tmp_path: Path) -> None:
    """Stands in for `wasmedge --version` run from the unpacked release tarball."""
    _extract(wasmedge_tarball(), tmp_path)
    prefix = tmp_path / "WasmEdge-0.14.1-Linux"
    assert (prefix / "lib64/libwasmedge.so").resolve() == prefix / "lib64/libwasmedge.so.0.1.0"
    wasmedge = prefix / "bin/wasmedge"
    result = _run(wasmedge, "--version")
    assert result.returncode == 0
    # 0.14.1 lists its built-in wasi_logging (tests/fixtures/real/wasmedge_version_fullpath).
    assert result.stdout == f'{wasmedge} version 0.14.1\n (plugin "wasi_logging") version 0.1.0.0\n'
    version_line = result.stdout.splitlines()[0]
    assert version_line.split(" version ")[1] == "0.14.1"
    wasmedgec = _run(prefix / "bin/wasmedgec", "--version")
    assert wasmedgec.stdout == f"{prefix / 'bin/wasmedgec'} version 0.14.1\n"
    assert _run(wasmedge, "app.wasm").returncode == 1
    assert (
        '#define WASMEDGE_VERSION "0.14.1"' in (prefix / "include/wasmedge/version.h").read_text()
    )


def _install_wasmedge(root: Path, version: str) -> Path:
    """Lay the tarball out as the agent installs it under /usr/local (INTERFACE.md)."""
    staging = root / "staging"
    _extract(wasmedge_tarball(version), staging)
    top = staging / f"WasmEdge-{version}-Linux"
    usr_local = root / "usr/local"
    shutil.copytree(top / "bin", usr_local / "bin", dirs_exist_ok=True)
    shutil.copytree(top / "lib64", usr_local / "lib", symlinks=True, dirs_exist_ok=True)
    shutil.rmtree(staging)
    return usr_local / "bin/wasmedge"


def _install_plugin(root: Path, name: str, version: str) -> Path:
    _extract(plugin_tarball(name, version), root / "usr/local/lib/wasmedge")
    return root / "usr/local/lib/wasmedge" / PLUGIN_FILES[name]


def test_wasmedge_lists_plugins_of_its_own_plugin_api_only(tmp_path: Path) -> None:
    """Stands in for WasmEdge 0.14.1 at /usr/local with plugins in /usr/local/lib/wasmedge."""
    wasmedge = _install_wasmedge(tmp_path, "0.14.1")
    nn = _install_plugin(tmp_path, "wasi_nn-ggml", "0.14.1")
    _install_plugin(tmp_path, "wasi_crypto", "0.13.5")  # another API version: skipped silently
    lines = _run(wasmedge, "--version").stdout.splitlines()
    assert lines == [
        f"{wasmedge} version 0.14.1",
        ' (plugin "wasi_logging") version 0.1.0.0',
        f'{nn} (plugin "wasi_nn") version 0.1.0.0',
    ]


def test_wasmedge_searches_wasmedge_plugin_path_first(tmp_path: Path) -> None:
    wasmedge = _install_wasmedge(tmp_path, "0.14.1")
    extra = tmp_path / "extra"
    # The same plugin in both: the first one found registers, the other is skipped silently.
    _extract(plugin_tarball("wasi_crypto", "0.14.1"), extra)
    _install_plugin(tmp_path, "wasi_crypto", "0.14.1")
    lines = _run(wasmedge, "--version", env={"WASMEDGE_PLUGIN_PATH": f"/nonexistent:{extra}"})
    assert lines.stdout.splitlines()[1:] == [
        ' (plugin "wasi_logging") version 0.1.0.0',
        f'{extra}/libwasmedgePluginWasiCrypto.so (plugin "wasi_crypto") version 0.1.0.0',
    ]


def test_wasmedge_0_14_1_skips_a_wasi_logging_plugin_file(tmp_path: Path) -> None:
    """0.14.1 has wasi_logging built in: a 0.14.1 plugin file of that name registers nothing."""
    wasmedge = _install_wasmedge(tmp_path, "0.14.1")
    _install_plugin(tmp_path, "wasi_logging", "0.14.1")
    assert _run(wasmedge, "--version").stdout.splitlines()[1:] == [
        ' (plugin "wasi_logging") version 0.1.0.0'
    ]
    older = _install_wasmedge(tmp_path / "old", "0.14.0")
    plugin = _install_plugin(tmp_path / "old", "wasi_logging", "0.14.0")
    assert _run(older, "--version").stdout.splitlines()[1:] == [
        f'{plugin} (plugin "wasi_logging") version 0.1.0.0'
    ]


def test_wasmedge_unpacked_tarball_loads_from_its_plugin_directory(tmp_path: Path) -> None:
    """Outside /usr and /lib the plugin directory is <libdir>/../plugin, as upstream's."""
    _extract(wasmedge_tarball(), tmp_path)
    prefix = tmp_path / "WasmEdge-0.14.1-Linux"
    _extract(plugin_tarball("wasi_crypto"), prefix / "plugin")
    _extract(plugin_tarball("wasi_nn-ggml"), prefix / "lib64/wasmedge")  # not looked at there
    assert _run(prefix / "bin/wasmedge", "--version").stdout.splitlines()[2:] == [
        f'{prefix}/lib64/../plugin/libwasmedgePluginWasiCrypto.so (plugin "wasi_crypto") '
        "version 0.1.0.0"
    ]


def test_wasmedge_plugin_with_a_missing_library_fails_to_load_until_it_exists(
    tmp_path: Path,
) -> None:
    wasmedge = _install_wasmedge(tmp_path, "0.14.1")
    _extract(
        plugin_tarball("wasi_nn-openvino", needs=("libopenvino.so.2450",)),
        tmp_path / "usr/local/lib/wasmedge",
    )
    missing = _run(wasmedge, "--version").stdout.splitlines()
    assert len(missing) == 6
    assert missing[1].endswith(
        "[error]     load library failed:libopenvino.so.2450: cannot open shared object file: "
        "No such file or directory"
    )
    _install(tmp_path / "usr/lib/x86_64-linux-gnu/libopenvino.so.2450", b"lib", 0o644)
    assert (
        _run(wasmedge, "--version")
        .stdout.splitlines()[2]
        .endswith('(plugin "wasi_nn") version 0.1.0.0')
    )


def test_wasmedge_before_0_14_prints_no_plugin_lines(tmp_path: Path) -> None:
    wasmedge = _install_wasmedge(tmp_path, "0.13.5")
    _install_plugin(tmp_path, "wasi_nn-ggml", "0.13.5")
    assert _run(wasmedge, "--version").stdout == f"{wasmedge} version 0.13.5\n"


def test_wasmedge_without_its_library_fails_like_the_loader(tmp_path: Path) -> None:
    wasmedge = _install(tmp_path / "usr/local/bin/wasmedge", b"")
    _extract(wasmedge_tarball(), tmp_path / "staging")
    shutil.copy(tmp_path / "staging/WasmEdge-0.14.1-Linux/bin/wasmedge", wasmedge)
    result = _run(wasmedge, "--version")
    assert result.returncode == 127
    assert "libwasmedge.so.0: cannot open shared object file" in result.stderr


def test_wasmedge_runs_agentds_probe_module(tmp_path: Path) -> None:
    """Stands in for `wasmedge probe.wasm`: the module runs for real (wasmtime, PyPI)."""
    pytest.importorskip("wasmtime")
    wasmedge = _install_wasmedge(tmp_path, "0.14.1")
    probe = tmp_path / "probe.wasm"
    probe.write_bytes(probe_module())
    result = _run(wasmedge, probe)
    assert (result.returncode, result.stdout, result.stderr) == (0, PROBE_OUTPUT.decode(), "")


def test_wasmedge_passes_the_arguments_and_exits_with_the_modules_code(tmp_path: Path) -> None:
    wasmtime = pytest.importorskip("wasmtime")
    wasmedge = _install_wasmedge(tmp_path, "0.14.1")
    # A module that exits with its argument count (argv[0] is the module, as wasmedge passes it).
    module = tmp_path / "argc.wasm"
    module.write_bytes(
        wasmtime.wat2wasm(
            "(module"
            ' (import "wasi_snapshot_preview1" "args_sizes_get"'
            " (func $sizes (param i32 i32) (result i32)))"
            ' (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))'
            ' (memory (export "memory") 1)'
            ' (func (export "_start")'
            " (drop (call $sizes (i32.const 0) (i32.const 4)))"
            " (call $exit (i32.load (i32.const 0)))))"
        )
    )
    assert _run(wasmedge, module).returncode == 1
    assert _run(wasmedge, module, "a", "b").returncode == 3
    broken = tmp_path / "broken.wasm"
    broken.write_bytes(b"\0asm garbage")
    result = _run(wasmedge, broken)
    assert result.returncode == 1
    assert "stand-in" in result.stderr


def test_wasmedge_without_wasmtime_says_so(tmp_path: Path) -> None:
    # An interpreter without site-packages: `import wasmtime` fails as on a machine without it.
    python = _install(tmp_path / "python-S", f'#!/bin/sh\nexec {sys.executable} -S "$@"\n'.encode())
    _extract(wasmedge_tarball("0.14.1", python=str(python)), tmp_path / "staging")
    prefix = tmp_path / "staging/WasmEdge-0.14.1-Linux"
    probe = tmp_path / "probe.wasm"
    probe.write_bytes(probe_module())
    result = _run(prefix / "bin/wasmedge", probe)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith(
        f"wasmedge stand-in (tests/support/standins.py): cannot run {probe}"
    )
    assert "the Python package wasmtime cannot be imported" in result.stderr


def test_wasmedge_checks_its_library_before_running_a_module(tmp_path: Path) -> None:
    wasmedge = _install_wasmedge(tmp_path, "0.14.1")
    for lib in (tmp_path / "usr/local/lib").glob("libwasmedge.so*"):
        lib.unlink()
    probe = tmp_path / "probe.wasm"
    probe.write_bytes(probe_module())
    result = _run(wasmedge, probe)
    assert (result.returncode, result.stdout) == (127, "")
    assert "libwasmedge.so.0: cannot open shared object file" in result.stderr


def test_wasmedge_asset_names() -> None:
    assert wasmedge_asset_name("0.14.1", "amd64") == "WasmEdge-0.14.1-manylinux2014_x86_64.tar.gz"
    assert wasmedge_asset_name("0.13.5", "arm64") == "WasmEdge-0.13.5-manylinux2014_aarch64.tar.gz"
    assert wasmedge_asset_name("0.15.0", "amd64") == "WasmEdge-0.15.0-manylinux_2_28_x86_64.tar.gz"
    assert (
        plugin_asset_name("wasi_nn-ggml", "0.14.1", "arm64")
        == "WasmEdge-plugin-wasi_nn-ggml-0.14.1-manylinux2014_aarch64.tar.gz"
    )
    with pytest.raises(ValueError, match="armv7"):
        wasmedge_asset_name("0.14.1", "armv7")


@pytest.mark.parametrize(
    ("name", "library"),
    [
        ("wasi_nn-ggml", "libwasmedgePluginWasiNN.so"),
        ("wasi_nn-tensorflowlite", "libwasmedgePluginWasiNN.so"),
        ("wasi_crypto", "libwasmedgePluginWasiCrypto.so"),
        ("wasi_logging", "libwasmedgePluginWasiLogging.so"),
        ("wasmedge_image", "libwasmedgePluginWasmEdgeImage.so"),
    ],
)
def test_plugin_tarball_holds_just_the_library(name: str, library: str) -> None:
    """Stands in for WasmEdge-plugin-<name>-0.14.1-manylinux2014_x86_64.tar.gz."""
    with tarfile.open(fileobj=io.BytesIO(plugin_tarball(name)), mode="r:gz") as tar:
        members = tar.getmembers()
    assert [(m.name, m.isfile()) for m in members] == [(library, True)]
    assert PLUGIN_FILES[name] == library


def test_every_wasi_nn_backend_has_the_same_file_name() -> None:
    nn = {PLUGIN_FILES[n] for n in PLUGIN_FILES if n.startswith("wasi_nn-")}
    assert nn == {"libwasmedgePluginWasiNN.so"}


def test_x86_only_plugins_have_no_arm64_build() -> None:
    with pytest.raises(ValueError, match="x86_64 only"):
        plugin_tarball("wasi_nn-pytorch", arch="arm64")


def test_node_arch_names() -> None:
    assert node_arch("x86_64") == "amd64"
    assert node_arch("aarch64") == "arm64"
    assert node_arch("armv7l") == "armv7"
    assert node_arch() in ("amd64", "arm64", "armv7")
    with pytest.raises(ValueError, match="s390x"):
        node_arch("s390x")


# --- the mirror --------------------------------------------------------------------------------


def test_mirror_sha256_matches_the_bytes_and_is_stable(
    tmp_path: Path, mirror_index: Mirror
) -> None:
    again = build_mirror(
        tmp_path / "again",
        k3s_versions=("v1.30.4+k3s1", "v1.31.2+k3s1"),
        crun_versions=("1.14", "1.15"),
        wasmedge_versions=("0.13.5", "0.14.1"),
        plugins=("wasi_nn-ggml", "wasi_crypto"),
        arches=("amd64", "arm64", "armv7"),
    )
    assert len(mirror_index.entries) == len(again.entries) == 2 * 3 + 2 * 3 + 2 * 2 * 3
    for key, entry in mirror_index.entries.items():
        assert hashlib.sha256(entry.file.read_bytes()).hexdigest() == entry.sha256
        assert mirror_index.artifact(*key) == (entry.path, entry.sha256)
        assert again.entries[key].sha256 == entry.sha256, key
        assert again.entries[key].path == entry.path


def test_mirror_layout_follows_the_release_urls(mirror_index: Mirror) -> None:
    path, _ = mirror_index.artifact("k3s", "v1.30.4+k3s1", "arm64")
    assert path == "k3s/v1.30.4%2Bk3s1/k3s-arm64"
    assert mirror_index.artifact("crun", "1.14", "amd64")[0] == "crun/1.14/crun-1.14-linux-amd64"
    assert (
        mirror_index.artifact("wasmedge", "0.14.1", "arm64")[0]
        == "wasmedge/0.14.1/WasmEdge-0.14.1-manylinux2014_aarch64.tar.gz"
    )
    assert (
        mirror_index.artifact("wasmedge", "0.13.5", "amd64", "wasi_crypto")[0]
        == "wasmedge/0.13.5/WasmEdge-plugin-wasi_crypto-0.13.5-manylinux2014_x86_64.tar.gz"
    )
    assert mirror_index.artifact("wasmedge/plugins/wasi_crypto", "0.13.5", "amd64") == (
        mirror_index.artifact("wasmedge", "0.13.5", "amd64", "wasi_crypto")
    )
    with pytest.raises(KeyError, match=r"no wasmedge 0\.14\.1 for armv7"):
        mirror_index.artifact("wasmedge", "0.14.1", "armv7")
    assert not mirror_index.has("k3s", "v1.29.0+k3s1", "amd64")
    # k3s's per-architecture checksum file, as upstream publishes it beside the binary.
    sums = (mirror_index.root / "k3s/v1.31.2+k3s1/sha256sum-arm.txt").read_text()
    assert sums == f"{mirror_index.artifact('k3s', 'v1.31.2+k3s1', 'armv7')[1]}  k3s-armhf\n"


def test_mirror_binaries_report_their_own_version(tmp_path: Path, mirror_index: Mirror) -> None:
    k3s = _install(tmp_path / "k3s", mirror_index.file("k3s", "v1.31.2+k3s1", "amd64").read_bytes())
    assert _run(k3s, "--version").stdout.startswith("k3s version v1.31.2+k3s1 (")
    crun = _install(tmp_path / "crun", mirror_index.file("crun", "1.14", "arm64").read_bytes())
    assert _run(crun, "--version").stdout.startswith("crun version 1.14\n")


def test_desired_document_is_a_valid_node_state(tmp_path: Path, mirror_index: Mirror) -> None:
    doc = desired_document("http://127.0.0.1:9/", mirror_index, generation=3)
    state = DesiredState.model_validate(doc)
    assert state.generation == 3
    assert not [p for p in sanity_problems(state, "amd64") if p.severity == "error"]
    assert not sanity_problems(state, "arm64")
    assert doc["components"]["k3s"]["artifacts"]["amd64"] == {
        "url": "http://127.0.0.1:9/k3s/v1.30.4%2Bk3s1/k3s",
        "sha256": mirror_index.artifact("k3s", "v1.30.4+k3s1", "amd64")[1],
    }
    assert doc["components"]["k3s"]["tokenFile"] == "/etc/wasm-edge/k3s-token"
    assert doc["components"]["k3s"]["config"] == {"write-kubeconfig-mode": "0644"}
    assert doc["runtimeClasses"] == [
        {"name": "crun-wasm", "handler": "crun-wasm", "nodeSelector": {"wasm-runtime": "enabled"}}
    ]
    written = write_yaml(tmp_path / "desired.yaml", doc)
    assert yaml.safe_load(written.read_text()) == doc
    assert "version: '1.15'" in written.read_text()


def test_desired_document_omits_components_and_unbuilt_arches(mirror_index: Mirror) -> None:
    doc = desired_document(
        "http://m",
        mirror_index,
        k3s=None,
        crun="1.14",
        wasmedge="0.13.5",
        plugins=(),
        arches=("amd64", "arm64", "armv7"),
    )
    assert set(doc["components"]) == {"crun", "wasmedge"}
    assert set(doc["components"]["crun"]["artifacts"]) == {"amd64", "arm64", "armv7"}
    assert set(doc["components"]["wasmedge"]["artifacts"]) == {"amd64", "arm64"}
    assert "plugins" not in doc["components"]["wasmedge"]
    DesiredState.model_validate(doc)
    agent = desired_document(
        "http://m", mirror_index, role="agent", server="https://10.0.0.1:6443", crun=None
    )
    assert agent["components"]["k3s"]["server"] == "https://10.0.0.1:6443"
    assert "config" not in agent["components"]["k3s"]
    DesiredState.model_validate(agent)
    with pytest.raises(KeyError):
        desired_document("http://m", mirror_index, crun="9.9")


# --- the mirror server -------------------------------------------------------------------------


def test_server_serves_the_bytes_and_counts_requests(
    mirror: MirrorServer, mirror_index: Mirror
) -> None:
    path, sha = mirror_index.artifact("k3s", "v1.30.4+k3s1", "amd64")
    assert not mirror.url.endswith("/")
    response = requests.get(f"{mirror.url}/{path}", timeout=5)
    assert response.status_code == 200
    assert hashlib.sha256(response.content).hexdigest() == sha
    # "+" and "%2B" name the same file, and count as the same path.
    plain = requests.get(f"{mirror.url}/k3s/v1.30.4+k3s1/k3s", timeout=5)
    assert plain.content == response.content
    head = requests.head(f"{mirror.url}/{path}", timeout=5)
    assert head.status_code == 200
    assert int(head.headers["Content-Length"]) == len(response.content)
    assert mirror.count("v1.30.4+k3s1/k3s") == 3
    assert mirror.count("/k3s/v1.30.4%2Bk3s1/k3s", method="HEAD") == 1
    assert mirror.requests == ["/k3s/v1.30.4+k3s1/k3s"] * 3
    missing = requests.get(f"{mirror.url}/k3s/v9/k3s", timeout=5)
    assert missing.status_code == 404


def test_server_does_not_gunzip_tarballs(mirror: MirrorServer, mirror_index: Mirror) -> None:
    url = mirror_index.url(mirror.url, "wasmedge", "0.14.1", "amd64")
    response = requests.get(url, timeout=5)
    assert "Content-Encoding" not in response.headers
    assert gzip.decompress(response.content)[257:262] == b"ustar"


def test_server_injects_status_faults(mirror: MirrorServer, mirror_index: Mirror) -> None:
    url = mirror_index.url(mirror.url, "crun", "1.15", "amd64")
    mirror.fail(url, 500)
    assert requests.get(url, timeout=5).status_code == 500
    assert requests.head(url, timeout=5).status_code == 500
    mirror.fail("crun/1.15/crun-1.15-linux-amd64", 404, times=1)
    assert requests.get(url, timeout=5).status_code == 404
    assert requests.get(url, timeout=5).status_code == 200
    mirror.fail(url, 503)
    mirror.clear_faults()
    assert requests.get(url, timeout=5).status_code == 200
    assert mirror.count("crun-1.15-linux-amd64") == 5


def test_server_injects_truncation(mirror: MirrorServer, mirror_index: Mirror) -> None:
    url = mirror_index.url(mirror.url, "wasmedge", "0.14.1", "amd64")
    size = mirror_index.file("wasmedge", "0.14.1", "amd64").stat().st_size
    mirror.truncate(url, 100)
    with requests.get(url, timeout=5, stream=True) as response:
        assert response.status_code == 200
        assert int(response.headers["Content-Length"]) == size
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            b"".join(response.iter_content(65536))
    mirror.clear_faults()
    assert len(requests.get(url, timeout=5).content) == size


def test_mirror_module_serves_until_terminated(tmp_path: Path, mirror_dir: Path) -> None:
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.mirror",
            str(mirror_dir),
            "--port",
            "0",
            "--ready-file",
            ready,
        ],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "mirror did not get ready"
            time.sleep(0.02)
        url = ready.read_text()
        assert url.startswith("http://127.0.0.1:")
        assert not url.endswith(("/", "\n"))
        response = requests.get(f"{url}/crun/1.15/crun-1.15-linux-amd64", timeout=5)
        assert response.content.startswith(b"#!/bin/sh\n")
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert f"at {url}" in stderr
    assert "GET" not in stderr  # no request log
