"""Safe tarball extraction: every member is vetted before the first byte is written."""

from __future__ import annotations

import contextlib
import lzma
import os
import shutil
import stat
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from agentd.core.errors import ArchiveError
from agentd.core.printable import unprintable

MAX_MEMBERS = 10000
MAX_BYTES = 2 << 30
# Symlinks followed while resolving one link target, as the kernel's MAXSYMLINKS.
_MAX_LINK_HOPS = 40
_CHUNK = 1 << 20
# What a damaged or non-tar file raises from tarfile and the decompressors underneath it (gzip's
# BadGzipFile and bz2's "Invalid data stream" are OSErrors).
# ValueError too: tarfile raises it, not TarError, on a malformed GNU sparse PAX header (an int()
# of the header's text), in tarfile.open() already.
_DECODE_ERRORS = (tarfile.TarError, EOFError, OSError, ValueError, zlib.error, lzma.LZMAError)

_DIR, _FILE, _SYMLINK = "directory", "file", "symlink"

Parts = tuple[str, ...]


@dataclass
class _Plan:
    """What check_members proved: each member's normalized path, and where hard links point."""

    paths: dict[int, Parts]
    hardlink_sources: dict[int, tarfile.TarInfo]


def _display(parts: Parts) -> str:
    return "/".join(parts) or "."


def _normalize(name: str) -> Parts:
    """The member name as path components; ValueError (the reason) when it could leave the root."""
    # A NUL, an ESC or a newline in a name would end up in file names, state and every line of
    # output that names them: an archive with one is refused whole, as one with a '..'.
    bad = unprintable(name)
    if bad:
        raise ValueError(f"has {bad} in its name")
    if name.startswith("/"):
        raise ValueError("has an absolute name")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise ValueError("has a '..' component")
    return parts


def _resolve(start: Parts, target: str, links: dict[Parts, str], hops: list[int]) -> Parts | None:
    """Where `target`, relative to directory `start`, lands inside the archive; None if outside.

    Links are followed as the kernel would once everything is extracted, so `a -> .` plus
    `b -> a/a/..` is caught although `a/a/..` looks harmless as text.
    """
    if target.startswith("/"):
        return None
    stack = list(start)
    for comp in target.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            # Above the root is outside; ".." of a path that does not exist in the archive would
            # fail at run time, but it is refused here rather than reasoned about.
            if not stack:
                return None
            stack.pop()
            continue
        stack.append(comp)
        key = tuple(stack)
        if key in links:
            hops[0] += 1
            if hops[0] > _MAX_LINK_HOPS:
                raise ValueError("is part of a symlink loop")
            resolved = _resolve(key[:-1], links[key], links, hops)
            if resolved is None:
                return None
            stack = list(resolved)
    return tuple(stack)


def _plan(
    members: list[tarfile.TarInfo], max_members: int = MAX_MEMBERS, max_bytes: int = MAX_BYTES
) -> _Plan:
    if len(members) > max_members:
        raise ArchiveError(f"archive has more than {max_members} members")
    kinds: dict[Parts, str] = {(): _DIR}
    explicit: set[Parts] = {()}
    regular: dict[Parts, tarfile.TarInfo] = {}
    links: dict[Parts, str] = {}
    plan = _Plan({}, {})
    total = 0
    for index, member in enumerate(members):
        where = f"member {member.name!r}"
        try:
            parts = _normalize(member.name)
        except ValueError as exc:
            raise ArchiveError(f"{where} {exc}") from None
        if member.isdir():
            kind = _DIR
        elif member.isreg():
            kind = _FILE
        elif member.issym():
            kind = _SYMLINK
        elif member.islnk():
            kind = _FILE  # extracted as a copy of its source, so a file like any other
        elif member.ischr() or member.isblk():
            raise ArchiveError(f"{where} is a device node")
        elif member.isfifo():
            raise ArchiveError(f"{where} is a FIFO")
        else:
            raise ArchiveError(f"{where} has unsupported type {member.type!r}")
        if not parts and kind != _DIR:
            raise ArchiveError(f"{where} has an empty name")

        # Every parent must be a directory: a parent that is a symlink would send the write
        # anywhere the link points, and one that is a file would fail half-way through.
        for depth in range(1, len(parts)):
            prefix = parts[:depth]
            existing = kinds.setdefault(prefix, _DIR)
            if existing == _SYMLINK:
                raise ArchiveError(f"{where} passes through symlink {_display(prefix)!r}")
            if existing != _DIR:
                raise ArchiveError(f"{where} is inside {existing} {_display(prefix)!r}")
        previous = kinds.get(parts)
        if previous is not None and not (previous == _DIR and kind == _DIR):
            if parts in explicit and previous == kind:
                raise ArchiveError(f"{where} duplicates an earlier member")
            raise ArchiveError(f"{where} would replace the {previous} {_display(parts)!r}")
        kinds[parts] = kind
        explicit.add(parts)
        plan.paths[index] = parts

        if member.issym():
            if not member.linkname:
                raise ArchiveError(f"{where} is a symlink with an empty target")
            bad_target = unprintable(member.linkname)
            if bad_target:
                raise ArchiveError(f"{where} is a symlink to a target with {bad_target}")
            if member.linkname.startswith("/"):
                raise ArchiveError(f"{where} is a symlink to absolute path {member.linkname!r}")
            links[parts] = member.linkname
        elif member.islnk():
            # Hard links are allowed only to an earlier regular member, and are extracted as an
            # independent copy: nothing outside the archive can be reached or aliased.
            try:
                source_parts = _normalize(member.linkname)
            except ValueError as exc:
                raise ArchiveError(f"{where} is a hard link whose target {exc}") from None
            source = regular.get(source_parts)
            if source is None:
                raise ArchiveError(
                    f"{where} is a hard link to {member.linkname!r}, "
                    "which is not an earlier regular file in the archive"
                )
            plan.hardlink_sources[index] = source
            regular[parts] = source
            total += source.size
        elif member.isreg():
            regular[parts] = member
            total += member.size
        if total > max_bytes:
            raise ArchiveError(f"archive unpacks to more than {max_bytes} bytes")

    # Symlinks are judged against the complete tree: a link's meaning depends on members that
    # may come after it.
    for parts, target in links.items():
        try:
            resolved = _resolve(parts[:-1], target, links, [0])
        except ValueError as exc:
            raise ArchiveError(f"member {_display(parts)!r} {exc}") from None
        if resolved is None:
            raise ArchiveError(
                f"member {_display(parts)!r} is a symlink to {target!r}, outside the archive"
            )
    return plan


def check_members(
    members: list[tarfile.TarInfo], *, max_members: int = MAX_MEMBERS, max_bytes: int = MAX_BYTES
) -> None:
    """Raise ArchiveError naming the first member that makes the archive unsafe to extract."""
    _plan(members, max_members, max_bytes)


def _scan(tar: tarfile.TarFile, max_members: int, max_bytes: int) -> list[tarfile.TarInfo]:
    # Read headers one by one so a hostile archive is refused before all of it is held in memory
    # or decompressed.
    members: list[tarfile.TarInfo] = []
    total = 0
    while True:
        member = tar.next()
        if member is None:
            return members
        members.append(member)
        if len(members) > max_members:
            raise ArchiveError(f"archive has more than {max_members} members")
        if member.isreg():
            total += member.size
            if total > max_bytes:
                raise ArchiveError(f"archive unpacks to more than {max_bytes} bytes")


def _reason(exc: BaseException) -> str:
    """One line: tarfile's "could not be opened" lists a reason per compression, one per line."""
    if isinstance(exc, tarfile.ReadError) and "could not be opened" in str(exc):
        return "not a tar, tar.gz, tar.bz2 or tar.xz file"
    return " ".join(str(exc).split()) or type(exc).__name__


def _check_dest(dest: Path) -> bool:
    """Whether dest already exists (then it is an empty real directory); refuse anything else."""
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        raise ArchiveError(f"extraction target {dest} exists and is not a directory")
    with os.scandir(dest) as entries:
        if any(entries):
            raise ArchiveError(f"extraction target {dest} is not empty")
    return True


def _make_parents(dest: Path, parts: Parts) -> None:
    path = dest
    for comp in parts[:-1]:
        path = path / comp
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o755)
            os.chmod(path, 0o755)  # noqa: S103 - the umask must not decide what ldconfig can read


def _write_file(path: Path, name: str, source: IO[bytes], size: int, mode: int) -> None:
    # O_EXCL | O_NOFOLLOW: the check proved nothing is there; if something is, do not follow it.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        written = 0
        while True:
            chunk = source.read(_CHUNK)
            if not chunk:
                break
            written += len(chunk)
            if written > size:
                break
            out.write(chunk)
        if written != size:
            raise ArchiveError(f"member {name!r} has {written} bytes, its header says {size}")
        # setuid/setgid/sticky and group/other write are never carried over from an archive.
        os.fchmod(out.fileno(), mode & 0o755)


def _extract(
    tar: tarfile.TarFile, members: list[tarfile.TarInfo], plan: _Plan, dest: Path
) -> list[str]:
    extracted: list[str] = []
    for index, member in enumerate(members):
        parts = plan.paths[index]
        if not parts:
            continue
        path = dest.joinpath(*parts)
        _make_parents(dest, parts)
        if member.isdir():
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, 0o755)
            os.chmod(path, 0o755)  # noqa: S103 - directories are always 0o755, whatever the tar says
            continue
        if member.issym():
            os.symlink(member.linkname, path)
        elif member.islnk():
            source = plan.hardlink_sources[index]
            source_path = dest.joinpath(*_normalize(source.name))
            fd = os.open(source_path, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as data:
                _write_file(path, member.name, data, source.size, source.mode)
        else:
            data_or_none = tar.extractfile(member)
            if data_or_none is None:
                raise ArchiveError(f"member {member.name!r} has no data")
            with data_or_none as data:
                _write_file(path, member.name, data, member.size, member.mode)
        extracted.append("/".join(parts))
    return sorted(extracted)


def _empty(dest: Path, remove: bool) -> None:
    if remove:
        shutil.rmtree(dest, ignore_errors=True)
        return
    with os.scandir(dest) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)


def extract_tarball(
    archive: Path, dest: Path, *, max_members: int = MAX_MEMBERS, max_bytes: int = MAX_BYTES
) -> list[str]:
    """Vet every member of a tar(.gz/.xz/.bz2), then extract it all into a new or empty `dest`.

    Returns the sorted relative paths of the files and symlinks extracted. On any refusal or
    failure, ArchiveError is raised and `dest` is left as it was found (absent or empty).
    Files are owned by the caller and get mode & 0o755; directories get 0o755.
    """
    existed = _check_dest(dest)
    try:
        tar = tarfile.open(archive, "r:*")  # noqa: SIM115 - closed by the `with tar` below
    except _DECODE_ERRORS as exc:
        raise ArchiveError(
            f"{archive.name} is not a readable tar archive: {_reason(exc)}"
        ) from None
    with tar:
        try:
            members = _scan(tar, max_members, max_bytes)
            plan = _plan(members, max_members, max_bytes)
        except ArchiveError as exc:
            raise ArchiveError(f"refusing {archive.name}: {exc}") from None
        except _DECODE_ERRORS as exc:
            raise ArchiveError(
                f"{archive.name} is not a valid tar archive: {_reason(exc)}"
            ) from None

        dest.parent.mkdir(parents=True, exist_ok=True)
        if not existed:
            os.mkdir(dest, 0o755)
        try:
            return _extract(tar, members, plan, dest)
        except BaseException as exc:
            _empty(dest, remove=not existed)
            if isinstance(exc, ArchiveError):
                raise ArchiveError(f"{archive.name}: {exc}") from None
            if isinstance(exc, _DECODE_ERRORS):
                raise ArchiveError(
                    f"{archive.name} could not be extracted: {_reason(exc)}"
                ) from None
            raise
