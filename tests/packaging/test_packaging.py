"""The packages' inputs: one dependency list for both formats, the lock, the launcher, the
shipped settings, the unit's sandbox; the staged tree where the wheel cache is warm."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from agentd.core import paths as agentd_paths
from agentd.core.components import MANAGED_CONFIG_PATHS
from agentd.settings.model import DEFAULT_METRICS_PATH, Settings, load_settings, settings_json

ROOT = Path(__file__).resolve().parents[2]
PACKAGING = ROOT / "packaging"
UNIT = ROOT / "systemd" / "wasm-edge-agentd.service"
LAUNCHER = str(PACKAGING / "launcher.py")


def _load(name: str) -> ModuleType:
    # packaging/ is no Python package (and must not shadow PyPI's `packaging`): load by path.
    spec = importlib.util.spec_from_file_location(
        f"agentd_packaging_{name}", PACKAGING / f"{name}.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


pkgbuild = _load("pkgbuild")
launcher = _load("launcher")
certifi_core = _load("certifi_core")
DEPS: dict[str, Any] = pkgbuild.load_json(pkgbuild.DEPS_FILE)
LOCK: dict[str, Any] = pkgbuild.load_json(pkgbuild.LOCK_FILE)


# --- one dependency list, two formats -----------------------------------------------------------


def _control_field(control: str, name: str) -> list[str]:
    found = re.search(rf"^{name}: (.*)$", control, re.MULTILINE)
    assert found, f"no {name} in the control file"
    return [r.strip() for r in found.group(1).split(",") if r.strip()]


def _spec_tags(spec: str, tag: str) -> list[str]:
    return [m.strip() for m in re.findall(rf"^{tag}:\s+(.*)$", spec, re.MULTILINE)]


def _versions(relation: str) -> set[str]:
    return set(re.findall(r"\d+\.\d+", relation))


def test_control_and_spec_render_the_same_dependency_list() -> None:
    control = pkgbuild.render_control(DEPS)
    spec = pkgbuild.render_spec(DEPS, "1.2.3", 0.0)
    assert not re.search(r"@[A-Z_]+@", control + spec)
    assert _control_field(control, "Depends")[0] == "${misc:Depends}"
    kinds = {"depends": ("Depends", "Requires"), "recommends": ("Recommends",) * 2}
    kinds["suggests"] = ("Suggests", "Suggests")
    for kind, (deb_field, rpm_tag) in kinds.items():
        deb = [r for r in _control_field(control, deb_field) if not r.startswith("${")]
        rpm = _spec_tags(spec, rpm_tag)
        entries = DEPS[kind]
        assert deb == [e["deb"] for e in entries if e["deb"]]
        assert rpm == [e["rpm"] for e in entries if e["rpm"]]
        for entry in entries:
            assert entry["why"], f"{entry}: say why"
            if entry["deb"] and entry["rpm"]:
                # The same floor in both formats: python3 3.9, glibc 2.17.
                assert _versions(entry["deb"]) == _versions(entry["rpm"]), entry
    assert _control_field(control, "Architecture")[0].split() == ["amd64", "arm64", "armhf"]
    assert _spec_tags(spec, "ExclusiveArch") == ["x86_64 aarch64"]
    assert _spec_tags(spec, "Version") == ["1.2.3"]
    assert "AutoReqProv:    no" in spec


def test_the_glibc_floor_is_the_manylinux_tags() -> None:
    glibc = re.fullmatch(r"manylinux_(\d+)_(\d+)", LOCK["manylinux"])
    assert glibc
    floor = f"{glibc.group(1)}.{glibc.group(2)}"
    libc = [e for e in DEPS["depends"] if e["deb"].startswith("libc6")]
    assert len(libc) == 1
    assert _versions(libc[0]["deb"]) == {floor}


def test_only_python3_is_a_hard_dependency_beyond_the_c_libraries() -> None:
    names = {e["deb"].split()[0] for e in DEPS["depends"]}
    assert names == {"python3", "libc6", "libgcc-s1"}
    assert "python3-systemd" in {e["deb"] for e in DEPS["recommends"]}
    assert {"git", "gnupg", "openssh-client"} <= {e["deb"] for e in DEPS["recommends"]}


def test_changelog_names_the_package_version() -> None:
    text = pkgbuild.render_changelog(DEPS, "1.2.3", 0.0)
    assert text.startswith("wasm-edge-agentd (1.2.3-1) unstable; urgency=medium\n")
    assert " -- wasm-edge-agentd maintainers <" in text
    assert text.endswith("  Thu, 01 Jan 1970 00:00:00 +0000\n")


# --- the lock -------------------------------------------------------------------------------------


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def test_lock_has_one_checked_file_per_pure_library_and_per_abi_and_arch() -> None:
    machines = sorted({a["wheel"] for a in DEPS["arches"]})
    assert machines == ["aarch64", "armv7l", "x86_64"]
    assert LOCK["abis"] == ["cp39", "cp310", "cp311", "cp312", "cp313"]
    specs = pkgbuild.wheel_specs(LOCK, machines)
    assert len(specs) == len(LOCK["pure"]) + 5 * 3 * len(LOCK["compiled"])
    files = [pkgbuild.locked_file(LOCK, s) for s in specs]
    assert len({f["file"] for f in files}) == len(files) == len(LOCK["files"])
    for spec, entry in zip(specs, files):
        assert re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])
        assert entry["file"].startswith(f"{_canonical(spec.name)}-{spec.version}-")
        if spec.target == "common":
            assert "none-any" in entry["file"] or "wheel" in _pure_rule(spec.name)
        else:
            assert f"-{spec.target}-{spec.target}-" in entry["file"]
            assert f"_{spec.machine}" in entry["file"]


def _pure_rule(name: str) -> dict[str, Any]:
    return next(dict(p) for p in LOCK["pure"] if p["name"] == name)


def test_lock_pins_satisfy_pyproject() -> None:
    requirements = pytest.importorskip("packaging.requirements")
    project = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    block = re.search(r"^dependencies = \[(.*?)\]", project, re.MULTILINE | re.DOTALL)
    assert block
    pins = {_canonical(p["name"]): p["version"] for p in LOCK["pure"] + LOCK["compiled"]}
    for line in re.findall(r'"([^"]+)"', block.group(1)):
        req = requirements.Requirement(line)
        assert req.specifier.contains(pins[_canonical(req.name)]), (line, pins)
    for rule in LOCK["pure"]:
        if set(rule) - {"name", "version"}:
            assert rule["why"], f"{rule['name']}: say why it is taken differently"


# --- the launcher ---------------------------------------------------------------------------------


def test_launcher_puts_agentd_the_abi_and_the_common_dir_first(tmp_path: Path) -> None:
    for name in ("agentd", "common", "cp39", "cp311", "cp313"):
        (tmp_path / name).mkdir()
    lib = str(tmp_path)
    assert launcher.bundle_path(lib, (3, 11, 2)) == [lib, f"{lib}/cp311", f"{lib}/common"]
    assert launcher.bundle_path(lib, (3, 9)) == [lib, f"{lib}/cp39", f"{lib}/common"]
    assert launcher.bundle_path(lib, (3, 12)) is None
    assert launcher.bundled_abis(lib) == ["cp39", "cp311", "cp313"]
    message = launcher.no_abi_message(lib, (3, 12), "/usr/bin/python3")
    assert "/usr/bin/python3 is Python 3.12" in message
    assert "Python 3.9, 3.11, 3.13 only" in message


def test_launcher_is_isolated_python3() -> None:
    first = (PACKAGING / "launcher.py").read_text(encoding="utf-8").splitlines()[0]
    assert first == "#!/usr/bin/python3 -I"
    assert os.access(PACKAGING / "launcher.py", os.X_OK)


def _fake_lib(tmp_path: Path) -> Path:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "agentd").symlink_to(ROOT / "agentd")
    (lib / "common").mkdir()
    (lib / f"cp{sys.version_info[0]}{sys.version_info[1]}").mkdir()
    return lib


def _run_launcher(lib: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The launcher's main() with another LIB, under `python3 -I` as /usr/bin/agentd runs."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('launcher', {LAUNCHER!r})\n"
        "launcher = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(launcher)\n"
        f"sys.argv = ['agentd', *{list(args)!r}]\n"
        f"code = launcher.main({str(lib)!r})\n"
        "import agentd\n"
        "print(agentd.__file__, sys.path[:3], file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    return subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, cwd=cwd, check=False
    )


def test_launcher_runs_agentd_from_the_bundle_under_python_isolated(tmp_path: Path) -> None:
    lib = _fake_lib(tmp_path)
    result = _run_launcher(lib, "settings", "--json", "--root", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["settings"]["interval"] == 300.0
    where = result.stderr.splitlines()[-1]
    assert where.startswith(f"{lib}/agentd/__init__.py ")
    abi = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    assert f"['{lib}', '{lib}/{abi}', '{lib}/common']" in where


def test_launcher_says_which_pythons_the_package_serves(tmp_path: Path) -> None:
    if sys.version_info[:2] == (3, 9):
        pytest.skip("this Python's ABI is the one the fake package holds")
    lib = tmp_path / "lib"
    (lib / "cp39").mkdir(parents=True)
    result = _run_launcher(lib, "--version", cwd=tmp_path)
    assert result.returncode == 1
    assert "bundles pydantic-core for Python 3.9 only" in result.stderr


# --- the shipped settings -------------------------------------------------------------------------


def test_shipped_settings_are_valid_and_the_defaults(tmp_path: Path) -> None:
    example = (ROOT / "config" / "agentd.example.yaml").read_text(encoding="utf-8")
    shipped = pkgbuild.shipped_settings(example)
    path = tmp_path / "agentd.yaml"
    path.write_text(shipped, encoding="utf-8")
    assert settings_json(load_settings(path)) == settings_json(Settings())
    assert not re.search(r"^source:", shipped, re.MULTILINE)
    assert re.search(r"^# source:", shipped, re.MULTILINE)
    # Every line of the example is kept, as it is or behind one "# ": the explanations stay, and
    # uncommenting a block gives back the example's.
    lines = set(shipped.splitlines())
    for line in example.splitlines():
        assert line in lines or f"# {line}" in lines, line


def test_example_settings_still_validate(tmp_path: Path) -> None:
    # The shipped file is the example commented out: an example that broke would ship broken.
    load_settings(ROOT / "config" / "agentd.example.yaml")


# --- the unit's sandbox ---------------------------------------------------------------------------


def _unit() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_unit_keeps_its_directives() -> None:
    unit = _unit()
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "ExecStart": "/usr/bin/agentd run",
        "ExecReload": "/bin/sh -c 'kill -HUP $MAINPID'",
        "WatchdogSec": "5min",
        "Restart": "always",
        "RestartSec": "10s",
        "TimeoutStartSec": "30min",
        "KillMode": "mixed",
        "TimeoutStopSec": "5min",
        "SyslogIdentifier": "agentd",
        "ConditionPathExists": "!/etc/wasm-edge/disabled",
        "StartLimitIntervalSec": "0",
        "WantedBy": "multi-user.target",
    }
    for key, value in expected.items():
        assert unit.get(key) == [value], key


def _under(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def test_unit_lets_agentd_write_everywhere_it_installs() -> None:
    unit = _unit()
    assert unit["ProtectSystem"] == ["strict"]
    writable = [p.lstrip("-") for p in " ".join(unit["ReadWritePaths"]).split()]
    writable += [f"/var/lib/{d}" for d in " ".join(unit["StateDirectory"]).split()]
    read_only = [p.lstrip("-") for p in " ".join(unit.get("ReadOnlyPaths", [])).split()]
    targets = [
        agentd_paths.USR_LOCAL_BIN,
        agentd_paths.USR_LOCAL_LIB,
        agentd_paths.USR_LOCAL_INCLUDE,
        agentd_paths.PLUGIN_DIR,
        *MANAGED_CONFIG_PATHS,
        DEFAULT_METRICS_PATH,
        "/var/lib/wasm-edge/state.json",
    ]
    for target in targets:
        assert _under(target, writable), f"{target} is read-only in the unit"
        assert not _under(target, read_only), target
    # Nothing else: not /etc as a whole (its settings, ld.so.cache: ldconfig runs outside the
    # unit), not /usr/local/sbin or share.
    for kept in (
        "/etc/wasm-edge/agentd.yaml",
        "/etc/ld.so.cache",
        "/etc/passwd",
        "/usr/local/sbin",
    ):
        assert not _under(kept, writable), f"{kept} is writable in the unit"
    # A ReadWritePaths= directory must exist when the unit starts: the package's tmpfiles.d
    # makes every one that a fresh node may lack.
    tmpfiles = (PACKAGING / "tmpfiles.conf").read_text(encoding="utf-8")
    made = {line.split()[1] for line in tmpfiles.splitlines() if line.startswith("d ")}
    for optional in " ".join(unit["ReadWritePaths"]).split():
        if optional.startswith("-"):
            assert optional[1:] in made, optional
    assert "ExecStartPre" not in unit  # it could not run: the sandbox fails to set up first


def test_unit_sandbox_directives() -> None:
    unit = _unit()
    for key, value in {
        "ProtectHome": "tmpfs",
        "BindReadOnlyPaths": "-/root/.ssh",
        "UMask": "0022",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelModules": "yes",
        "StateDirectoryMode": "0700",
    }.items():
        assert unit.get(key) == [value], key
    assert unit["CapabilityBoundingSet"] == [""]  # none at all
    denied = set(unit["SystemCallFilter"][0].lstrip("~").split())
    assert {"@mount", "@module", "@raw-io", "@resources", "@reboot"} <= denied


def _analyze_exposure(unit: Path) -> float:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    if result.returncode != 0 or not found:
        pytest.skip(f"systemd-analyze security --offline unusable here: {result.stderr.strip()}")
    return float(found.group(1))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_unit_exposure_stays_low(tmp_path: Path) -> None:
    unit = tmp_path / UNIT.name
    shutil.copyfile(UNIT, unit)
    assert _analyze_exposure(unit) <= 2.0


# --- certifi: the system's CA store first ---------------------------------------------------------


def test_certifi_prefers_the_system_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = tmp_path / "ca-certificates.crt"
    monkeypatch.setattr(certifi_core, "SYSTEM_BUNDLES", (str(tmp_path / "none"), str(system)))
    assert certifi_core.where() == certifi_core.BUNDLED
    system.write_text("-----BEGIN CERTIFICATE-----\n", encoding="utf-8")
    assert certifi_core.where() == str(system)
    assert certifi_core.contents().startswith("-----BEGIN")


# --- the staged tree (needs the wheels in the cache: `make wheels`) -------------------------------


def _warm_cache(machine: str) -> Path:
    cache = Path(os.environ.get("WHEEL_CACHE") or ROOT / "build" / "wheels")
    for spec in pkgbuild.wheel_specs(LOCK, [machine]):
        entry = pkgbuild.locked_file(LOCK, spec)
        path = cache / entry["file"]
        if not path.is_file() or pkgbuild.sha256_of(path) != entry["sha256"]:
            pytest.skip(f"wheel cache cold ({entry['file']}): run `make wheels`")
    return cache


@pytest.fixture(scope="module")
def staged_deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = _warm_cache("x86_64")
    out = tmp_path_factory.mktemp("stage") / "root"
    pkgbuild.stage("deb", "amd64", out, cache, 0.0)
    return out


def test_staged_tree_layout(staged_deb: Path) -> None:
    lib = staged_deb / pkgbuild.LIB
    assert (staged_deb / "usr/bin/agentd").stat().st_mode & 0o777 == 0o755
    assert (staged_deb / "etc/wasm-edge/desired.d").is_dir()
    assert (lib / "agentd" / "cli" / "main.py").is_file()
    for abi in LOCK["abis"]:
        so = list((lib / abi / "pydantic_core").glob("*.so"))
        assert [p.name for p in so] == [f"_pydantic_core.cpython-{abi[2:]}-x86_64-linux-gnu.so"]
        # pydantic-core's Python part is the oldest ABI's, linked.
        if abi != LOCK["abis"][0]:
            assert (lib / abi / "pydantic_core" / "core_schema.py").is_symlink()
    common = lib / "common"
    for name in ("pydantic", "yaml", "structlog", "requests", "urllib3", "idna", "certifi"):
        assert (common / name / "__init__.py").is_file(), name
    assert (common / "typing_extensions.py").is_file()
    assert not list(common.rglob("*.so")), "common/ is pure Python"
    assert not (common / "_yaml").exists()
    assert not (common / "certifi" / "tests").exists()
    assert "SYSTEM_BUNDLES" in (common / "certifi" / "core.py").read_text(encoding="utf-8")
    assert not list(lib.rglob("__pycache__"))
    assert not (staged_deb / "usr/share/man/man1/agentd.1.gz").exists()  # dh_compress's job
    shipped = (staged_deb / "etc/wasm-edge/agentd.yaml").read_text(encoding="utf-8")
    assert "# source:" in shipped
    monitoring = staged_deb / "usr/share/wasm-edge-agentd/monitoring"
    for name in pkgbuild.MONITORING_FILES:
        assert (monitoring / name).read_bytes() == (PACKAGING / "monitoring" / name).read_bytes()


def test_staged_bundle_runs_on_this_python(staged_deb: Path, tmp_path: Path) -> None:
    """The launcher on the staged amd64 tree: pydantic, its compiled core and every library
    come from the bundle, none from this environment's site-packages."""
    lib = staged_deb / pkgbuild.LIB
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('launcher', {LAUNCHER!r})\n"
        "launcher = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(launcher)\n"
        f"launcher.activate({str(lib)!r})\n"
        "import pydantic, pydantic_core, yaml, structlog, requests, watchdog.observers, certifi\n"
        "import agentd.settings.model\n"
        "for m in (pydantic, pydantic_core, yaml, structlog, requests, certifi, agentd.settings):\n"
        f"    assert m.__file__.startswith({str(lib)!r}), m.__file__\n"
        "print(pydantic.VERSION, yaml.__with_libyaml__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [_pure_rule("pydantic")["version"], "False"]


@pytest.fixture(scope="module")
def staged_armhf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = _warm_cache("armv7l")
    out = tmp_path_factory.mktemp("stage-armhf") / "root"
    pkgbuild.stage("deb", "armhf", out, cache, 0.0)
    return out


def test_staged_armhf_bundle_has_a_32_bit_arm_core_per_abi(staged_armhf: Path) -> None:
    """What the launcher picks on armhf: cpXY's pydantic-core, an ELF for 32-bit ARM, hard
    float. Running it needs an armhf CPython: `make e2e E2E_HOSTS="bookworm-armhf
    bullseye-armhf trixie-armhf"` imports each on Debian 12's, 11's and 13's python3."""
    lib = staged_armhf / pkgbuild.LIB
    for abi in LOCK["abis"]:
        (so,) = (lib / abi / "pydantic_core").glob("*.so")
        assert so.name == f"_pydantic_core.cpython-{abi[2:]}-arm-linux-gnueabihf.so"
        header = so.read_bytes()[:52]
        assert header[:4] == b"\x7fELF"
        assert header[4] == 1, "ELFCLASS32"
        assert int.from_bytes(header[18:20], "little") == 40, "EM_ARM"
        assert int.from_bytes(header[36:40], "little") & 0x400, "EF_ARM_ABI_FLOAT_HARD"
    assert not list((lib / "common").rglob("*.so")), "common/ is pure Python"


def test_lock_file_is_as_pkgbuild_writes_it() -> None:
    assert pkgbuild.lock_json(LOCK) == pkgbuild.LOCK_FILE.read_text(encoding="utf-8")
    json.loads(pkgbuild.lock_json(LOCK))
