"""The WasmEdge checks: plugins it does not load, and what breaks DNS in Wasm guests."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentd.health.wasmedge import check_dns, check_wasmedge
from tests.support.standins import plugin_tarball
from tests.unit.health.sandbox import codes, inputs, install, k3s_node, unpack_wasmedge


def test_a_plugin_built_for_another_wasmedge_is_not_loaded(tmp_path: Path) -> None:
    unpack_wasmedge(tmp_path, "0.14.1")
    import io
    import tarfile

    for version, name in (("0.14.1", "wasi_crypto"), ("0.13.5", "wasi_nn-ggml")):
        blob = plugin_tarball(name, version)
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            for member in tar.getmembers():
                if member.isfile():
                    data = tar.extractfile(member)
                    assert data is not None
                    install(
                        tmp_path,
                        f"/usr/local/lib/wasmedge/{Path(member.name).name}",
                        data.read(),
                        0o644,
                    )
    desired = {
        "components": {"wasmedge": {"state": "present", "plugins": [{"name": "wasi_nn-ggml"}]}}
    }
    found = [
        f for f in check_wasmedge(inputs(tmp_path, desired)) if f.code.startswith("wasmedge.plugin")
    ]
    assert [(f.code, f.component, f.fix) for f in found] == [
        (
            "wasmedge.plugin-not-loaded",
            "wasmedge/plugins/wasi_nn",
            None,
        )
    ]
    assert "skipped without a word" in found[0].message


def test_wasmedge_missing_only_matters_when_desired(tmp_path: Path) -> None:
    assert check_wasmedge(inputs(tmp_path)) == []
    wanted = {"components": {"wasmedge": {"state": "present"}}}
    assert codes(check_wasmedge(inputs(tmp_path, wanted))) == ["wasmedge.missing"]


@pytest.mark.parametrize(
    ("version", "expected"),
    [("0.9.1", ["dns.wasmedge-too-old"]), ("0.12.0", ["dns.wasmedge-0.12.0"]), ("0.13.5", [])],
)
def test_dns_causes_on_the_wasmedge_side(tmp_path: Path, version: str, expected: list[str]) -> None:
    unpack_wasmedge(tmp_path, version)
    found = check_dns(inputs(tmp_path))
    assert codes(found) == expected
    for f in found:
        assert "There is no WasmEdge socket plugin to install" in f.remedy


def test_dns_needs_a_resolv_conf_for_the_sandbox(tmp_path: Path) -> None:
    k3s_node(tmp_path)
    found = check_dns(inputs(tmp_path))
    assert [(f.code, f.severity) for f in found] == [("dns.no-resolv-conf", "error")]
    assert "/etc/resolv.conf does not exist" in found[0].message
    install(tmp_path, "/etc/resolv.conf", b"nameserver 10.0.0.53\n", 0o644)
    assert check_dns(inputs(tmp_path)) == []
    # k3s's own resolv-conf setting names the file the kubelet hands to pods.
    install(tmp_path, "/etc/rancher/k3s/config.yaml", b"resolv-conf: /run/k3s-resolv.conf\n", 0o644)
    assert "/run/k3s-resolv.conf does not exist" in check_dns(inputs(tmp_path))[0].message


REAL = Path(__file__).resolve().parents[2] / "fixtures" / "real"


@pytest.mark.parametrize(
    ("recording", "named"),
    [
        ("wasmedge_version_plugin_not_elf", "libwasmedgePluginNotELF.so: file too short"),
        ("wasmedge_version_plugin_missing_dep", "libagentde2edep.so: cannot open shared object"),
    ],
)
def test_a_plugin_wasmedge_cannot_load_is_named_and_wasmedge_is_not_broken(
    tmp_path: Path, recording: str, named: str
) -> None:
    # `wasmedge --version` answers with the real Debian 13 WasmEdge's recorded stdout (its
    # plugin-load errors first, exit 0); running a module prints the same error lines first, as
    # the real one does on every run, then goes to the stand-in WasmEdge.
    unpack_wasmedge(tmp_path, "0.14.1")
    binary = tmp_path / "usr/local/bin/wasmedge"
    binary.rename(binary.with_name("wasmedge.standin"))
    install(
        tmp_path,
        "/usr/local/bin/wasmedge",
        (
            "#!/bin/sh\n"
            "# Replays the real wasmedge --version output (tests/fixtures/real/).\n"
            f'if [ "$1" = --version ]; then cat "{REAL / (recording + ".stdout")}"; exit 0; fi\n'
            f'grep "^\\[" "{REAL / (recording + ".stdout")}"\n'
            f'exec "{binary.with_name("wasmedge.standin")}" "$@"\n'
        ).encode(),
    )
    inp = inputs(tmp_path, {"components": {"wasmedge": {"state": "present"}}})
    wasmedge = inp.facts.component("wasmedge")
    assert (wasmedge.version, wasmedge.error) == ("0.14.1", None)
    assert any(named in line for line in wasmedge.load_errors)
    found = check_wasmedge(inp)
    assert codes(found) == ["wasmedge.plugin-load-failed"]
    assert found[0].severity == "warning"
    assert named in found[0].message


def _debian_wasmedge_replaying(root: Path, standin_root: Path, recording: str) -> None:
    """Debian 13's layout under `root`: /usr/bin/wasmedge answers `--version` with the real
    recording; running a module goes to the stand-in WasmEdge unpacked outside the root."""
    unpack_wasmedge(standin_root, "0.14.1")
    standin = standin_root / "usr/local/bin/wasmedge"
    install(
        root,
        "/usr/bin/wasmedge",
        (
            "#!/bin/sh\n"
            f'if [ "$1" = --version ]; then cat "{REAL / (recording + ".stdout")}"; exit 0; fi\n'
            f'exec "{standin}" "$@"\n'
        ).encode(),
    )
    install(root, "/usr/lib/x86_64-linux-gnu/libwasmedge.so.0", b"\x7fELF", 0o644)


def test_the_plugin_whose_library_is_missing_is_named(tmp_path: Path) -> None:
    """WasmEdge names only the missing library (libagentde2edep.so); the plugin file that needs
    it is found by its own dynamic section (the real plugin's bytes) and named."""
    root = tmp_path / "node"
    _debian_wasmedge_replaying(root, tmp_path / "standin", "wasmedge_version_plugin_missing_dep")
    plugins = "/usr/lib/x86_64-linux-gnu/wasmedge"
    for name in ("libwasmedgePluginAgentdNoDep.so", "libwasmedgePluginAgentdE2E.so"):
        install(root, f"{plugins}/{name}", (REAL / "elf" / name).read_bytes(), 0o644)
    found = check_wasmedge(inputs(root, {"components": {"wasmedge": {"state": "present"}}}))
    load = [f for f in found if f.code == "wasmedge.plugin-load-failed"]
    assert len(load) == 1, [f.code for f in found]
    assert f"cannot load the plugin {plugins}/libwasmedgePluginAgentdNoDep.so" in load[0].message
    assert "libwasmedgePluginAgentdE2E.so" not in load[0].message
    assert "libagentde2edep.so: cannot open shared object" in load[0].message
    assert (
        "remove /usr/lib/x86_64-linux-gnu/wasmedge/libwasmedgePluginAgentdNoDep.so"
        in load[0].remedy
    )
    # A failure WasmEdge explained is not also called a plugin "skipped without a word".
    assert not [f for f in found if f.code == "wasmedge.plugin-not-loaded" and "NoDep" in f.message]


def test_without_a_plugin_to_blame_it_says_wasmedge_did_not_name_one(tmp_path: Path) -> None:
    root = tmp_path / "node"
    _debian_wasmedge_replaying(root, tmp_path / "standin", "wasmedge_version_plugin_missing_dep")
    found = check_wasmedge(inputs(root, {"components": {"wasmedge": {"state": "present"}}}))
    load = [f for f in found if f.code == "wasmedge.plugin-load-failed"]
    assert len(load) == 1
    assert "It does not name the plugin file" in load[0].message


def test_a_file_that_is_no_shared_object_is_named_once(tmp_path: Path) -> None:
    root = tmp_path / "node"
    _debian_wasmedge_replaying(root, tmp_path / "standin", "wasmedge_version_plugin_not_elf")
    install(
        root,
        "/usr/lib/x86_64-linux-gnu/wasmedge/libwasmedgePluginNotELF.so",
        b"not a shared object\n",
        0o644,
    )
    found = check_wasmedge(inputs(root, {"components": {"wasmedge": {"state": "present"}}}))
    assert codes(found) == ["wasmedge.plugin-load-failed"]  # printed twice, said once
    assert found[0].message == (
        "/usr/bin/wasmedge 0.14.1 cannot load the plugin "
        "/usr/lib/x86_64-linux-gnu/wasmedge/libwasmedgePluginNotELF.so: file too short"
    )


def test_a_wasmedge_the_plan_refuses_on_armv7_is_not_missing(tmp_path: Path) -> None:
    # The plan refuses WasmEdge on armv7 (no build exists) and host.armv7-no-wasm says so: a
    # wasmedge.missing with a "converge" fix would be acted on, uselessly, every health cycle.
    from dataclasses import replace

    from tests.unit.health.sandbox import HOST

    wanted = {"components": {"wasmedge": {"state": "present"}}}
    assert codes(check_wasmedge(inputs(tmp_path, wanted, replace(HOST, arch="armv7")))) == []
    assert codes(check_wasmedge(inputs(tmp_path, wanted))) == ["wasmedge.missing"]
