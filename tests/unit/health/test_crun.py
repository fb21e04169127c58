"""The crun check: Wasm support, libwasmedge, the minimum version, the crun containerd runs."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest

from agentd.health.crun import check_crun
from agentd.plan import render
from agentd.system.commands import CommandResult
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


REAL = Path(__file__).resolve().parents[2] / "fixtures" / "real"


def _recorded(name: str) -> CommandResult:
    return CommandResult(
        ("ldconfig", "-p"),
        int((REAL / f"{name}.exit").read_text()),
        (REAL / f"{name}.stdout").read_text(),
        (REAL / f"{name}.stderr").read_text(),
    )


def test_debian_13s_crun_has_wasm_and_lacks_only_its_library(tmp_path: Path) -> None:
    """Debian 13's crun 1.21 (+WASM:wasmedge) without libwasmedge0: `crun --version` works,
    Wasm pods fail at run time (crun_run_wasm_no_libwasmedge). The finding names that, never
    "the distribution's crun has no Wasm"."""
    install(
        tmp_path,
        "/usr/bin/crun",
        b"#!/bin/sh\ncat " + str(REAL / "crun_version_debian13.stdout").encode() + b"\n",
    )
    desired = {
        "components": {"crun": {"state": "present", "source": "package", "version": ">=1.21"}}
    }
    found = check_crun(inputs(tmp_path, desired))
    assert codes(found) == ["crun.no-libwasmedge"]
    finding = found[0]
    assert "crun 1.21 at /usr/bin/crun is built with +WASM:wasmedge" in finding.message
    assert "could not load `libwasmedge.so.0`" in finding.message
    assert "source: package installs the distribution's crun" in finding.message
    assert "apt-get install libwasmedge0" in finding.remedy
    assert "has no Wasm" not in finding.remedy
    # With libwasmedge0 installed (its multiarch dir), nothing is missing.
    install(tmp_path, "/usr/lib/x86_64-linux-gnu/libwasmedge.so.0", b"\x7fELF", 0o644)
    assert check_crun(inputs(tmp_path, desired)) == []


def test_the_no_wasm_remedy_does_not_say_distributions_lack_wasm(tmp_path: Path) -> None:
    install(
        tmp_path,
        "/usr/bin/crun",
        b"#!/bin/sh\ncat " + str(REAL / "crun_version_debian12.stdout").encode() + b"\n",
    )
    found = check_crun(inputs(tmp_path, CRUN_WANTED))
    no_wasm = next(f for f in found if f.code == "crun.no-wasm")
    assert "the distribution's crun has no Wasm" not in no_wasm.remedy
    assert "the crun at /usr/bin/crun" in no_wasm.remedy


@pytest.mark.parametrize(
    ("library", "expected"),
    [
        # In a system dir the loader finds it with no cache (crun_run_wasm_no_cache): fine.
        ("/usr/lib/x86_64-linux-gnu/libwasmedge.so.0", None),
        # In /usr/local/lib it is found only through the cache (..._lib_in_usr_local_no_cache).
        ("/usr/local/lib/libwasmedge.so.0", "crun.ldconfig"),
    ],
)
def test_no_loader_cache_at_all_is_not_taken_for_a_cache(
    tmp_path: Path, library: str, expected: str | None
) -> None:
    from agentd.health.crun import ldconfig_finding

    install(
        tmp_path,
        "/usr/bin/crun",
        b"#!/bin/sh\ncat " + str(REAL / "crun_version_debian13.stdout").encode() + b"\n",
    )
    install(tmp_path, library, b"\x7fELF", 0o644)
    inp = inputs(tmp_path)
    asked: list[list[str]] = []

    def runner(argv: list[str], *_: object) -> CommandResult:
        asked.append(argv)
        return _recorded("ldconfig_p_no_cache")

    inp.runner = runner
    found = ldconfig_finding(inp, "/usr/bin/crun", library)
    assert (found.code if found else None) == expected
    if found is not None:
        assert asked == [["ldconfig", "-p"]]
        assert "there is no loader cache" in found.message
        assert "Can't open cache file /etc/ld.so.cache: No such file or directory" in found.message
        assert "does not search /usr/local/lib" in found.message
        assert (found.fix, found.remedy) == ("ldconfig", "run ldconfig")
    else:
        assert asked == []  # no need to ask: the loader finds it either way
