"""extract_tarball on real tarballs: the WasmEdge layout unpacks, hostile archives are refused."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from pathlib import Path
from typing import Callable, Optional

import pytest

from agentd.converge.archive import check_members, extract_tarball
from agentd.core.errors import ArchiveError

Entry = tuple[tarfile.TarInfo, Optional[bytes]]

TOP = "WasmEdge-0.14.1-Linux"


def _file(name: str, data: bytes = b"data\n", mode: int = 0o644) -> Entry:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    return info, data


def _dir(name: str, mode: int = 0o755) -> Entry:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    return info, None


def _symlink(name: str, target: str) -> Entry:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    info.mode = 0o777
    return info, None


def _hardlink(name: str, target: str) -> Entry:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE
    info.linkname = target
    return info, None


def _special(name: str, kind: bytes) -> Entry:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.devmajor, info.devminor = 1, 3
    return info, None


def _build(path: Path, entries: list[Entry], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:  # type: ignore[call-overload]
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _snapshot(root: Path) -> set[str]:
    """Every path under root, symlinks not followed: compared before and after a refusal."""
    seen = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            seen.add(os.path.relpath(os.path.join(dirpath, name), root))
    return seen


def _wasmedge_entries() -> list[Entry]:
    return [
        _dir(f"{TOP}/"),
        _dir(f"{TOP}/bin/"),
        _file(f"{TOP}/bin/wasmedge", b"\x7fELF wasmedge", 0o755),
        _dir(f"{TOP}/lib64/"),
        _file(f"{TOP}/lib64/libwasmedge.so.0.1.0", b"\x7fELF libwasmedge", 0o644),
        _symlink(f"{TOP}/lib64/libwasmedge.so.0", "libwasmedge.so.0.1.0"),
        _symlink(f"{TOP}/lib64/libwasmedge.so", "libwasmedge.so.0"),
        _dir(f"{TOP}/include/"),
        _dir(f"{TOP}/include/wasmedge/"),
        _file(f"{TOP}/include/wasmedge/wasmedge.h", b"#pragma once\n"),
    ]


# --- archives that extract -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["w:gz", "w:xz", "w:bz2", "w"])
def test_wasmedge_layout_extracts_with_symlink_chain(tmp_path: Path, mode: str) -> None:
    archive = _build(tmp_path / "wasmedge.tar", _wasmedge_entries(), mode)
    dest = tmp_path / "out"

    extracted = extract_tarball(archive, dest)

    assert extracted == [
        f"{TOP}/bin/wasmedge",
        f"{TOP}/include/wasmedge/wasmedge.h",
        f"{TOP}/lib64/libwasmedge.so",
        f"{TOP}/lib64/libwasmedge.so.0",
        f"{TOP}/lib64/libwasmedge.so.0.1.0",
    ]
    lib64 = dest / TOP / "lib64"
    assert os.readlink(lib64 / "libwasmedge.so") == "libwasmedge.so.0"
    assert os.readlink(lib64 / "libwasmedge.so.0") == "libwasmedge.so.0.1.0"
    assert (lib64 / "libwasmedge.so").read_bytes() == b"\x7fELF libwasmedge"
    assert (lib64 / "libwasmedge.so").resolve() == (lib64 / "libwasmedge.so.0.1.0").resolve()
    assert stat.S_IMODE((dest / TOP / "bin" / "wasmedge").stat().st_mode) == 0o755
    assert stat.S_IMODE((lib64 / "libwasmedge.so.0.1.0").stat().st_mode) == 0o644
    assert stat.S_IMODE((dest / TOP / "include").stat().st_mode) == 0o755


def test_archive_made_by_tar_add_with_dot_root(tmp_path: Path) -> None:
    # `tar -C dir -czf x.tar.gz .` style: a "./" root entry and "./"-prefixed names.
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "tool").write_bytes(b"tool")
    (src / "link").symlink_to("bin/tool")
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname=".")

    assert extract_tarball(archive, tmp_path / "out") == ["bin/tool", "link"]
    assert (tmp_path / "out" / "link").read_bytes() == b"tool"


def test_members_without_directory_entries_get_0755_parents(tmp_path: Path) -> None:
    archive = _build(tmp_path / "a.tar.gz", [_file("deep/er/file.so", b"x")])
    dest = tmp_path / "out"
    assert extract_tarball(archive, dest) == ["deep/er/file.so"]
    assert stat.S_IMODE((dest / "deep" / "er").stat().st_mode) == 0o755


def test_setuid_setgid_sticky_and_group_write_are_stripped(tmp_path: Path) -> None:
    entries = [
        _dir("d", mode=0o7777),
        _file("d/suid", mode=0o4755),
        _file("d/sgid", mode=0o2755),
        _file("d/sticky", mode=0o1777),
        _file("d/world", mode=0o666),
        _file("d/private", mode=0o600),
    ]
    archive = _build(tmp_path / "a.tar.gz", entries)
    dest = tmp_path / "out"

    extract_tarball(archive, dest)

    def mode(name: str) -> int:
        return stat.S_IMODE((dest / "d" / name).stat().st_mode)

    assert stat.S_IMODE((dest / "d").stat().st_mode) == 0o755
    assert mode("suid") == 0o755
    assert mode("sgid") == 0o755
    assert mode("sticky") == 0o755
    assert mode("world") == 0o644
    assert mode("private") == 0o600


def test_hard_link_to_earlier_member_is_an_independent_copy(tmp_path: Path) -> None:
    entries = [_file("lib/a.so", b"shared", 0o755), _hardlink("lib/b.so", "lib/a.so")]
    archive = _build(tmp_path / "a.tar.gz", entries)
    dest = tmp_path / "out"

    assert extract_tarball(archive, dest) == ["lib/a.so", "lib/b.so"]
    a, b = dest / "lib" / "a.so", dest / "lib" / "b.so"
    assert b.read_bytes() == b"shared"
    assert a.stat().st_ino != b.stat().st_ino
    assert stat.S_IMODE(b.stat().st_mode) == 0o755


def test_internal_symlinks_to_directories_are_kept(tmp_path: Path) -> None:
    entries = [
        _file("v1/lib.so", b"x"),
        _symlink("current", "v1"),
        _symlink("v1/self", "."),
        _symlink("v1/up", "../current/lib.so"),
        _symlink("dangling", "not/there"),
    ]
    archive = _build(tmp_path / "a.tar.gz", entries)
    dest = tmp_path / "out"
    assert extract_tarball(archive, dest) == [
        "current",
        "dangling",
        "v1/lib.so",
        "v1/self",
        "v1/up",
    ]
    assert (dest / "v1" / "up").read_bytes() == b"x"


def test_existing_empty_dest_is_used(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    archive = _build(tmp_path / "a.tar.gz", [_file("x")])
    assert extract_tarball(archive, dest) == ["x"]


def test_non_empty_dest_is_refused_and_left_alone(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "keep").write_text("mine")
    archive = _build(tmp_path / "a.tar.gz", [_file("x")])
    with pytest.raises(ArchiveError, match="not empty"):
        extract_tarball(archive, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["keep"]


def test_dest_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    dest = tmp_path / "out"
    dest.symlink_to(real)
    archive = _build(tmp_path / "a.tar.gz", [_file("x")])
    with pytest.raises(ArchiveError, match="not a directory"):
        extract_tarball(archive, dest)
    assert list(real.iterdir()) == []


def test_failure_during_extraction_removes_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = _build(tmp_path / "a.tar.gz", [_file("a/one"), _symlink("a/two", "one")])

    def no_space(*_args: object, **_kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "symlink", no_space)
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match="No space left"):
        extract_tarball(archive, dest)
    assert not dest.exists()

    dest.mkdir()
    with pytest.raises(ArchiveError):
        extract_tarball(archive, dest)
    assert list(dest.iterdir()) == []


# --- hostile archives: refused whole, nothing written anywhere --------------------------------

Builder = Callable[[Path], list[Entry]]

HOSTILE: dict[str, tuple[Builder, str]] = {
    "absolute-path": (lambda out: [_file("ok"), _file(str(out / "abs.txt"))], "absolute name"),
    "dotdot": (lambda out: [_file("ok"), _file("../outside/dotdot.txt")], "'..' component"),
    "dotdot-deep": (lambda out: [_file("a/b/../../../outside/x")], "'..' component"),
    "symlink-absolute": (lambda out: [_symlink("evil", str(out))], "absolute path"),
    "symlink-relative-escape": (
        lambda out: [_dir("a"), _symlink("a/evil", "../../outside")],
        "outside the archive",
    ),
    "symlink-escape-through-other-symlink": (
        # "a/a/.." looks internal as text, but a -> . makes it the parent of the root.
        lambda out: [_symlink("a", "."), _symlink("b", "a/a/..")],
        "outside the archive",
    ),
    "symlink-escape-via-later-member": (
        lambda out: [_symlink("b", "up/x"), _symlink("up", "..")],
        "outside the archive",
    ),
    "symlink-loop": (lambda out: [_symlink("a", "b/x"), _symlink("b", "a")], "loop"),
    "symlink-empty-target": (lambda out: [_symlink("a", "")], "empty target"),
    "write-through-symlink-dir": (
        lambda out: [_dir("real"), _symlink("d", "real"), _file("d/x")],
        "passes through symlink 'd'",
    ),
    "write-through-escaping-symlink": (
        lambda out: [_symlink("d", "../outside"), _file("d/pwned")],
        "passes through symlink",
    ),
    "hardlink-etc-passwd": (lambda out: [_hardlink("passwd", "/etc/passwd")], "hard link"),
    "hardlink-relative-escape": (
        lambda out: [_file("x"), _hardlink("h", "../outside/x")],
        "hard link",
    ),
    "hardlink-to-later-member": (
        lambda out: [_hardlink("h", "later"), _file("later")],
        "not an earlier regular file",
    ),
    "hardlink-to-symlink": (
        lambda out: [_symlink("s", "x"), _hardlink("h", "s")],
        "not an earlier regular file",
    ),
    "char-device": (lambda out: [_file("ok"), _special("dev/null", tarfile.CHRTYPE)], "device"),
    "block-device": (lambda out: [_special("sda", tarfile.BLKTYPE)], "device"),
    "fifo": (lambda out: [_special("pipe", tarfile.FIFOTYPE)], "FIFO"),
    "duplicate-file": (lambda out: [_file("x"), _file("x", b"other")], "duplicates"),
    "duplicate-symlink": (lambda out: [_symlink("x", "a"), _symlink("x", "b")], "duplicates"),
    "file-then-dir": (lambda out: [_file("x"), _dir("x")], "replace the file"),
    "dir-then-file": (lambda out: [_dir("x"), _file("x")], "replace the directory"),
    "implicit-dir-then-symlink": (
        lambda out: [_file("lib/a.so"), _symlink("lib", "../outside")],
        "replace the directory 'lib'",
    ),
    "file-under-file": (lambda out: [_file("x"), _file("x/y")], "inside file 'x'"),
    "empty-name": (lambda out: [_file("./")], "empty name"),
    # A name that would clear the screen, forge a line or is not UTF-8 reaches no file name.
    "escape-in-name": (lambda out: [_file("lib/\x1b[2J.so")], "control character \\x1b"),
    "newline-in-name": (lambda out: [_file('a\n{"level":"error"}')], "control character \\n"),
    "c1-in-name": (lambda out: [_file("lib/\x9b31m.so")], "control character \\x9b"),
    "line-separator-in-name": (lambda out: [_file("a\u2028b")], "control character \\u2028"),
    "non-utf8-name": (lambda out: [_file(os.fsdecode(b"lib/\xff.so"))], "not UTF-8"),
    "escape-in-symlink-target": (
        lambda out: [_file("a"), _symlink("b", "a\x1b[2J")],
        "a target with the control character \\x1b",
    ),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_archive_is_refused_whole(tmp_path: Path, kind: str) -> None:
    build, reason = HOSTILE[kind]
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = _build(tmp_path / "hostile.tar.gz", build(outside))
    dest = tmp_path / "work" / "out"
    before = _snapshot(tmp_path)

    with pytest.raises(ArchiveError, match=r"refusing hostile\.tar\.gz: member") as info:
        extract_tarball(archive, dest)

    assert reason in str(info.value)
    assert "\n" not in str(info.value)
    assert not dest.exists()
    assert _snapshot(tmp_path) == before
    assert list(outside.iterdir()) == []


def test_hostile_archive_leaves_existing_empty_dest_empty(tmp_path: Path) -> None:
    archive = _build(tmp_path / "a.tar.gz", [_file("a"), _file("b"), _file("/etc/evil")])
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(ArchiveError, match="'/etc/evil' has an absolute name"):
        extract_tarball(archive, dest)
    assert list(dest.iterdir()) == []


def test_too_many_members(tmp_path: Path) -> None:
    archive = _build(tmp_path / "a.tar.gz", [_file(f"f{i}") for i in range(6)])
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match="more than 5 members"):
        extract_tarball(archive, dest, max_members=5)
    assert not dest.exists()
    assert extract_tarball(archive, dest, max_members=6) == [f"f{i}" for i in range(6)]


def test_too_many_bytes(tmp_path: Path) -> None:
    archive = _build(tmp_path / "a.tar.gz", [_file("a", b"x" * 60), _file("b", b"x" * 41)])
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match="more than 100 bytes"):
        extract_tarball(archive, dest, max_bytes=100)
    assert not dest.exists()


def test_hard_link_copies_count_toward_the_byte_limit(tmp_path: Path) -> None:
    archive = _build(tmp_path / "a.tar.gz", [_file("a", b"x" * 60), _hardlink("b", "a")])
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match="more than 100 bytes"):
        extract_tarball(archive, dest, max_bytes=100)
    assert not dest.exists()


def test_gzip_bomb_header_sizes_are_refused_before_writing(tmp_path: Path) -> None:
    # 8 MiB of zeros compresses to a few KiB: the limit applies to what would be written.
    archive = _build(tmp_path / "a.tar.gz", [_file("zeros", bytes(8 << 20))])
    assert archive.stat().st_size < 100_000
    with pytest.raises(ArchiveError, match="more than"):
        extract_tarball(archive, tmp_path / "out", max_bytes=1 << 20)
    assert not (tmp_path / "out").exists()


def _corrupt_random(path: Path) -> None:
    path.write_bytes(os.urandom(4096))


def _corrupt_empty(path: Path) -> None:
    path.write_bytes(b"")


def _corrupt_gzip_of_text(path: Path) -> None:
    path.write_bytes(gzip.compress(b"this is not a tar archive\n" * 100))


def _corrupt_truncated_gzip(path: Path) -> None:
    # Good members first, then the stream stops: nothing from the good part may be extracted.
    _build(path, [_file("first", b"ok"), _file("big", os.urandom(300_000)), _file("last")])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _corrupt_truncated_plain_tar(path: Path) -> None:
    _build(path, [_file("first", b"ok"), _file("big", os.urandom(300_000))], mode="w")
    data = path.read_bytes()
    path.write_bytes(data[:100_000])


@pytest.mark.parametrize(
    "corrupt",
    [
        _corrupt_random,
        _corrupt_empty,
        _corrupt_gzip_of_text,
        _corrupt_truncated_gzip,
        _corrupt_truncated_plain_tar,
    ],
)
def test_corrupt_or_non_tar_file(tmp_path: Path, corrupt: Callable[[Path], None]) -> None:
    archive = tmp_path / "bad.tar.gz"
    corrupt(archive)
    dest = tmp_path / "out"
    before = _snapshot(tmp_path)
    with pytest.raises(ArchiveError, match=r"bad\.tar\.gz") as info:
        extract_tarball(archive, dest)
    assert "\n" not in str(info.value)
    assert not dest.exists()
    assert _snapshot(tmp_path) == before


def test_missing_archive(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="not a readable tar archive"):
        extract_tarball(tmp_path / "nope.tar.gz", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- check_members, without any file ----------------------------------------------------------


def test_check_members_accepts_wasmedge_layout() -> None:
    check_members([info for info, _ in _wasmedge_entries()])


def test_check_members_names_the_member() -> None:
    members = [_file("ok")[0], _symlink("lib/libx.so", "../../../usr/lib/libx.so")[0]]
    with pytest.raises(ArchiveError, match=r"member 'lib/libx.so' is a symlink to '\.\./"):
        check_members(members)


def test_check_members_limits() -> None:
    members = [_file(f"f{i}", b"12345")[0] for i in range(3)]
    check_members(members, max_members=3, max_bytes=15)
    with pytest.raises(ArchiveError, match="more than 2 members"):
        check_members(members, max_members=2)
    with pytest.raises(ArchiveError, match="more than 14 bytes"):
        check_members(members, max_bytes=14)


def test_check_members_allows_repeated_directory_entries() -> None:
    check_members([_dir("a")[0], _file("a/x")[0], _dir("a/")[0], _dir("./a")[0]])
