"""The install guide's prerequisites: cores, memory, disk, architecture, OS, kernel, cgroup v2."""

from __future__ import annotations

import re

from agentd.core.paths import SYSTEMD_DIR
from agentd.core.versions import compare
from agentd.facts.model import HostFacts
from agentd.health.findings import CheckInput, Finding, wanted

GIB = 1 << 30
# The install guide's prerequisites: servers, and edge devices (k3s agents).
MINIMUMS = {
    "server": {"cpus": 2, "memory": 4 * GIB, "disk": 20 * 10**9},
    "agent": {"cpus": 1, "memory": 2 * GIB, "disk": 10 * 10**9},
}
# A "4 GB" board reports less: firmware and the kernel keep some for themselves.
MEMORY_SLACK = 0.85
MIN_FREE_DISK = 1 * GIB  # below this an artifact download or a k3s image pull fails
KERNEL_MINIMUM, KERNEL_RECOMMENDED = (5, 4), (5, 10)
SUPPORTED_OS = {"debian": "11", "ubuntu": "20.04", "raspbian": "11", "rhel": "8", "centos": "8"}
SUPPORTED_OS_ALIASES = {"rocky": "rhel", "almalinux": "rhel"}


def _role(inp: CheckInput) -> str:
    k3s = wanted(inp, "k3s")
    if k3s is not None:
        return str(k3s.get("role", "server"))
    if inp.paths.under(f"{SYSTEMD_DIR}/k3s-agent.service").exists():
        return "agent"
    return "server" if inp.paths.under(f"{SYSTEMD_DIR}/k3s.service").exists() else "agent"


def _gb(n: float) -> str:
    return f"{n / 10**9:.1f} GB"


def check_host(inp: CheckInput) -> list[Finding]:
    """CPU cores, memory and disk against the guide's minimums; arch, OS, kernel, cgroup v2."""
    host: HostFacts = inp.facts.host
    role = _role(inp)
    need = MINIMUMS[role]
    who = "a k3s server" if role == "server" else "an edge node (k3s agent)"
    found: list[Finding] = []
    if host.arch not in ("amd64", "arm64", "armv7"):
        found.append(
            Finding(
                "host.arch",
                "error",
                "host",
                f"architecture {host.arch} is not supported (amd64, arm64, armv7 are)",
                "run agentd on an amd64, arm64 or armv7 node",
            )
        )
    if host.cpus < need["cpus"]:
        found.append(
            Finding(
                "host.cpus",
                "warning",
                "host",
                f"{host.cpus} CPU core(s); {who} needs at least {need['cpus']}",
                f"give this node at least {need['cpus']} cores",
            )
        )
    if host.memory_bytes < need["memory"] * MEMORY_SLACK:
        found.append(
            Finding(
                "host.memory",
                "warning",
                "host",
                f"{host.memory_bytes / GIB:.1f} GiB of memory; {who} needs "
                f"{need['memory'] // GIB} GiB",
                f"give this node at least {need['memory'] // GIB} GiB of memory",
            )
        )
    if host.disk_total_bytes and host.disk_total_bytes < need["disk"] * 0.9:
        found.append(
            Finding(
                "host.disk-size",
                "warning",
                "host",
                f"the disk holding /var/lib is {_gb(host.disk_total_bytes)}; {who} needs "
                f"{_gb(need['disk'])}",
                "use a larger disk or SD card for /var/lib",
            )
        )
    if host.disk_total_bytes and host.disk_free_bytes < MIN_FREE_DISK:
        found.append(
            Finding(
                "host.disk-free",
                "error",
                "host",
                f"only {host.disk_free_bytes / GIB:.2f} GiB free where /var/lib is: downloads "
                "and image pulls will fail",
                "free space under /var/lib (old images: `k3s crictl rmi --prune`)",
            )
        )
    elif host.disk_total_bytes and host.disk_free_bytes < host.disk_total_bytes * 0.1:
        found.append(
            Finding(
                "host.disk-free",
                "warning",
                "host",
                f"{host.disk_free_bytes / GIB:.1f} GiB free where /var/lib is (under 10%)",
                "free space under /var/lib before it runs out",
            )
        )
    if host.arch == "armv7":
        found.append(_armv7(inp))
    found += _kernel(host.kernel) + _os(host.os)
    if host.cgroup_v2 is False:
        found.append(
            Finding(
                "host.cgroup-v1",
                "warning",
                "host",
                "the node runs cgroup v1; crun's systemd cgroup driver and k3s expect cgroup v2",
                "boot with systemd.unified_cgroup_hierarchy=1 (the default on Debian 11+)",
            )
        )
    return found


# crun runs Wasm only through a handler that dlopens an engine's library of the node's own
# architecture (crun's src/libcrun/handlers/): wasmedge.c libwasmedge.so.0, wasmer.c
# libwasmer.so, wasmtime.c libwasmtime.so, wamr.c libiwasm.so (spin.c execs a spin binary).
# For 32-bit ARM, by their sources: WasmEdge's release workflow builds Linux x86_64 and aarch64
# only; Wasmer's builds amd64, aarch64 and riscv64; Wasmtime's release matrix
# (ci/build-build-matrix.js) has an armv7-linux build in newer releases; WAMR builds for ARM
# targets from source but releases x86_64 iwasm only. agentd installs WasmEdge alone.
ARMV7_CAN_RUN = (
    "this node is armv7 (a 32-bit ARM userland): it runs k3s and crun with ordinary Linux "
    "containers, not Wasm workloads: crun runs Wasm only through a Wasm engine's library built "
    "for armv7, and the one agentd installs, WasmEdge, publishes no armv7 build"
)


def _armv7(inp: CheckInput) -> Finding:
    asked = wanted(inp, "wasmedge") is not None
    return Finding(
        "host.armv7-no-wasm",
        "warning" if asked else "info",
        "host",
        ARMV7_CAN_RUN + ("; the desired state's WasmEdge is refused here" if asked else ""),
        "schedule Wasm pods on amd64 or arm64 nodes (a 64-bit OS on a Raspberry Pi 3, 4 or 5 is "
        "arm64), and set 'state: absent' for wasmedge on armv7 nodes",
    )


def _kernel(release: str) -> list[Finding]:
    match = re.match(r"^(\d+)\.(\d+)", release)
    if not match:
        return []
    version = (int(match.group(1)), int(match.group(2)))
    if version < KERNEL_MINIMUM:
        return [
            Finding(
                "host.kernel",
                "error",
                "host",
                f"kernel {release} is older than 5.4, the oldest k3s + crun are supported on",
                "upgrade the kernel to 5.10 or later",
            )
        ]
    if version < KERNEL_RECOMMENDED:
        return [
            Finding(
                "host.kernel",
                "warning",
                "host",
                f"kernel {release} is older than 5.10, the recommended minimum",
                "upgrade the kernel to 5.10 or later",
            )
        ]
    return []


def _os(os_name: str) -> list[Finding]:
    parts = os_name.split()
    if not parts or parts[0] == "unknown":
        return []
    family = SUPPORTED_OS_ALIASES.get(parts[0], parts[0])
    minimum = SUPPORTED_OS.get(family)
    if minimum is None:
        return [
            Finding(
                "host.os",
                "warning",
                "host",
                f"{os_name} is not one of the systems k3s + WasmEdge are set up on here "
                "(Debian 11+, Ubuntu 20.04+, Raspberry Pi OS 11+, RHEL/CentOS 8+)",
                "expect to check each component by hand on this system",
            )
        ]
    if len(parts) > 1 and compare(parts[1], minimum) < 0:
        return [
            Finding(
                "host.os",
                "warning",
                "host",
                f"{os_name} is older than {family} {minimum}",
                f"upgrade to {family} {minimum} or later",
            )
        ]
    return []
