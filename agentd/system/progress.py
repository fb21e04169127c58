"""A run's progress as it happens: one \\r-updated line on a terminal, or lines for the daemon."""

from __future__ import annotations

import contextlib
import os
import stat
import time
from typing import Callable, Optional, TextIO

CLEAR_LINE = "\r\x1b[K"  # to the line's start, and erase it: the one sequence progress writes

# A worker tells the daemon what it is doing through this inherited pipe (for its STATUS=).
PROGRESS_FD_ENV = "AGENTD_PROGRESS_FD"
_SHOWN: list[TerminalProgress] = []  # the line on the terminal now, for the logs to erase


def _unit(n: float) -> tuple[float, str]:
    return (1e6, "MB") if n >= 1e6 else (1e3, "kB")


def _num(n: float, scale: float) -> str:
    value = n / scale
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


def describe_download(component: str, done: int, total: Optional[int]) -> str:
    """ "downloading k3s 12/60 MB", the daemon's STATUS for a download in progress."""
    scale, unit = _unit(total or done)
    of = f"/{_num(total, scale)}" if total else ""
    return f"downloading {component} {_num(done, scale)}{of} {unit}"


def describe_rate(per_second: float) -> str:
    scale, unit = _unit(per_second)
    return f"{_num(per_second, scale)} {unit}/s"


class Progress:
    """Where a run reports what it is doing; this one shows nothing (not a terminal)."""

    def stage(self, text: str) -> None:
        """A stage begins: "installing crun 1.15"."""

    def download(self, component: str, done: int, total: Optional[int]) -> None:
        """`done` of `total` bytes (None: unknown) of `component`'s artifact have arrived."""

    def done(self) -> None:
        """The run's own output follows: nothing of the progress may stay in its way."""


def clear_terminal_line() -> None:
    """Erase the progress line a terminal shows, if any: a log line must start at the left."""
    for line in list(_SHOWN):
        line.done()


class TerminalProgress(Progress):
    """One line on a terminal, rewritten in place (at most every `interval` s) and cleared at
    the end: the summary printed after it says everything once."""

    def __init__(
        self,
        stream: TextIO,
        interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.interval = interval
        self.clock = clock
        self._shown = False
        self._last = -interval
        self._started: dict[str, float] = {}

    def _show(self, text: str, *, now: bool = False) -> None:
        at = self.clock()
        if not now and at - self._last < self.interval:
            return
        self._last = at
        # \r, the text, then "erase to the end of the line" for what a longer text left.
        self.stream.write(f"{CLEAR_LINE}{text}")  # cleared first: one sequence, kept whole
        self.stream.flush()
        self._shown = True
        if self not in _SHOWN:
            _SHOWN.append(self)

    def stage(self, text: str) -> None:
        self._show(text, now=True)

    def download(self, component: str, done: int, total: Optional[int]) -> None:
        start = self._started.setdefault(component, self.clock())
        elapsed = self.clock() - start
        line = describe_download(component, done, total)
        if elapsed > 0.2 and done:
            rate = done / elapsed
            line += f", {describe_rate(rate)}"
            if total and total > done:
                line += f", {max(1, round((total - done) / rate))}s left"
        self._show(line, now=total is not None and done >= total)

    def done(self) -> None:
        if self._shown:
            self.stream.write(CLEAR_LINE)
            self.stream.flush()
            self._shown = False
            self._last = -self.interval  # drawn again at the next update
            _SHOWN.remove(self)


class PipeProgress(Progress):
    """Lines for the daemon that started this worker, at most one a second: its STATUS=."""

    def __init__(self, fd: int, interval: float = 1.0) -> None:
        self.fd = fd
        with contextlib.suppress(OSError):
            os.set_blocking(fd, False)
        self.interval = interval
        self._last = -interval

    def _send(self, text: str) -> None:
        at = time.monotonic()
        if at - self._last < self.interval:
            return
        self._last = at
        # The daemon stopped reading, or is behind (the pipe is not blocking): progress is
        # worth no failure and no wait.
        with contextlib.suppress(OSError):
            os.write(self.fd, (" ".join(text.split())[:200] + "\n").encode())

    def stage(self, text: str) -> None:
        self._send(text)  # STATUS is for a person looking: once a second is plenty

    def download(self, component: str, done: int, total: Optional[int]) -> None:
        self._send(describe_download(component, done, total))


def _is_pipe(fd: int) -> bool:
    """Only the daemon's pipe: a stray variable naming stdout must not mix lines into it."""
    try:
        return stat.S_ISFIFO(os.fstat(fd).st_mode) and not os.isatty(fd)
    except OSError:
        return False


def progress_for(stream: TextIO, environ: dict[str, str]) -> Progress:
    """The daemon's pipe in its worker, a line on `stream` when it is a terminal, else nothing."""
    fd = environ.get(PROGRESS_FD_ENV, "")
    if fd.isdigit() and _is_pipe(int(fd)):
        return PipeProgress(int(fd))
    if stream.isatty() and environ.get("TERM") != "dumb":
        return TerminalProgress(stream)
    return Progress()
