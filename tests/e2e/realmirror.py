"""A mirror of real bytes in the upstream layouts, made from Debian 13's Wasm stack and cached."""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tests.e2e import cri, wasmhost

REPO = wasmhost.REPO
CACHE_DIR = wasmhost.CACHE_DIR / "realmirror"
WORK_DIR = REPO / "build" / "e2e-wasm-converge"

WASMEDGE_VERSION = "0.14.1"
CRUN_VERSION = "1.21"
# Debian 12's crun, published as a crun release too: the same component without Wasm.
DEBIAN12_CRUN_VERSION = "1.8.1"
# The suffix of upstream's release assets for x86_64 (components.md); 0.15.0 changed it.
ASSET_SUFFIX = "manylinux2014_x86_64"
MULTIARCH = "x86_64-linux-gnu"
# What test-hosts.md's recipe needed to build crun 1.21 with --with-wasmedge.
CRUN_BUILD_DEPENDS = (
    "autoconf",
    "automake",
    "libtool",
    "pkg-config",
    "make",
    "gperf",
    "libyajl-dev",
    "libseccomp-dev",
    "libcap-dev",
    "libsystemd-dev",
    "libwasmedge-dev",
)
SOURCES_LINE = "deb-src http://deb.debian.org/debian trixie main"
# Bump to throw the cached artifacts away (a change in how they are made).
RECIPE_VERSION = 1
# Which plugin of tests/e2e/wasmplugin each published plugin is, and its file there.
PLUGINS = {
    "agentd_e2e": "good/libwasmedgePluginAgentdE2E.so",
    "agentd_notelf": "notelf/libwasmedgePluginNotELF.so",
    "agentd_nodep": "nodep/libwasmedgePluginAgentdNoDep.so",
}


class RealMirrorError(Exception):
    """An artifact could not be made, or its source did not match the archive."""


@dataclass(frozen=True)
class Artifact:
    """One published file: its path under the mirror directory and its sha256."""

    path: str
    sha256: str


@dataclass(frozen=True)
class RealMirror:
    directory: Path
    crun: Artifact
    crun_debian12: Artifact  # Debian 12's crun 1.8.1 (its .deb's /usr/bin/crun), no Wasm
    wasmedge: Artifact
    plugins: dict[str, Artifact]
    crun_source: dict[str, str]  # the .orig.tar.gz: name, sha256, and the Sources index's sha256
    cached: bool  # every artifact came from build/e2e-cache/realmirror
    seconds: float


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def tree_identity(cache_dir: Path = wasmhost.CACHE_DIR) -> list[object]:
    """The Wasm tree's cached tarball by name, size and mtime: a --refresh (new package
    versions under the same recipe) makes new artifacts."""
    tarball = cache_dir / wasmhost.cache_name()
    stat = tarball.stat() if tarball.exists() else None
    return [tarball.name, stat.st_size if stat else None, stat.st_mtime_ns if stat else None]


def _plugin_sources() -> list[list[str]]:
    return sorted([p.name, sha256_file(p)] for p in wasmhost.PLUGIN_SOURCE.iterdir() if p.is_file())


def keys() -> dict[str, str]:
    """The cache key of each artifact kind: the inputs it is made from."""
    tree = tree_identity()
    return {
        "crun": _key("crun", CRUN_VERSION, sorted(CRUN_BUILD_DEPENDS), tree, RECIPE_VERSION),
        "wasmedge": _key("wasmedge", WASMEDGE_VERSION, tree, RECIPE_VERSION),
        "plugins": _key("plugins", _plugin_sources(), tree, RECIPE_VERSION),
    }


def _tarinfo(name: str, *, mode: int, size: int = 0, link: Optional[str] = None) -> tarfile.TarInfo:
    # Owner root, a fixed mtime: the same bytes make the same tarball (and sha256) every time.
    info = tarfile.TarInfo(name)
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = 1735689600
    info.mode = mode
    info.size = size
    if link is not None:
        info.type = tarfile.SYMTYPE
        info.linkname = link
    return info


def _write_tarball(out: Path, members: list[tuple[str, Path]]) -> None:
    """A .tar.gz of (name in the archive, file in the tree), directories implied by the names
    made first, symlinks kept as symlinks."""
    dirs = sorted(
        {"/".join(n.split("/")[:i]) for n, _ in members for i in range(1, n.count("/") + 1)}
    )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for d in dirs:
            info = _tarinfo(d, mode=0o755)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, source in sorted(members):
            if source.is_symlink():
                tar.addfile(_tarinfo(name, mode=0o777, link=os.readlink(source)))
                continue
            data = source.read_bytes()
            mode = 0o755 if source.stat().st_mode & 0o111 else 0o644
            tar.addfile(_tarinfo(name, mode=mode, size=len(data)), io.BytesIO(data))
    out.parent.mkdir(parents=True, exist_ok=True)
    # mtime=0 in the gzip header too: reproducible.
    with out.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(buffer.getvalue())


def _package_files(root: Path, package: str) -> list[str]:
    """`dpkg -L package` from the tree's dpkg database (its .list file)."""
    info = root / "var" / "lib" / "dpkg" / "info"
    for candidate in (info / f"{package}.list", info / f"{package}:amd64.list"):
        if candidate.exists():
            return [line for line in candidate.read_text().splitlines() if line.strip()]
    raise RealMirrorError(f"{package} is not installed in {root}")


def wasmedge_members(root: Path) -> list[tuple[str, Path]]:
    """Debian's WasmEdge files (wasmedge, libwasmedge0, libwasmedge-dev) in the upstream
    release layout: WasmEdge-<v>-Linux/{bin,lib64,include}. Debian's build has no wasmedgec
    (`wasmedge compile` instead), so the tarball has none either."""
    top = f"WasmEdge-{WASMEDGE_VERSION}-Linux"
    places = {
        "/usr/bin/": "bin/",
        f"/usr/lib/{MULTIARCH}/libwasmedge.so": "lib64/libwasmedge.so",
        "/usr/include/": "include/",
    }
    members: list[tuple[str, Path]] = []
    for package in ("wasmedge", "libwasmedge0", "libwasmedge-dev"):
        for node_path in _package_files(root, package):
            source = root / node_path.lstrip("/")
            if source.is_dir() and not source.is_symlink():
                continue
            for prefix, replacement in places.items():
                if node_path.startswith(prefix):
                    members.append((f"{top}/{replacement}{node_path[len(prefix) :]}", source))
    names = {n for n, _ in members}
    for wanted in ("bin/wasmedge", "lib64/libwasmedge.so.0", "include/wasmedge/wasmedge.h"):
        if f"{top}/{wanted}" not in names:
            raise RealMirrorError(f"Debian's WasmEdge in {root} has nothing for {top}/{wanted}")
    return members


def wasmedge_asset() -> str:
    return f"wasmedge/{WASMEDGE_VERSION}/WasmEdge-{WASMEDGE_VERSION}-{ASSET_SUFFIX}.tar.gz"


def plugin_asset(name: str) -> str:
    v = WASMEDGE_VERSION
    return f"wasmedge/{v}/WasmEdge-plugin-{name}-{v}-{ASSET_SUFFIX}.tar.gz"


def crun_asset(version: str = CRUN_VERSION) -> str:
    # Upstream's release asset name for x86_64 (github.com/containers/crun/releases).
    return f"crun/{version}/crun-{version}-linux-amd64"


def _in_tree(root: Path, script: str, log: Path, what: str, timeout: float = 1800.0) -> None:
    result = wasmhost.run(root, ["sh", "-ec", script], timeout=timeout)
    with log.open("a") as handle:
        handle.write(f"$ {what}\n{script}\n{result.stdout}{result.stderr}\n")
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).splitlines()[-20:]
        raise RealMirrorError(
            f"{what} failed (exit {result.returncode}), {log}:\n" + "\n".join(tail)
        )


def _sources_sha256(root: Path, package: str, filename: str) -> str:
    """The sha256 the archive's Sources index gives `filename` of source package `package`."""
    lists = root / "var" / "lib" / "apt" / "lists"
    for index in sorted(lists.glob("*_source_Sources*")):
        raw = index.read_bytes()
        text = (gzip.decompress(raw) if index.suffix == ".gz" else raw).decode(errors="replace")
        for stanza in text.split("\n\n"):
            if not re.search(rf"^Package: {re.escape(package)}$", stanza, re.M):
                continue
            match = re.search(rf"^ ([0-9a-f]{{64}}) \d+ {re.escape(filename)}$", stanza, re.M)
            if match:
                return match.group(1)
    raise RealMirrorError(f"no Sources index in {lists} lists {filename} of {package}")


def build_crun(root: Path, out: Path, log: Path) -> dict[str, str]:
    """crun from Debian's crun source (its .orig.tar.gz checked against the Sources index),
    `./configure --with-wasmedge && make` in the tree; the binary written to `out`."""
    resolv = root / "etc" / "resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    shutil.copyfile("/etc/resolv.conf", resolv)
    try:
        (root / "etc" / "apt" / "sources.list.d" / "agentd-src.list").write_text(
            SOURCES_LINE + "\n"
        )
        _in_tree(
            root,
            "apt-get update\n"
            "apt-get install -y --no-install-recommends " + " ".join(CRUN_BUILD_DEPENDS) + "\n"
            "mkdir -p /build && cd /build\n"
            # Here only the .orig.tar.gz answers (test-hosts.md): the .dsc is a 404.
            "apt-get source --download-only crun || true\n"
            "ls -l /build\n",
            log,
            "fetching crun's source",
        )
        build = root / "build"
        origs = sorted(build.glob(f"crun_{CRUN_VERSION}*.orig.tar.*"))
        if not origs:
            raise RealMirrorError(f"apt-get source crun fetched no crun_{CRUN_VERSION}.orig.tar.*")
        orig = origs[0]
        actual = sha256_file(orig)
        expected = _sources_sha256(root, "crun", orig.name)
        if actual != expected:
            raise RealMirrorError(
                f"{orig.name}: sha256 {actual}, the Sources index says {expected}"
            )
        _in_tree(
            root,
            "cd /build && rm -rf src && mkdir src\n"
            f"tar -C src --strip-components=1 -xf {orig.name}\n"
            "cd src && ./configure --with-wasmedge && make -j2\n"
            "./crun --version\n",
            log,
            "building crun --with-wasmedge",
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(build / "src" / "crun", out)
        out.chmod(0o755)
    finally:
        resolv.unlink(missing_ok=True)
    return {"file": orig.name, "sha256": actual, "sources_sha256": expected}


def _cached(directory: Path, names: list[str]) -> bool:
    return all((directory / n).is_file() for n in names)


def _store(made: Path, final: Path) -> None:
    # Made beside and renamed: an interrupted run never leaves half an entry in the cache.
    if final.exists():
        shutil.rmtree(final)
    made.replace(final)


def build(
    out: Path = WORK_DIR / "mirror",
    log: Path = WORK_DIR / "realmirror.log",
    *,
    cache_dir: Path = CACHE_DIR,
    build_root: Path = WORK_DIR / "build-root",
) -> RealMirror:
    """The mirror directory `out`: crun, the WasmEdge tarball and the plugin tarballs, each
    from the cache when its inputs are unchanged, else made in a Wasm tree at `build_root`;
    and Debian 12's crun from its .deb (tests/e2e/cri.py's, cached in build/e2e-cache)."""
    start = time.monotonic()
    log.parent.mkdir(parents=True, exist_ok=True)
    k = keys()
    entries = {kind: cache_dir / f"{kind}-{key}" for kind, key in k.items()}
    crun_names = ["crun", "source.json"]
    wasmedge_names = [Path(wasmedge_asset()).name]
    plugin_names = [Path(plugin_asset(n)).name for n in PLUGINS]
    wanted = {"crun": crun_names, "wasmedge": wasmedge_names, "plugins": plugin_names}
    missing = [kind for kind, names in wanted.items() if not _cached(entries[kind], names)]
    if missing:
        tree = wasmhost.prepare(build_root, log)
        root = tree.path
        try:
            for kind in missing:
                made = entries[kind].with_name(f".{entries[kind].name}.{os.getpid()}.tmp")
                if made.exists():
                    shutil.rmtree(made)
                made.mkdir(parents=True)
                if kind == "wasmedge":
                    _write_tarball(made / wasmedge_names[0], wasmedge_members(root))
                elif kind == "plugins":
                    built = wasmhost.build_plugins(root, WORK_DIR / "plugins", log)
                    base = built["good"].parent.parent
                    for name, rel in PLUGINS.items():
                        source = base / rel
                        _write_tarball(
                            made / Path(plugin_asset(name)).name, [(source.name, source)]
                        )
                else:
                    origin = build_crun(root, made / "crun", log)
                    (made / "source.json").write_text(json.dumps(origin, indent=2) + "\n")
                _store(made, entries[kind])
        finally:
            wasmhost.remove(root)
    debian12_cached = bool(sorted(cri.DEBIAN12_CRUN_CACHE.glob("crun_1.8.*.deb")))
    if out.exists():
        shutil.rmtree(out)
    published = {
        crun_asset(): entries["crun"] / "crun",
        crun_asset(DEBIAN12_CRUN_VERSION): cri.debian12_crun(WORK_DIR, log),
        wasmedge_asset(): entries["wasmedge"] / wasmedge_names[0],
        **{plugin_asset(n): entries["plugins"] / Path(plugin_asset(n)).name for n in PLUGINS},
    }
    for rel, source in published.items():
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest)

    def artifact(rel: str) -> Artifact:
        return Artifact(rel, sha256_file(out / rel))

    return RealMirror(
        directory=out,
        crun=artifact(crun_asset()),
        crun_debian12=artifact(crun_asset(DEBIAN12_CRUN_VERSION)),
        wasmedge=artifact(wasmedge_asset()),
        plugins={n: artifact(plugin_asset(n)) for n in PLUGINS},
        crun_source=json.loads((entries["crun"] / "source.json").read_text()),
        cached=not missing and debian12_cached,
        seconds=time.monotonic() - start,
    )


def main(args: Optional[list[str]] = None) -> int:
    """`python3 -m tests.e2e.realmirror [OUT]`: make (or take from the cache) the mirror and
    print each artifact with its sha256."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("out", type=Path, nargs="?", default=WORK_DIR / "mirror")
    options = parser.parse_args(args)
    mirror = build(options.out)
    how = "cache" if mirror.cached else "built"
    print(f"{mirror.directory}: {how} in {mirror.seconds:.1f} s")
    print(f"crun source {json.dumps(mirror.crun_source)}")
    for a in (mirror.crun, mirror.crun_debian12, mirror.wasmedge, *mirror.plugins.values()):
        print(f"{a.sha256}  {a.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
