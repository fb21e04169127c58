"""A full, read-only or failing disk: which errors those are, and the file system to name."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Optional

# Out of space or quota, an I/O error, a read-only file system: the node's storage refused a
# write. Not a bug of agentd's (exit 70) but a state of the node to report and to recover from.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})


def storage_error(exc: BaseException) -> Optional[OSError]:
    """`exc`, or the OSError that caused it, when the storage refused a write; else None."""
    seen: Optional[BaseException] = exc
    for _ in range(8):  # a chain of causes is short; a loop in it must not hang
        if seen is None:
            return None
        if isinstance(seen, OSError) and seen.errno in STORAGE_ERRNOS:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _mount_point(path: Path) -> Path:
    """The mount point of the file system `path` (or its nearest existing parent) is on."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        dev = path.stat().st_dev
        while path != path.parent and path.parent.stat().st_dev == dev:
            path = path.parent
    except OSError:
        pass
    return path


def _size(n: int) -> str:
    size, units = float(n), ["bytes", "KiB", "MiB", "GiB", "TiB"]
    while size >= 1024 and len(units) > 1:
        size /= 1024
        units.pop(0)
    return f"{n} bytes" if units[0] == "bytes" else f"{size:.1f} {units[0]}"


def describe(exc: OSError, near: Optional[Path] = None) -> str:
    """What the storage said, and of which file system: `no space left on device writing
    /var/lib/wasm-edge/state.json (the file system mounted at /var/lib: 0 bytes free of 1.0 MiB)`.
    `near`: where the write most likely was when the error names no file (a write() of data)."""
    what = (exc.strerror or os.strerror(exc.errno or 0)).lower()
    name = exc.filename if isinstance(exc.filename, (str, bytes, os.PathLike)) else None
    if name is None and near is None:
        return what
    path = Path(os.fsdecode(name)) if name is not None else Path(near or "/")
    mount = _mount_point(path)
    try:
        st = os.statvfs(mount)
        space = f"{_size(st.f_bavail * st.f_frsize)} free of {_size(st.f_blocks * st.f_frsize)}"
    except OSError:
        space = "free space unknown"
    writing = f"writing {path}" if name is not None else f"writing under {path}"
    return f"{what} {writing} (the file system mounted at {mount}: {space})"
