"""Where the dynamic loader finds a library: an ELF file's RUNPATH, ld.so.conf, the system dirs."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from agentd.core.paths import Paths
from agentd.system.commands import CommandResult
from agentd.system.elf import elf_dynamic
from agentd.system.readfile import SMALL_FILE_BYTES, read_text_bounded

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


def conf_dirs(paths: Paths) -> list[str]:
    """The directories /etc/ld.so.conf and /etc/ld.so.conf.d/*.conf name (what ldconfig puts
    in the cache, before the system dirs)."""
    dirs: list[str] = []
    conf_files = [paths.under("/etc/ld.so.conf")]
    with contextlib.suppress(OSError):
        conf_files += sorted(paths.under("/etc/ld.so.conf.d").glob("*.conf"))
    for conf in conf_files:
        try:
            text = read_text_bounded(conf, SMALL_FILE_BYTES)
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
