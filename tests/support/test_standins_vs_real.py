"""The WasmEdge and crun stand-ins against the real programs' recordings (tests/fixtures/real/)."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from agentd.health.probe import probe_module
from tests.support.standins import crun_binary, plugin_library, wasmedge_tarball

REAL = Path(__file__).resolve().parents[1] / "fixtures" / "real"
# Debian 13's layout, rebuilt under the sandbox root with the stand-ins: the binaries in /usr/bin,
# libwasmedge and its plugin directory in the multiarch directory.
LIBDIR = "/usr/lib/x86_64-linux-gnu"
PLUGIN_DIR = f"{LIBDIR}/wasmedge"
NOT_ELF = b"not a shared object\n"  # tests/e2e/wasmplugin/Makefile's libwasmedgePluginNotELF.so
_STAMP = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\] ", re.MULTILINE)


def _recording(name: str) -> tuple[str, str, int]:
    return (
        (REAL / f"{name}.stdout").read_text(),
        (REAL / f"{name}.stderr").read_text(),
        int((REAL / f"{name}.exit").read_text()),
    )


def _normal(text: str, root: Path, argv0: str) -> str:
    """Time stamps out; the sandbox root and the version line's argv[0] as the real run had it."""
    text = _STAMP.sub("[TS] ", text).replace(str(root), "")
    return re.sub(r"^\S+ version ", f"{argv0} version ", text, flags=re.MULTILINE)


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "TERM": "dumb"}
    return subprocess.run(
        argv, capture_output=True, text=True, env={**base, **env}, timeout=20, check=False
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A root with the stand-in WasmEdge 0.14.1 laid out as Debian 13 installs it."""
    node = tmp_path / "node"
    with tarfile.open(fileobj=io.BytesIO(wasmedge_tarball("0.14.1")), mode="r:gz") as tar:
        tar.extractall(tmp_path / "unpacked")
    top = tmp_path / "unpacked/WasmEdge-0.14.1-Linux"
    (node / "usr/bin").mkdir(parents=True)
    shutil.copy2(top / "bin/wasmedge", node / "usr/bin/wasmedge")
    shutil.copytree(top / "lib64", node / LIBDIR.lstrip("/"), symlinks=True)
    (node / PLUGIN_DIR.lstrip("/")).mkdir()
    return node


def _plugin(directory: Path, filename: str, data: bytes) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / filename).write_bytes(data)


def _e2e_plugin(version: str = "0.14.1", needs: tuple[str, ...] = ()) -> bytes:
    """The stand-in for tests/e2e/wasmplugin's C plugin (registers as "agentd_e2e")."""
    return plugin_library(
        "agentd_e2e", "agentd_e2e", "libwasmedgePluginAgentdE2E.so", version, needs=needs
    )


def _wasmedge(root: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # Debian's loader finds libwasmedge in the multiarch directory by itself; the stand-in is told.
    full = {"LD_LIBRARY_PATH": f"{root}{LIBDIR}", **(env or {})}
    return _run([str(root / "usr/bin/wasmedge"), "--version"], full)


def _same(name: str, result: subprocess.CompletedProcess[str], root: Path) -> None:
    stdout, stderr, code = _recording(name)
    recordings = json.loads((REAL / "recordings.json").read_text())["recordings"]
    argv = next(e["argv"] for e in recordings if e["name"] == name)
    assert _normal(result.stdout, root, argv[0]) == _normal(stdout, Path("/nonexistent"), argv[0])
    assert (result.stderr, result.returncode) == (stderr, code)


def test_clean(root: Path) -> None:
    _same("wasmedge_version_clean", _wasmedge(root), root)


def test_fullpath_prints_argv0(root: Path) -> None:
    result = _wasmedge(root)
    assert result.stdout.splitlines()[0] == f"{root}/usr/bin/wasmedge version 0.14.1"
    _same("wasmedge_version_fullpath", result, root)


def test_plugin_loaded(root: Path) -> None:
    _plugin(root / PLUGIN_DIR.lstrip("/"), "libwasmedgePluginAgentdE2E.so", _e2e_plugin())
    _same("wasmedge_version_plugin_loaded", _wasmedge(root), root)


def test_plugin_path_env(root: Path) -> None:
    _plugin(root / "plugins", "libwasmedgePluginAgentdE2E.so", _e2e_plugin())
    result = _wasmedge(root, {"WASMEDGE_PLUGIN_PATH": f"{root}/plugins"})
    _same("wasmedge_version_plugin_path_env", result, root)


def test_plugin_twice_registers_the_first(root: Path) -> None:
    _plugin(root / "plugins", "libwasmedgePluginAgentdE2E.so", _e2e_plugin())
    _plugin(root / PLUGIN_DIR.lstrip("/"), "libwasmedgePluginAgentdE2E.so", _e2e_plugin())
    result = _wasmedge(root, {"WASMEDGE_PLUGIN_PATH": f"{root}/plugins"})
    _same("wasmedge_version_plugin_twice", result, root)


@pytest.mark.parametrize(
    ("name", "filename", "data"),
    [
        ("wasmedge_version_plugin_not_elf", "libwasmedgePluginNotELF.so", NOT_ELF),
        ("wasmedge_version_plugin_text_long", "libwasmedgePluginText.so", b"#" * 99 + b"\n"),
        ("wasmedge_version_plugin_empty", "libwasmedgePluginEmpty.so", b""),
        (
            "wasmedge_version_plugin_missing_dep",
            "libwasmedgePluginAgentdNoDep.so",
            _e2e_plugin(needs=("libagentde2edep.so",)),
        ),
        # A shared object with no plugin descriptor (the real run used a copy of libz).
        ("wasmedge_version_elf_not_a_plugin", "libNotAPlugin.so", _e2e_plugin()[:64]),
        # Built for WasmEdge 0.14.0's plugin API (3): skipped without a word.
        (
            "wasmedge_version_plugin_other_api",
            "libwasmedgePluginAgentdAPI3.so",
            _e2e_plugin("0.14.0"),
        ),
    ],
)
def test_plugin_that_does_not_load(root: Path, name: str, filename: str, data: bytes) -> None:
    _plugin(root / PLUGIN_DIR.lstrip("/"), filename, data)
    _same(name, _wasmedge(root), root)


def test_two_bad_plugins_print_pass_after_pass(root: Path) -> None:
    plugins = root / PLUGIN_DIR.lstrip("/")
    _plugin(plugins, "libwasmedgePluginNotELF.so", NOT_ELF)
    nodep = _e2e_plugin(needs=("libagentde2edep.so",))
    _plugin(plugins, "libwasmedgePluginAgentdNoDep.so", nodep)
    _same("wasmedge_version_two_bad_plugins", _wasmedge(root), root)


CRUN_121 = "10269840aa07fb7e6b7e1acff6198692d8ff5c88"
CRUN_181 = "f8a096be060b22ccd3d5f3ebe44108517fbf6c30"


@pytest.mark.parametrize(
    ("name", "binary"),
    [
        ("crun_version_debian13", crun_binary("1.21", commit=CRUN_121, criu=True)),
        ("crun_version_debian12", crun_binary("1.8.1", wasm=False, commit=CRUN_181)),
    ],
)
def test_crun_version(tmp_path: Path, name: str, binary: bytes) -> None:
    crun = tmp_path / "usr/bin/crun"
    crun.parent.mkdir(parents=True)
    crun.write_bytes(binary)
    crun.chmod(0o755)
    result = _run([str(crun), "--version"], {})
    assert (result.stdout, result.stderr, result.returncode) == _recording(name)


def _bundle(tmp_path: Path, annotations: dict[str, str], mode: int) -> Path:
    """As tests/e2e/record_real.py's BUNDLE_SCRIPT makes it (the parts crun reads)."""
    bundle = tmp_path / "bundle"
    (bundle / "rootfs").mkdir(parents=True, exist_ok=True)
    probe = bundle / "rootfs/probe.wasm"
    probe.write_bytes(probe_module())
    probe.chmod(mode)
    spec: dict[str, object] = {
        "process": {"terminal": False, "args": ["/probe.wasm"], "cwd": "/"},
        "root": {"path": "rootfs"},
    }
    if annotations:
        spec["annotations"] = annotations
    (bundle / "config.json").write_text(json.dumps(spec))
    return bundle


@pytest.mark.parametrize(
    ("name", "annotations", "mode", "libwasmedge"),
    [
        ("crun_run_wasm_compat_smart", {"module.wasm.image/variant": "compat-smart"}, 0o755, True),
        ("crun_run_wasm_no_annotation", {}, 0o755, True),
        ("crun_run_wasm_no_annotation_mode0644", {}, 0o644, True),
        (
            "crun_run_wasm_no_libwasmedge",
            {"module.wasm.image/variant": "compat-smart"},
            0o755,
            False,
        ),
    ],
)
def test_crun_run(
    tmp_path: Path, name: str, annotations: dict[str, str], mode: int, libwasmedge: bool
) -> None:
    if name == "crun_run_wasm_compat_smart":
        pytest.importorskip("wasmtime")
    node = tmp_path / "node"
    crun = node / "usr/bin/crun"
    crun.parent.mkdir(parents=True)
    crun.write_bytes(crun_binary("1.21", commit=CRUN_121, criu=True))
    crun.chmod(0o755)
    if libwasmedge:
        (node / LIBDIR.lstrip("/")).mkdir(parents=True)
        (node / LIBDIR.lstrip("/") / "libwasmedge.so.0").write_bytes(b"stand-in")
    bundle = _bundle(tmp_path, annotations, mode)
    argv = [str(crun), "--cgroup-manager=disabled", "run", "--bundle", str(bundle), f"e2e-{name}"]
    result = _run(argv, {})
    assert (result.stdout, result.stderr, result.returncode) == _recording(name)
