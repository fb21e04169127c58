"""Where a WasmEdge loads its plugins from, decided as the real one decides it."""

from __future__ import annotations

import shutil
from pathlib import Path

from agentd.core.paths import Paths
from agentd.facts.detect import (
    VersionCache,
    detect_components,
    wasmedge_library,
    wasmedge_plugin_dirs,
)
from tests.unit.facts.test_detect import REAL, _detect_run, _plugin, _runs, _script

ELF = REAL / "elf"
MULTIARCH_LIB = "/usr/lib/x86_64-linux-gnu"


def _debian_wasmedge(root: Path, output: str = "wasmedge_version_plugin_loaded") -> Path:
    """Debian 13's layout: /usr/bin/wasmedge answering `--version` with a real recording, its
    library in the multiarch dir (bytes that stand in for it: nothing here loads it)."""
    binary = _script(root / "usr/bin/wasmedge", f'cat "{REAL / (output + ".stdout")}"\n', None)
    lib = root / MULTIARCH_LIB.lstrip("/") / "libwasmedge.so.0"
    lib.parent.mkdir(parents=True, exist_ok=True)
    lib.write_bytes(b"stands in for libwasmedge.so.0.1.0")
    return binary


def test_debian_wasmedge_loads_plugins_from_the_multiarch_dir(tmp_path: Path) -> None:
    """Debian's /usr/bin/wasmedge finds libwasmedge by its RUNPATH
    ($ORIGIN/../lib/x86_64-linux-gnu) and so loads /usr/lib/x86_64-linux-gnu/wasmedge; a file in
    /usr/local/lib/wasmedge is none of its plugins (wasmedge_version_plugin_in_usr_local)."""
    paths = Paths(tmp_path)
    _debian_wasmedge(tmp_path)
    real = tmp_path / "usr/bin/wasmedge"
    shutil.copy(ELF / "wasmedge", real)  # the real binary's bytes, for its RUNPATH
    real.chmod(0o755)
    assert wasmedge_library(paths, real) == tmp_path / "usr/lib/x86_64-linux-gnu/libwasmedge.so.0"
    assert wasmedge_plugin_dirs(paths, real) == [tmp_path / "usr/lib/x86_64-linux-gnu/wasmedge"]

    _debian_wasmedge(tmp_path)  # the recording's answer again, for detection to run
    plugin_dir = tmp_path / "usr/lib/x86_64-linux-gnu/wasmedge"
    plugin_dir.mkdir()
    shutil.copy(ELF / "libwasmedgePluginAgentdE2E.so", plugin_dir)
    _plugin(tmp_path, "libwasmedgePluginWasiNN.so")  # /usr/local/lib/wasmedge: never loaded
    wasmedge = detect_components(paths, {}, VersionCache())["wasmedge"]
    assert (wasmedge.path, wasmedge.version, wasmedge.managed) == (
        "/usr/bin/wasmedge",
        "0.14.1",
        False,
    )
    assert [(p.path, p.version) for p in wasmedge.plugins] == [
        ("/usr/lib/x86_64-linux-gnu/wasmedge/libwasmedgePluginAgentdE2E.so", "0.1.0.0")
    ]


def test_the_plugin_dir_follows_the_library(tmp_path: Path) -> None:
    """Debian's WasmEdge with its library moved to /usr/local/lib loads /usr/local/lib/wasmedge
    (wasmedge_version_lib_in_usr_local): the directory is named after the library's."""
    paths = Paths(tmp_path)
    binary = _debian_wasmedge(tmp_path, "wasmedge_version_lib_in_usr_local")
    (tmp_path / "usr/local/lib").mkdir(parents=True)
    (tmp_path / MULTIARCH_LIB.lstrip("/") / "libwasmedge.so.0").rename(
        tmp_path / "usr/local/lib/libwasmedge.so.0"
    )
    assert wasmedge_plugin_dirs(paths, binary) == [paths.plugin_dir]
    _plugin(tmp_path, "libwasmedgePluginAgentdE2E.so")
    wasmedge = detect_components(paths, {}, VersionCache())["wasmedge"]
    assert [(p.path, p.version) for p in wasmedge.plugins] == [
        ("/usr/local/lib/wasmedge/libwasmedgePluginAgentdE2E.so", "0.1.0.0")
    ]
    # A library outside /usr and /lib (an unpacked tarball): <libdir>/../plugin.
    tarball = tmp_path / "opt/wasmedge"
    (tarball / "lib").mkdir(parents=True)
    (tarball / "lib/libwasmedge.so.0").write_bytes(b"stand-in")
    (tmp_path / "usr/local/lib/libwasmedge.so.0").unlink()
    (tmp_path / "etc/ld.so.conf.d").mkdir(parents=True)
    (tmp_path / "etc/ld.so.conf.d/wasmedge.conf").write_text("/opt/wasmedge/lib\n")
    assert wasmedge_plugin_dirs(paths, binary) == [tarball / "plugin"]


def test_a_vanished_multiarch_libwasmedge_invalidates_the_cached_version(tmp_path: Path) -> None:
    paths = Paths(tmp_path / "root")
    counter = tmp_path / "wasmedge-runs"
    _debian_wasmedge(paths.root)
    _script(
        paths.root / "usr/bin/wasmedge",
        f'cat "{REAL / "wasmedge_version_clean.stdout"}"\n',
        counter,
    )
    first, _ = _detect_run(paths)
    _detect_run(paths)
    assert _runs(counter) == 1
    assert first["wasmedge"]["version"] == "0.14.1"
    (paths.root / MULTIARCH_LIB.lstrip("/") / "libwasmedge.so.0").unlink()
    _detect_run(paths)
    assert _runs(counter) == 2


def test_wasmedge_that_fails_to_load_a_plugin_is_asked_again(tmp_path: Path) -> None:
    """The missing-dependency case changes when the plugin's library appears, a file WasmEdge's
    cached output does not depend on: such output is not kept."""
    paths = Paths(tmp_path / "root")
    counter = tmp_path / "wasmedge-runs"
    _debian_wasmedge(paths.root)
    _script(
        paths.root / "usr/bin/wasmedge",
        f'cat "{REAL / "wasmedge_version_plugin_missing_dep.stdout"}"\n',
        counter,
    )
    first, _ = _detect_run(paths)
    _detect_run(paths)
    assert _runs(counter) == 2
    assert first["wasmedge"]["version"] == "0.14.1"
