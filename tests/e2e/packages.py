"""The packages under test: this checkout built twice, the second with a higher version (the
upgrade), by packaging/pkgbuild.py into build/e2e/ (never over `make deb`'s dist/)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PKGBUILD = REPO / "packaging" / "pkgbuild.py"
UPGRADE_SUFFIX = "+e2e1"


class PackageBuildError(Exception):
    """pkgbuild failed; its own message is in the text."""


@dataclass(frozen=True)
class Built:
    kind: str  # deb or rpm
    arch: str  # the package's architecture name (amd64, x86_64, ...)
    first: Path  # agentd's own version
    upgrade: Path  # the same agentd, packaged with a higher version
    version: str
    upgrade_version: str
    seconds: float


def agentd_version() -> str:
    """agentd.__version__ as pkgbuild reads it (the first package's version)."""
    text = (REPO / "agentd" / "__init__.py").read_text(encoding="utf-8")
    found = re.search(r'^__version__ = "([^"]+)"', text, re.MULTILINE)
    if not found:
        raise PackageBuildError("no __version__ in agentd/__init__.py")
    return found.group(1)


def _pkgbuild(kind: str, arch: str, out: Path, work: Path, log: Path, version: str | None) -> Path:
    if out.exists():
        shutil.rmtree(out)
    argv = [sys.executable, str(PKGBUILD), kind, "--arch", arch, "--build", str(work)]
    argv += ["--dist", str(out)]
    if version is not None:
        argv += ["--version", version]
    with log.open("ab") as fh:
        fh.write(f"$ {' '.join(argv)}\n".encode())
        fh.flush()
        result = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, check=False)
    if result.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-20:]
        raise PackageBuildError(f"pkgbuild {kind} {arch} failed, {log}:\n" + "\n".join(tail))
    found = sorted(out.glob(f"*.{kind}"))
    if len(found) != 1:
        raise PackageBuildError(f"pkgbuild {kind} {arch} left {found} in {out}")
    return found[0]


def build(kind: str, arch: str, directory: Path, log: Path) -> Built:
    """Both versions of one package: `directory`/{first,upgrade}/<the package file>."""
    start = time.monotonic()
    version = agentd_version()
    upgrade_version = version + UPGRADE_SUFFIX
    work = directory / "work" / f"{kind}-{arch}"
    first = _pkgbuild(kind, arch, directory / "first" / f"{kind}-{arch}", work, log, None)
    upgrade = _pkgbuild(
        kind, arch, directory / "upgrade" / f"{kind}-{arch}", work, log, upgrade_version
    )
    shutil.rmtree(work, ignore_errors=True)
    return Built(kind, arch, first, upgrade, version, upgrade_version, time.monotonic() - start)
