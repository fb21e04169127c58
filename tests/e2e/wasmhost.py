"""A Debian 13 root with the real Wasm stack (WasmEdge, crun, containerd), run in a chroot."""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional

from tests.e2e import rootfs
from tests.e2e.container import NODE_ENV
from tests.e2e.hosts import HOSTS

REPO = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO / "build" / "e2e-cache"
WORK_DIR = REPO / "build" / "e2e-wasm"
PLUGIN_SOURCE = Path(__file__).resolve().parent / "wasmplugin"

# Debian 13's real Wasm stack (test-hosts.md, "A real Wasm host"), agentd's dependencies as
# Debian packages, and a C toolchain for tests/e2e/wasmplugin. debootstrap resolves their
# dependencies itself; the list is part of the cache key (rootfs.cache_name).
WASM_STACK = ("wasmedge", "libwasmedge0", "libwasmedge-dev", "crun", "containerd")
AGENTD_DEPENDENCIES = (
    "python3",
    "python3-yaml",
    "python3-pydantic",
    "python3-structlog",
    "python3-requests",
    "python3-psutil",
    "python3-watchdog",
)
TOOLCHAIN = ("gcc", "make", "libc6-dev")
# The kubelet's stand-in (tests/e2e/cri_client.py): the CRI's api.proto and Python's gRPC.
CRI_CLIENT = ("golang-github-kubernetes-cri-api-dev", "python3-grpcio", "python3-grpc-tools")
PACKAGES = (*WASM_STACK, *AGENTD_DEPENDENCIES, *TOOLCHAIN, *CRI_CLIENT)

# The tree under the stack: the e2e run's own Debian 13 host (hosts.HOSTS), so both share one
# debootstrapped tarball in the cache. debootstrap cannot install PACKAGES itself (its resolver
# does not follow libwasmedge0's virtual dependency libspdlog1.15-fmt10): apt-get does, inside.
BASE = HOSTS["trixie-amd64"]
# Bump to throw the cached Wasm trees away (a change in how they are made).
RECIPE_VERSION = 1

# Where Debian's WasmEdge (library in the multiarch directory) looks for plugins by itself.
DEBIAN_PLUGIN_DIR = "/usr/lib/x86_64-linux-gnu/wasmedge"


class WasmHostError(Exception):
    """The tree could not be made, or a command in it could not be started."""


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path` in this process's mount namespace."""
    base = str(path.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        # id parent major:minor root mount-point ...; spaces in paths are octal escapes.
        point = line.split()[4].replace("\\040", " ")
        if point == base or point.startswith(base + "/"):
            found.append(point)
    return found


def remove(tree: Path) -> None:
    """rm -rf `tree`, refused while anything is mounted in it."""
    left = mounts_under(tree)
    if left:
        raise WasmHostError(f"not removing {tree}: still mounted: {', '.join(left)}")
    if tree.exists():
        shutil.rmtree(tree)


def recipe() -> dict[str, object]:
    return {"base": rootfs.recipe(BASE), "packages": sorted(PACKAGES), "recipe": RECIPE_VERSION}


def cache_name() -> str:
    """`trixie-amd64-wasm-<10 hex of the recipe>.tar.zst`, beside the base tree's tarball."""
    digest = hashlib.sha256(json.dumps(recipe(), sort_keys=True).encode()).hexdigest()
    return f"{BASE.suite}-{BASE.arch}-wasm-{digest[:10]}.tar.zst"


def prepare(
    target: Path,
    log: Path,
    *,
    cache_dir: Path = CACHE_DIR,
    refresh: bool = False,
) -> rootfs.Rootfs:
    """A fresh Wasm host tree at `target`: unpacked from build/e2e-cache/, or made (the base
    host by rootfs.prepare, itself cached, then PACKAGES by apt-get inside) and packed into the
    cache for the next run. `debootstrap_seconds` is the base tree's share of a cold make."""
    if target.exists():
        remove(target)  # never with a mount inside
    log.parent.mkdir(parents=True, exist_ok=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache_file = cache_dir / cache_name()
    start = time.monotonic()
    try:
        if cache_file.exists() and not refresh:
            target.mkdir(parents=True)
            rootfs.unpack(cache_file, target, log)
            return rootfs.Rootfs(target, cache_file, True, time.monotonic() - start)
        base = rootfs.prepare(BASE, cache_dir, target, log, refresh)
        _install(target, log)
        rootfs.pack(target, cache_file, log)
    except rootfs.RootfsError as exc:
        raise WasmHostError(str(exc)) from exc
    return rootfs.Rootfs(target, cache_file, False, time.monotonic() - start, base.seconds)


def _install(target: Path, log: Path) -> None:
    """apt-get install PACKAGES in the tree, from the mirror debootstrap wrote into it."""
    resolv = target / "etc" / "resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    shutil.copyfile("/etc/resolv.conf", resolv)
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES],
        ["apt-get", "clean"],
    ):
        result = run(target, argv, env=env, timeout=1200)
        with log.open("a") as handle:
            handle.write(f"$ {shlex.join(argv)}\n{result.stdout}{result.stderr}")
        if result.returncode != 0:
            tail = (result.stdout + result.stderr).splitlines()[-15:]
            raise WasmHostError(
                f"{shlex.join(argv)} failed (exit {result.returncode}):\n" + "\n".join(tail)
            )
    resolv.unlink()


def _setup_script(
    root: Path,
    binds: Sequence[tuple[Path, str, bool]],
    cgroup2: bool,
) -> str:
    """The mounts, in the new private mount namespace, before the chroot."""
    r = shlex.quote(str(root))
    lines = [
        "set -e",
        # crun sets the propagation of / and pivots: / must be a mount point of its own.
        f"mount --bind {r} {r}",
        f"mount -t proc proc {r}/proc",
        f"mount --rbind /dev {r}/dev",
    ]
    if cgroup2:
        # This machine runs cgroup v1/hybrid, which crun refuses: a fresh cgroup2 (with no
        # controllers, so crun needs --cgroup-manager=disabled) at the tree's /sys/fs/cgroup.
        lines += [
            f"mount -t sysfs sysfs {r}/sys",
            f"mount -t cgroup2 cgroup2 {r}/sys/fs/cgroup",
        ]
    for source, inside, writable in binds:
        dest = shlex.quote(f"{root}/{inside.lstrip('/')}")
        kind = "-d" if source.is_dir() else "-f"
        make = f"mkdir -p {dest}" if source.is_dir() else f"touch {dest}"
        lines += [f"[ {kind} {dest} ] || {make}", f"mount --bind {shlex.quote(str(source))} {dest}"]
        if not writable:
            lines.append(f"mount -o remount,bind,ro {dest}")
    return "\n".join(lines) + '\nexec chroot "$0" "$@"\n'


def run(
    root: Path,
    argv: Sequence[str],
    *,
    binds_ro: Sequence[tuple[Path, str]] = (),
    binds: Sequence[tuple[Path, str]] = (),
    env: Optional[Mapping[str, str]] = None,
    cgroup2: bool = False,
    input: Optional[str] = None,
    timeout: float = 300.0,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """argv chrooted into `root` with proc, /dev (and with `cgroup2`, /sys and a cgroup2) and the
    binds mounted, in a private mount namespace of its own (`unshare -m --propagation private`):
    every mount goes away with the command's last process, and none is ever seen here. The
    environment is NODE_ENV plus `env`, nothing of this machine's."""
    all_binds = [(s, i, False) for s, i in binds_ro] + [(s, i, True) for s, i in binds]
    script = _setup_script(root, all_binds, cgroup2)
    environment = [f"{k}={v}" for k, v in {**NODE_ENV, **(env or {})}.items()]
    full = [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        str(root),
        "env",
        "-i",
        *environment,
        *argv,
    ]
    try:
        result = subprocess.run(
            full,
            input=input,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise WasmHostError(f"{shlex.join(argv)} did not finish within {timeout}s") from exc
    left = mounts_under(root)
    if left:  # a mount leaked out of the namespace: stop before anything removes the tree
        raise WasmHostError(f"mounts left under {root}: {', '.join(left)}")
    if check and result.returncode != 0:
        raise WasmHostError(
            f"{shlex.join(argv)} exited {result.returncode} in {root}:\n"
            f"{(result.stdout + result.stderr).strip()[-3000:]}"
        )
    return result


def package_versions(root: Path, names: Sequence[str] = PACKAGES) -> dict[str, str]:
    """The installed Debian version of each package in the tree (dpkg-query)."""
    result = run(
        root,
        ["dpkg-query", "-W", "-f", "${Package}\t${Version}\n", *names],
        check=True,
    )
    versions = {}
    for line in result.stdout.splitlines():
        name, _, version = line.partition("\t")
        versions[name] = version
    return versions


def build_plugins(root: Path, out: Path, log: Path) -> dict[str, Path]:
    """tests/e2e/wasmplugin built inside the tree (against its libwasmedge-dev) into `out`:
    {"good": a plugin WasmEdge loads, "notelf": a file that is not a shared object,
    "nodep": a plugin whose own library is missing, "dep": that library}."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    result = run(
        root,
        ["make", "-C", "/src", "O=/out"],
        binds_ro=[(PLUGIN_SOURCE, "/src")],
        binds=[(out, "/out")],
    )
    with log.open("a") as handle:
        handle.write(f"$ make -C tests/e2e/wasmplugin O={out}\n{result.stdout}{result.stderr}")
    if result.returncode != 0:
        raise WasmHostError(f"building the plugins failed (exit {result.returncode}), see {log}")
    built = {
        "good": out / "good" / "libwasmedgePluginAgentdE2E.so",
        "notelf": out / "notelf" / "libwasmedgePluginNotELF.so",
        "nodep": out / "nodep" / "libwasmedgePluginAgentdNoDep.so",
        "dep": out / "lib" / "libagentde2edep.so",
    }
    missing = [str(p) for p in built.values() if not p.exists()]
    if missing:
        raise WasmHostError(f"make did not produce {', '.join(missing)}")
    return built


def main(args: Optional[Sequence[str]] = None) -> int:
    """`python3 -m tests.e2e.wasmhost [--refresh]`: make the tree, say how long it took, and
    print the versions of the real programs in it."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--refresh", action="store_true", help="debootstrap even when cached")
    parser.add_argument("--target", type=Path, default=WORK_DIR / "root")
    options = parser.parse_args(args)
    log = WORK_DIR / "wasmhost.log"
    start = time.monotonic()
    tree = prepare(options.target, log, refresh=options.refresh)
    how = "cache" if tree.cached else "debootstrap"
    print(f"{tree.path}: {how} in {tree.seconds:.1f} s ({tree.cache_file.name})")
    if tree.debootstrap_seconds is not None:
        print(f"debootstrap alone: {tree.debootstrap_seconds:.1f} s")
    for name, version in package_versions(tree.path, WASM_STACK).items():
        print(f"{name} {version}")
    print(f"total {time.monotonic() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
