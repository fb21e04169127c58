"""The one way agentd reads a file: a regular file only, never blocking, never read past a bound."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

# Bounds for files no other module states one for: identity and release files of a few lines,
# agentd's own small records (the lock stamp, a keyring's digest stamp).
SMALL_FILE_BYTES = 64 << 10
# A gpg keyring holds a handful of public keys: far below this.
KEYRING_BYTES = 4 << 20

_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFLNK: "a symbolic link",
}


class FileRefused(OSError):
    """The path is there but is not a file agentd reads: not regular, a link, or too large."""


class FileTooLarge(FileRefused):
    """A regular file larger than the bound for its kind."""


def _kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def _refuse_odd(path: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise FileRefused(errno.EINVAL, f"is {_kind(st.st_mode)}, not a regular file", str(path))


def open_regular(path: Path, *, follow: bool = True) -> BinaryIO:
    """`path` opened for reading, checked first to be a regular file (through links only when
    `follow`): a FIFO, a device or a directory is refused, never opened and waited on."""
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FileRefused(errno.ELOOP, "is a loop of symbolic links", str(path)) from None
        raise
    _refuse_odd(path, st)
    # O_NONBLOCK: should a FIFO be swapped in after the check, open() returns at once instead
    # of waiting for a writer (a signal would not end that wait: Python retries the call).
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FileRefused(errno.ELOOP, "is a symbolic link", str(path)) from None
        raise
    try:
        _refuse_odd(path, os.fstat(fd))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bounded(path: Path, limit: int, *, follow: bool = True) -> bytes:
    """The bytes of the regular file `path`; FileTooLarge, before reading anything, when its
    size is over `limit`, and after `limit` + 1 bytes when it grows or lies about its size."""
    with open_regular(path, follow=follow) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise FileTooLarge(errno.EFBIG, f"is larger than {limit} bytes ({size})", str(path))
        data = f.read(limit + 1)
    if len(data) > limit:
        raise FileTooLarge(errno.EFBIG, f"is larger than {limit} bytes", str(path))
    return data


def read_text_bounded(path: Path, limit: int, *, follow: bool = True) -> str:
    """read_bounded as text (UTF-8, undecodable bytes replaced)."""
    return read_bounded(path, limit, follow=follow).decode("utf-8", errors="replace")
