"""What wakes the loop between runs: a byte down a pipe (any signal included), and local edits."""

from __future__ import annotations

import contextlib
import os
import select
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentd.core.paths import Paths
from agentd.system.log import get_logger

# Local files that make a run: anything else in /etc/wasm-edge (editor swap files) is ignored.
_WATCHED_SUFFIXES = (".yaml",)


class Wakeup:
    """What wakes the daemon's loop: a byte down a non-blocking pipe. Unlike Event.set(), writing
    it takes no lock, so a signal handler cannot deadlock on a lock the main thread it interrupted
    holds (Event.wait() and clear() hold one; a SIGHUP landing there hung the daemon in the soak
    test after a few hundred reloads)."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # Closed with the object, never before: a thread still holding it may yet call set(),
        # and a write to a closed (and perhaps reused) descriptor would land in another file.
        weakref.finalize(self, os.close, self._read)
        weakref.finalize(self, os.close, self._write)

    @property
    def signal_fd(self) -> int:
        """For signal.set_wakeup_fd(): the kernel may run a signal's C handler on any thread,
        and then nothing interrupts the main thread's select() but this byte (the Python
        handler runs once the main thread is awake again)."""
        return self._write

    def set(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe wakes the loop anyway
            os.write(self._write, b"\0")

    def wait(self, timeout: float) -> None:
        """Until set() or `timeout`; then forget every set() so far (the caller checks why)."""
        select.select([self._read], [], [], max(0.0, timeout))
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read, 4096):
                pass


class FileWatch:
    """inotify (through watchdog) on /etc/wasm-edge: `changed(host path)` is called, on the
    observer's thread, for every event on a file that makes a run."""

    def __init__(self, paths: Paths, changed: Callable[[str], None]) -> None:
        self.paths = paths
        self.changed = changed
        self._observer: Any = None

    def start(self) -> None:
        log = get_logger()
        try:
            from watchdog.events import FileSystemEvent, FileSystemEventHandler  # noqa: PLC0415
            from watchdog.observers import Observer  # noqa: PLC0415
        except ImportError:  # pragma: no cover - watchdog is a dependency; the timer still runs
            log.warning("watchdog missing: local edits wait for the timer")
            return
        etc = self.paths.etc_dir
        try:
            etc.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("cannot watch local files", error=str(exc))
            return
        watch = self

        class _Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return
                for raw in (event.src_path, getattr(event, "dest_path", "")):
                    path = os.fsdecode(raw) if raw else ""
                    if path and watch.watched(Path(path)):
                        watch.changed(watch.paths.host_view(Path(path)))
                        return

        observer = Observer(timeout=0.1)
        observer.schedule(_Handler(), str(etc), recursive=True)
        observer.daemon = True
        observer.start()
        self._observer = observer

    def watched(self, path: Path) -> bool:
        paths = self.paths
        if path in (paths.suspend_file, paths.desired_file, paths.desired_dir):
            return True
        return path.parent == paths.desired_dir and path.suffix in _WATCHED_SUFFIXES

    def stop(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(timeout=5)
