"""The daemon at rest: RSS, CPU per no-op cycle (one conditional pull each), drop-in latency."""

from __future__ import annotations

import argparse
import json
import os
import site
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.mirror import MirrorServer  # noqa: E402
from tests.support.standins import build_mirror, desired_document, node_arch, write_yaml  # noqa: E402

RSS_BUDGET_MB = 35.0
CPU_BUDGET_MS = 50.0
LATENCY_BUDGET_S = 1.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Notifications:
    """The notify socket the daemon reports to, read all the time as systemd reads it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.seen: list[tuple[float, str]] = []
        self.cursor = 0
        self.changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            data = self.sock.recv(4096).decode()
            with self.changed:
                self.seen.append((time.monotonic(), data))
                self.changed.notify_all()

    def wait_for(self, predicate: Any, timeout: float) -> tuple[float, str]:
        """(arrival time, message) of the next datagram `predicate` accepts."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                while self.cursor < len(self.seen):
                    at, message = self.seen[self.cursor]
                    self.cursor += 1
                    if predicate(message):
                        return at, message
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no matching notify message")
                self.changed.wait(left)

    def drain(self) -> None:
        with self.changed:
            self.cursor = len(self.seen)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def rss_mb(pid: int) -> tuple[float, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    values = {
        line.split(":")[0]: int(line.split()[1]) / 1024
        for line in status.splitlines()
        if line.startswith(("VmRSS", "VmHWM"))
    }
    return values["VmRSS"], values["VmHWM"]


def cycles(root: Path) -> int:
    return int(json.loads((root / "var/lib/wasm-edge/daemon.json").read_text())["cycles"])


def interpreter_rss_mb(*flags: str) -> float:
    code = "print(open('/proc/self/status').read().split('VmRSS:')[1].split()[0])"
    out = subprocess.run(
        [sys.executable, *flags, "-c", code], capture_output=True, text=True, check=True
    )
    return int(out.stdout) / 1024


def clean_interpreter() -> list[str]:
    """How to start Python without this machine's site hooks: a .pth file in its site-packages
    (a sandbox's CA bundle loader here) preloads certifi and friends into every process, which
    a node's /usr/bin/python3 does not. The packages stay importable through PYTHONPATH."""
    if interpreter_rss_mb() - interpreter_rss_mb("-S") < 2.0:
        return []
    return ["-S"]


def start_daemon(root: Path, notify: Path, flags: list[str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "NOTIFY_SOCKET": str(notify), "AGENTD_ROOT": ""}
    if flags:
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), *site.getsitepackages()])
    cmd = [
        sys.executable,
        *flags,
        "-m",
        "agentd",
        "--root",
        str(root),
        "--log-format",
        "json",
        "run",
    ]
    log = (root.parent / "daemon.log").open("ab")
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--busy-seconds", type=float, default=30.0, help="1 s interval phase")
    parser.add_argument("--idle-seconds", type=float, default=60.0, help="5 min interval phase")
    parser.add_argument("--edits", type=int, default=10, help="drop-in edits timed")
    parser.add_argument("--keep", type=Path, help="copy the daemon's log here")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    arch = node_arch()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        mirror = build_mirror(work / "mirror", arches=(arch,))
        fleet_dir = work / "fleet"
        fleet_dir.mkdir()
        root = work / "root"
        etc = root / "etc/wasm-edge"
        etc.mkdir(parents=True)
        with MirrorServer(mirror.root) as artifacts, MirrorServer(fleet_dir) as fleet:
            write_yaml(
                fleet_dir / "desired.yaml",
                desired_document(artifacts.url, mirror, arches=(arch,), generation=1),
            )
            settings = {
                "source": {
                    "type": "https",
                    "url": f"{fleet.url}/desired.yaml",
                    "allowInsecure": True,
                },
                "interval": "1s",
                "splay": 0,
            }
            write_yaml(etc / "agentd.yaml", settings)
            notify = Notifications(work / "notify.sock")
            flags = clean_interpreter()
            proc = start_daemon(root, notify.path, flags)
            try:
                notify.wait_for(lambda m: "READY=1" in m, 120)
                # Phase 1: a cycle every second, each one conditional GET (304) and the digest.
                time.sleep(3)  # let the worker-built caches settle
                fleet.clear_requests()
                c0, cpu0, t0 = cycles(root), cpu_seconds(proc.pid), time.monotonic()
                time.sleep(args.busy_seconds)
                c1, cpu1, t1 = cycles(root), cpu_seconds(proc.pid), time.monotonic()
                busy_rss, busy_hwm = rss_mb(proc.pid)
                n = c1 - c0
                per_cycle_ms = (cpu1 - cpu0) * 1000 / max(n, 1)
                answers = [r.status for r in fleet.responses]
                # Phase 2: drop-in edits, from the write to the run's start and its end.
                settings["interval"] = "1h"
                write_yaml(etc / "agentd.yaml", settings)
                proc.send_signal(1)  # SIGHUP: re-read the settings
                notify.wait_for(lambda m: "READY=1" in m, 60)
                to_start: list[float] = []
                to_end: list[float] = []
                drop_in = etc / "desired.d" / "50-bench.yaml"
                drop_in.parent.mkdir(exist_ok=True)
                for i in range(args.edits):
                    notify.drain()
                    written = time.monotonic()
                    # New bytes, the same desired state (a drop-in cannot set the generation).
                    drop_in.write_text(f"# bench edit {i}\ncomponents: {{}}\n")
                    started, _ = notify.wait_for(lambda m: "converging" in m, 10)
                    ended, _ = notify.wait_for(lambda m: "converged generation 1," in m, 30)
                    to_start.append(started - written)
                    to_end.append(ended - written)
                # Phase 3: at rest with the default interval.
                settings["interval"] = "5m"
                write_yaml(etc / "agentd.yaml", settings)
                proc.send_signal(1)
                notify.wait_for(lambda m: "READY=1" in m, 60)
                c2, cpu2, t2 = cycles(root), cpu_seconds(proc.pid), time.monotonic()
                time.sleep(args.idle_seconds)
                idle_rss, idle_hwm = rss_mb(proc.pid)
                rested = time.monotonic() - t2
                idle_cycles, idle_cpu_ms = cycles(root) - c2, (cpu_seconds(proc.pid) - cpu2) * 1000
            finally:
                proc.terminate()
                code = proc.wait(30)
                if args.keep:
                    args.keep.write_bytes((work / "daemon.log").read_bytes())
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, arch {arch}")
    floor = interpreter_rss_mb(*flags)
    how = "without site hooks (-S; this machine's .pth preloads certifi)" if flags else "as is"
    print(f"interpreter {how}: `python -c pass` RSS {floor:.1f} MB")
    print(
        f"no-op cycles at 1 s: {n} cycles in {t1 - t0:.1f} s, CPU {per_cycle_ms:.1f} ms per cycle "
        f"(budget {CPU_BUDGET_MS:.0f} ms); fleet answers: {answers.count(304)} x 304, "
        f"{answers.count(200)} x 200"
    )
    print(f"RSS after the busy phase: {busy_rss:.1f} MB (peak {busy_hwm:.1f} MB)")
    print(
        f"RSS at rest after {args.idle_seconds:.0f} s: {idle_rss:.1f} MB (peak {idle_hwm:.1f} MB,"
        f" budget {RSS_BUDGET_MB:.0f} MB)"
    )
    print(
        f"drop-in edit -> run starts: median {statistics.median(to_start) * 1000:.0f} ms, "
        f"max {max(to_start) * 1000:.0f} ms (budget {LATENCY_BUDGET_S * 1000:.0f} ms, "
        f"n={len(to_start)})"
    )
    print(
        f"drop-in edit -> converged: median {statistics.median(to_end) * 1000:.0f} ms, "
        f"max {max(to_end) * 1000:.0f} ms"
    )
    print(
        f"CPU at rest: {idle_cpu_ms:.0f} ms in {args.idle_seconds:.0f} s ({idle_cycles} cycles, "
        "timers and watchdog pings included)"
    )
    print(f"daemon exit code on SIGTERM: {code}")
    if args.json:
        figures = {
            "interpreter": "python -S" if flags else "python",
            "interpreter_rss_mb": floor,
            "busy_seconds": t1 - t0,
            "busy_cycles": n,
            "cpu_per_cycle_ms": per_cycle_ms,
            "fleet_304": answers.count(304),
            "fleet_200": answers.count(200),
            "busy_rss_mb": busy_rss,
            "busy_hwm_mb": busy_hwm,
            "idle_seconds": rested,
            "idle_rss_mb": idle_rss,
            "idle_hwm_mb": idle_hwm,
            "idle_cycles": idle_cycles,
            "idle_cpu_ms": idle_cpu_ms,
            "edit_to_start_ms": sorted(x * 1000 for x in to_start),
            "edit_to_converged_ms": sorted(x * 1000 for x in to_end),
            "exit_code": code,
            "budgets": {
                "rss_mb": RSS_BUDGET_MB,
                "cpu_per_cycle_ms": CPU_BUDGET_MS,
                "edit_latency_ms": LATENCY_BUDGET_S * 1000,
            },
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))
    ok = (
        idle_rss <= RSS_BUDGET_MB
        and per_cycle_ms <= CPU_BUDGET_MS
        and max(to_start) <= LATENCY_BUDGET_S
        and code == 0
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
