"""Files: atomic writes beside the target (fsynced, renamed), bounded reads, removal."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from pathlib import Path

from agentd.system.readfile import FileRefused, FileTooLarge, open_regular, read_bounded


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# The temporary files atomic writes leave behind when the process is killed before the rename.
TEMP_RE = re.compile(r"^\..+\.agentd-[0-9a-f]{8}$")


def temp_beside(target: Path) -> Path:
    # Same directory as the target so the final rename never crosses a file system.
    return target.with_name(f".{target.name}.agentd-{secrets.token_hex(4)}")


def sweep_temp_files(directory: Path) -> list[Path]:
    """Remove what a killed agentd left in `directory` (only its own temp files and symlinks,
    by name); the caller holds the state lock, so no run of its own is writing them."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        # atomic_symlink's temp is a symlink: is_file() would follow it, or find it dangling.
        temp = entry.is_symlink() or entry.is_file(follow_symlinks=False)
        if TEMP_RE.match(entry.name) and temp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


# A temp file is always new: never an existing file, never through a link someone left there.
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def atomic_write(target: Path, data: bytes, mode: int = 0o644) -> None:
    """Write beside the target, fsync, chmod, rename: readers see the old or the new file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(target)
    try:
        fd = os.open(tmp, _CREATE, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(tmp)  # write() says ENOSPC without a name: say which file
        raise
    fsync_dir(target.parent)


def atomic_copy(source: Path, target: Path, mode: int) -> None:
    """Copy a file into place atomically (streamed, so large binaries are not held in memory)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(target)
    try:
        with (
            open_regular(source) as src,
            open(os.open(tmp, _CREATE, 0o600), "wb") as dst,
        ):
            while chunk := src.read(1 << 20):
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(tmp)  # write() says ENOSPC without a name: say which file
        raise
    fsync_dir(target.parent)


def atomic_symlink(link_target: str, link: Path) -> None:
    """Point `link` at `link_target`, replacing whatever was there in one rename."""
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(link)
    os.symlink(link_target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(link.parent)


def remove_tree(path: Path) -> None:
    """Remove a directory tree if present, ignoring errors (caches and scratch space only)."""
    # shutil loads the bz2 and lzma modules: imported here, not by the daemon at start.
    import shutil  # noqa: PLC0415

    shutil.rmtree(path, ignore_errors=True)


def remove_path(path: Path) -> None:
    """Remove a file or symlink (never a directory tree) if present."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def read_bytes_limited(path: Path, limit: int, *, follow: bool = True) -> bytes | None:
    """The regular file's bytes, or None when it is larger than `limit` (see read_bounded)."""
    try:
        return read_bounded(path, limit, follow=follow)
    except FileTooLarge:
        return None


# agentd's own JSON files (state.json, daemon.json, the fleet store's records, snapshots) are
# small: anything bigger than this is not one of them.
MAX_JSON_BYTES = 16 << 20


class JsonFileError(ValueError):
    """A JSON file of agentd's that cannot be used: too large, not a regular file (a link, a
    directory, a FIFO), not JSON, or not an object."""


def write_json(target: Path, doc: object, mode: int = 0o600) -> None:
    """One format for every JSON file agentd keeps: indented, newline-terminated, atomic."""
    atomic_write(target, json.dumps(doc, indent=2).encode() + b"\n", mode)


def read_json(path: Path, limit: int = MAX_JSON_BYTES) -> dict[str, object] | None:
    """The JSON object in `path`, or None when there is no such file (JsonFileError when the
    file is there but unusable: the caller says what that means for its file). These are
    agentd's own files: a link in their place is not followed."""
    try:
        raw = read_bounded(path, limit, follow=False)
    except FileNotFoundError:
        return None
    except FileRefused as exc:
        raise JsonFileError(f"{path} {exc.strerror}") from None
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise JsonFileError(f"{path} is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise JsonFileError(f"{path} holds a {type(doc).__name__}, not an object")
    return doc
