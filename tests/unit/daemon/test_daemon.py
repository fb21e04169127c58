"""The daemon (`agentd run`) as systemd runs it: notify socket, watchdog, signals and drop-ins."""

from __future__ import annotations

import configparser
import contextlib
import ctypes
import hashlib
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

import pytest
import yaml

from agentd.core.paths import Paths
from agentd.daemon.loop import Daemon
from agentd.daemon.schedule import CycleResult
from agentd.run import apply
from agentd.settings.snapshot import load_config
from agentd.state.store import StateLock
from agentd.system.host import Host
from agentd.system.notify import Notifier, child_environment
from tests.support.mirror import MirrorServer
from tests.support.node import Node
from tests.support.standins import Mirror, crun_binary, desired_document, sha256_hex, write_yaml

REPO = Path(__file__).resolve().parents[3]
# WatchdogSec=1s: small enough that a daemon which stops pinging for a moment is caught.
WATCHDOG_USEC = 1_000_000
# Only ever reached when something that should have happened did not.
DEADLINE_S = 60.0
# Settings for a daemon that converges only when told to (or when a watched file changes).
QUIET = {"interval": "1h", "splay": 0}
DROP_IN = "/etc/wasm-edge/desired.d/50-x.yaml"
SETTINGS = "/etc/wasm-edge/agentd.yaml"
_CRED = struct.calcsize("iII")
AGENTD_RUN = ("--log-format", "json", "run")


# --- the notify socket, as systemd binds it -------------------------------------------------------


def normalise(status: str) -> str:
    return FINDINGS_RE.sub(", N findings", status)


FINDINGS_RE = re.compile(r", \d+ findings")


@dataclass(frozen=True)
class Notice:
    """One notify datagram: when it arrived, who sent it (SCM_CREDENTIALS) and what it said."""

    at: float  # time.monotonic() on arrival
    pid: int
    fields: dict[str, str]

    @property
    def status(self) -> str:
        """STATUS, with the findings count as N: it depends on the machine the tests run on
        (cgroup v1 here, no cgroup v2 there...), and these tests are about convergence
        (tests/unit/health/test_health.py is about findings)."""
        return normalise(self.fields.get("STATUS", ""))

    def has(self, key: str) -> bool:
        return self.fields.get(key) == "1"


class NotifySocket:
    """An AF_UNIX datagram socket where NOTIFY_SOCKET points; a thread stamps every datagram on
    arrival, so gaps between watchdog pings are measured as the manager would see them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(0.2)
        self.notices: list[Notice] = []
        self.cursor = 0
        self.alive: Callable[[], bool] = lambda: True
        self.context: Callable[[], str] = lambda: ""
        self._cond = threading.Condition()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, name=f"notify-{path.name}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(_CRED))
            except socket.timeout:
                continue
            except OSError:
                return
            pid = 0
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("iII", payload[:_CRED])[0]
            fields = dict(line.partition("=")[::2] for line in data.decode().split("\n"))
            with self._cond:
                self.notices.append(Notice(time.monotonic(), pid, fields))
                self._cond.notify_all()

    def next(
        self, matches: Callable[[Notice], bool], what: str, timeout: float = DEADLINE_S
    ) -> Notice:
        """The first notice after the last one returned that `matches`; fails after `timeout`,
        or at once when the daemon has exited without sending it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                while self.cursor < len(self.notices):
                    notice = self.notices[self.cursor]
                    self.cursor += 1
                    if matches(notice):
                        return notice
                left = deadline - time.monotonic()
                if left <= 0 or not self.alive():
                    # One last look: the daemon's final datagrams arrive before it exits.
                    if self.cursor < len(self.notices):
                        continue
                    seen = "\n".join(
                        repr(n.fields) for n in self.notices if "WATCHDOG" not in n.fields
                    )
                    raise AssertionError(
                        f"no {what} ({'timed out' if left <= 0 else 'the daemon exited'}); "
                        f"received:\n{seen}\n--- daemon stderr ---\n{self.context()}"
                    )
                self._cond.wait(min(left, 0.5))

    def ready(self) -> Notice:
        return self.next(lambda n: n.has("READY"), "READY=1")

    def status(self, text: str) -> Notice:
        return self.next(lambda n: text in n.status, f"STATUS containing {text!r}")

    def all(self) -> list[Notice]:
        with self._cond:
            return list(self.notices)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5)
        self.sock.close()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = DEADLINE_S) -> None:
    """Poll a real server's state (its request log has no event to wait on) every 20 ms until
    `condition` holds, failing at the deadline: it waits for the state, never a fixed time."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# --- the daemon as a process ----------------------------------------------------------------------


@dataclass
class RunningDaemon:
    """`agentd run` in its own process group (so a finalizer can end it and its workers)."""

    node: Node
    proc: subprocess.Popen[bytes]
    notices: NotifySocket
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def json_file(self, node_path: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.node.read(node_path))
        return data

    def daemon_json(self) -> dict[str, Any]:
        return self.json_file("/var/lib/wasm-edge/daemon.json")

    def send(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the daemon did not exit within {timeout}s\n--- stderr ---\n{self.stderr()}"
            ) from None

    def kill(self) -> None:
        """End the daemon and any worker it left (its process group), then reap it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.notices.close()


StartDaemon = Callable[..., RunningDaemon]


@pytest.fixture
def node(sandbox_root: Path) -> Node:
    return Node(sandbox_root)


def launch_daemon(
    node: Node, notify_path: Path, stderr_path: Path, watchdog_usec: Optional[int] = None
) -> RunningDaemon:
    """`agentd run` on `node` as systemd starts it: a notify socket (and a watchdog when
    `watchdog_usec` is given), stderr to a file, in a process group of its own."""
    notices = NotifySocket(notify_path)
    env = {
        **child_environment(os.environ),
        "NOTIFY_SOCKET": str(notices.path),
        "AGENTD_ROOT": "",
        "PYTHONPATH": str(REPO),
    }
    if watchdog_usec is not None:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agentd", "--root", str(node.root), *AGENTD_RUN],
            env=env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    daemon = RunningDaemon(node, proc, notices, stderr_path)
    notices.alive = lambda: proc.poll() is None
    notices.context = daemon.stderr
    return daemon


@pytest.fixture
def start_daemon(tmp_path: Path, node: Node) -> Iterator[StartDaemon]:
    """Starts `agentd run` on the sandbox root as systemd would (NOTIFY_SOCKET, WATCHDOG_USEC);
    every daemon started is killed, with its workers, when the test ends."""
    started: list[RunningDaemon] = []

    def start(
        settings: Optional[dict[str, Any]] = None, watchdog_usec: int = WATCHDOG_USEC
    ) -> RunningDaemon:
        if settings is not None:
            write_yaml(node.path(SETTINGS), settings)
        n = len(started)
        daemon = launch_daemon(
            node, tmp_path / f"notify{n}.sock", tmp_path / f"daemon{n}.stderr", watchdog_usec
        )
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()


@pytest.fixture
def desired(node: Node, mirror: MirrorServer, mirror_index: Mirror, arch: str) -> dict[str, Any]:
    """Generation 1 in /etc/wasm-edge/desired.yaml: crun 1.15, WasmEdge 0.14.1, k3s v1.30.4."""
    doc = desired_document(mirror.url, mirror_index, arches=(arch,))
    write_yaml(node.path("/etc/wasm-edge/desired.yaml"), doc)
    return doc


@dataclass
class LocalFiles:
    """Writes the node's own desired-state files as an operator or a config tool does."""

    node: Node
    mirror: MirrorServer
    index: Mirror
    arch: str

    def crun_override(self, generation: int, crun: str) -> dict[str, Any]:
        """A partial drop-in: changes crun's version only."""
        doc = desired_document(
            self.mirror.url, self.index, generation=generation, crun=crun, arches=(self.arch,)
        )
        return {"components": {"crun": doc["components"]["crun"]}}

    def drop_in(self, generation: int, crun: str, name: str = DROP_IN) -> Path:
        """The drop-in, and `generation` in desired.yaml: only the first source sets it."""
        path = write_yaml(self.node.path(name), self.crun_override(generation, crun))
        main = self.node.path("/etc/wasm-edge/desired.yaml")
        if main.is_file():
            doc = yaml.safe_load(main.read_text())
            tmp = main.with_name(".desired.yaml.tmp")
            write_yaml(tmp, {**doc, "generation": generation})
            tmp.replace(main)  # atomic: the daemon must not read it half-written
        return path

    def crun_url_path(self, version: str) -> str:
        return "/" + self.index.artifact("crun", version, self.arch)[0]


@pytest.fixture
def local(node: Node, mirror: MirrorServer, mirror_index: Mirror, arch: str) -> LocalFiles:
    return LocalFiles(node, mirror, mirror_index, arch)


def crun_version(node: Node) -> str:
    return node.version_of("/usr/local/bin/crun")


def closed_window(opens_in: timedelta, lasts: str = "5m") -> tuple[dict[str, Any], datetime]:
    """A daily maintenance window (UTC) that is closed now and opens in about `opens_in`."""
    opens = (datetime.now(timezone.utc) + opens_in).replace(second=0, microsecond=0)
    spec = {"timezone": "UTC", "windows": [{"start": opens.strftime("%H:%M"), "duration": lasts}]}
    return spec, opens


# --- readiness, status and the watchdog -----------------------------------------------------------


def test_ready_comes_after_the_first_converge_and_the_watchdog_keeps_being_pinged(
    start_daemon: StartDaemon, node: Node, desired: dict[str, Any]
) -> None:
    daemon = start_daemon(QUIET)
    ready = daemon.notices.ready()
    assert ready.status == "converged generation 1, N findings"
    # Everything was installed before READY=1 was sent.
    assert crun_version(node) == "crun version 1.15"
    assert node.version_of("/usr/local/bin/k3s") == "k3s version v1.30.4+k3s1 (abcd1234)"
    assert node.path("/usr/local/lib/wasmedge/libwasmedgePluginWasiNN.so").is_file()
    state = daemon.json_file("/var/lib/wasm-edge/state.json")
    assert state["lastAppliedGeneration"] == 1
    assert state["lastRun"]["outcome"] == "converged"
    before = daemon.notices.notices[: daemon.notices.cursor - 1]
    # The worker's start is announced, then what it is doing (tests/unit/converge/
    # test_progress.py), then its result.
    statuses = [n.status for n in before if "STATUS" in n.fields]
    assert [s for s in statuses if ": " not in s] == ["converging (start)", ready.status]
    assert statuses[0] == "converging (start)"
    assert statuses[-1] == ready.status
    assert all(s.startswith("converging (start): ") for s in statuses[1:-1])
    assert not any(n.has("READY") for n in before)
    # WATCHDOG=1 keeps coming while the daemon idles (its interval is an hour).
    pings = [daemon.notices.next(lambda n: n.has("WATCHDOG"), "WATCHDOG=1") for _ in range(3)]
    assert pings[0].at < pings[1].at < pings[2].at
    # Only the daemon itself ever notifies (NotifyAccess=main): never one of its workers.
    assert {n.pid for n in daemon.notices.all()} == {daemon.proc.pid}
    status = daemon.daemon_json()
    assert status["pid"] == daemon.proc.pid
    assert status["state"] == "running"
    assert normalise(status["status"]) == ready.status
    assert status["cycles"] == 1
    assert status["lastCycle"]["outcome"] == "converged"
    assert status["lastCycle"]["reason"] == "start"
    assert status["consecutiveFailures"] == 0
    assert daemon.proc.poll() is None


def test_a_drop_in_edit_converges_at_once_through_the_watch(
    start_daemon: StartDaemon, node: Node, desired: dict[str, Any], local: LocalFiles
) -> None:
    # How fast is a benchmark's business (bench/daemon_idle.py: edit -> run starts ~207 ms,
    # -> converged ~424 ms); this shows the watch, not the interval, starts each run.
    daemon = start_daemon(QUIET)
    daemon.notices.ready()
    for generation, crun in ((2, "1.14"), (3, "1.15"), (4, "1.14")):
        local.drop_in(generation, crun)
        daemon.notices.status(f"converged generation {generation},")
        assert crun_version(node) == f"crun version {crun}"
        # The interval is an hour: only the watch on desired.d can have started this run.
        assert daemon.daemon_json()["lastCycle"]["reason"] == "local change"
    state = daemon.json_file("/var/lib/wasm-edge/state.json")
    assert state["lastAppliedGeneration"] == 4
    assert state["lastRun"]["sources"][-1].endswith("desired.d/50-x.yaml")


# --- signals --------------------------------------------------------------------------------------


def test_sighup_rereads_the_settings(
    start_daemon: StartDaemon, node: Node, desired: dict[str, Any]
) -> None:
    daemon = start_daemon(QUIET)
    daemon.notices.ready()
    assert daemon.daemon_json()["interval"] == 3600
    write_yaml(node.path(SETTINGS), {"interval": "2h", "splay": 0, "suspend": True})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    daemon.send(signal.SIGHUP)
    reloading = daemon.notices.next(lambda n: n.has("RELOADING"), "RELOADING=1")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert before <= int(reloading.fields["MONOTONIC_USEC"]) <= after
    ready = daemon.notices.ready()
    expected = f"suspended (suspend: true in {SETTINGS}); converging nothing"
    assert ready.status == expected, daemon.stderr()
    shown = node.agentd("status", "--json")
    assert shown.code == 0, shown.stderr
    status = shown.json()["daemon"]
    assert status["settings"] == {"origin": SETTINGS, "error": None}
    assert status["interval"] == 7200
    assert status["suspended"] == f"suspend: true in {SETTINGS}"
    assert status["lastCycle"]["reason"] == "reload"
    assert status["lastCycle"]["outcome"] == "suspended"
    assert daemon.proc.poll() is None


def _tgkill(pid: int, tid: int, signum: int) -> None:
    """Send a signal to one thread of another process (glibc's tgkill(2) wrapper)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.tgkill(pid, tid, signum) != 0:
        raise OSError(ctypes.get_errno(), f"tgkill({pid}, {tid}, {signum})")


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM])
def test_a_signal_the_kernel_hands_to_another_thread_is_acted_on_at_once(
    start_daemon: StartDaemon, desired: dict[str, Any], signum: int
) -> None:
    """The kernel may deliver a process's signal to any thread that does not block it; CPython
    then runs the handler only when the main thread next runs, and an idle daemon's main thread
    sleeps until its next timer (an hour here). It lost one SIGHUP in a few hundred in the soak
    test; this sends the signal to a thread that is not the main one, every time."""
    # No watchdog and no health timer: nothing but the signal may wake the main thread.
    daemon = start_daemon({**QUIET, "healthInterval": "1h"}, watchdog_usec=0)
    daemon.notices.ready()
    daemon.notices.next(lambda n: "findings" in n.status, "the first health run")
    pid = daemon.proc.pid
    others = [int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid]
    assert others, "the daemon runs threads besides the main one"
    _tgkill(pid, others[0], signum)
    if signum == signal.SIGHUP:
        daemon.notices.next(lambda n: n.has("RELOADING"), "RELOADING=1", timeout=10)
        daemon.notices.ready()
        daemon.send(signal.SIGTERM)
    assert daemon.wait(timeout=10) == 0


def test_sigterm_exits_0_with_stopping(start_daemon: StartDaemon, desired: dict[str, Any]) -> None:
    daemon = start_daemon(QUIET)
    daemon.notices.ready()
    daemon.send(signal.SIGTERM)
    assert daemon.wait(timeout=10) == 0
    daemon.notices.next(lambda n: n.has("STOPPING"), "STOPPING=1")
    status = daemon.daemon_json()
    assert status["state"] == "stopped"
    assert status["status"] == "stopped"
    assert status["nextRunInS"] is None


def test_sigterm_during_a_slow_download_stops_the_worker_before_it_installs(
    start_daemon: StartDaemon,
    node: Node,
    desired: dict[str, Any],
    local: LocalFiles,
    mirror: MirrorServer,
) -> None:
    daemon = start_daemon(QUIET)
    daemon.notices.ready()
    slow = local.crun_url_path("1.14")
    size = local.index.file("crun", "1.14", local.arch).stat().st_size
    mirror.throttle(slow, size / 4)  # a download of four seconds
    local.drop_in(2, "1.14")
    wait_until(lambda: mirror.count(slow) > 0, "the worker to start downloading crun 1.14")
    daemon.send(signal.SIGTERM)
    assert daemon.wait(timeout=20) == 0, daemon.stderr()
    # Nothing was installed: the old crun is in place, whole, and no temp file is left beside it.
    assert crun_version(node) == "crun version 1.15"
    leftovers = [p.name for p in node.path("/usr/local/bin").iterdir() if p.name.startswith(".")]
    assert leftovers == []
    # Nor a partial download: the cache holds whole, verified blobs only.
    cache = node.path("/var/lib/wasm-edge/cache")
    assert [p.name for p in (cache / "tmp").glob("*")] == []
    for blob in (cache / "sha256").iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    state = daemon.json_file("/var/lib/wasm-edge/state.json")
    assert state["lastRun"]["outcome"] == "cancelled", state["lastRun"]
    assert state["lastRun"]["generation"] == 2
    assert "nothing was changed" in state["lastRun"]["error"]
    assert state["lastAppliedGeneration"] == 1
    assert state["inventory"]["crun"]["version"] == "1.15"
    status = daemon.daemon_json()
    assert status["state"] == "stopped"
    assert status["lastCycle"]["outcome"] == "cancelled"
    # Stopping on request is not a failure to back off from.
    assert status["consecutiveFailures"] == 0
    cancelled = daemon.notices.status("cancelled:")
    assert cancelled.status.endswith("; stopping")
    stopping = daemon.notices.next(lambda n: n.has("STOPPING"), "STOPPING=1")
    # The watchdog was pinged all the while the worker downloaded: no gap reached WatchdogSec.
    pings = [n.at for n in daemon.notices.all() if n.has("WATCHDOG") and n.at <= stopping.at]
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert max(gaps) < WATCHDOG_USEC / 1e6, gaps


def test_another_run_holding_the_lock_delays_the_converge_and_the_watchdog_is_still_pinged(
    start_daemon: StartDaemon, node: Node, desired: dict[str, Any]
) -> None:
    lock = StateLock(Paths(node.root))
    lock.acquire("test")
    try:
        # No settings file, so no worker validates one: the daemon goes straight to the lock.
        daemon = start_daemon()
        # The first converge waits for the lock; the daemon is alive and says so meanwhile.
        for _ in range(4):
            daemon.notices.next(lambda n: n.has("WATCHDOG"), "WATCHDOG=1 while the lock is held")
        assert not any(n.has("READY") or "STATUS" in n.fields for n in daemon.notices.all())
        assert not node.path("/usr/local/bin/crun").exists()
    finally:
        lock.release()
    ready = daemon.notices.ready()
    assert ready.status == "converged generation 1, N findings"
    assert crun_version(node) == "crun version 1.15"


def test_sigterm_while_waiting_for_the_lock_exits_at_once(
    start_daemon: StartDaemon, node: Node, desired: dict[str, Any]
) -> None:
    lock = StateLock(Paths(node.root))
    lock.acquire("test")
    try:
        daemon = start_daemon()
        # Its first ping comes from the wait for the lock (no settings file to validate first).
        daemon.notices.next(lambda n: n.has("WATCHDOG"), "WATCHDOG=1 while the lock is held")
        daemon.send(signal.SIGTERM)
        # Not after the minute the lock is waited for.
        assert daemon.wait(timeout=10) == 0
    finally:
        lock.release()
    daemon.notices.status("cancelled: stopped while waiting for the state lock; stopping")
    daemon.notices.next(lambda n: n.has("STOPPING"), "STOPPING=1")
    assert not node.path("/usr/local/bin/crun").exists()
    assert daemon.daemon_json()["consecutiveFailures"] == 0


# --- bad documents, suspend, bad settings ---------------------------------------------------------


def test_a_broken_drop_in_never_kills_the_daemon_and_fixing_it_converges(
    start_daemon: StartDaemon, node: Node, desired: dict[str, Any], local: LocalFiles
) -> None:
    daemon = start_daemon({**QUIET, "backoff": {"initial": "1s", "max": "2s"}})
    daemon.notices.ready()
    drop_in = node.path(DROP_IN)
    drop_in.parent.mkdir(parents=True, exist_ok=True)
    drop_in.write_text("generation: 2\ncomponents:\n  crun: {version: 1.14]\n")
    failed = daemon.notices.status("failed:")
    assert "50-x.yaml:3:23: expected ',' or '}', but got ']'" in failed.status
    assert failed.status.endswith("; retrying in 1s"), failed.status
    status = daemon.daemon_json()
    assert status["consecutiveFailures"] == 1
    assert status["lastCycle"]["outcome"] == "failed"
    assert "50-x.yaml:3:23" in status["lastCycle"]["error"]
    # The retry comes from the backoff timer, twice as late, and fails the same way.
    again = daemon.notices.status("failed:")
    assert again.status.endswith("; retrying in 2s"), again.status
    status = daemon.daemon_json()
    assert status["consecutiveFailures"] == 2
    assert status["lastCycle"]["reason"] == "timer"
    # A schema error is reported with its position too; the delay stays at the cap.
    drop_in.write_text("generation: 2\ncomponents:\n  crun: {versio: '1.14'}\n")
    schema = daemon.notices.status("unknown field 'versio'")
    assert "50-x.yaml:3:10: unknown field 'versio'" in schema.status
    assert schema.status.endswith("; retrying in 2s"), schema.status
    # Three in a row (four if the backoff timer's retry came first on a slow machine).
    assert daemon.daemon_json()["consecutiveFailures"] in (3, 4)
    assert daemon.proc.poll() is None
    assert crun_version(node) == "crun version 1.15"
    local.drop_in(2, "1.14")
    daemon.notices.status("converged generation 2, N findings")
    assert crun_version(node) == "crun version 1.14"
    status = daemon.daemon_json()
    assert status["consecutiveFailures"] == 0
    assert status["nextRunInS"] > 3000  # back on the interval
    assert daemon.proc.poll() is None


def test_a_node_without_any_desired_state_waits_without_backing_off(
    start_daemon: StartDaemon, node: Node, desired: dict[str, Any]
) -> None:
    """A fresh node (or one whose files were all removed): nothing to converge to is not a
    failure; the daemon waits, keeps what is installed, and converges once a file appears."""
    daemon = start_daemon(QUIET)
    daemon.notices.ready()
    node.path("/etc/wasm-edge/desired.yaml").unlink()
    waiting = daemon.notices.status("waiting for a desired state:")
    assert "no desired state" in waiting.status
    status = daemon.daemon_json()
    assert status["lastCycle"]["outcome"] == "waiting"
    assert status["lastCycle"]["generation"] is None
    assert status["consecutiveFailures"] == 0
    assert daemon.proc.poll() is None
    # What was installed stays installed.
    assert crun_version(node) == "crun version 1.15"
    write_yaml(node.path("/etc/wasm-edge/desired.yaml"), desired)
    daemon.notices.status("converged generation 1")


def test_the_suspend_file_stops_convergence_until_it_is_removed(
    start_daemon: StartDaemon, node: Node, desired: dict[str, Any], local: LocalFiles
) -> None:
    daemon = start_daemon(QUIET)
    daemon.notices.ready()
    suspend = node.path("/etc/wasm-edge/suspend")
    suspend.touch()
    expected = "suspended (/etc/wasm-edge/suspend exists); converging nothing"
    daemon.notices.status(expected)
    local.drop_in(2, "1.14")
    # The drop-in is seen (a cycle runs) but not applied.
    daemon.notices.status(expected)
    assert daemon.daemon_json()["lastCycle"]["reason"] == "local change"
    assert crun_version(node) == "crun version 1.15"
    assert daemon.json_file("/var/lib/wasm-edge/state.json")["lastAppliedGeneration"] == 1
    shown = node.agentd("status", "--json").json()
    assert shown["suspendFile"] is True
    assert shown["daemon"]["suspended"] == "/etc/wasm-edge/suspend exists"
    suspend.unlink()
    daemon.notices.status("converged generation 2, N findings")
    assert crun_version(node) == "crun version 1.14"


def test_invalid_settings_at_start_use_the_defaults_and_say_where(
    start_daemon: StartDaemon, node: Node, desired: dict[str, Any]
) -> None:
    settings = node.path(SETTINGS)
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text("interval: 0.5s\n")
    daemon = start_daemon()
    ready = daemon.notices.ready()
    assert ready.status == (
        "converged generation 1, N findings [settings invalid: "
        f"{SETTINGS}:1:11: must be at least 1s; using defaults (no settings file)]"
    )
    assert crun_version(node) == "crun version 1.15"
    status = daemon.daemon_json()
    assert status["settings"]["error"] == f"{SETTINGS}:1:11: must be at least 1s"
    assert status["interval"] == 300


def test_broken_settings_keep_the_last_good_ones_at_start_and_on_sighup(
    start_daemon: StartDaemon, node: Node, desired: dict[str, Any]
) -> None:
    first = start_daemon({"interval": "2h", "splay": 0})
    first.notices.ready()
    assert first.daemon_json()["interval"] == 7200
    broken = "interval: 3h\nsplay: [\n"
    problem = f"{SETTINGS}:3:1: expected the node content, but found '<stream end>'"
    node.path(SETTINGS).write_text(broken)
    first.send(signal.SIGHUP)
    first.notices.next(lambda n: n.has("RELOADING"), "RELOADING=1")
    ready = first.notices.ready()
    assert f"[settings invalid: {problem}" in ready.status
    assert ready.status.endswith(f"; using {SETTINGS}]")
    status = first.daemon_json()
    assert status["interval"] == 7200  # the previous settings, not the broken file's 3h
    assert status["settings"]["origin"] == SETTINGS
    first.send(signal.SIGTERM)
    assert first.wait(timeout=10) == 0

    # A restart with the file still broken starts on the last settings that validated.
    second = start_daemon()
    ready = second.notices.ready()
    assert ready.status.startswith("converged generation 1, N findings [settings invalid: ")
    assert ready.status.endswith(f"; using {SETTINGS} (last good)]")
    assert second.daemon_json()["interval"] == 7200
    # Fixed and reloaded: the new settings are in effect and the complaint is gone.
    write_yaml(node.path(SETTINGS), {"interval": "3h", "splay": 0})
    second.send(signal.SIGHUP)
    second.notices.next(lambda n: n.has("RELOADING"), "RELOADING=1")
    assert second.notices.ready().status == "converged generation 1, N findings"
    status = second.daemon_json()
    assert status["interval"] == 10800
    assert status["settings"] == {"origin": SETTINGS, "error": None}


# --- the loop in-process, driven by flags ---------------------------------------------------------


@dataclass
class InProcess:
    daemon: Daemon
    notices: NotifySocket
    stop: threading.Event
    ready: threading.Event
    returned: list[int]
    thread: threading.Thread

    def last(self) -> CycleResult:
        assert self.daemon.last is not None, "no cycle has run"
        return self.daemon.last

    def wait_ready(self) -> Notice:
        """Wait for `ready`, and read past the start's notices (READY=1 is the last of them)."""
        assert self.ready.wait(DEADLINE_S), "ready was never set"
        return self.notices.ready()

    def cycle(self, why: str = "test") -> Notice:
        """Ask for a converge now and wait for the STATUS it ends with."""
        cycles = self.daemon.cycles
        self.daemon.request_converge(why)
        # The health runs send STATUS lines too (with their findings count): the one wanted is
        # the first after the cycle began.
        notice = self.notices.next(
            lambda n: (
                "STATUS" in n.fields
                and not n.status.startswith("converging (")
                and self.daemon.cycles > cycles
                and self.daemon.last is not None
                and self.daemon.last.reason == why
            ),
            "STATUS after a cycle",
        )
        assert self.daemon.cycles == cycles + 1
        return notice


@pytest.fixture
def in_process(tmp_path: Path, node: Node) -> Iterator[Callable[[], InProcess]]:
    """`Daemon.run` in a thread with its own stop/ready flags and a notifier on a test socket."""
    loops: list[InProcess] = []

    def start() -> InProcess:
        notices = NotifySocket(tmp_path / f"inproc{len(loops)}.sock")
        notifier = Notifier(str(notices.path), use_systemd_python=False)
        daemon = Daemon(node.root, notifier=notifier, rng=random.Random(7))
        stop, ready = threading.Event(), threading.Event()
        returned: list[int] = []
        thread = threading.Thread(target=lambda: returned.append(daemon.run(stop, ready)))
        loop = InProcess(daemon, notices, stop, ready, returned, thread)
        loops.append(loop)
        thread.start()
        return loop

    yield start
    for loop in loops:
        loop.stop.set()
        loop.thread.join(timeout=DEADLINE_S)
        loop.daemon.notifier.close()
        loop.notices.close()


def test_the_loop_in_process_is_driven_by_its_flags(
    in_process: Callable[[], InProcess], node: Node, desired: dict[str, Any]
) -> None:
    loop = in_process()
    assert loop.ready.wait(DEADLINE_S), "ready was never set"
    # ready is set after the first converge, not before.
    assert crun_version(node) == "crun version 1.15"
    assert loop.daemon.cycles == 1
    assert loop.last().outcome == "converged"
    assert loop.wait_ready().status == "converged generation 1, N findings"
    # request_converge runs a cycle now: a worker plans and finds nothing to do ...
    notice = loop.cycle("test")
    assert notice.status == "converged generation 1, N findings"
    assert loop.last().reason == "test"
    assert loop.last().actions == 0
    assert not loop.last().cached
    # ... which is remembered, so the next one is answered from the no-op digest, without one.
    assert loop.cycle("again").status == "converged generation 1, N findings"
    assert loop.last().reason == "again"
    assert loop.last().cached
    loop.stop.set()
    loop.thread.join(timeout=DEADLINE_S)
    assert not loop.thread.is_alive()
    assert loop.returned == [0]
    loop.notices.next(lambda n: n.has("STOPPING"), "STOPPING=1")
    assert json.loads(node.read("/var/lib/wasm-edge/daemon.json"))["state"] == "stopped"


SIGNAL_STORM = """
import signal, sys, time
from pathlib import Path
from agentd.daemon.loop import Daemon
daemon = Daemon(Path(sys.argv[1]))
handler = {"HUP": daemon.request_reload, "TERM": daemon.request_stop}[sys.argv[2]]
busy = []
def storm(signum, frame):
    # A loaded machine can take longer than the timer's millisecond inside the handler: the next
    # SIGALRM would then nest handlers until RecursionError. One landing inside the handler is
    # dropped; the loop itself is still interrupted anywhere.
    if busy:
        return
    busy.append(True)
    try:
        handler()
    finally:
        busy.clear()
signal.signal(signal.SIGALRM, storm)
signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
loops, end = 0, time.monotonic() + 2
while time.monotonic() < end:  # what the loop does between runs, as fast as it can
    daemon._wake.wait(0)
    daemon._reload = False
    loops += 1
signal.setitimer(signal.ITIMER_REAL, 0)
print(loops)
"""


@pytest.mark.parametrize("signal_name", ["HUP", "TERM"])
def test_a_signal_landing_anywhere_in_the_loop_never_hangs_it(
    tmp_path: Path, signal_name: str
) -> None:
    """The handlers of SIGHUP and SIGTERM run on the main thread, between any two of its
    bytecodes: one that takes a lock the loop holds at that moment (threading.Event.set() while
    the loop is inside Event.wait() or clear()) blocks for ever. A timer signal every
    millisecond for two seconds lands in every part of the loop's wait."""
    root = tmp_path / "root"
    root.mkdir()
    try:
        done = subprocess.run(
            [sys.executable, "-c", SIGNAL_STORM, str(root), signal_name],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    except subprocess.TimeoutExpired:
        raise AssertionError("the loop hung in a signal handler") from None
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 1000, done.stdout  # the loop really ran while the timer fired


def test_consecutive_failures_back_off_exponentially_up_to_the_cap(
    in_process: Callable[[], InProcess], node: Node, desired: dict[str, Any], local: LocalFiles
) -> None:
    write_yaml(node.path(SETTINGS), {**QUIET, "backoff": {"initial": "10s", "max": "1m"}})
    drop_in = node.path(DROP_IN)
    drop_in.parent.mkdir(parents=True, exist_ok=True)
    drop_in.write_text("generation: [\n")
    loop = in_process()
    assert loop.wait_ready().status.startswith("failed: the desired state is invalid (1 error): ")
    schedule = loop.daemon.schedule
    observed = [(schedule.failures, schedule.last_delay)]
    for _ in range(4):
        loop.cycle()
        observed.append((schedule.failures, schedule.last_delay))
    for failures, delay in observed:
        base = min(10.0 * 2 ** (failures - 1), 60.0)  # 10s, 20s, 40s, then 60s (the cap)
        assert 0.8 * base <= delay <= min(1.2 * base, 60.0), observed
    assert [f for f, _ in observed] == [1, 2, 3, 4, 5]
    # The next run really is that far away (the loop is not spinning on the failure).
    assert schedule.next_run - time.monotonic() > 40
    # Fixed: the watch on desired.d runs the next cycle at once, whatever the backoff said.
    local.drop_in(2, "1.14")
    loop.notices.status("converged generation 2, N findings")
    assert loop.last().reason == "local change"
    assert schedule.failures == 0
    assert schedule.last_delay == 3600.0


def test_a_deferred_restart_wakes_the_loop_when_the_window_opens(
    in_process: Callable[[], InProcess], node: Node, mirror: MirrorServer, local: LocalFiles
) -> None:
    # A node with k3s (installed without a window), and then a crun install: k3s must restart
    # to find it, and the window is closed for ten minutes more.
    without_crun = desired_document(mirror.url, local.index, crun=None, arches=(local.arch,))
    write_yaml(node.path("/etc/wasm-edge/desired.yaml"), without_crun)
    first = node.agentd("apply", "--json")
    assert first.code == 0, first.stderr
    window, opens = closed_window(timedelta(minutes=10))
    write_yaml(node.path(SETTINGS), {**QUIET, "maintenanceWindow": window})
    local.drop_in(2, "1.15")
    loop = in_process()
    assert "1 disruptive action waits" in loop.wait_ready().status
    assert loop.last().outcome == "deferred", loop.last()
    # The next run is when the window opens (plus a second), not an hour from now.
    until_open = (opens - datetime.now(timezone.utc)).total_seconds()
    assert loop.daemon.schedule.next_run - time.monotonic() <= until_open + 2
    assert loop.daemon.schedule.next_run - time.monotonic() >= until_open - 60


# --- the maintenance window -----------------------------------------------------------------------


def test_a_restart_outside_the_maintenance_window_is_deferred(
    start_daemon: StartDaemon, node: Node, mirror: MirrorServer, local: LocalFiles
) -> None:
    without_crun = desired_document(mirror.url, local.index, crun=None, arches=(local.arch,))
    write_yaml(node.path("/etc/wasm-edge/desired.yaml"), without_crun)
    first = node.agentd("apply", "--json")
    assert first.code == 0, first.stderr
    assert "systemctl restart k3s.service" in first.json()["serviceCalls"]
    # Now crun arrives (generation 2) while the window is closed.
    window, opens = closed_window(timedelta(hours=2))
    local.drop_in(2, "1.15")
    daemon = start_daemon({**QUIET, "maintenanceWindow": window})
    ready = daemon.notices.ready()
    until = opens.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert ready.status == (
        "converged generation 2, N findings; 1 disruptive action waits for the maintenance "
        f"window (opens {until})"
    ), daemon.stderr()
    # The non-disruptive part ran: crun is installed ...
    assert crun_version(node) == "crun version 1.15"
    state = daemon.json_file("/var/lib/wasm-edge/state.json")
    run = state["lastRun"]
    assert run["outcome"] == "deferred"
    assert [(a["component"], a["action"]) for a in run["actions"]] == [
        ("crun", "install"),
        ("k3s/containerd", "configure"),
    ]
    # ... the restart did not, and is owed.
    assert not any("restart" in call for call in run["serviceCalls"]), run["serviceCalls"]
    assert state["pendingRestart"]["unit"] == "k3s.service"
    assert "crun install" in state["pendingRestart"]["causes"]
    assert [(a["component"], a["action"]) for a in state["deferred"]["actions"]] == [
        ("k3s", "restart")
    ]
    assert state["deferred"]["until"] == until
    assert state["lastAppliedGeneration"] == 2
    # The daemon wakes up when the window opens.
    until_open = (opens - datetime.now(timezone.utc)).total_seconds()
    assert daemon.daemon_json()["nextRunInS"] <= until_open + 2
    daemon.send(signal.SIGTERM)
    assert daemon.wait(timeout=10) == 0

    # In the window, the owed restart runs (and only it).
    host = Host.at(node.root)
    config = load_config(Paths(node.root))
    assert config.maintenance is not None
    result = apply(host, None, config=config, now=opens + timedelta(minutes=1))
    assert result.outcome == "converged"
    restarts = [call for call in result.service_calls or [] if "restart" in call]
    assert restarts == ["systemctl restart k3s.service"], result.service_calls
    assert [(a["component"], a["action"]) for a in result.actions or []] == [("k3s", "restart")]
    state = json.loads(node.read("/var/lib/wasm-edge/state.json"))
    assert state["pendingRestart"] is None
    assert state["deferred"] is None


# --- the unit file --------------------------------------------------------------------------------


def test_the_daemon_checks_health_and_rolls_back_a_change_that_broke_crun(
    start_daemon: StartDaemon, node: Node, desired: dict[str, Any], tmp_path: Path, arch: str
) -> None:
    """The health run follows a change at once; crun built without Wasm is rolled back to the
    kept 1.15 by a worker, and generation 2's crun change is not tried again."""
    daemon = start_daemon(QUIET)
    assert "findings" in daemon.notices.ready().status
    health = daemon.notices.next(
        lambda n: n.status.startswith("converged generation 1") and "converging" not in n.status,
        "the STATUS after the first health run",
    )
    wait_until(lambda: node.state().get("health") is not None, "the first health record")
    assert health.status.endswith("findings")
    releases = tmp_path / "releases"
    releases.mkdir()
    broken = crun_binary("1.16", wasm=False)
    (releases / "crun-1.16").write_bytes(broken)
    with MirrorServer(releases) as server:
        artifact = {"url": f"{server.url}/crun-1.16", "sha256": sha256_hex(broken)}
        # Generation 2 in desired.yaml (a drop-in cannot set it), then its crun in a drop-in.
        main = node.path("/etc/wasm-edge/desired.yaml")
        tmp = write_yaml(main.with_name(".desired.yaml.tmp"), {**desired, "generation": 2})
        tmp.replace(main)
        write_yaml(
            node.path(DROP_IN),
            {"components": {"crun": {"version": "1.16", "artifacts": {arch: artifact}}}},
        )
        wait_until(lambda: "crun" in node.state().get("blocked", {}), "the rollback", 60)
    state = node.state()
    assert state["blocked"]["crun"]["version"] == "1.16"
    assert state["blocked"]["crun"]["generation"] == 2
    assert state["counters"]["rollbacks"] == {"crun": 1}
    assert crun_version(node) == "crun version 1.15"
    # The next run converges generation 2 without trying crun 1.16 again.
    daemon.send(signal.SIGHUP)
    daemon.notices.next(lambda n: n.has("RELOADING"), "RELOADING=1")
    assert daemon.notices.ready().status.startswith("converged generation 2")
    assert crun_version(node) == "crun version 1.15"
    last = node.state()["lastRun"]
    assert last["generation"] == 2
    note = next(u for u in last["unchanged"] if u["component"] == "crun")
    assert "rolled back" in note["reason"]
    assert "rolled back" in daemon.stderr()


def test_the_unit_is_type_notify_with_a_watchdog_reload_and_an_off_switch() -> None:
    # Not strict: systemd takes a list directive (ReadWritePaths=) on several lines.
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(REPO / "systemd" / "wasm-edge-agentd.service")
    assert unit["Unit"]["ConditionPathExists"] == "!/etc/wasm-edge/disabled"
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["ExecStart"].split()[1:] == ["run"]
    assert service["ExecReload"] == "/bin/sh -c 'kill -HUP $MAINPID'"
    assert service["KillMode"] == "mixed"
    # Long enough that a ping every second or so (even while a worker runs) is never late.
    watchdog = re.fullmatch(r"(\d+)(s|sec|min|h)?", service["WatchdogSec"])
    assert watchdog is not None, service["WatchdogSec"]
    unit_s = {None: 1, "s": 1, "sec": 1, "min": 60, "h": 3600}[watchdog.group(2)]
    assert int(watchdog.group(1)) * unit_s >= 10
    assert service["Restart"] in ("always", "on-failure")
    assert unit["Install"]["WantedBy"] == "multi-user.target"


# --- a manual rollback ----------------------------------------------------------------------------


def test_the_daemon_honours_a_manual_rollback_until_it_is_released(
    start_daemon: StartDaemon, node: Node, local: LocalFiles, desired: dict[str, Any]
) -> None:
    """`agentd rollback crun` holds crun at what it put back: the daemon's cycles (a worker's
    plan, then the no-op memo) leave it there; `rollback --release` lets the next cycle change
    it again (issue 15.5)."""
    assert node.agentd("apply").code == 0
    local.drop_in(2, "1.14")
    assert node.agentd("apply").code == 0
    assert crun_version(node) == "crun version 1.14"
    rolled = node.agentd("rollback", "crun")
    assert rolled.code == 0, rolled.stderr
    assert crun_version(node) == "crun version 1.15"
    daemon = start_daemon(QUIET)
    assert daemon.notices.ready().status == "converged generation 2, N findings", daemon.stderr()
    daemon.send(signal.SIGHUP)  # a second cycle: answered from the memo the first one left
    daemon.notices.next(lambda n: n.has("RELOADING"), "RELOADING=1")
    daemon.notices.ready()
    assert crun_version(node) == "crun version 1.15"
    assert node.state()["rollbackHolds"]["crun"]["away"] == "1.14"
    assert node.state()["lastRun"]["refusals"][0]["kind"] == "rollback-hold"
    assert node.agentd("rollback", "--release", "crun").code == 0
    daemon.send(signal.SIGHUP)
    wait_until(lambda: crun_version(node) == "crun version 1.14", "the downgrade after release")
    daemon.send(signal.SIGTERM)
    assert daemon.wait(timeout=10) == 0
