"""What one command costs: wall time, CPU of its whole process tree, and its peak memory.

Every figure of the comparison benchmarks comes from `run_measured`, applied alike to agentd and
to Ansible:

- wall time: from just before the fork to the return of wait4();
- CPU time: user + system of the command and of every descendant it waited for, as wait4()
  reports them for that one child (the kernel adds each reaped child's time to its parent's);
- `max_rss_mb`: the peak RSS (VmHWM) of the largest single process of the tree;
- `tree_rss_mb`: the peak of the sum of VmRSS over every live process of the tree.

Both memory figures are sampled from /proc/PID/status every few milliseconds. Pages that forked
workers share with their parent count once per process in `tree_rss_mb`, so for a forking tool it
is an upper bound. (wait4's ru_maxrss is not used: exec() carries the forking process's own peak
into it, so every child of this Python process would report at least this process's RSS.)
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional


@dataclass(frozen=True)
class Usage:
    wall_s: float
    cpu_s: float
    max_rss_mb: float
    tree_rss_mb: float
    returncode: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                out.extend(int(c) for c in fh.read().split())
        except OSError:
            continue
    return out


def _memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of one process; zeros once it is gone."""
    rss = hwm = 0.0
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) / 1024
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return rss, hwm


class _TreeSampler(threading.Thread):
    """Walks the process tree of `pid` every `interval` seconds until told to stop."""

    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.tree_peak = 0.0
        self.process_peak = 0.0
        self.done = threading.Event()

    def sample(self) -> None:
        total, todo, seen = 0.0, [self.pid], set()
        while todo:
            p = todo.pop()
            if p in seen:
                continue
            seen.add(p)
            rss, hwm = _memory_mb(p)
            total += rss
            self.process_peak = max(self.process_peak, hwm)
            todo.extend(_children(p))
        self.tree_peak = max(self.tree_peak, total)

    def run(self) -> None:
        while not self.done.is_set():
            self.sample()
            self.done.wait(self.interval)


def run_measured(
    cmd: Sequence[str],
    *,
    env: Optional[Mapping[str, str]] = None,
    cwd: Optional[Path] = None,
    stdout: Optional[Path] = None,
    stderr: Optional[Path] = None,
    interval: float = 0.005,
) -> Usage:
    """Run `cmd` to its end and measure it (see the module docstring); its output goes to the
    files `stdout` and `stderr` (else nowhere)."""
    with contextlib.ExitStack() as stack:
        out, err = (
            stack.enter_context(path.open("wb")) if path is not None else subprocess.DEVNULL
            for path in (stdout, stderr)
        )
        start = time.perf_counter()
        proc = subprocess.Popen(
            list(cmd), env=dict(env) if env is not None else None, cwd=cwd, stdout=out, stderr=err
        )
        sampler = _TreeSampler(proc.pid, interval)
        sampler.start()
        _, status, rusage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        sampler.done.set()
        sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    # A command that ended before its first sample has no memory figures (NaN, left out of the
    # statistics): only `python -c pass` is that short here.
    missed = sampler.process_peak == 0.0
    return Usage(
        wall_s=wall,
        cpu_s=rusage.ru_utime + rusage.ru_stime,
        max_rss_mb=math.nan if missed else sampler.process_peak,
        tree_rss_mb=math.nan if missed else max(sampler.tree_peak, sampler.process_peak),
        returncode=proc.returncode,
    )


@dataclass(frozen=True)
class Spread:
    """Median and range of repeated samples of one figure."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Spread:
        kept = [s for s in samples if not math.isnan(s)]
        if not kept:
            raise ValueError("no samples")
        return cls(statistics.median(kept), min(kept), max(kept), len(kept))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def machine() -> dict[str, Any]:
    """The machine the figures were measured on."""
    import platform  # noqa: PLC0415

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    distro = "unknown"
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                distro = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "kernel": platform.release(),
        "os": distro,
        "python": platform.python_version(),
        "arch": platform.machine(),
    }


def save_figures(path: Optional[Path], figures: Mapping[str, Any]) -> None:
    """Write a benchmark's figures as JSON where `--json` asked (bench/all.py reads them)."""
    if path is not None:
        import json  # noqa: PLC0415

        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(figures, indent=2))


def goals_exit(goals: Mapping[str, Mapping[str, Any]]) -> int:
    """The exit code of a benchmark with goals: 0 when every one was met."""
    return 0 if all(g["met"] for g in goals.values()) else 1
