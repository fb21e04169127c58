"""The crun check: Wasm support, libwasmedge, the minimum version, the crun containerd runs."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest

from agentd.health.crun import check_crun
from agentd.plan import render
from tests.support.standins import crun_binary
from tests.unit.health.sandbox import K3S, TEMPLATE, codes, inputs, install, k3s_node

CRUN_WANTED = {"components": {"crun": {"state": "present", "version": "1.15"}}}


@pytest.mark.realcrun
@pytest.mark.skipif(not Path("/usr/bin/crun").exists(), reason="no distribution crun")
def test_the_real_debian_crun_has_no_wasm_and_is_below_the_guides_minimum(tmp_path: Path) -> None:
    shutil.copy2("/usr/bin/crun", install(tmp_path, "/usr/bin/crun", b""))
    found = check_crun(inputs(tmp_path, CRUN_WANTED))
    by_code = {f.code: f for f in found}
    assert set(by_code) >= {"crun.no-wasm"}
    no_wasm = by_code["crun.no-wasm"]
    assert no_wasm.severity == "error"
    assert "/usr/bin/crun" in no_wasm.message
    assert "+SYSTEMD" in no_wasm.message
    assert "+WASM:" not in no_wasm.message.split("a Wasm build lists")[0]
    assert no_wasm.fix == "reinstall:crun"  # the desired crun goes to /usr/local/bin
    version = inputs(tmp_path).facts.component("crun").version
    assert version is not None
    if version < "1.8.5":  # Debian 12's 1.8.1: below the guide's figure too
        assert by_code["crun.too-old"].message.startswith(f"crun {version} at /usr/bin/crun")


def test_crun_with_wasm_needs_libwasmedge(tmp_path: Path) -> None:
    install(tmp_path, "/usr/local/bin/crun", crun_binary("1.15", wasm=True))
    assert codes(check_crun(inputs(tmp_path, CRUN_WANTED))) == ["crun.no-libwasmedge"]
    install(tmp_path, "/usr/local/lib/libwasmedge.so.0.1.0", b"\x7fELF", 0o644)
    (tmp_path / "usr/local/lib/libwasmedge.so.0").symlink_to("libwasmedge.so.0.1.0")
    assert check_crun(inputs(tmp_path, CRUN_WANTED)) == []


def test_a_library_dir_from_ld_so_conf_counts(tmp_path: Path) -> None:
    install(tmp_path, "/usr/local/bin/crun", crun_binary("1.15", wasm=True))
    install(tmp_path, "/opt/wasmedge/lib/libwasmedge.so.0", b"\x7fELF", 0o644)
    install(tmp_path, "/etc/ld.so.conf.d/wasmedge.conf", b"# WasmEdge\n/opt/wasmedge/lib\n", 0o644)
    assert check_crun(inputs(tmp_path, CRUN_WANTED)) == []


def test_crun_below_the_desired_minimum(tmp_path: Path) -> None:
    install(tmp_path, "/usr/local/bin/crun", crun_binary("1.14", wasm=True))
    install(tmp_path, "/usr/local/lib/libwasmedge.so.0", b"\x7fELF", 0o644)
    desired = copy.deepcopy(CRUN_WANTED)
    desired["components"]["crun"]["minimumVersion"] = "1.15"
    found = check_crun(inputs(tmp_path, desired))
    assert codes(found) == ["crun.too-old"]
    assert "older than the minimum 1.15" in found[0].message


def test_no_crun_at_all(tmp_path: Path) -> None:
    assert [(f.code, f.severity) for f in check_crun(inputs(tmp_path, CRUN_WANTED))] == [
        ("crun.missing", "error")
    ]
    # Without Wasm in the desired state, a node without crun is only worth a warning.
    assert [(f.code, f.severity) for f in check_crun(inputs(tmp_path))] == [
        ("crun.missing", "warning")
    ]


def test_the_template_names_the_crun_that_counts(tmp_path: Path) -> None:
    """The distribution's crun (first in the search order here) has no Wasm, but containerd
    runs the one the template names: that one is checked."""
    k3s_node(tmp_path)
    install(tmp_path, "/usr/local/sbin/crun", crun_binary("1.8.1", wasm=False))
    install(tmp_path, "/usr/local/lib/libwasmedge.so.0", b"\x7fELF", 0o644)
    install(tmp_path, TEMPLATE, render.containerd_template(K3S, "/usr/local/bin/crun"), 0o644)
    assert check_crun(inputs(tmp_path, CRUN_WANTED)) == []
    install(tmp_path, TEMPLATE, render.containerd_template(K3S, "/usr/local/sbin/crun"), 0o644)
    assert "crun.no-wasm" in codes(check_crun(inputs(tmp_path, CRUN_WANTED)))
