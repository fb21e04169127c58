"""Kill the real `agentd apply` with SIGKILL at its N-th file-system or network step.

The child side (`python -m tests.scenarios.crashdriver --root ROOT --events LOG [--kill-at N] --
ARGS`)
installs a `sys.addaudithook` hook, then runs `agentd.cli.main.main(["--root", ROOT, *ARGS])`
in the same process: agentd's code is not touched. The hook numbers every audit event that
changes something under ROOT, reaches the network or runs a command (`COUNTED`),
appends each to LOG as one JSON line (written with os.write on a descriptor opened before the
hook, so logging is not itself an event) and, at event N, logs it and sends the process
SIGKILL *before* the operation runs: killed at "os.replace A -> B", B was never renamed.

Besides the audit events, one step that the audit table has no event for is counted too:
the return of the explicit `flush()` of a partial download (`*.part`): the body is then on
disk, not yet fsynced, hashed or renamed. A profile function watches for it only while a
`.part` file is being written.

With `--full-from N` the child is not killed: from event N on, every step that takes space
(`FILLS`: opening a file for writing, creating a directory, a copy) fails with ENOSPC, as
on a file system whose data blocks filled up at that point and stay full (a hard link or a
short symlink takes none).

The parent side (`run`, `Event`) starts the child and reads its log back. Paths in the log are
as the node sees them (ROOT stripped); `Event.key` also blanks the random parts of names (temp
suffixes, staging dirs) so the events of two runs can be compared one by one.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Optional

# Audit events (https://docs.python.org/3/library/audit_events.html) that change the file system
# or reach the network, and the positions of their path arguments.
COUNTED: dict[str, tuple[int, ...]] = {
    "open": (0,),  # only when a file is opened for writing by name (see _writes)
    "os.rename": (0, 1),
    "os.replace": (0, 1),  # CPython raises "os.rename" for os.replace too
    "os.remove": (0,),  # os.remove and os.unlink (Path.unlink)
    "os.rmdir": (0,),
    "os.mkdir": (0,),
    "os.chmod": (0,),
    "os.chown": (0,),
    "os.utime": (0,),
    "os.symlink": (1,),  # (link text, path): only the path is one
    "os.link": (0, 1),
    "os.truncate": (0,),  # os.truncate and os.ftruncate (a descriptor)
    "shutil.rmtree": (0,),
    "shutil.copyfile": (0, 1),
    "shutil.copymode": (0, 1),
    "shutil.copystat": (0, 1),
    "shutil.move": (0, 1),
    "fcntl.flock": (0,),
    "socket.connect": (),
    "subprocess.Popen": (),
}
# Where an event's dir_fd arguments are, for the path arguments above (in the same order): a
# relative name with a dir_fd is that directory's (shutil.rmtree removes entries this way).
DIR_FDS: dict[str, tuple[int, ...]] = {
    "os.rename": (2, 3),
    "os.replace": (2, 3),
    "os.remove": (1,),
    "os.rmdir": (1,),
    "os.mkdir": (2,),
    "os.chmod": (2,),
    "os.chown": (3,),
    "os.utime": (3,),
    "os.symlink": (2,),
    "os.link": (2, 3),
    "shutil.rmtree": (1,),
}
# The steps that need free space: on a full file system these fail with ENOSPC.
FILLS = frozenset({"open", "os.mkdir", "shutil.copyfile"})
PART_FLUSH = "flush .part"  # the pseudo-event of a download's body reaching the disk

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
# The random parts of names, blanked in Event.key.
_RANDOM = (
    (re.compile(r"\.agentd-[0-9a-f]{8}"), ".agentd-XXXX"),
    (re.compile(r"\.[0-9a-f]{8}\.part"), ".XXXX.part"),
    (re.compile(r"run-\d{8}T\d{6}-[0-9a-f]{6}"), "run-XXXX"),
    (re.compile(r"\.(new|old)-[0-9a-f]{6}"), r".\1-XXXX"),
    (re.compile(r"127\.0\.0\.1', \d+"), "127.0.0.1', PORT"),
)


def _writes(args: tuple[Any, ...]) -> bool:
    """Whether an "open" event opens its file for writing."""
    _, mode, flags = (*args, None, None, None)[:3]
    if isinstance(mode, str):
        return any(c in mode for c in "wax+")
    return isinstance(flags, int) and bool(flags & _WRITE_FLAGS)


def _text(value: Any) -> str:
    return os.fsdecode(value) if isinstance(value, (str, bytes, os.PathLike)) else str(value)


class _Recorder:
    """The child's audit hook: numbers, logs and (at `kill_at`) kills."""

    def __init__(
        self, root: str, log_fd: int, kill_at: Optional[int], full_from: Optional[int] = None
    ) -> None:
        self.root = root.rstrip("/")
        self.log_fd = log_fd
        self.kill_at = kill_at
        self.full_from = full_from
        self.count = 0
        self.busy = False
        self.part_pending = False  # a .part was just os.open'ed: its fdopen follows
        self.part_fd: Optional[int] = None

    def _node(self, value: Any, dir_fd: Any = None) -> Optional[str]:
        """`value` (a path, or a descriptor) as the node sees it; None when not under the root."""
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return self._node(os.readlink(f"/proc/self/fd/{value}"))
            except OSError:
                return None
        if not isinstance(value, (str, bytes, os.PathLike)):
            return None
        path: str = os.fsdecode(value)
        if isinstance(dir_fd, int) and not os.path.isabs(path):
            try:
                path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
            except OSError:
                return None
        path = os.path.abspath(path)
        if path == self.root:
            return "/"
        if path.startswith(self.root + "/"):
            return path[len(self.root) :]
        return None

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        if self.busy or event not in COUNTED:
            return
        self.busy = True
        try:
            self._event(event, args)
        finally:
            self.busy = False

    def _event(self, event: str, args: tuple[Any, ...]) -> None:
        if event == "open":
            if isinstance(args[0], int):
                # A descriptor opened already (os.fdopen): no new step, but after a .part was
                # created it is the file object whose flush() is watched.
                if self.part_pending:
                    self.part_pending = False
                    self.part_fd = args[0]
                    sys.setprofile(self._profile)
                return
            if not _writes(args):
                return
        if event == "socket.connect":
            self._count(event, [repr(args[1])])
            return
        if event == "subprocess.Popen":
            argv = args[1] if len(args) > 1 else None
            listed = argv if isinstance(argv, (list, tuple)) else [argv]
            self._count(event, [self._node(a) or _text(a) for a in listed])
            return
        fds = DIR_FDS.get(event, ())
        paths = []
        for k, i in enumerate(COUNTED[event]):
            dir_fd = args[fds[k]] if k < len(fds) and fds[k] < len(args) else None
            paths.append(self._node(args[i], dir_fd) if i < len(args) else None)
        if not paths or None in paths:
            return  # not under the root
        named = [p for p in paths if p is not None]
        if event == "os.symlink":
            named = [_text(args[0]), *named]
        if event == "open" and named[0].endswith(".part"):
            self.part_pending = True
        if event in ("os.chmod", "os.remove", "os.replace") and named[0].endswith(".part"):
            self._stop_watching()
        self._count(event, named)

    def _stop_watching(self) -> None:
        if self.part_fd is not None:
            self.part_fd = None
            sys.setprofile(None)

    def _profile(self, frame: FrameType, what: str, arg: Any) -> None:
        if what != "c_return" or getattr(arg, "__name__", None) != "flush":
            return
        owner = getattr(arg, "__self__", None)
        if self.part_fd is None or getattr(owner, "name", None) != self.part_fd:
            return
        if self.busy:
            return
        self.busy = True
        try:
            path = self._node(self.part_fd) or "?"
            self._count(PART_FLUSH, [path])
        finally:
            self.busy = False

    def _count(self, event: str, shown: list[str]) -> None:
        self.count += 1
        line = json.dumps({"n": self.count, "op": event, "args": shown}) + "\n"
        os.write(self.log_fd, line.encode())
        if self.count == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.full_from is not None and self.count >= self.full_from and event in FILLS:
            path = self.root + shown[-1] if shown and shown[-1].startswith("/") else None
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


def child(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.scenarios.crashdriver")
    parser.add_argument("--root", required=True)
    parser.add_argument("--events", required=True, type=Path)
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--full-from", type=int)
    parser.add_argument("agentd_args", nargs=argparse.REMAINDER)
    opts = parser.parse_args(argv)
    rest = list(opts.agentd_args)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    root = os.path.abspath(opts.root)
    # Imported before the hook: loading agentd's modules is no step of an apply.
    from agentd.cli import main as cli

    log_fd = os.open(opts.events, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    recorder = _Recorder(root, log_fd, opts.kill_at, opts.full_from)
    sys.addaudithook(recorder.hook)
    return cli.main(["--root", root, *rest])


# --- the parent side ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One numbered step of a run, as logged by the child."""

    n: int
    op: str
    args: tuple[str, ...]

    @property
    def text(self) -> str:
        if self.op in ("os.rename", "os.replace", "os.symlink", "os.link") and len(self.args) == 2:
            return f"{self.op} {self.args[0]} -> {self.args[1]}"
        return f"{self.op} {' '.join(self.args)}".rstrip()

    @property
    def key(self) -> str:
        """The event with the random parts of its names blanked: equal across runs."""
        text = self.text
        for pattern, blank in _RANDOM:
            text = pattern.sub(blank, text)
        return text


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str
    events: list[Event]

    @property
    def killed(self) -> bool:
        return self.code == -signal.SIGKILL


def read_events(log: Path) -> list[Event]:
    events = []
    for line in log.read_text().splitlines():
        data = json.loads(line)
        events.append(Event(int(data["n"]), str(data["op"]), tuple(data["args"])))
    return events


def run(
    root: Path,
    args: Sequence[str],
    events_log: Path,
    *,
    kill_at: Optional[int] = None,
    full_from: Optional[int] = None,
    timeout: float = 120,
) -> Outcome:
    """Run `agentd --root ROOT ARGS` under the driver; killed at event `kill_at` if given, out
    of space from event `full_from` on if given."""
    argv = [sys.executable, "-m", "tests.scenarios.crashdriver", "--root", str(root)]
    argv += ["--events", str(events_log)]
    if kill_at is not None:
        argv += ["--kill-at", str(kill_at)]
    if full_from is not None:
        argv += ["--full-from", str(full_from)]
    env = {**os.environ, "AGENTD_ROOT": "", "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(
        [*argv, "--", "--log-format", "json", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    return Outcome(proc.returncode, proc.stdout, proc.stderr, read_events(events_log))


if __name__ == "__main__":
    sys.exit(child(sys.argv[1:]))
