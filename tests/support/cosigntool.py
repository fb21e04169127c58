"""The real cosign 2.5 (Debian 13's package, which runs on Debian 12), cached under build/."""

from __future__ import annotations

import fcntl
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / "build" / "cosign"
_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
SOURCES_LINE = (
    "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
    "http://deb.debian.org/debian trixie main"
)


def _apt_options(d: Path) -> list[str]:
    """An apt configuration of its own (test-hosts.md): the machine's apt state is untouched."""
    return [
        f"-oDir::Etc::SourceList={d / 'sources.list'}",
        "-oDir::Etc::SourceParts=/dev/null",
        f"-oDir::State::Lists={d / 'lists'}",
        f"-oDir::Cache={d / 'cache'}",
        "-oDir::State::status=/dev/null",
        f"-oAPT::Architecture={_ARCH}",
    ]


def _fetch(into: Path) -> Optional[str]:
    """Download and unpack the package into `into`; None, or why it could not be done."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        return "apt-get and dpkg-deb are needed to fetch Debian 13's cosign"
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        d = Path(tmp)
        (d / "lists" / "partial").mkdir(parents=True)
        (d / "cache" / "archives" / "partial").mkdir(parents=True)
        (d / "sources.list").write_text(SOURCES_LINE + "\n")
        options = _apt_options(d)
        for argv in (
            ["apt-get", *options, "-q", "update"],
            ["apt-get", *options, "download", "cosign"],
        ):
            done = subprocess.run(
                argv, check=False, cwd=d, capture_output=True, text=True, timeout=600
            )
            if done.returncode != 0:
                tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:]
                return f"{' '.join(argv[:1] + argv[-1:])} failed: {' '.join(tail)}"
        debs = sorted(d.glob("cosign_*.deb"))
        if not debs:
            return "apt-get download cosign left no .deb"
        root = d / "root"
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(root)], check=True, timeout=120)
        os.replace(root, into)
    return None


def cosign_binary() -> tuple[Optional[Path], str]:
    """The cosign program (downloaded once, then kept in build/cosign), or None and why not."""
    CACHE.mkdir(parents=True, exist_ok=True)
    unpacked = CACHE / f"trixie-{_ARCH}"
    binary = unpacked / "usr" / "bin" / "cosign"
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test processes fetch it once
        if not binary.is_file():
            why = _fetch(unpacked)
            if why is not None:
                return None, why
    return binary, ""


def run_cosign(binary: Path, *args: str, cwd: Path, password: str = "test") -> str:
    """One cosign command, offline: the key's password in the environment, never in argv."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(cwd),
        "COSIGN_PASSWORD": password,
        "COSIGN_YES": "true",
        "SIGSTORE_NO_CACHE": "true",
    }
    done = subprocess.run(
        [str(binary), *args],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise AssertionError(f"cosign {args[0]} failed: {done.stderr.strip()[-500:]}")
    return done.stdout
