"""Builds wasm-edge-agentd's .deb and .rpm packages from pinned wheels (make deb, rpm, lock)."""

from __future__ import annotations

import argparse
import fnmatch
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEPS_FILE = HERE / "deps.json"
LOCK_FILE = HERE / "wheels.lock.json"
PACKAGE = "wasm-edge-agentd"
UNIT = f"{PACKAGE}.service"
LIB = "usr/lib/wasm-edge-agentd"
RELEASE = "1"  # the packaging's own revision: Debian's -1, RPM's Release
DEB_UNIT_DIR = "lib/systemd/system"  # debhelper 13's choice; /lib is /usr/lib where /usr is merged
RPM_UNIT_DIR = "usr/lib/systemd/system"
_TOKEN_RE = re.compile(r"@([A-Z_]+)@")


class BuildError(Exception):
    """A build step failed; the message says which and why."""


# --- the dependency list and the lock -----------------------------------------------------------


def load_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise BuildError(f"{path}: not a JSON object")
    return data


def agentd_version(root: Path = ROOT) -> str:
    """agentd.__version__, read without importing agentd (the build needs none of its deps)."""
    text = (root / "agentd" / "__init__.py").read_text(encoding="utf-8")
    found = re.search(r'^__version__ = "([^"]+)"', text, re.MULTILINE)
    if not found:
        raise BuildError("no __version__ in agentd/__init__.py")
    return found.group(1)


def relations(deps: dict[str, Any], kind: str, fmt: str) -> list[str]:
    """One kind of relation (depends, recommends, suggests) in one format (deb, rpm)."""
    return [entry[fmt] for entry in deps.get(kind, []) if entry.get(fmt)]


def arches(deps: dict[str, Any], fmt: str) -> list[str]:
    return [a[fmt] for a in deps["arches"] if a.get(fmt)]


def wheel_machine(deps: dict[str, Any], fmt: str, arch: str) -> str:
    for entry in deps["arches"]:
        if entry.get(fmt) == arch:
            return str(entry["wheel"])
    raise BuildError(f"{arch} is not a {fmt} architecture of {DEPS_FILE.name}")


def fill(template: str, values: dict[str, str]) -> str:
    """@NAME@ tokens replaced; a token without a value is a mistake in the template."""

    def one(match: re.Match[str]) -> str:
        if match.group(1) not in values:
            raise BuildError(f"no value for @{match.group(1)}@")
        return values[match.group(1)]

    return _TOKEN_RE.sub(one, template)


def deb_description(deps: dict[str, Any]) -> str:
    lines = [f" {line}" if line else " ." for line in deps["description"]]
    return "\n".join([deps["summary"], *lines])


def render_control(deps: dict[str, Any]) -> str:
    template = (HERE / "debian" / "control.in").read_text(encoding="utf-8")
    return fill(
        template,
        {
            "MAINTAINER": deps["maintainer"],
            "SECTION": deps["section"],
            "ARCHES": " ".join(arches(deps, "deb")),
            "DEPENDS": ", ".join(["${misc:Depends}", *relations(deps, "depends", "deb")]),
            "RECOMMENDS": ", ".join(relations(deps, "recommends", "deb")),
            "SUGGESTS": ", ".join(relations(deps, "suggests", "deb")),
            "DESCRIPTION": deb_description(deps),
        },
    )


def render_spec(deps: dict[str, Any], version: str, date: float) -> str:
    template = (HERE / "rpm" / f"{PACKAGE}.spec.in").read_text(encoding="utf-8")

    def tags(tag: str, kind: str) -> str:
        return "\n".join(f"{tag + ':':<16}{rel}" for rel in relations(deps, kind, "rpm"))

    stamp = time.strftime("%a %b %d %Y", time.gmtime(date))
    return fill(
        template,
        {
            "VERSION": version,
            "RELEASE": RELEASE,
            "SUMMARY": deps["summary"],
            "LICENSE": deps["license"]["rpm"],
            "GROUP": deps["rpm_group"],
            "MAINTAINER": deps["maintainer"],
            "ARCHES": " ".join(arches(deps, "rpm")),
            "REQUIRES": tags("Requires", "depends"),
            "RECOMMENDS": tags("Recommends", "recommends"),
            "SUGGESTS": tags("Suggests", "suggests"),
            "DESCRIPTION": "\n".join(deps["description"]),
            "CHANGELOG": f"* {stamp} {deps['maintainer']} - {version}-{RELEASE}\n"
            f"- agentd {version}",
        },
    )


def render_changelog(deps: dict[str, Any], version: str, date: float) -> str:
    stamp = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(date))
    return (
        f"{PACKAGE} ({version}-{RELEASE}) unstable; urgency=medium\n\n"
        f"  * agentd {version}.\n\n"
        f" -- {deps['maintainer']}  {stamp}\n"
    )


def build_date() -> float:
    """SOURCE_DATE_EPOCH, else the last commit's time: the same tree builds the same files."""
    given = os.environ.get("SOURCE_DATE_EPOCH")
    if given:
        return float(given)
    git = shutil.which("git")
    if git:
        result = subprocess.run(
            [git, "-C", str(ROOT), "log", "-1", "--format=%ct"],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode == 0 and result.stdout.strip():
            return float(result.stdout.strip())
    return time.time()


@dataclass(frozen=True)
class WheelSpec:
    """One wheel to fetch: what pip download is asked for, and where it is unpacked."""

    name: str
    version: str
    python: str  # "3.9"
    implementation: str  # cp, or py for a pure wheel
    abi: str  # cp39, or none
    platforms: tuple[str, ...]  # ("manylinux_2_17_x86_64", "manylinux2014_x86_64"), or ("any",)
    target: str  # common, or the cpXY directory
    machine: Optional[str]  # None: every architecture

    def pip_args(self) -> list[str]:
        return [
            "--python-version",
            self.python,
            "--implementation",
            self.implementation,
            "--abi",
            self.abi,
            *(arg for platform in self.platforms for arg in ("--platform", platform)),
            f"{self.name}=={self.version}",
        ]


def python_of(abi: str) -> str:
    return f"{abi[2]}.{abi[3:]}"


def manylinux(lock: dict[str, Any], machine: str) -> tuple[str, ...]:
    """The lock's manylinux tag for a machine, and its legacy alias (PEP 599 wheels are
    often tagged manylinux2014_* only, and pip does not treat the two as one)."""
    tag = lock["manylinux"]
    aliases = {"manylinux_2_17": "manylinux2014", "manylinux_2_12": "manylinux2010"}
    both = [f"{tag}_{machine}"]
    if tag in aliases:
        both.append(f"{aliases[tag]}_{machine}")
    return tuple(both)


def wheel_specs(lock: dict[str, Any], machines: Iterable[str]) -> list[WheelSpec]:
    """Every wheel the lock wants for these architectures: the pure ones once, the compiled
    ones for every ABI of every architecture."""
    first_abi = lock["abis"][0]
    specs: list[WheelSpec] = []
    for pure in lock["pure"]:
        wanted = pure.get("wheel")
        if wanted is None:
            spec = WheelSpec(
                pure["name"],
                pure["version"],
                python_of(first_abi),
                "py",
                "none",
                ("any",),
                "common",
                None,
            )
        else:
            abi = wanted.get("abi", first_abi)
            platforms = manylinux(lock, wanted["machine"])
            spec = WheelSpec(
                pure["name"], pure["version"], python_of(abi), "cp", abi, platforms, "common", None
            )
        specs.append(spec)
    for compiled in lock["compiled"]:
        for machine in machines:
            for abi in lock["abis"]:
                specs.append(
                    WheelSpec(
                        compiled["name"],
                        compiled["version"],
                        python_of(abi),
                        "cp",
                        abi,
                        manylinux(lock, machine),
                        abi,
                        machine,
                    )
                )
    return specs


def locked_file(lock: dict[str, Any], spec: WheelSpec) -> dict[str, Any]:
    for entry in lock["files"]:
        if (
            entry["name"] == spec.name
            and entry["version"] == spec.version
            and entry.get("abi") == (spec.target if spec.target != "common" else None)
            and entry.get("machine") == spec.machine
        ):
            return dict(entry)
    raise BuildError(
        f"{LOCK_FILE.name} has no file for {spec.name} {spec.version} "
        f"({spec.target}, {spec.machine or 'any architecture'}): run `make lock`"
    )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def pip_download(spec: WheelSpec, dest: Path) -> Path:
    """One wheel from the package index, by pip download, never built from a source archive."""
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        argv = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            "--dest",
            tmp,
            *spec.pip_args(),
        ]
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or len(wheels) != 1:
            why = result.stderr.strip().splitlines()[-1:] or ["no wheel"]
            raise BuildError(f"pip download {spec.name}=={spec.version} failed: {why[0]}")
        final = dest / wheels[0].name
        os.replace(wheels[0], final)
        return final


def fetch(lock: dict[str, Any], specs: Sequence[WheelSpec], cache: Path) -> dict[WheelSpec, Path]:
    """The locked wheels, from the cache or downloaded, each checked against its sha256."""
    cache.mkdir(parents=True, exist_ok=True)
    found: dict[WheelSpec, Path] = {}
    for spec in specs:
        entry = locked_file(lock, spec)
        path = cache / entry["file"]
        if not (path.is_file() and sha256_of(path) == entry["sha256"]):
            print(f"pkgbuild: downloading {entry['file']}", file=sys.stderr)
            path = pip_download(spec, cache)
            if path.name != entry["file"]:
                path.unlink()
                raise BuildError(f"pip chose {path.name}, the lock says {entry['file']}")
            digest = sha256_of(path)
            if digest != entry["sha256"]:
                path.unlink()
                raise BuildError(f"{entry['file']}: sha256 {digest}, locked {entry['sha256']}")
        found[spec] = path
    return found


def refresh_lock(deps: dict[str, Any], cache: Path) -> dict[str, Any]:
    """Download every wheel the pins name and record each file and its sha256 (`make lock`)."""
    lock = load_json(LOCK_FILE)
    machines = sorted({a["wheel"] for a in deps["arches"]})
    files = []
    cache.mkdir(parents=True, exist_ok=True)
    for spec in wheel_specs(lock, machines):
        path = pip_download(spec, cache)
        files.append(
            {
                "name": spec.name,
                "version": spec.version,
                "abi": spec.target if spec.target != "common" else None,
                "machine": spec.machine,
                "file": path.name,
                "sha256": sha256_of(path),
            }
        )
        print(f"pkgbuild: locked {path.name}", file=sys.stderr)
    check_closure(lock, cache)
    lock["files"] = files
    return lock


def check_closure(lock: dict[str, Any], cache: Path) -> None:
    """The pins must be exactly what pip resolves for pyproject's dependencies on every
    supported Python: nothing missing, nothing extra."""
    project = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    block = re.search(r"^dependencies = \[(.*?)\]", project, re.MULTILINE | re.DOTALL)
    if not block:
        raise BuildError("no dependencies in pyproject.toml")
    wanted = re.findall(r'"([^"]+)"', block.group(1))
    pins = {p["name"]: p["version"] for p in lock["pure"] + lock["compiled"]}
    for abi in lock["abis"]:
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            report = Path(tmp) / "report.json"
            constraints = Path(tmp) / "constraints.txt"
            constraints.write_text("".join(f"{n}=={v}\n" for n, v in pins.items()), "utf-8")
            argv = [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--dry-run",
                "--disable-pip-version-check",
                "--ignore-installed",
                "--only-binary=:all:",
                "--target",
                str(Path(tmp) / "t"),
                "--report",
                str(report),
                "--python-version",
                python_of(abi),
                "--implementation",
                "cp",
                "--abi",
                abi,
                *(a for p in manylinux(lock, "x86_64") for a in ("--platform", p)),
                "-c",
                str(constraints),
                *wanted,
            ]
            result = subprocess.run(argv, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise BuildError(f"the pins do not resolve for {abi}: {result.stderr.strip()}")
            resolved = {
                _canonical(item["metadata"]["name"]): item["metadata"]["version"]
                for item in json.loads(report.read_text(encoding="utf-8"))["install"]
            }
        if resolved != {_canonical(n): v for n, v in pins.items()}:
            raise BuildError(f"for {abi} pip resolves {resolved}, the lock pins {pins}")


def lock_json(lock: dict[str, Any]) -> str:
    """The lock as JSON with one line per pin and per file, so a version bump is a short diff."""
    parts = []
    for key, value in lock.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            rows = ",\n".join(f"    {json.dumps(item, ensure_ascii=False)}" for item in value)
            parts.append(f"  {json.dumps(key)}: [\n{rows}\n  ]")
        else:
            parts.append(f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# --- the staged file tree -----------------------------------------------------------------------


def shipped_settings(example: str) -> str:
    """/etc/wasm-edge/agentd.yaml as shipped: config/agentd.example.yaml with every setting
    commented out (so a new node runs on the defaults and points at no fleet source), every
    explanation kept; removing one level of "# " from a block restores the example's."""
    out: list[str] = []
    commenting = False
    for line in example.splitlines():
        top_level_key = bool(line) and not line[0].isspace() and not line.startswith("#")
        if top_level_key:
            commenting = line.split(":", 1)[0] not in ("apiVersion", "kind")
        elif not line.strip() or (line.startswith("#") and not commenting):
            out.append(line)
            continue
        if commenting and (top_level_key or line[0].isspace()):
            out.append(f"# {line}")
        else:
            out.append(line)
    header_end = next(i for i, line in enumerate(out) if not line.startswith("#"))
    note = [
        "#",
        "# As shipped, every setting is commented out: this node runs on the defaults and pulls",
        "# from no fleet source. Uncomment (remove one '# ') and edit what this node needs.",
    ]
    return "\n".join(out[:header_end] + note + out[header_end:]) + "\n"


def _safe_member(name: str) -> bool:
    parts = name.split("/")
    return not name.startswith("/") and ".." not in parts and "\\" not in name


def unpack_wheel(
    wheel: Path, dest: Path, drop: Sequence[str] = (), replace: Optional[dict[str, Path]] = None
) -> None:
    """A wheel's files under dest, as an installer would put them in site-packages; nothing of
    the wheel is run. Patterns in `drop` are left out; `replace` swaps a member's content."""
    replace = replace or {}
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            name = info.filename
            if info.is_dir() or any(fnmatch.fnmatch(name, p) for p in drop):
                continue
            if not _safe_member(name):
                raise BuildError(f"{wheel.name}: unsafe member {name!r}")
            if ".data/" in name.split("/", 1)[0] + "/":
                raise BuildError(f"{wheel.name}: {name} needs an installer's scheme")
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if name in replace:
                shutil.copyfile(replace[name], target)
            else:
                with archive.open(info) as src, target.open("wb") as out:
                    shutil.copyfileobj(src, out)
            target.chmod(0o644)


def stage_bundle(
    lock: dict[str, Any], wheels: dict[WheelSpec, Path], machine: str, out: Path
) -> None:
    """/usr/lib/wasm-edge-agentd: agentd, common/ (pure Python) and cpXY/ (compiled)."""
    lib = out / LIB
    pure_rules = {p["name"]: p for p in lock["pure"]}
    for spec, wheel in sorted(wheels.items(), key=lambda item: item[1].name):
        if spec.machine not in (None, machine):
            continue
        rule = pure_rules.get(spec.name, {}) if spec.target == "common" else {}
        replace = {m: HERE / f for m, f in rule.get("replace", {}).items()}
        unpack_wheel(wheel, lib / spec.target, rule.get("drop", ()), replace)
    for source in sorted((ROOT / "agentd").rglob("*")):
        if source.is_file() and "__pycache__" not in source.parts and source.suffix != ".pyc":
            target = lib / source.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            target.chmod(0o644)
    install(HERE / "bytecompile", lib / "bytecompile", 0o755)
    link_duplicates(lib, lock["abis"])


def link_duplicates(lib: Path, abis: Sequence[str]) -> None:
    """A file of a cpXY directory identical to the oldest ABI's becomes a relative symlink to
    it: pydantic-core's Python part is the same for every ABI (0.9 MB less installed)."""
    base = lib / abis[0]
    for abi in abis[1:]:
        for path in sorted((lib / abi).rglob("*")):
            rel = path.relative_to(lib / abi)
            twin = base / rel
            same = path.is_file() and twin.is_file() and path.stat().st_size > 0
            if same and sha256_of(path) == sha256_of(twin):
                path.unlink()
                path.symlink_to(os.path.relpath(twin, path.parent))


def install(source: Path, target: Path, mode: int = 0o644) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    target.chmod(mode)


def write(target: Path, text: str, mode: int = 0o644) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    target.chmod(mode)


def gzip_to(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    # mtime 0 and no file name: the same man page compresses to the same bytes.
    with (
        source.open("rb") as src,
        target.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=raw, mtime=0) as gz,
    ):
        shutil.copyfileobj(src, gz)
    target.chmod(0o644)


MONITORING_FILES = ("agentd.rules.yml", "agentd.rules.test.yml", "agentd.dashboard.json")

# Shell completion (generated by tools/completions.py), where each shell finds a package's own;
# zsh's directory is Debian's vendor-completions, Fedora's site-functions.
COMPLETIONS = {
    "agentd.bash": {"deb": "usr/share/bash-completion/completions/agentd"},
    "_agentd": {
        "deb": "usr/share/zsh/vendor-completions/_agentd",
        "rpm": "usr/share/zsh/site-functions/_agentd",
    },
    "agentd.fish": {"deb": "usr/share/fish/vendor_completions.d/agentd.fish"},
}


def stage_completions(fmt: str, out: Path) -> None:
    for name, where in COMPLETIONS.items():
        install(HERE / "completions" / name, out / where.get(fmt, where["deb"]))


def stage(fmt: str, arch: str, out: Path, cache: Path, date: float) -> None:
    """The package's files for one format and architecture under `out` (a fresh directory)."""
    deps, lock = load_json(DEPS_FILE), load_json(LOCK_FILE)
    machine = wheel_machine(deps, fmt, arch)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    wheels = fetch(lock, wheel_specs(lock, [machine]), cache)
    stage_bundle(lock, wheels, machine, out)
    install(HERE / "launcher.py", out / "usr/bin/agentd", 0o755)
    example = (ROOT / "config" / "agentd.example.yaml").read_text(encoding="utf-8")
    write(out / "etc/wasm-edge/agentd.yaml", shipped_settings(example))
    (out / "etc/wasm-edge/desired.d").mkdir(parents=True)
    docs = out / "usr/share/doc" / PACKAGE
    for example_file in ("agentd.example.yaml", "desired.example.yaml"):
        install(ROOT / "config" / example_file, docs / "examples" / example_file)
    # Prometheus alerting rules, their promtool tests and a Grafana dashboard (README, Monitoring).
    for name in MONITORING_FILES:
        install(HERE / "monitoring" / name, out / "usr/share" / PACKAGE / "monitoring" / name)

    stage_completions(fmt, out)
    if fmt == "deb":
        # dh_compress compresses the man page; dh_installsystemd installs the unit.
        install(HERE / "agentd.1", out / "usr/share/man/man1/agentd.1")
        install(
            HERE / "debian" / "rtupdate",
            out / f"usr/share/python3/runtime.d/{PACKAGE}.rtupdate",
            0o755,
        )
    else:
        gzip_to(HERE / "agentd.1", out / "usr/share/man/man1/agentd.1.gz")
        install(ROOT / "systemd" / UNIT, out / RPM_UNIT_DIR / UNIT)
        install(
            HERE / "rpm" / "80-wasm-edge-agentd.preset",
            out / "usr/lib/systemd/system-preset/80-wasm-edge-agentd.preset",
        )
        install(HERE / "copyright", out / "usr/share/licenses" / PACKAGE / "copyright")
        install(HERE / "tmpfiles.conf", out / f"usr/lib/tmpfiles.d/{PACKAGE}.conf")
        (out / "var/lib/wasm-edge").mkdir(parents=True)
        (out / "var/lib/wasm-edge").chmod(0o700)
    for path in [out, *out.rglob("*")]:
        os.utime(path, (date, date), follow_symlinks=False)


# --- the packages -------------------------------------------------------------------------------


def tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        package = {"rpmbuild": "rpm", "dpkg-buildpackage": "dpkg-dev", "dh": "debhelper"}
        raise BuildError(f"{name} not found: apt-get install {package.get(name, name)}")
    return found


def run(argv: list[str], cwd: Path, env: Optional[dict[str, str]] = None) -> None:
    log = cwd / "build.log"
    with log.open("w", encoding="utf-8") as out:
        result = subprocess.run(
            argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env, check=False
        )
    if result.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-25:]
        raise BuildError(
            f"{' '.join(argv)} failed (exit {result.returncode}), {log}:\n" + "\n".join(tail)
        )


def build_deb(
    arch: str, build: Path, dist: Path, cache: Path, version: Optional[str] = None
) -> Path:
    deps = load_json(DEPS_FILE)
    version, date = version or agentd_version(), build_date()
    tool("dh")
    work = build / "deb" / arch
    if work.exists():
        shutil.rmtree(work)
    tree = work / f"{PACKAGE}-{version}"
    stage("deb", arch, tree / "stage", cache, date)
    shutil.copytree(
        HERE / "debian", tree / "debian", ignore=shutil.ignore_patterns("*.in", "rtupdate")
    )
    (tree / "debian" / "control").write_text(render_control(deps), encoding="utf-8")
    (tree / "debian" / "changelog").write_text(
        render_changelog(deps, version, date), encoding="utf-8"
    )
    shutil.copyfile(HERE / "copyright", tree / "debian" / "copyright")
    shutil.copyfile(ROOT / "systemd" / UNIT, tree / "debian" / UNIT)
    shutil.copyfile(HERE / "tmpfiles.conf", tree / "debian" / f"{PACKAGE}.tmpfiles")
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(int(date)), "DEB_BUILD_OPTIONS": "nocheck"}
    # -d: the cross build-dependencies (a cross compiler) are not needed: nothing is compiled.
    run(
        [tool("dpkg-buildpackage"), "-b", "-us", "-uc", "-d", f"--host-arch={arch}"],
        tree,
        env,
    )
    built = work / f"{PACKAGE}_{version}-{RELEASE}_{arch}.deb"
    if not built.is_file():
        raise BuildError(f"dpkg-buildpackage made no {built.name}")
    dist.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(built, dist / built.name)
    return dist / built.name


def build_rpm(
    arch: str, build: Path, dist: Path, cache: Path, version: Optional[str] = None
) -> Path:
    deps = load_json(DEPS_FILE)
    version, date = version or agentd_version(), build_date()
    rpmbuild = tool("rpmbuild")
    work = build / "rpm" / arch
    if work.exists():
        shutil.rmtree(work)
    stage_dir = work / "stage"
    stage("rpm", arch, stage_dir, cache, date)
    spec = work / "SPECS" / f"{PACKAGE}.spec"
    spec.parent.mkdir(parents=True)
    spec.write_text(render_spec(deps, version, date), encoding="utf-8")
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(int(date))}
    run(
        [
            rpmbuild,
            "-bb",
            "--target",
            f"{arch}-linux",
            "--define",
            f"_topdir {work}",
            "--define",
            f"stagedir {stage_dir}",
            "--define",
            "use_source_date_epoch_as_buildtime 1",
            "--define",
            "clamp_mtime_to_source_date_epoch 1",
            "--define",
            "_buildhost reproducible",
            str(spec),
        ],
        work,
        env,
    )
    built = work / "RPMS" / arch / f"{PACKAGE}-{version}-{RELEASE}.{arch}.rpm"
    if not built.is_file():
        raise BuildError(f"rpmbuild made no {built.name}")
    dist.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(built, dist / built.name)
    return dist / built.name


def _package_version(text: str) -> str:
    # Upstream version rules both formats accept: no "-" (it separates the release), no "~"/":"
    # (an epoch or a pre-release would sort below agentd's own version in one format only).
    if not re.fullmatch(r"[0-9][0-9A-Za-z.+]*", text):
        raise argparse.ArgumentTypeError(f"not a package version: {text!r} (digits, letters, . +)")
    return text


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="pkgbuild", description=__doc__)
    parser.add_argument("command", choices=("deb", "rpm", "fetch", "lock", "render"))
    parser.add_argument("--arch", action="append", help="only this architecture (repeatable)")
    parser.add_argument("--build", type=Path, default=ROOT / "build")
    parser.add_argument("--dist", type=Path, default=ROOT / "dist")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("WHEEL_CACHE") or ROOT / "build" / "wheels"),
        help="downloaded wheels (env WHEEL_CACHE; default build/wheels)",
    )
    parser.add_argument(
        "--version",
        type=_package_version,
        help="the package's version instead of agentd's (e.g. a higher one to test an upgrade)",
    )
    args = parser.parse_args(argv)
    deps = load_json(DEPS_FILE)
    try:
        if args.command == "lock":
            lock = refresh_lock(deps, args.cache)
            LOCK_FILE.write_text(lock_json(lock), encoding="utf-8")
        elif args.command == "fetch":
            lock = load_json(LOCK_FILE)
            fetch(lock, wheel_specs(lock, sorted({a["wheel"] for a in deps["arches"]})), args.cache)
        elif args.command == "render":
            out = args.build / "render"
            out.mkdir(parents=True, exist_ok=True)
            date = build_date()
            (out / "control").write_text(render_control(deps), encoding="utf-8")
            (out / f"{PACKAGE}.spec").write_text(
                render_spec(deps, agentd_version(), date), encoding="utf-8"
            )
            print(out)
        else:
            build = build_deb if args.command == "deb" else build_rpm
            for arch in args.arch or arches(deps, args.command):
                print(
                    build(
                        arch,
                        args.build.absolute(),
                        args.dist.absolute(),
                        args.cache.absolute(),
                        args.version,
                    )
                )
    except BuildError as exc:
        print(f"pkgbuild: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
