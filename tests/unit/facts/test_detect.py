"""Detection: the parsers against recorded real outputs, the detectors on sandbox roots."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from agentd.core.arch import normalise_arch
from agentd.core.paths import Paths
from agentd.facts.detect import (
    VersionCache,
    detect,
    detect_components,
    detect_host,
    parse_crun_version,
    parse_k3s_version,
    parse_wasmedge_load_errors,
    parse_wasmedge_plugin_lines,
    parse_wasmedge_version,
    plugin_name_for_file,
)
from agentd.facts.model import NOT_INSTALLED, PluginFact
from agentd.facts.osrelease import parse_os_release
from agentd.system.commands import run_command

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "facts"

PARSERS: dict[str, Callable[[str], object]] = {
    "parse_k3s_version": parse_k3s_version,
    "parse_crun_version": parse_crun_version,
    "parse_wasmedge_version": parse_wasmedge_version,
    "parse_wasmedge_plugin_lines": parse_wasmedge_plugin_lines,
    "parse_wasmedge_load_errors": parse_wasmedge_load_errors,
    "parse_os_release": parse_os_release,
}

# The exact outputs of the real programs (shared/reference/components.md).
K3S_OUTPUT = "k3s version v1.32.0+k3s1 (cca8faca)\ngo version go1.23.3\n"
CRUN_DEBIAN12_OUTPUT = (
    "crun version 1.8.1\n"
    "commit: f8a096be060b22ccd3d5f3ebe44108517fbf6c30\n"
    "rundir: /run/crun\n"
    "spec: 1.0.0\n"
    "+SYSTEMD +SELINUX +APPARMOR +CAP +SECCOMP +EBPF +YAJL\n"
)
REAL = Path(__file__).resolve().parents[2] / "fixtures" / "real"
# Debian 13's crun 1.21, built with WasmEdge (tests/fixtures/real/README.md).
CRUN_WASM_OUTPUT = (REAL / "crun_version_debian13.stdout").read_text()


def _fixture_cases() -> list[Any]:
    cases = []
    for path in sorted(FIXTURES.glob("*/*.json")):
        cases.append(pytest.param(path, id=f"{path.parent.name}/{path.stem}"))
    return cases


def _as_json(value: object) -> Any:
    # Fixtures are JSON, so tuples come back as lists: compare in that form.
    return json.loads(json.dumps(value))


@pytest.mark.parametrize("fixture", _fixture_cases())
def test_parser_fixture(fixture: Path) -> None:
    doc = json.loads(fixture.read_text(encoding="utf-8"))
    parser = PARSERS[fixture.parent.name]
    assert _as_json(parser(doc["output"])) == doc["expected"]


def test_every_parser_has_fixtures() -> None:
    dirs = {p.name for p in FIXTURES.iterdir() if p.is_dir()}
    assert dirs == set(PARSERS)
    for name in PARSERS:
        cases = {p.stem for p in (FIXTURES / name).glob("*.json")}
        assert "empty" in cases
        assert "garbage" in cases


@pytest.mark.parametrize("fixture", _fixture_cases())
def test_every_fixture_says_where_it_came_from(fixture: Path) -> None:
    """A real program's output names its recording (components.md, tests/fixtures/real/, a
    host's file); anything else says it was constructed, and why."""
    source = json.loads(fixture.read_text(encoding="utf-8")).get("source")
    assert isinstance(source, str), f"{fixture} has no source"
    real = ("components.md", "tests/fixtures/real/", "/etc/os-release")
    assert source.startswith(("constructed: ", *real)) or any(r in source for r in real)
    if fixture.stem.startswith("real_"):
        assert source.startswith("tests/fixtures/real/")
        recording = source.split(":", 1)[0]
        doc = json.loads(fixture.read_text(encoding="utf-8"))
        assert (REAL.parents[2] / recording).read_text() == doc["output"]


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("libwasmedgePluginWasiNN.so", "wasi_nn"),
        ("libwasmedgePluginWasiCrypto.so", "wasi_crypto"),
        ("libwasmedgePluginWasiLogging.so", "wasi_logging"),
        ("libwasmedgePluginWasmEdgeImage.so", "wasmedge_image"),
        ("libwasmedgePluginWasmEdgeTensorflow.so", "wasmedge_tensorflow"),
        ("libwasmedgePluginWasmEdgeTensorflowLite.so", "wasmedge_tensorflowlite"),
        ("libwasmedgePluginWasmBpf.so", "wasm_bpf"),
        ("libwasmedgePluginWasmEdgeRustls.so", "wasmedge_rustls"),
        ("/usr/local/lib/wasmedge/libwasmedgePluginWasiNN.so", "wasi_nn"),
        ("libwasmedgePluginSomethingNew.so", "libwasmedgePluginSomethingNew"),
        ("libfoo.so", "libfoo"),
    ],
)
def test_plugin_name_for_file(filename: str, expected: str) -> None:
    assert plugin_name_for_file(filename) == expected


@pytest.mark.parametrize(
    ("machine", "expected"),
    [
        ("x86_64", "amd64"),
        ("amd64", "amd64"),
        ("aarch64", "arm64"),
        ("arm64", "arm64"),
        ("armv8l", "armv7"),
        ("armv7l", "armv7"),
        ("armv7", "armv7"),
        ("armhf", "armv7"),
        ("armv7hl", "armv7"),
        ("riscv64", "riscv64"),
        ("s390x", "s390x"),
    ],
)
def test_normalise_arch(machine: str, expected: str) -> None:
    assert normalise_arch(machine) == expected


# --- stand-in executables ------------------------------------------------------------------------


def _script(path: Path, body: str, counter: Path | None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    count = f"echo run >> {shlex.quote(str(counter))}\n" if counter else ""
    path.write_text(f"#!/bin/sh\n{count}{body}", encoding="utf-8")
    path.chmod(0o755)
    return path


def _print_exactly(text: str) -> str:
    return f"cat <<'AGENTD_EOF'\n{text}AGENTD_EOF\n"


def fake_k3s(root: Path, where: str = "/usr/local/bin", counter: Path | None = None) -> Path:
    """Stands in for k3s v1.32.0+k3s1: prints exactly what its `k3s --version` prints."""
    return _script(root / where.lstrip("/") / "k3s", _print_exactly(K3S_OUTPUT), counter)


def fake_crun(
    root: Path,
    where: str = "/usr/bin",
    output: str = CRUN_DEBIAN12_OUTPUT,
    counter: Path | None = None,
) -> Path:
    """Stands in for crun: by default Debian 12's crun 1.8.1 (no Wasm), printing its exact
    `crun --version`; with `output=CRUN_WASM_OUTPUT` Debian 13's crun 1.21, built with WasmEdge."""
    return _script(root / where.lstrip("/") / "crun", _print_exactly(output), counter)


def fake_wasmedge(
    root: Path,
    version: str = "0.14.1",
    plugins: Sequence[tuple[str, str]] = (),
    counter: Path | None = None,
) -> Path:
    """Stands in for WasmEdge's `wasmedge` CLI (0.14+): like the real one it prints argv[0]
    (here the full path it was run by), ` version <v>`, then one line per loaded plugin
    (`plugins` holds (file path, plugin name) pairs)."""
    lines = [f"printf '%s version {version}\\n' \"$0\"\n"]
    for file, name in plugins:
        lines.append(_print_exactly(f'{file} (plugin "{name}") version 0.1.0.0\n'))
    return _script(root / "usr/local/bin/wasmedge", "".join(lines), counter)


def fake_broken(root: Path, where: str, stdout: str, stderr: str = "", exit_code: int = 0) -> Path:
    """Stands in for a component binary that is damaged or is not what its name says: it prints
    `stdout` and `stderr` and exits with `exit_code` (what a truncated download, a binary for
    another libc, or an unrelated program would do)."""
    body = _print_exactly(stdout) if stdout else ""
    if stderr:
        body += f"echo {shlex.quote(stderr)} >&2\n"
    body += f"exit {exit_code}\n"
    return _script(root / where.lstrip("/"), body, None)


def _runs(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


def _plugin(root: Path, filename: str) -> Path:
    path = root / "usr/local/lib/wasmedge" / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x7fELF stand-in plugin library")
    return path


# --- detect_components ---------------------------------------------------------------------------


def test_nothing_installed(tmp_path: Path) -> None:
    found = detect_components(Paths(tmp_path), {}, VersionCache())
    assert found == {"k3s": NOT_INSTALLED, "crun": NOT_INSTALLED, "wasmedge": NOT_INSTALLED}
    assert found["crun"].to_json() == {"installed": False}


def test_distribution_crun_found_in_usr_bin(tmp_path: Path) -> None:
    fake_crun(tmp_path, "/usr/bin")
    crun = detect_components(Paths(tmp_path), {}, VersionCache())["crun"]
    assert crun.installed
    assert crun.version == "1.8.1"
    assert crun.path == "/usr/bin/crun"
    assert not crun.managed
    assert crun.commit == "f8a096be060b22ccd3d5f3ebe44108517fbf6c30"
    assert crun.features == ("SYSTEMD", "SELINUX", "APPARMOR", "CAP", "SECCOMP", "EBPF", "YAJL")
    assert crun.wasm_handlers == ()
    assert crun.error is None


def test_usr_local_bin_preferred_over_usr_bin(tmp_path: Path) -> None:
    fake_crun(tmp_path, "/usr/bin")
    fake_crun(tmp_path, "/usr/local/bin", output=CRUN_WASM_OUTPUT)
    fake_k3s(tmp_path)
    found = detect_components(Paths(tmp_path), {}, VersionCache())
    crun = found["crun"]
    assert crun.path == "/usr/local/bin/crun"
    assert crun.managed
    assert crun.version == "1.21"
    assert crun.wasm_handlers == ("wasmedge",)
    assert found["k3s"].version == "v1.32.0+k3s1"
    assert found["k3s"].commit == "cca8faca"
    assert found["k3s"].path == "/usr/local/bin/k3s"


@pytest.mark.parametrize(
    ("name", "behaviour", "expected_error"),
    [
        pytest.param(
            "crun",
            ("crun version\n", "", 0),
            "`{binary} --version` exited 0: 'crun version'",
            id="crun-without-number",
        ),
        pytest.param(
            "k3s",
            ("k3s version v1.32.0 (cca8faca)\n", "", 0),
            "exited 0: 'k3s version v1.32.0 (cca8faca)'",
            id="k3s-without-k3s-suffix",
        ),
        pytest.param(
            "k3s",
            ("", "k3s: error while loading shared libraries", 127),
            "exited 127: 'k3s: error while loading shared libraries'",
            id="k3s-fails",
        ),
        pytest.param("wasmedge", ("", "", 0), "exited 0: no output", id="wasmedge-silent"),
    ],
)
def test_unparseable_output_is_an_error(
    tmp_path: Path, name: str, behaviour: tuple[str, str, int], expected_error: str
) -> None:
    stdout, stderr, exit_code = behaviour
    binary = fake_broken(tmp_path, f"/usr/local/bin/{name}", stdout, stderr, exit_code)
    fact = detect_components(Paths(tmp_path), {}, VersionCache())[name]
    assert fact.installed
    assert fact.version is None
    assert fact.path == f"/usr/local/bin/{name}"
    assert fact.error is not None
    assert expected_error.format(binary=binary) in fact.error
    assert fact.to_json()["error"] == fact.error


def test_wasmedge_plugins_recorded_and_unrecorded(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    _plugin(tmp_path, "libwasmedgePluginWasiNN.so")
    _plugin(tmp_path, "libwasmedgePluginWasiCrypto.so")
    _plugin(tmp_path, "libwasmedgePluginWasiLogging.so")
    _plugin(tmp_path, "libcustom.so")
    _plugin(tmp_path, "README.md")
    (paths.plugin_dir / "old.so").mkdir()
    (paths.plugin_dir / "nested").mkdir()
    _plugin(tmp_path, "nested/libwasmedgePluginWasmBpf.so")
    fake_wasmedge(
        tmp_path,
        plugins=[
            ("/usr/local/lib/wasmedge/libwasmedgePluginWasiNN.so", "wasi_nn"),
            ("/usr/local/lib/wasmedge/libwasmedgePluginWasiCrypto.so", "wasi_crypto"),
        ],
    )
    recorded = {"wasi_nn-ggml": ["/usr/local/lib/wasmedge/libwasmedgePluginWasiNN.so"]}

    wasmedge = detect_components(paths, recorded, VersionCache())["wasmedge"]

    assert wasmedge.version == "0.14.1"  # argv[0] was the full sandbox path
    assert wasmedge.path == "/usr/local/bin/wasmedge"
    assert wasmedge.managed
    assert wasmedge.plugins == (
        PluginFact("libcustom", "/usr/local/lib/wasmedge/libcustom.so", False, None),
        PluginFact(
            "wasi_crypto",
            "/usr/local/lib/wasmedge/libwasmedgePluginWasiCrypto.so",
            False,
            "0.1.0.0",
        ),
        PluginFact(
            "wasi_logging", "/usr/local/lib/wasmedge/libwasmedgePluginWasiLogging.so", False, None
        ),
        PluginFact(
            "wasi_nn-ggml", "/usr/local/lib/wasmedge/libwasmedgePluginWasiNN.so", True, "0.1.0.0"
        ),
        # WasmEdge walks its plugin directory recursively, so a plugin in a subdirectory is one
        # of its plugins (tests/fixtures/real/wasmedge_version_plugin_nested).
        PluginFact(
            "wasm_bpf", "/usr/local/lib/wasmedge/nested/libwasmedgePluginWasmBpf.so", False, None
        ),
    )
    assert wasmedge.to_json()["plugins"][3] == {
        "name": "wasi_nn-ggml",
        "path": "/usr/local/lib/wasmedge/libwasmedgePluginWasiNN.so",
        "managed": True,
        "version": "0.1.0.0",
    }


def test_no_plugins_without_wasmedge(tmp_path: Path) -> None:
    _plugin(tmp_path, "libwasmedgePluginWasiNN.so")
    found = detect_components(Paths(tmp_path), {}, VersionCache())
    assert found["wasmedge"] == NOT_INSTALLED


# --- the version cache ---------------------------------------------------------------------------


def _detect_run(paths: Paths) -> tuple[dict[str, Any], VersionCache]:
    """One agent run's detection: the cache loaded from disk, used, and saved."""
    cache = VersionCache.load(paths.facts_cache_file)
    found = detect_components(paths, {}, cache)
    cache.save(paths.facts_cache_file)
    return {name: fact.to_json() for name, fact in found.items()}, cache


def test_cache_does_not_rerun_unchanged_binary(tmp_path: Path) -> None:
    paths = Paths(tmp_path / "root")
    counter = tmp_path / "crun-runs"
    fake_crun(paths.root, counter=counter)

    first, cache1 = _detect_run(paths)
    assert _runs(counter) == 1
    assert cache1.runs == 1
    stored = paths.facts_cache_file.stat()

    second, cache2 = _detect_run(paths)
    assert _runs(counter) == 1
    assert cache2.runs == 0
    assert second == first
    # Nothing changed, so the cache file was not rewritten either.
    after = paths.facts_cache_file.stat()
    assert (after.st_ino, after.st_mtime_ns) == (stored.st_ino, stored.st_mtime_ns)


def test_cache_reruns_changed_binary(tmp_path: Path) -> None:
    paths = Paths(tmp_path / "root")
    counter = tmp_path / "crun-runs"
    fake_crun(paths.root, counter=counter)
    first, _ = _detect_run(paths)
    assert first["crun"]["version"] == "1.8.1"

    fake_crun(paths.root, output=CRUN_WASM_OUTPUT, counter=counter)
    second, _ = _detect_run(paths)
    assert _runs(counter) == 2
    assert second["crun"]["version"] == "1.21"
    assert "WASM:wasmedge" in second["crun"]["features"]

    _detect_run(paths)
    assert _runs(counter) == 2


def test_cache_reruns_wasmedge_when_plugins_change(tmp_path: Path) -> None:
    paths = Paths(tmp_path / "root")
    counter = tmp_path / "wasmedge-runs"
    fake_wasmedge(paths.root, counter=counter)
    _detect_run(paths)
    _detect_run(paths)
    assert _runs(counter) == 1

    # The plugin lines of `wasmedge --version` depend on the plugin dir, not on the binary.
    _plugin(paths.root, "libwasmedgePluginWasiNN.so")
    found, _ = _detect_run(paths)
    assert _runs(counter) == 2
    assert [p["name"] for p in found["wasmedge"]["plugins"]] == ["wasi_nn"]


def test_cache_never_stores_a_failed_command(tmp_path: Path) -> None:
    paths = Paths(tmp_path / "root")
    counter = tmp_path / "k3s-runs"
    _script(paths.root / "usr/local/bin/k3s", "echo 'killed' >&2\nexit 137\n", counter)
    first, _ = _detect_run(paths)
    second, _ = _detect_run(paths)
    assert _runs(counter) == 2
    assert "exited 137: 'killed'" in first["k3s"]["error"]
    assert second == first
    assert not paths.facts_cache_file.exists()


def test_cache_read_and_write_errors_are_ignored(tmp_path: Path) -> None:
    paths = Paths(tmp_path / "root")
    counter = tmp_path / "crun-runs"
    fake_crun(paths.root, counter=counter)
    paths.facts_cache_file.parent.mkdir(parents=True)
    paths.facts_cache_file.write_text("{not json")
    found, _ = _detect_run(paths)
    assert found["crun"]["version"] == "1.8.1"
    assert json.loads(paths.facts_cache_file.read_text())["format"] == 1

    # A state dir that cannot hold the cache: detection still works, every time.
    blocked = Paths(tmp_path / "blocked")
    fake_crun(blocked.root, counter=counter)
    blocked.state_dir.parent.mkdir(parents=True)
    blocked.state_dir.write_text("a file where the state dir should be")
    found, _ = _detect_run(blocked)
    assert found["crun"]["version"] == "1.8.1"


# --- detect_host and detect ----------------------------------------------------------------------


def test_detect_host_in_sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = Paths(tmp_path / "root" / "not-yet-created")
    paths.os_release.parent.mkdir(parents=True)
    paths.os_release.write_text('NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.19.1\n')
    monkeypatch.setenv("AGENTD_ARCH", "aarch64")

    host = detect_host(paths)

    assert host.arch == "arm64"
    assert host.os == "alpine 3.19.1"
    assert host.kernel == os.uname().release
    assert host.cpus >= 1
    assert host.memory_bytes > 0
    assert host.disk_free_bytes > 0
    assert host.cgroup_v2 == Path("/sys/fs/cgroup/cgroup.controllers").exists()


def test_detect_host_falls_back_to_real_os_release(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AGENTD_ARCH", raising=False)
    host = detect_host(Paths(tmp_path))
    assert host.arch == normalise_arch(os.uname().machine)
    real = Path("/etc/os-release")
    if real.exists():
        assert host.os == parse_os_release(real.read_text())


def test_detect_end_to_end(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    counter = tmp_path / "crun-runs"
    fake_crun(tmp_path, counter=counter)
    fake_wasmedge(tmp_path)
    _plugin(tmp_path, "libwasmedgePluginWasiNN.so")

    facts = detect(paths, {"wasi_nn-ggml": ["/usr/local/lib/wasmedge/libwasmedgePluginWasiNN.so"]})
    again = detect(paths)

    doc = json.loads(json.dumps(facts.to_json()))
    assert doc["components"]["k3s"] == {"installed": False}
    assert doc["components"]["crun"]["path"] == "/usr/bin/crun"
    assert doc["components"]["wasmedge"]["plugins"][0]["name"] == "wasi_nn-ggml"
    assert again.component("crun") == facts.component("crun")
    assert _runs(counter) == 1


# --- the real distribution crun ------------------------------------------------------------------


def _packaged_upstream_version(package: str) -> str | None:
    """The upstream part of the installed package's version (dpkg, else rpm)."""
    dpkg = run_command(["dpkg-query", "-W", "-f=${Version}", package])
    if dpkg.ok and dpkg.stdout.strip():
        version = dpkg.stdout.strip().split(":", 1)[-1]  # drop the epoch
        return version.rsplit("-", 1)[0] if "-" in version else version  # and the revision
    rpm = run_command(["rpm", "-q", "--qf", "%{VERSION}", package])
    if rpm.ok and re.fullmatch(r"[0-9][0-9A-Za-z.~+]*", rpm.stdout.strip()):
        return rpm.stdout.strip()
    return None


@pytest.mark.realcrun
@pytest.mark.skipif(not Path("/usr/bin/crun").exists(), reason="no distribution crun")
def test_real_distribution_crun(tmp_path: Path) -> None:
    expected = _packaged_upstream_version("crun")
    assert expected, "/usr/bin/crun exists but no package manager says which crun it is"

    (tmp_path / "usr/bin").mkdir(parents=True)
    shutil.copy2("/usr/bin/crun", tmp_path / "usr/bin/crun")
    crun = detect_components(Paths(tmp_path), {}, VersionCache())["crun"]

    assert crun.error is None
    assert crun.path == "/usr/bin/crun"
    assert not crun.managed
    assert crun.version == expected
    assert crun.features
    assert not any(f.startswith("WASM:") for f in crun.features)

    # On the real root it is found too, unless a crun in /usr/local or /usr/sbin comes first.
    on_root = detect_components(Paths(Path("/")), {}, VersionCache())["crun"]
    if on_root.path == "/usr/bin/crun":
        assert on_root.version == expected


def test_a_32_bit_userland_on_a_64_bit_kernel_is_armv7(monkeypatch: pytest.MonkeyPatch) -> None:
    """Raspberry Pi OS 32-bit on a Pi 4: uname says aarch64, the userland is armhf."""
    from agentd.core.arch import host_arch

    monkeypatch.delenv("AGENTD_ARCH", raising=False)
    assert host_arch("aarch64", pointer_bytes=4) == "armv7"
    assert host_arch("aarch64", pointer_bytes=8) == "arm64"
    assert host_arch("x86_64", pointer_bytes=8) == "amd64"
    assert host_arch("armv7l", pointer_bytes=4) == "armv7"
    monkeypatch.setenv("AGENTD_ARCH", "arm64")
    assert host_arch("aarch64", pointer_bytes=4) == "arm64"


def test_cache_reruns_wasmedge_when_the_loader_cache_changes(tmp_path: Path) -> None:
    # Without /etc/ld.so.cache the loader no longer searches /usr/local/lib, where agentd puts
    # libwasmedge (tests/fixtures/real/crun_run_wasm_lib_in_usr_local_no_cache): a version read
    # with the cache in place must not outlive it.
    paths = Paths(tmp_path / "root")
    counter = tmp_path / "wasmedge-runs"
    fake_wasmedge(paths.root, counter=counter)
    cache = paths.under("/etc/ld.so.cache")
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"glibc-ld.so.cache1.1")
    _detect_run(paths)
    _detect_run(paths)
    assert _runs(counter) == 1
    cache.unlink()
    _detect_run(paths)
    _detect_run(paths)
    assert _runs(counter) == 2  # once for the change, then cached again
    cache.write_bytes(b"glibc-ld.so.cache1.1 rewritten by ldconfig")
    _detect_run(paths)
    assert _runs(counter) == 3
