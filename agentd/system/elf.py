"""ELF files as the loader reads them: the loader a program names, and its dynamic section."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional

from agentd.system.readfile import open_regular

_PT_LOAD, _PT_DYNAMIC, _PT_INTERP = 1, 2, 3
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
    found = _read_elf(path, want_interpreter=False)
    return found if isinstance(found, Dynamic) else None


def elf_interpreter(path: Path) -> Optional[str]:
    """The dynamic loader an ELF program names (PT_INTERP); None for a script, a static
    program or an unreadable file."""
    found = _read_elf(path, want_interpreter=True)
    return found if isinstance(found, str) else None


def _read_elf(path: Path, *, want_interpreter: bool) -> Dynamic | str | None:
    try:
        with open_regular(path) as handle:
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
            interp: Optional[tuple[int, int]] = None
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
                elif kind == _PT_INTERP:
                    interp = (offset, filesz)
            if want_interpreter:
                if interp is None:
                    return None
                return (
                    _read(handle, interp[0], min(interp[1], 4096))
                    .rstrip(b"\0")
                    .decode("utf-8", "replace")
                )
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
