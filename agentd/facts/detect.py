"""Detection: what the node has, read from its binaries' `--version` output and the host."""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from agentd.core.arch import host_arch
from agentd.core.components import BINARY_KINDS, WASMEDGE, ComponentKind
from agentd.core.paths import Paths
from agentd.core.versions import is_k3s_version
from agentd.facts.loader import find_library
from agentd.facts.model import NOT_INSTALLED, ComponentFacts, Facts, HostFacts, PluginFact
from agentd.facts.osrelease import os_name
from agentd.system.commands import CommandResult, Runner, node_commands, run_command
from agentd.system.elf import elf_dynamic
from agentd.system.files import atomic_write, read_json

# --- pure parsers --------------------------------------------------------------------------------

_K3S_LINE_RE = re.compile(r"^k3s version (\S+)(?:\s+\(([^()\s]+)\))?$")
_CRUN_LINE_RE = re.compile(r"^crun version (\d+(?:\.\d+)+(?:[-+~][0-9A-Za-z.+~-]+)?)$")
_CRUN_COMMIT_RE = re.compile(r"^commit:\s*(\S+)$")
_FEATURE_TOKEN_RE = re.compile(r"^[+-][A-Za-z0-9_]+(?::[A-Za-z0-9_.-]+)?$")
# argv[0] comes first and may be a full path (possibly with spaces under a sandbox root).
_WASMEDGE_LINE_RE = re.compile(
    r"^(?:.*/)?wasmedge version (\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.+-]+)?)$"
)
# A loaded plugin: its file, then name and version; a plugin built into the runtime (Debian's
# wasi_logging) has no file: ` (plugin "wasi_logging") version 0.1.0.0` (tests/fixtures/real/).
_WASMEDGE_PLUGIN_RE = re.compile(r'^(?:(.+) )?\(plugin "([^"]+)"\) version (\d+(?:\.\d+)*)$')
# WasmEdge logs to stdout, before its version line, and exits 0 all the same: a plugin it cannot
# load gives "[2026-12-02 06:29:56.054] [error] loading failed: invalid path, Code: 0x100" and
# "[...] [error]     load library failed:<file or missing library>: <why>" (tests/fixtures/real/).
_WASMEDGE_LOG_RE = re.compile(r"^\[\d{4}-\d{2}-\d{2} [\d:.]+\] \[([a-z]+)\] ?(.*)$")

_PLUGIN_FILE_PREFIX = "libwasmedgePlugin"
_PLUGIN_NAMES = {
    "WasiNN": "wasi_nn",
    "WasiCrypto": "wasi_crypto",
    "WasiLogging": "wasi_logging",
    "WasmEdgeImage": "wasmedge_image",
    "WasmEdgeTensorflow": "wasmedge_tensorflow",
    "WasmEdgeTensorflowLite": "wasmedge_tensorflowlite",
    "WasmBpf": "wasm_bpf",
    "WasmEdgeRustls": "wasmedge_rustls",
    "WasmEdgeProcess": "wasmedge_process",
    "WasmEdgeFFmpeg": "wasmedge_ffmpeg",
    "WasmEdgeZlib": "wasmedge_zlib",
    "WasmEdgeOCR": "wasmedge_ocr",
}


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0].strip() if lines else ""


def parse_k3s_version(text: str) -> tuple[str, str | None] | None:
    """(version, short commit) from `k3s --version`, or None when it is not k3s's output."""
    match = _K3S_LINE_RE.match(_first_line(text))
    if not match or not is_k3s_version(match.group(1)):
        return None
    return match.group(1), match.group(2)


def parse_crun_version(text: str) -> tuple[str, str | None, tuple[str, ...]] | None:
    """(version, commit, enabled feature tokens without '+') from `crun --version`."""
    lines = [line.strip() for line in text.strip().splitlines()]
    if not lines:
        return None
    match = _CRUN_LINE_RE.match(lines[0])
    if not match:
        return None
    commit: str | None = None
    features: tuple[str, ...] | None = None
    for line in lines[1:]:
        commit_match = _CRUN_COMMIT_RE.match(line)
        if commit_match:
            commit = commit_match.group(1)
            continue
        tokens = line.split()
        if tokens and all(_FEATURE_TOKEN_RE.match(t) for t in tokens):
            features = tuple(t[1:] for t in tokens if t.startswith("+"))
    # crun always prints its feature line; without it the output is cut short, and an empty
    # feature list would wrongly read as "no Wasm support".
    if features is None:
        return None
    return match.group(1), commit, features


def without_wasmedge_log_lines(text: str) -> str:
    """`text` without WasmEdge's own log lines (it logs plugin-load errors to stdout)."""
    kept = (line for line in text.splitlines(keepends=True) if not _WASMEDGE_LOG_RE.match(line))
    return "".join(kept)


def parse_wasmedge_version(text: str) -> str | None:
    """The runtime version from the first line of `wasmedge --version` that is not one of
    WasmEdge's log lines (plugin-load errors come first); later lines are plugins."""
    match = _WASMEDGE_LINE_RE.match(_first_line(without_wasmedge_log_lines(text)))
    return match.group(1) if match else None


def parse_wasmedge_load_errors(text: str) -> list[str]:
    """The messages of WasmEdge's `[error]` log lines, each once, in order (a plugin that does
    not load is named by these lines only: the run still exits 0)."""
    found: list[str] = []
    for line in text.splitlines():
        match = _WASMEDGE_LOG_RE.match(line.strip())
        if match and match.group(1) in ("error", "critical"):
            message = match.group(2).strip()
            if message and message not in found:
                found.append(message)
    return found


def parse_wasmedge_plugin_lines(text: str) -> dict[str, str]:
    """Plugin name → version from the lines WasmEdge 0.14+ adds for each loaded plugin."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        match = _WASMEDGE_PLUGIN_RE.match(line.strip())
        if match:
            found[match.group(2)] = match.group(3)
    return found


def _plugin_versions_by_file(text: str) -> dict[str, str]:
    """Plugin file → version, for the plugin lines that name their file."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        match = _WASMEDGE_PLUGIN_RE.match(line.strip())
        if match and match.group(1):
            found[match.group(1)] = match.group(3)
    return found


def plugin_name_for_file(filename: str) -> str:
    """The upstream plugin name for a plugin library file, else the file's stem."""
    name = Path(filename).name
    stem = name[: -len(".so")] if name.endswith(".so") else Path(name).stem
    if stem.startswith(_PLUGIN_FILE_PREFIX):
        known = _PLUGIN_NAMES.get(stem[len(_PLUGIN_FILE_PREFIX) :])
        if known:
            return known
    return stem


# --- the version cache ---------------------------------------------------------------------------

_CACHE_FORMAT = 1


def _fingerprint(path: Path) -> list[Any]:
    st = path.stat()
    return [str(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _fingerprint_or_absent(path: Path) -> list[Any]:
    # A dependency that is not there is part of the key too: its coming back is a change.
    try:
        return _fingerprint(path)
    except FileNotFoundError:
        return [str(path), None]


class VersionCache:
    """`--version` output per binary, reused while the binary (and what it reads) is unchanged.

    Running k3s, crun and wasmedge costs far more than the 150 ms a no-op apply may take, so a
    binary whose stat fingerprint has not changed is not run again.
    """

    def __init__(self, entries: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self._entries: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (entries or {}).items()}
        self.changed = False
        self.runs = 0  # commands actually run through this cache (for tests and benchmarks)

    @classmethod
    def load(cls, path: Path) -> VersionCache:
        """The cache stored at `path`; empty when it is missing or unreadable."""
        try:
            doc = read_json(path)
        except (OSError, ValueError):
            return cls()
        if not isinstance(doc, dict) or doc.get("format") != _CACHE_FORMAT:
            return cls()
        entries = doc.get("entries")
        if not isinstance(entries, dict):
            return cls()
        return cls(
            {
                k: v
                for k, v in entries.items()
                if isinstance(v, dict) and isinstance(v.get("stdout"), str)
            }
        )

    def save(self, path: Path) -> None:
        """Write the cache if anything changed; failures are ignored (it is only a cache)."""
        if not self.changed:
            return
        data = json.dumps(
            {"format": _CACHE_FORMAT, "entries": self._entries}, indent=1, sort_keys=True
        )
        try:
            atomic_write(path, data.encode("utf-8"))
        except OSError:
            return
        self.changed = False

    def version_output(
        self,
        binary: Path,
        depends_on: Sequence[Path] = (),
        args: Sequence[str] = ("--version",),
        run: Runner = run_command,
    ) -> CommandResult:
        """`<binary> ARGS`, from the cache when the binary and `depends_on` are unchanged."""
        argv = [str(binary), *args]
        # Stat before running: a binary replaced in between is stored under its old
        # fingerprint, so the next run sees the difference and runs it again.
        try:
            key = [_fingerprint(binary), *(_fingerprint_or_absent(p) for p in depends_on)]
        except OSError:
            key = None
        if key is not None:
            entry = self._entries.get(str(binary))
            if entry is not None and entry.get("key") == key:
                return CommandResult(tuple(argv), 0, str(entry["stdout"]), "")
        self.runs += 1
        result = run(argv)
        if key is not None and result.ok:
            self._entries[str(binary)] = {"key": key, "stdout": result.stdout}
            self.changed = True
        else:
            self.forget(binary)
        return result

    def forget(self, binary: Path) -> None:
        """Run `binary` again next time."""
        if self._entries.pop(str(binary), None) is not None:
            self.changed = True


# --- detectors -----------------------------------------------------------------------------------


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def _memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError):
        return 0


def detect_host(paths: Paths) -> HostFacts:
    """Architecture, OS, kernel, CPUs, memory, free disk and cgroup version of this host.

    The standard library suffices (os.sysconf, os.statvfs): psutil would cost the daemon a
    compiled module and memory for three numbers."""
    uname = os.uname()
    arch = host_arch(uname.machine)
    # The file system agentd and k3s fill: the state dir's (k3s keeps /var/lib/rancher beside it).
    try:
        st = os.statvfs(_nearest_existing(paths.state_dir))
        disk_free, disk_total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
    except OSError:
        disk_free = disk_total = 0
    return HostFacts(
        arch=arch,
        os=os_name(paths),
        kernel=uname.release,
        cpus=len(os.sched_getaffinity(0)) or os.cpu_count() or 1,
        memory_bytes=_memory_bytes(),
        disk_free_bytes=disk_free,
        cgroup_v2=Path("/sys/fs/cgroup/cgroup.controllers").exists(),
        disk_total_bytes=disk_total,
    )


def _version_error(result: CommandResult) -> str:
    first = _first_line(result.stdout) or _first_line(result.stderr)
    shown = repr(first[:120]) if first else "no output"
    return (
        f"could not read the version: `{' '.join(result.argv)}` exited {result.returncode}: {shown}"
    )


_LIBWASMEDGE = "libwasmedge.so.0"


def wasmedge_library(paths: Paths, binary: Path) -> Path | None:
    """The libwasmedge.so.0 `binary` loads (under the root), named as the loader names it: its
    RUNPATH first (Debian's /usr/bin/wasmedge: `$ORIGIN/../lib/x86_64-linux-gnu`), then the
    cache's directories. A program that is no ELF file (a stand-in), or finds no library,
    gets the upstream layout's `<prefix>/lib`, where its library would be."""
    found = find_library(paths, _LIBWASMEDGE, binary)
    if found is None and elf_dynamic(binary) is None:
        return binary.parent.parent / "lib" / _LIBWASMEDGE
    return found


def wasmedge_plugin_dirs(paths: Paths, binary: Path) -> list[Path]:
    """The directories `binary` loads plugins from (under the root).

    WasmEdge 0.14 (lib/plugin/plugin.cpp, getDefaultPluginPaths) names its plugin directory
    after where libwasmedge itself was loaded from (dladdr, normalised lexically):
    `<libdir>/wasmedge` when that path starts with /usr or /lib, else `<libdir>/../plugin` (an
    unpacked tarball, `~/.wasmedge`). So Debian's WasmEdge, whose library is in
    /usr/lib/<multiarch>, loads /usr/lib/<multiarch>/wasmedge and never /usr/local/lib/wasmedge,
    and a WasmEdge whose library is agentd's /usr/local/lib/libwasmedge.so.0 loads
    /usr/local/lib/wasmedge (tests/fixtures/real/wasmedge_version_plugin_in_usr_local and
    wasmedge_version_lib_in_usr_local). WASMEDGE_PLUGIN_PATH adds directories, but agentd runs
    wasmedge with a fixed environment and containerd runs crun with k3s's, so neither has it."""
    library = wasmedge_library(paths, binary)
    if library is None:
        return []
    libdir = os.path.normpath(paths.host_view(library.parent))
    if libdir.startswith(("/usr", "/lib")):
        return [paths.under(libdir + "/wasmedge")]
    return [paths.under(os.path.normpath(libdir + "/../plugin"))]


def _plugin_files(paths: Paths, binary: Path) -> list[Path]:
    # WasmEdge walks each plugin directory recursively and loads every regular file (or symlink
    # to one) ending in .so (tests/fixtures/real/wasmedge_version_plugin_nested).
    found: list[Path] = []
    for directory in wasmedge_plugin_dirs(paths, binary):
        with contextlib.suppress(OSError):
            found += [p for p in directory.rglob("*.so") if p.is_file()]
    return sorted(dict.fromkeys(found))


def _wasmedge_depends_on(paths: Paths, binary: Path) -> list[Path]:
    # The version line comes from libwasmedge and the plugin lines from the plugin files, so a
    # library that vanished (Debian's /usr/lib/<multiarch>/libwasmedge.so.0), moved or changed,
    # or a plugin added or removed, must invalidate the cached output of an unchanged binary.
    # The loader's cache decides whether a library outside the default directories is found at
    # all (with no /etc/ld.so.cache, /usr/local/lib is not searched): removing, restoring or
    # rewriting it is a new key.
    library = find_library(paths, _LIBWASMEDGE, binary)
    loader_cache = paths.under("/etc/ld.so.cache")
    return [
        *([library] if library is not None else []),
        *_plugin_files(paths, binary),
        loader_cache,
    ]


def _detect_plugins(
    paths: Paths,
    binary: Path,
    recorded: Mapping[str, Sequence[str]],
    stdout: str,
) -> tuple[PluginFact, ...]:
    versions = parse_wasmedge_plugin_lines(stdout)
    by_file = _plugin_versions_by_file(stdout)
    recorded_by_path = {path: name for name, files in recorded.items() for path in files}
    plugins: list[PluginFact] = []
    for file in _plugin_files(paths, binary):
        node_path = paths.host_view(file)
        recorded_name = recorded_by_path.get(node_path)
        name = recorded_name or plugin_name_for_file(file.name)
        # The line naming the file (WasmEdge prints the path it loaded, as seen from the node
        # when it runs there), else the name: a backend variant (wasi_nn-ggml) loads as its
        # base plugin (wasi_nn).
        version = (
            by_file.get(node_path)
            or by_file.get(str(file))
            or versions.get(name)
            or versions.get(name.split("-", 1)[0])
        )
        plugins.append(PluginFact(name, node_path, recorded_name is not None, version))
    return tuple(sorted(plugins, key=lambda p: (p.name, p.path)))


def _k3s_facts(base: ComponentFacts, stdout: str) -> ComponentFacts | None:
    k3s = parse_k3s_version(stdout)
    return None if k3s is None else replace(base, version=k3s[0], commit=k3s[1])


def _crun_facts(base: ComponentFacts, stdout: str) -> ComponentFacts | None:
    crun = parse_crun_version(stdout)
    if crun is None:
        return None
    return replace(base, version=crun[0], commit=crun[1], features=crun[2])


def _wasmedge_facts(base: ComponentFacts, stdout: str) -> ComponentFacts | None:
    version = parse_wasmedge_version(stdout)
    return None if version is None else replace(base, version=version)


# How each binary kind of the registry (agentd.core.components) reads its version output.
VERSION_READERS: dict[str, Callable[[ComponentFacts, str], ComponentFacts | None]] = {
    "k3s": _k3s_facts,
    "crun": _crun_facts,
    "wasmedge": _wasmedge_facts,
}


def _detect_one(
    kind: ComponentKind,
    paths: Paths,
    recorded_plugins: Mapping[str, Sequence[str]],
    cache: VersionCache,
) -> ComponentFacts:
    binary = paths.find_binary(kind.binary or kind.name)
    if binary is None:
        return NOT_INSTALLED
    node_path = paths.host_view(binary)
    managed = node_path.startswith("/usr/local/")
    wasmedge = kind is WASMEDGE
    depends_on = _wasmedge_depends_on(paths, binary) if wasmedge else []
    result = cache.version_output(binary, depends_on, kind.version_args, node_commands(paths))
    stdout = result.stdout if result.ok else ""
    base = ComponentFacts(installed=True, path=node_path, managed=managed)
    if wasmedge:
        load_errors = tuple(parse_wasmedge_load_errors(stdout))
        if load_errors:
            # A plugin's missing library can appear without any file WasmEdge reads changing:
            # what failed to load is asked again next time.
            cache.forget(binary)
        base = replace(
            base,
            plugins=_detect_plugins(paths, binary, recorded_plugins, stdout),
            load_errors=load_errors,
        )
    found = VERSION_READERS[kind.name](base, stdout)
    return found if found is not None else replace(base, error=_version_error(result))


def detect_components(
    paths: Paths,
    recorded_plugins: Mapping[str, Sequence[str]] | None = None,
    cache: VersionCache | None = None,
) -> dict[str, ComponentFacts]:
    """k3s, crun and wasmedge as found in the fixed search dirs under the root."""
    recorded = recorded_plugins or {}
    version_cache = cache if cache is not None else VersionCache()
    return {kind.name: _detect_one(kind, paths, recorded, version_cache) for kind in BINARY_KINDS}


def detect(paths: Paths, recorded_plugins: Mapping[str, Sequence[str]] | None = None) -> Facts:
    """Host and component facts, reusing `--version` output of unchanged binaries."""
    cache = VersionCache.load(paths.facts_cache_file)
    facts = Facts(
        host=detect_host(paths), components=detect_components(paths, recorded_plugins, cache)
    )
    cache.save(paths.facts_cache_file)
    return facts
