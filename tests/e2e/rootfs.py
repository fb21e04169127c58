"""Debian root file systems made with debootstrap, cached as tarballs keyed by their recipe."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.hosts import QEMU, HostSpec

MIRROR = "http://deb.debian.org/debian"
VARIANT = "minbase"
# Bump to throw every cached tree away (a change in how trees are made or packed).
RECIPE_VERSION = 1
BINFMT = Path("/proc/sys/fs/binfmt_misc")


class RootfsError(Exception):
    """A root file system could not be made or unpacked; the message says why."""


@dataclass(frozen=True)
class Rootfs:
    path: Path
    cache_file: Path
    cached: bool  # unpacked from the cache (else debootstrapped now)
    seconds: float  # debootstrap + packing, or unpacking
    debootstrap_seconds: float | None = None


def recipe(spec: HostSpec) -> dict[str, object]:
    return {
        "suite": spec.suite,
        "arch": spec.arch,
        "variant": VARIANT,
        "include": sorted(spec.includes),
        "mirror": MIRROR,
        "recipe": RECIPE_VERSION,
    }


def cache_name(spec: HostSpec) -> str:
    """`bookworm-amd64-<10 hex of the recipe>.tar.zst`: another include list is another tree."""
    digest = hashlib.sha256(json.dumps(recipe(spec), sort_keys=True).encode()).hexdigest()
    return f"{spec.suite}-{spec.arch}-{digest[:10]}.tar.zst"


def _run(argv: list[str], log: Path, what: str) -> None:
    with log.open("ab") as out:
        out.write(f"$ {' '.join(argv)}\n".encode())
        out.flush()
        result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise RootfsError(f"{what} failed (exit {result.returncode}), {log}:\n" + "\n".join(tail))


def ensure_binfmt(arch: str, log: Path) -> None:
    """An emulated architecture needs qemu-user-static registered with binfmt_misc (with the
    F flag, so the interpreter works inside the chroot and the container)."""
    emulator = QEMU.get(arch)
    if emulator is None:
        raise RootfsError(f"no emulator known for {arch}")
    entry = BINFMT / emulator
    if not (BINFMT / "register").exists():
        _run(
            ["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)],
            log,
            "mounting binfmt_misc",
        )
    if not entry.exists():
        if shutil.which("update-binfmts") is None:
            raise RootfsError(
                f"{arch} needs qemu-user emulation: apt-get install qemu-user-static binfmt-support"
            )
        _run(["update-binfmts", "--enable", emulator], log, f"update-binfmts --enable {emulator}")
    if not entry.exists() or "enabled" not in entry.read_text():
        raise RootfsError(f"{entry} is not enabled: apt-get install qemu-user-static")


def _tar_flags() -> list[str]:
    return ["--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls"]


def unpack(cache_file: Path, target: Path, log: Path) -> None:
    """A cached tree into `target` (owners, modes and xattrs as packed)."""
    _run(
        ["tar", "-C", str(target), *_tar_flags(), "-I", "zstd", "-xpf", str(cache_file)],
        log,
        f"unpacking {cache_file}",
    )


def pack(target: Path, cache_file: Path, log: Path) -> None:
    """`target` into the cache, packed beside and renamed: an interrupted run never leaves half
    a tarball there."""
    partial = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.tmp")
    try:
        _run(
            [
                "tar",
                "-C",
                str(target),
                *_tar_flags(),
                "-I",
                "zstd -T0 -3",
                "-cf",
                str(partial),
                ".",
            ],
            log,
            f"packing {cache_file}",
        )
        partial.replace(cache_file)
    finally:
        partial.unlink(missing_ok=True)


def prepare(spec: HostSpec, cache_dir: Path, target: Path, log: Path, refresh: bool) -> Rootfs:
    """A fresh tree for `spec` at `target`: unpacked from the cache, or debootstrapped (and
    then packed into the cache for the next run)."""
    for tool in ("debootstrap", "zstd", "tar"):
        if shutil.which(tool) is None:
            raise RootfsError(f"{tool} not found: apt-get install debootstrap zstd")
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache_file = cache_dir / cache_name(spec)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    if spec.foreign:
        ensure_binfmt(spec.arch, log)
    start = time.monotonic()
    if cache_file.exists() and not refresh:
        unpack(cache_file, target, log)
        return Rootfs(target, cache_file, True, time.monotonic() - start)
    argv = [
        "debootstrap",
        f"--arch={spec.arch}",
        f"--variant={VARIANT}",
        f"--include={','.join(spec.includes)}",
        spec.suite,
        str(target),
        MIRROR,
    ]
    _run(argv, log, f"debootstrap {spec.suite} {spec.arch}")
    debootstrapped = time.monotonic() - start
    pack(target, cache_file, log)
    return Rootfs(target, cache_file, False, time.monotonic() - start, debootstrapped)
