"""The preflight check: the install guide's prerequisites on a sandbox root."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agentd.health.preflight import check_host
from tests.unit.health.sandbox import GIB, HOST, codes, inputs, install


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({}, []),
        ({"cpus": 1}, [("host.cpus", "warning")]),
        ({"memory_bytes": 3 * GIB}, [("host.memory", "warning")]),
        ({"memory_bytes": int(3.6 * GIB)}, []),  # a "4 GB" board: the firmware keeps some
        ({"kernel": "5.3.18"}, [("host.kernel", "error")]),
        ({"kernel": "5.4.0-150-generic"}, [("host.kernel", "warning")]),
        ({"kernel": "5.10.0-28-arm64"}, []),
        ({"arch": "riscv64"}, [("host.arch", "error")]),
        ({"arch": "armv7"}, [("host.armv7-no-wasm", "info")]),
        ({"os": "fedora 40"}, [("host.os", "warning")]),
        ({"os": "debian 10"}, [("host.os", "warning")]),
        ({"os": "ubuntu 22.04"}, []),
        ({"os": "rocky 9.3"}, []),
        ({"cgroup_v2": False}, [("host.cgroup-v1", "warning")]),
        ({"disk_free_bytes": GIB // 2}, [("host.disk-free", "error")]),
        ({"disk_free_bytes": 5 * GIB}, [("host.disk-free", "warning")]),
        (
            {"disk_total_bytes": 16 * 10**9, "disk_free_bytes": 10 * GIB},
            [("host.disk-size", "warning")],
        ),
    ],
)
def test_preflight_against_the_guides_server_minimums(
    tmp_path: Path, change: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    # A server node: the guide asks for 2 cores, 4 GB and 20 GB.
    install(tmp_path, "/etc/systemd/system/k3s.service", b"[Unit]\n", 0o644)
    found = check_host(inputs(tmp_path, host=replace(HOST, **change)))
    assert [(f.code, f.severity) for f in found] == expected


def test_an_edge_node_has_lower_minimums(tmp_path: Path) -> None:
    edge = replace(HOST, cpus=1, memory_bytes=2 * GIB, disk_total_bytes=12 * 10**9)
    agent = {"components": {"k3s": {"state": "present", "role": "agent"}}}
    assert check_host(inputs(tmp_path, agent, edge)) == []
    server = {"components": {"k3s": {"state": "present", "role": "server"}}}
    assert codes(check_host(inputs(tmp_path, server, edge))) == [
        "host.cpus",
        "host.memory",
        "host.disk-size",
    ]


def test_an_armv7_node_says_what_it_can_and_cannot_run(tmp_path: Path) -> None:
    armv7 = replace(HOST, arch="armv7")
    asked = {"components": {"wasmedge": {"state": "present", "version": "0.14.1"}}}
    (finding,) = [f for f in check_host(inputs(tmp_path, asked, armv7)) if f.component == "host"]
    assert (finding.code, finding.severity) == ("host.armv7-no-wasm", "warning")
    assert finding.message == (
        "this node is armv7 (a 32-bit ARM userland): it runs k3s and crun with ordinary Linux "
        "containers, not Wasm workloads: crun runs Wasm only through a Wasm engine's library "
        "built for armv7, and the one agentd installs, WasmEdge, publishes no armv7 build; the "
        "desired state's WasmEdge is refused here"
    )
    assert "arm64" in finding.remedy
    assert not finding.unhealthy
    absent = {"components": {"wasmedge": {"state": "absent"}}}
    (quiet,) = check_host(inputs(tmp_path, absent, armv7))
    assert quiet.severity == "info"
    assert not quiet.message.endswith("refused here")
