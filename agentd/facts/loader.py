"""Where the dynamic loader finds a library: an ELF file's RUNPATH, ld.so.conf, the system dirs."""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional

from agentd.core.paths import Paths
from agentd.system.commands import CommandResult

# glibc's built-in "system search path": searched after the cache, and also with no cache at
# all. Debian's multiarch glibc: /lib/<triplet>, /usr/lib/<triplet>, /lib, /usr/lib (`ld.so
# --help`, tests/fixtures/real/ld_so_help_debian13.stdout); a 64-bit glibc without multiarch
# (Fedora, RHEL) has /lib64 and /usr/lib64. Only the node's own triplet exists on a node.
MULTIARCH = ("x86_64-linux-gnu", "aarch64-linux-gnu", "arm-linux-gnueabihf")
SYSTEM_DIRS = (
    *(d for t in MULTIARCH for d in (f"/lib/{t}", f"/usr/lib/{t}")),
    "/lib",
    "/usr/lib",
    "/lib64",
    "/usr/lib64",
)
# Where agentd installs libwasmedge (the upstream layout); Debian and Ubuntu list /usr/local/lib
# in /etc/ld.so.conf.d/libc.conf, so it is found through the cache once ldconfig has run.
AGENT_DIRS = ("/usr/local/lib", "/usr/local/lib64")

_PT_LOAD, _PT_DYNAMIC = 1, 2
_DT_NEEDED, _DT_STRTAB, _DT_RPATH, _DT_RUNPATH = 1, 5, 15, 29
_MAX_DYNAMIC = 1 << 16  # bytes of dynamic section and string table read, at most


@dataclass(frozen=True)
class Dynamic:
    """What an ELF object's dynamic section tells the loader: the libraries it needs and where
    it looks for them first (DT_RUNPATH, else DT_RPATH)."""

    needed: tuple[str, ...]
    search: tuple[str, ...]


def _read(handle: BinaryIO, offset: int, size: int) -> bytes:
    handle.seek(offset)
    return handle.read(size)


def _string(table: bytes, offset: int) -> str:
    end = table.find(b"\0", offset)
    return table[offset : end if end >= 0 else len(table)].decode("utf-8", "replace")


def elf_dynamic(path: Path) -> Optional[Dynamic]:
    """The dynamic section of the ELF file at `path`; None when it is no dynamic ELF object
    (a script stand-in, a text file, a static binary) or cannot be read."""
    try:
        with path.open("rb") as handle:
            ident = handle.read(64)
            if len(ident) < 52 or ident[:4] != b"\x7fELF" or ident[4] not in (1, 2):
                return None
            wide, order = ident[4] == 2, "<" if ident[5] == 1 else ">"
            if wide:
                phoff, phentsize, phnum = struct.unpack_from(order + "Q14xHH", ident, 32)
                header, entry = order + "II QQQ QQQ", order + "qQ"
            else:
                phoff, phentsize, phnum = struct.unpack_from(order + "I10xHH", ident, 28)
                header, entry = order + "IIIIIIII", order + "iI"
            loads: list[tuple[int, int, int]] = []  # (vaddr, offset, size)
            dynamic: Optional[tuple[int, int]] = None
            for i in range(min(phnum, 256)):
                raw = _read(handle, phoff + i * phentsize, struct.calcsize(header))
                if len(raw) < struct.calcsize(header):
                    return None
                fields = struct.unpack(header, raw)
                if wide:
                    kind, _, offset, vaddr, _, filesz, _, _ = fields
                else:
                    kind, offset, vaddr, _, filesz, _, _, _ = fields
                if kind == _PT_LOAD:
                    loads.append((vaddr, offset, filesz))
                elif kind == _PT_DYNAMIC:
                    dynamic = (offset, filesz)
            if dynamic is None:
                return None
            raw = _read(handle, dynamic[0], min(dynamic[1], _MAX_DYNAMIC))
            size = struct.calcsize(entry)
            tags: list[tuple[int, int]] = []
            for start in range(0, len(raw) - size + 1, size):
                tag, value = struct.unpack_from(entry, raw, start)
                if tag == 0:
                    break
                tags.append((tag, value))
            strtab = next((v for t, v in tags if t == _DT_STRTAB), None)
            # DT_STRTAB is an address: the PT_LOAD segment holding it says where it is in the file.
            where = next(
                (o + strtab - v for v, o, n in loads if strtab is not None and v <= strtab < v + n),
                None,
            )
            if where is None:
                return None
            table = _read(handle, where, _MAX_DYNAMIC)
    except (OSError, struct.error):
        return None
    needed = tuple(_string(table, v) for t, v in tags if t == _DT_NEEDED)
    runpath = [_string(table, v) for t, v in tags if t == _DT_RUNPATH]
    rpath = [_string(table, v) for t, v in tags if t == _DT_RPATH]
    # The loader ignores DT_RPATH when DT_RUNPATH is there.
    search = tuple(d for entry_ in (runpath or rpath) for d in entry_.split(":") if d)
    return Dynamic(needed, search)


def conf_dirs(paths: Paths) -> list[str]:
    """The directories /etc/ld.so.conf and /etc/ld.so.conf.d/*.conf name (what ldconfig puts
    in the cache, before the system dirs)."""
    dirs: list[str] = []
    conf_files = [paths.under("/etc/ld.so.conf")]
    with contextlib.suppress(OSError):
        conf_files += sorted(paths.under("/etc/ld.so.conf.d").glob("*.conf"))
    for conf in conf_files:
        try:
            text = conf.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for raw in text.splitlines():
            entry = raw.split("#", 1)[0].strip()
            if entry.startswith("/"):
                dirs.append(entry)
    return dirs


def own_dirs(paths: Paths, obj: Optional[Path]) -> list[Path]:
    """The directories `obj` (under the root) names itself, $ORIGIN expanded, normalised as the
    loader names them (lexically: `/usr/bin/../lib/x` is `/usr/lib/x`)."""
    dynamic = elf_dynamic(obj) if obj is not None else None
    if obj is None or dynamic is None:
        return []
    origin = paths.host_view(obj.parent)
    found: list[Path] = []
    for entry in dynamic.search:
        expanded = entry.replace("${ORIGIN}", origin).replace("$ORIGIN", origin)
        if expanded.startswith("/") and "$" not in expanded:
            found.append(paths.under(os.path.normpath(expanded)))
    return found


def cached_dirs(paths: Paths) -> list[Path]:
    """Where the loader finds a library once ldconfig has run: ld.so.conf's directories,
    agentd's own, then the system dirs."""
    names = dict.fromkeys([*conf_dirs(paths), *AGENT_DIRS, *SYSTEM_DIRS])
    return [paths.under(d) for d in names]


def find_library(
    paths: Paths, soname: str, obj: Optional[Path] = None, *, cache: bool = True
) -> Optional[Path]:
    """Where `obj` (or a program without a search path of its own) gets `soname` from: its
    RUNPATH first, then (with `cache`, ldconfig having run) the cache's directories, else only
    the system dirs, which the loader searches even without /etc/ld.so.cache. LD_LIBRARY_PATH
    is left out: agentd runs programs with a fixed environment, and k3s's service has none."""
    system = [paths.under(d) for d in SYSTEM_DIRS]
    for directory in [*own_dirs(paths, obj), *(cached_dirs(paths) if cache else system)]:
        candidate = directory / soname
        if candidate.exists():
            return candidate
    return None


def needs_missing(paths: Paths, obj: Path, soname: str) -> bool:
    """`obj` lists `soname` among the libraries it needs, and the loader would not find it."""
    dynamic = elf_dynamic(obj)
    return (
        dynamic is not None
        and soname in dynamic.needed
        and find_library(paths, soname, obj) is None
    )


def parse_ldconfig_cache(result: CommandResult, sonames: Sequence[str]) -> str:
    """What `ldconfig -p` says of the loader's cache: "listed" (one of `sonames` is in it),
    "not-listed", "no-cache" (ldconfig cannot open /etc/ld.so.cache: exit 1, nothing on stdout,
    "Can't open cache file" on stderr; tests/fixtures/real/ldconfig_p_no_cache), or "unknown"
    (ldconfig did not run, or failed otherwise)."""
    if not result.ok:
        return "no-cache" if "Can't open cache file" in result.stderr else "unknown"
    for line in result.stdout.splitlines():
        name = line.strip().split(" ", 1)[0]
        if name in sonames:
            return "listed"
    return "not-listed"
