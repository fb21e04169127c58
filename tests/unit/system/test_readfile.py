"""The one reader: regular files only, never blocking on a FIFO, never reading past its bound."""

from __future__ import annotations

import errno
import os
import threading
import tracemalloc
from pathlib import Path

import pytest

from agentd.system.files import JsonFileError, read_bytes_limited, read_json
from agentd.system.readfile import FileRefused, FileTooLarge, open_regular, read_bounded


def _within(seconds: float, call: object) -> object:
    """`call()`'s result or exception, failing the test if it has not returned in time."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = call()  # type: ignore[operator]
        except BaseException as exc:  # handed back to the test
            box["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still blocked after {seconds} s"
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("value")


def test_a_regular_file_is_read_up_to_its_bound(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    assert read_bounded(path, 100) == b"x" * 100
    with pytest.raises(FileTooLarge, match="larger than 99 bytes"):
        read_bounded(path, 99)
    assert read_bytes_limited(path, 99) is None


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(FileRefused, match="is a FIFO, not a regular file"):
        _within(5, lambda: read_bounded(fifo, 10))


def test_a_fifo_swapped_in_after_the_check_does_not_block(tmp_path: Path) -> None:
    # What open_regular does after its check: the open itself must not wait for a writer.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    fd = _within(5, lambda: os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
    assert isinstance(fd, int)
    os.close(fd)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: p.symlink_to("/dev/zero"), "is a character device"),
        (lambda p: p.symlink_to(p), "is a loop of symbolic links"),
    ],
)
def test_what_is_not_a_regular_file_is_refused(tmp_path: Path, make: object, message: str) -> None:
    path = tmp_path / "odd"
    make(path)  # type: ignore[operator]
    with pytest.raises(FileRefused, match=message):
        _within(5, lambda: read_bounded(path, 10))


def test_a_link_is_not_followed_where_it_must_not_be(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("{}")
    link = tmp_path / "link"
    link.symlink_to(target)
    assert read_bounded(link, 10) == b"{}"
    with pytest.raises(FileRefused, match="is a symbolic link") as caught:
        read_bounded(link, 10, follow=False)
    assert caught.value.errno == errno.EINVAL
    with pytest.raises(JsonFileError, match="is a symbolic link"):
        read_json(link)


def test_a_huge_sparse_file_is_refused_by_its_size_unread(tmp_path: Path) -> None:
    path = tmp_path / "sparse"
    with path.open("wb") as f:
        f.truncate(2 << 30)
    tracemalloc.start()
    try:
        with pytest.raises(FileTooLarge, match=f"larger than {1 << 20} bytes \\({2 << 30}\\)"):
            read_bounded(path, 1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_a_file_larger_than_its_stated_size_is_read_no_further_than_the_bound() -> None:
    # procfs files report a size of 0 and still have content: the bound holds on what is read.
    status = Path("/proc/self/status")
    assert os.stat(status).st_size == 0
    with pytest.raises(FileTooLarge):
        read_bounded(status, 16)


def test_open_regular_hands_back_a_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"\x7fELF")
    with open_regular(path, follow=False) as f:
        assert f.read() == b"\x7fELF"
