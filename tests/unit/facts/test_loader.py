"""Where the loader finds a library: real ELF files' dynamic sections, real ldconfig output."""

from __future__ import annotations

import re
from pathlib import Path

from agentd.core.paths import Paths
from agentd.facts.loader import (
    SYSTEM_DIRS,
    find_library,
    needs_missing,
    parse_ldconfig_cache,
)
from agentd.system.commands import CommandResult
from agentd.system.elf import elf_dynamic

REAL = Path(__file__).resolve().parents[2] / "fixtures" / "real"


def recorded(name: str) -> CommandResult:
    """A recording of tests/fixtures/real/ as the command result agentd would have got."""
    return CommandResult(
        ("recorded", name),
        int((REAL / f"{name}.exit").read_text()),
        (REAL / f"{name}.stdout").read_text(),
        (REAL / f"{name}.stderr").read_text(),
    )


def test_the_real_dynamic_sections() -> None:
    wasmedge = elf_dynamic(REAL / "elf/wasmedge")
    assert wasmedge is not None
    assert wasmedge.needed == ("libwasmedge.so.0", "libc.so.6")
    assert wasmedge.search == ("$ORIGIN/../lib/x86_64-linux-gnu",)
    nodep = elf_dynamic(REAL / "elf/libwasmedgePluginAgentdNoDep.so")
    assert nodep is not None
    assert nodep.needed == ("libagentde2edep.so", "libwasmedge.so.0", "libc.so.6")
    assert nodep.search == ()
    # Not ELF: a text file where a plugin should be, a shell script (a stand-in), nothing.
    assert elf_dynamic(REAL / "wasmedge_version_plugin_not_elf.stdout") is None
    assert elf_dynamic(REAL / "no-such-file") is None


def test_the_system_dirs_are_debian_13s(tmp_path: Path) -> None:
    """glibc's own search path, which works without /etc/ld.so.cache, as Debian 13's ld.so says."""
    text = (REAL / "ld_so_help_debian13.stdout").read_text()
    said = re.findall(r"^  (/\S+) \(system search path\)$", text, re.MULTILINE)
    assert said == ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib", "/usr/lib"]
    assert [d for d in SYSTEM_DIRS if d in said] == said


def test_a_runpath_comes_first_and_a_system_dir_needs_no_cache(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    binary = tmp_path / "usr/bin/wasmedge"
    binary.parent.mkdir(parents=True)
    binary.write_bytes((REAL / "elf/wasmedge").read_bytes())
    (tmp_path / "usr/local/lib").mkdir(parents=True)
    (tmp_path / "usr/local/lib/libwasmedge.so.0").write_bytes(b"agentd's")
    assert (
        find_library(paths, "libwasmedge.so.0", binary)
        == tmp_path / "usr/local/lib/libwasmedge.so.0"
    )
    assert find_library(paths, "libwasmedge.so.0", binary, cache=False) is None
    multiarch = tmp_path / "usr/lib/x86_64-linux-gnu"
    multiarch.mkdir(parents=True)
    (multiarch / "libwasmedge.so.0").write_bytes(b"Debian's")
    assert find_library(paths, "libwasmedge.so.0", binary) == multiarch / "libwasmedge.so.0"
    assert (
        find_library(paths, "libwasmedge.so.0", None, cache=False) == multiarch / "libwasmedge.so.0"
    )


def test_a_plugin_that_needs_a_library_the_loader_lacks(tmp_path: Path) -> None:
    plugin = REAL / "elf/libwasmedgePluginAgentdNoDep.so"
    assert needs_missing(Paths(tmp_path), plugin, "libagentde2edep.so")
    assert not needs_missing(
        Paths(tmp_path), REAL / "elf/libwasmedgePluginAgentdE2E.so", "libagentde2edep.so"
    )
    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "usr/lib/libagentde2edep.so").write_bytes(b"")
    assert not needs_missing(Paths(tmp_path), plugin, "libagentde2edep.so")


def test_ldconfig_without_a_cache_is_no_cache() -> None:
    """`ldconfig -p` with no /etc/ld.so.cache exits 1: that is "no cache", not "cached"."""
    assert (
        parse_ldconfig_cache(recorded("ldconfig_p_no_cache"), ("libwasmedge.so.0",)) == "no-cache"
    )
    # constructed: two lines in the format of Debian 13's `ldconfig -p` listing
    listing = CommandResult(
        ("ldconfig", "-p"),
        0,
        "2 libs found in cache `/etc/ld.so.cache'\n"
        "\tlibwasmedge.so.0 (libc6,x86-64) => /lib/x86_64-linux-gnu/libwasmedge.so.0\n"
        "\tlibc.so.6 (libc6,x86-64) => /lib/x86_64-linux-gnu/libc.so.6\n",
        "",
    )
    assert parse_ldconfig_cache(listing, ("libwasmedge.so.0",)) == "listed"
    assert parse_ldconfig_cache(listing, ("libagentde2edep.so",)) == "not-listed"
    gone = CommandResult(("ldconfig", "-p"), 127, "", "ldconfig: not found")
    assert parse_ldconfig_cache(gone, ("libwasmedge.so.0",)) == "unknown"
