"""The containerd check: the template's crun-wasm runtime and the Wasm annotations it passes."""

from __future__ import annotations

from pathlib import Path

from agentd.health.containerd import check_containerd
from agentd.plan import render
from tests.unit.health.sandbox import K3S, TEMPLATE, codes, inputs, install, k3s_node


def test_the_containerd_template_must_carry_the_wasm_annotations(tmp_path: Path) -> None:
    k3s_node(tmp_path)
    assert codes(check_containerd(inputs(tmp_path))) == ["containerd.no-runtime"]
    good = render.containerd_template(K3S, "/usr/local/bin/crun")
    without = good.replace(b"pod_annotations", b"# pod_annotations")
    install(tmp_path, TEMPLATE, without, 0o644)
    found = check_containerd(inputs(tmp_path))
    assert codes(found) == ["containerd.no-annotations"]
    assert "runs the .wasm file as a native program" in found[0].message
    install(tmp_path, TEMPLATE, good, 0o644)
    assert check_containerd(inputs(tmp_path)) == []
    # k3s rendered its config before the template existed: a restart is needed.
    install(tmp_path, TEMPLATE.replace(".tmpl", ""), b'version = 2\n[plugins."io.containerd"]\n')
    found = check_containerd(inputs(tmp_path))
    assert [(f.code, f.fix) for f in found] == [("containerd.not-rendered", "restart:k3s")]


def test_no_k3s_no_containerd_findings(tmp_path: Path) -> None:
    assert check_containerd(inputs(tmp_path)) == []
