"""The Wasm verdict on a k3s server: the node label, the probe pod, its empty logs traced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentd.health.probe import PROBE_OUTPUT
from agentd.plan import render
from tests.support.fakekube import FakeCluster
from tests.support.standins import crun_binary
from tests.unit.health.sandbox import K3S, TEMPLATE, install, needs_kubectl, run_examine


@needs_kubectl
def test_the_node_label_follows_the_wasm_stack(server: Path, cluster: FakeCluster) -> None:
    assert "wasm-runtime" not in cluster.node("edge-1")["metadata"].get("labels", {})
    first = run_examine(server)
    assert first.wasm_ready
    assert first.label == "set"
    assert cluster.node("edge-1")["metadata"]["labels"]["wasm-runtime"] == "enabled"
    assert run_examine(server).label == "unchanged"
    # crun loses its Wasm support: the scheduler must keep Wasm pods away.
    install(server, "/usr/local/bin/crun", crun_binary("1.15", wasm=False))
    broken = run_examine(server)
    assert not broken.wasm_ready
    assert broken.label == "removed"
    assert "wasm-runtime" not in cluster.node("edge-1")["metadata"]["labels"]


@needs_kubectl
def test_the_wasm_pod_probe_on_a_working_node(server: Path, cluster: FakeCluster) -> None:
    run = run_examine(server, probe=True)
    assert [f.code for f in run.findings if f.code.startswith("wasm.")] == []
    assert cluster.pods("default") == []  # the probe pod is deleted afterwards


@needs_kubectl
@pytest.mark.parametrize(
    ("breakage", "cause"),
    [
        ("crun", "because crun has no Wasm support"),
        ("annotations", "because containerd does not pass the Wasm annotations to crun"),
        ("libwasmedge", "because crun cannot load libwasmedge.so.0"),
    ],
)
def test_a_wasm_pod_without_output_is_traced_to_its_real_cause(
    server: Path, breakage: str, cause: str
) -> None:
    if breakage == "crun":
        install(server, "/usr/local/bin/crun", crun_binary("1.15", wasm=False))
    elif breakage == "annotations":
        template = render.containerd_template(K3S, "/usr/local/bin/crun")
        install(server, TEMPLATE, template.replace(b"  pod_annotations", b"  # pod_annotations"))
    else:
        for lib in (server / "usr/local/lib").glob("libwasmedge.so*"):
            lib.unlink()
    run = run_examine(server, probe=True)
    probe = [f for f in run.findings if f.code == "wasm.empty-logs"]
    assert len(probe) == 1, [f.code for f in run.findings]
    assert cause in probe[0].message
    if breakage == "crun":
        # crun ran the .wasm as a native program: its own error is the only log line.
        assert "Exec format error" in probe[0].message
    assert not run.wasm_ready


REAL = Path(__file__).resolve().parents[2] / "fixtures" / "real"
PROBE_LINE = PROBE_OUTPUT.decode().strip()


@pytest.mark.parametrize(
    "log",
    [
        # crun run by hand (tests/fixtures/real/), and the JSON line containerd's crun writes.
        (REAL / "crun_run_wasm_no_annotation.stderr").read_text(),
        (
            json.dumps(
                {
                    "msg": (REAL / "crun_run_wasm_no_annotation.stderr").read_text().strip(),
                    "level": "error",
                    "time": "2026-12-02T06:29:58.000123Z",
                }
            )
        ),
    ],
)
def test_crun_s_exec_error_in_the_log_is_recognised(log: str) -> None:
    from agentd.health.workload import crun_error, trace_empty_logs

    real = (REAL / "crun_run_wasm_no_annotation.stderr").read_text().strip()
    assert crun_error(log.splitlines()) == real
    assert crun_error([PROBE_LINE]) is None
    # No check found the cause (say the template was right when checked): the log says it.
    finding = trace_empty_logs([], "Failed", {}, log.splitlines())
    assert finding.code == "wasm.empty-logs"
    assert real in finding.message
    assert "crun executed the module as a native program" in finding.message
    assert "none of the known causes" not in finding.message


def test_an_exec_error_is_not_blamed_on_a_missing_library() -> None:
    """Exec format error means crun ran the module natively: of the causes present, the one
    that does that is named, not libwasmedge (which stops the container before it starts)."""
    from agentd.health.findings import Finding
    from agentd.health.workload import trace_empty_logs

    log = (REAL / "crun_run_wasm_no_annotation.stderr").read_text().splitlines()
    lib = Finding("crun.no-libwasmedge", "error", "crun", "no libwasmedge", "install it")
    ann = Finding("containerd.no-annotations", "error", "containerd", "no annotations", "fix")
    finding = trace_empty_logs([lib, ann], "Failed", {}, log)
    assert "because containerd does not pass the Wasm annotations to crun" in finding.message
