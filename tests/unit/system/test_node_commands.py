"""The node's programs under --root: run inside a real OS tree, or said to be the host's."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from agentd.core.paths import Paths
from agentd.facts.detect import detect_components
from agentd.system.commands import NodeCommands, _node_view, node_commands
from agentd.system.elf import elf_interpreter
from agentd.system.host import Host
from agentd.system.services import RecordedServices

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not (shutil.which("chroot") and shutil.which("unshare")),
    reason="a chroot into the tree (and its private proc) needs root, chroot and unshare",
)


def copy_program(tree: Path, program: str) -> Path:
    """`program` and what `ldd` says it loads (the loader among them), at the same paths in
    `tree`: a real OS tree as far as chroot is concerned."""
    source = Path(shutil.which(program) or program).resolve()
    listed = subprocess.run(["ldd", str(source)], capture_output=True, text=True, check=False)
    needed = [source]
    for line in listed.stdout.splitlines():  # "libc.so.6 => /lib/...", "/lib64/ld-linux... (0x..)"
        words = [w for w in line.split() if w.startswith("/")]
        needed += [Path(words[0])] if words else []
    for file in needed:
        target = tree / str(file).lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(file, target)  # the bytes, not the host's symlink
    return tree / str(source).lstrip("/")


def mounts_under(path: Path) -> list[str]:
    base = str(path.resolve())
    points = (line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines())
    return [p for p in points if p == base or p.startswith(base + "/")]


def elf(interp: bytes | None, wide: bool = True, order: str = "<") -> bytes:
    """A minimal ELF file: header, one program header (PT_INTERP, or PT_LOAD without one)."""
    header_size, entry_size = (64, 56) if wide else (52, 32)
    data_offset = header_size + entry_size
    ident = b"\x7fELF" + bytes([2 if wide else 1, 1 if order == "<" else 2, 1]) + bytes(9)
    kind, payload = (3, interp + b"\0") if interp is not None else (1, b"")
    if wide:
        head = ident + struct.pack(order + "HHIQQQIHHHHHH", 2, 62, 1, 0, header_size, 0, 0,
                                   header_size, entry_size, 1, 0, 0, 0)  # fmt: skip
        entry = struct.pack(order + "IIQQQQQQ", kind, 4, data_offset, 0, 0, len(payload),
                            len(payload), 1)  # fmt: skip
    else:
        head = ident + struct.pack(order + "HHIIIIIHHHHHH", 2, 3, 1, 0, header_size, 0, 0,
                                   header_size, entry_size, 1, 0, 0, 0)  # fmt: skip
        entry = struct.pack(order + "IIIIIIII", kind, data_offset, 0, 0, len(payload),
                            len(payload), 4, 1)  # fmt: skip
    return head + entry + payload


@pytest.mark.parametrize(("wide", "order"), [(True, "<"), (False, "<"), (True, ">"), (False, ">")])
def test_elf_interpreter_reads_pt_interp(tmp_path: Path, wide: bool, order: str) -> None:
    program = tmp_path / "prog"
    program.write_bytes(elf(b"/lib/ld-linux-aarch64.so.1", wide, order))
    assert elf_interpreter(program) == "/lib/ld-linux-aarch64.so.1"
    program.write_bytes(elf(None, wide, order))
    assert elf_interpreter(program) is None  # static: no loader involved


def test_elf_interpreter_none_for_scripts_and_junk(tmp_path: Path) -> None:
    script = tmp_path / "crun"
    script.write_text("#!/bin/sh\necho crun version 1.21\n")
    short = tmp_path / "short"
    short.write_bytes(b"\x7fELF\x02\x01")
    assert elf_interpreter(script) is None
    assert elf_interpreter(short) is None
    assert elf_interpreter(tmp_path / "missing") is None


def test_node_view_translates_paths_under_the_root() -> None:
    root = "/srv/tree"
    assert _node_view(root, "/srv/tree/usr/bin/crun") == "/usr/bin/crun"
    assert _node_view(root, "/srv/tree") == "/"
    assert _node_view(root, "--cache-dir=/srv/tree/var/lib/x") == "--cache-dir=/var/lib/x"
    assert _node_view(root, "/srv/treetop/x") == "/srv/treetop/x"
    assert _node_view(root, "--version") == "--version"
    assert _node_view(root, "a=/elsewhere") == "a=/elsewhere"


def test_own_loader_marks_a_real_os_tree(tmp_path: Path) -> None:
    assert Paths(tmp_path).own_loader is None
    (tmp_path / "usr" / "lib64").mkdir(parents=True)
    (tmp_path / "lib64").symlink_to("usr/lib64")
    # Debian's loader link is absolute: seen from outside it points at the host, and counts.
    (tmp_path / "usr/lib64/ld-linux-x86-64.so.2").symlink_to("/nonexistent/ld-linux-x86-64.so.2")
    assert Paths(tmp_path).own_loader == "/lib64/ld-linux-x86-64.so.2"


def test_a_sandbox_of_scripts_runs_outside_as_before(tmp_path: Path) -> None:
    commands = node_commands(Paths(tmp_path))
    assert not commands.inside
    assert not commands.as_node
    script = tmp_path / "usr/bin/crun"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\necho stand-in; exit 3\n")
    script.chmod(0o755)
    result = commands([str(script), "--version"])
    assert (result.returncode, result.stdout, result.stderr) == (3, "stand-in\n", "")
    assert node_commands(Paths(Path("/"))).as_node


def test_a_tree_elf_failing_outside_says_it_ran_with_this_hosts_loader(tmp_path: Path) -> None:
    false = copy_program(tmp_path, "false")
    loader = elf_interpreter(false)
    assert loader is not None
    not_root = NodeCommands(Paths(tmp_path), inside=False, may_chroot=False)
    result = not_root([str(false)])
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"not run inside {tmp_path} (chroot needs root): this host's loader {loader} ran it: "
    )
    no_loader = NodeCommands(Paths(tmp_path), inside=False, may_chroot=True)
    assert f"({tmp_path} has no loader of its own)" in no_loader([str(false)]).stderr
    assert not_root(["false"]).stderr == ""  # not the tree's program: as it is


@needs_root
def test_a_real_tree_runs_its_programs_inside(tmp_path: Path) -> None:
    cat = copy_program(tmp_path, "cat")
    (tmp_path / "proc").mkdir()
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/os-release").write_text("ID=tree\n")
    commands = node_commands(Paths(tmp_path))
    assert commands.inside
    assert commands.mount_proc
    assert commands.as_node
    result = commands([str(cat), str(tmp_path / "etc/os-release")])
    assert (result.returncode, result.stdout) == (0, "ID=tree\n")
    assert result.argv == (str(cat), str(tmp_path / "etc/os-release"))
    # A bare name is the tree's, from its PATH; its proc is its own and gone afterwards.
    mounts = commands(["cat", "/proc/self/mounts"])
    assert mounts.ok
    assert " /proc proc " in mounts.stdout
    assert mounts_under(tmp_path) == []
    missing = commands([str(tmp_path / "usr/bin/k3s"), "--version"])
    assert missing.returncode == 127


@needs_root
@pytest.mark.skipif(shutil.which("crun") is None, reason="this host has no crun to copy")
def test_detect_reads_a_real_trees_crun_inside_it(tmp_path: Path) -> None:
    copy_program(tmp_path, "crun")
    (tmp_path / "proc").mkdir()  # crun re-executes itself through /proc/self/exe
    expected = subprocess.run(["crun", "--version"], capture_output=True, text=True, check=True)
    crun = detect_components(Paths(tmp_path))["crun"]
    assert crun.error is None
    assert crun.version == expected.stdout.split()[2]


@needs_root
def test_ldconfig_under_root_writes_the_trees_cache(tmp_path: Path) -> None:
    copy_program(tmp_path, "cat")
    copy_program(tmp_path, str(Path("/sbin/ldconfig").resolve()))
    # A library only the tree's ld.so.conf names, as agentd installs libwasmedge.
    library = next(p for p in tmp_path.rglob("libc.so.6") if "local" not in p.parts)
    (tmp_path / "usr/local/lib").mkdir(parents=True)
    shutil.copy2(library, tmp_path / "usr/local/lib/libc.so.6")
    (tmp_path / "etc").mkdir(exist_ok=True)
    (tmp_path / "etc/ld.so.conf").write_text("/usr/local/lib\n")
    host_cache = Path("/etc/ld.so.cache")
    before = host_cache.stat().st_mtime_ns if host_cache.exists() else None

    recorded = RecordedServices()
    recorded.ldconfig()
    assert recorded.calls == ["ldconfig"]
    assert not (tmp_path / "etc/ld.so.cache").exists()  # no tree given: only recorded

    host = Host.at(tmp_path)
    host.services.ldconfig()
    assert host.services.calls == ["ldconfig"]  # still recorded for the run's result
    assert (tmp_path / "etc/ld.so.cache").is_file()
    listed = host.commands(["ldconfig", "-p"])
    assert "=> /usr/local/lib/libc.so.6" in listed.stdout
    assert (host_cache.stat().st_mtime_ns if host_cache.exists() else None) == before
