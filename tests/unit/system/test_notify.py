"""sd_notify over real AF_UNIX datagram sockets: what systemd would read, byte for byte."""

from __future__ import annotations

import os
import secrets
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentd.system.notify import (
    STATUS_MAX_BYTES,
    Notifier,
    child_environment,
    socket_address,
    systemd_binding,
)

REPO = Path(__file__).resolve().parents[3]
RECV_TIMEOUT_S = 10.0  # only ever reached when a datagram that should have come did not


def bind_receiver(address: str | bytes) -> socket.socket:
    """A socket bound where systemd's notify socket would be, as systemd binds it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(RECV_TIMEOUT_S)
    return sock


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    with bind_receiver(path) as sock:
        yield sock, path


def nothing_queued(sock: socket.socket) -> bool:
    # A unix datagram is in the receiver's queue when sendto returns: nothing to wait for.
    sock.setblocking(False)
    try:
        sock.recv(65536)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(RECV_TIMEOUT_S)
    return False


def test_every_notice_arrives_as_systemd_reads_it(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    with Notifier.from_env({"NOTIFY_SOCKET": path}, use_systemd_python=False) as notifier:
        assert notifier.enabled
        assert notifier.ready("converged generation 12, 0 findings")
        assert sock.recv(4096) == b"READY=1\nSTATUS=converged generation 12, 0 findings"
        assert notifier.status("applying generation 13")
        assert sock.recv(4096) == b"STATUS=applying generation 13"
        assert notifier.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert notifier.reloading()
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        reloading, monotonic = sock.recv(4096).decode().split("\n")
        assert reloading == "RELOADING=1"
        key, _, usec = monotonic.partition("=")
        assert key == "MONOTONIC_USEC"
        assert before <= int(usec) <= after
        assert notifier.stopping()
        assert sock.recv(4096) == b"STOPPING=1"
        assert notifier.send("READY=1", "STATUS=one datagram", "MAINPID=1")
        assert sock.recv(4096) == b"READY=1\nSTATUS=one datagram\nMAINPID=1"


def test_an_abstract_socket_is_reached_by_its_at_name() -> None:
    name = f"agentd-test-{os.getpid()}-{secrets.token_hex(6)}"
    assert socket_address("@" + name) == b"\0" + name.encode()
    with bind_receiver("\0" + name) as sock:
        env = {"NOTIFY_SOCKET": "@" + name}
        with Notifier.from_env(env, use_systemd_python=False) as notifier:
            assert notifier.ready("up")
            assert sock.recv(4096) == b"READY=1\nSTATUS=up"
            assert notifier.watchdog()
            assert sock.recv(4096) == b"WATCHDOG=1"


def test_a_multi_line_status_arrives_as_one_line(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    with Notifier(path, use_systemd_python=False) as notifier:
        assert notifier.status("converged generation 12\nwarnings:\r\n  crun is old\n")
        assert sock.recv(4096) == b"STATUS=converged generation 12 warnings:   crun is old"
        # A newline in a value would inject an assignment of its own: it never reaches systemd.
        assert notifier.ready("done\nWATCHDOG=trigger")
        assert sock.recv(4096) == b"READY=1\nSTATUS=done WATCHDOG=trigger"


def test_a_status_with_a_hostile_file_name_arrives_escaped(
    receiver: tuple[socket.socket, str],
) -> None:
    sock, path = receiver
    # A plugin file named with a screen clear and a non-UTF-8 byte (as os.fsdecode gives it).
    name = os.fsdecode(b"/opt/wasmedge/plugin/\x1b[2J\xff.so")
    with Notifier(path, use_systemd_python=False) as notifier:
        assert notifier.status(f"unhealthy: {name}\u2028READY=1")
        assert sock.recv(4096) == (
            b"STATUS=unhealthy: /opt/wasmedge/plugin/\\x1b[2J\\xff.so READY=1"
        )


def test_a_long_status_is_cut_to_fit_what_systemd_accepts(
    receiver: tuple[socket.socket, str],
) -> None:
    sock, path = receiver
    with Notifier(path, use_systemd_python=False) as notifier:
        assert notifier.ready("é" * 5000)
        data = sock.recv(65536)
    assert len(data) < 4096  # systemd drops a whole notify datagram beyond PIPE_BUF
    ready, status = data.decode("utf-8").split("\n")  # still valid UTF-8 after the cut
    assert ready == "READY=1"
    assert status.startswith("STATUS=éé")
    assert status.endswith("...")
    assert len(status.encode()) <= len("STATUS=") + STATUS_MAX_BYTES


def test_watchdog_interval_is_half_the_timeout_for_this_process_only(
    receiver: tuple[socket.socket, str],
) -> None:
    sock, path = receiver
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"}
    with Notifier.from_env({**env, "WATCHDOG_PID": str(os.getpid())}) as mine:
        assert mine.watchdog_interval() == 15.0
        assert mine.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"
    assert Notifier.from_env(env).watchdog_interval() == 15.0  # no WATCHDOG_PID: ours
    other_pid = str(os.getppid())
    assert Notifier.from_env({**env, "WATCHDOG_PID": other_pid}).watchdog_interval() is None
    assert Notifier.from_env({"NOTIFY_SOCKET": path}).watchdog_interval() is None
    assert Notifier.from_env({**env, "WATCHDOG_USEC": "soon"}).watchdog_interval() is None
    assert Notifier.from_env({**env, "WATCHDOG_USEC": "0"}).watchdog_interval() is None


def test_an_unreachable_socket_is_false_never_an_exception(tmp_path: Path) -> None:
    path = str(tmp_path / "not-yet.sock")
    with Notifier(path, use_systemd_python=False) as notifier:
        assert notifier.enabled
        assert notifier.ready("nobody listens") is False
        assert notifier.watchdog() is False
        # The same notifier delivers as soon as a manager listens there: nothing was broken.
        with bind_receiver(path) as sock:
            assert notifier.ready("now someone does")
            assert sock.recv(4096) == b"READY=1\nSTATUS=now someone does"
        # Bound once and gone again: the path exists no more, the send is refused.
        os.unlink(path)
        assert notifier.stopping() is False


def test_a_manager_that_reads_nothing_costs_a_bounded_wait_not_a_busy_loop(
    receiver: tuple[socket.socket, str],
) -> None:
    """systemd busy elsewhere: its queue fills. Each notice then waits for room (up to the send
    timeout) and is lost, but the daemon must not spin on the CPU meanwhile."""
    sock, path = receiver
    with Notifier(path, use_systemd_python=False) as notifier:
        sent = 0
        while notifier.status(f"filling the queue {sent}"):
            sent += 1
            assert sent < 10_000, "the receiver's queue never filled"
        cpu = time.process_time()
        assert notifier.status("one more") is False
        assert time.process_time() - cpu < 0.5  # waiting, not looping
        # Once the manager reads again, notices get through.
        while not nothing_queued(sock):
            pass
        assert notifier.status("room again")
        assert sock.recv(4096) == b"STATUS=room again"


def test_without_notify_socket_nothing_is_sent(
    tmp_path: Path, receiver: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = receiver
    # sd_notify takes an absolute path or "@name" only: a relative one that happens to name our
    # socket from here is still not a notify socket.
    monkeypatch.chdir(tmp_path)
    relative = os.path.basename(path)
    assert os.path.exists(relative)
    for env in ({}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": relative}, {"NOTIFY_SOCKET": "@"}):
        with Notifier.from_env(env) as notifier:
            assert notifier.enabled is False
            assert notifier.ready("up") is False
    assert nothing_queued(sock)


def test_the_environment_given_wins_over_the_process_environment(
    tmp_path: Path, receiver: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # libsystemd would read the process's NOTIFY_SOCKET: it must not be used for another one.
    sock, path = receiver
    with bind_receiver(str(tmp_path / "process.sock")) as process_sock:
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "process.sock"))
        with Notifier.from_env({"NOTIFY_SOCKET": path}) as notifier:
            assert notifier.ready("to the given socket")
        assert sock.recv(4096) == b"READY=1\nSTATUS=to the given socket"
        assert nothing_queued(process_sock)


def test_the_fallback_is_used_when_asked_even_with_systemd_python(
    receiver: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    with Notifier.from_env(use_systemd_python=False) as notifier:
        assert notifier._systemd_daemon() is None
        assert notifier.ready("by hand")
    assert sock.recv(4096) == b"READY=1\nSTATUS=by hand"


def test_systemd_python_delivers_the_same_datagrams(
    receiver: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    if systemd_binding("systemd.daemon", "notify") is None:
        pytest.skip("systemd-python (systemd.daemon) is not installed; the fallback is tested")
    sock, path = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    with Notifier.from_env() as notifier:
        assert notifier._systemd_daemon() is not None
        assert notifier.ready("via libsystemd")
        assert sock.recv(4096) == b"READY=1\nSTATUS=via libsystemd"
        assert notifier.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"


def sender_credentials(sock: socket.socket) -> tuple[bytes, int]:
    """One datagram and the pid the kernel vouches sent it (systemd attributes it by that)."""
    cred_size = struct.calcsize("iII")
    data, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(cred_size))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid, _uid, _gid = struct.unpack("iII", payload[:cred_size])
            return data, pid
    raise AssertionError("no SCM_CREDENTIALS with the datagram")


CHILD = """
from agentd.system.notify import Notifier
n = Notifier.from_env()
assert n.enabled and n.watchdog_interval() == 5.0
assert n.ready("child converged\\nwith 0 findings")
assert n.watchdog()
assert n.reloading()
assert n.stopping()
"""


def test_a_daemon_process_notifies_through_the_socket_systemd_gave_it(
    receiver: tuple[socket.socket, str],
) -> None:
    sock, path = receiver
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    env = {
        **child_environment(os.environ),
        "PYTHONPATH": str(REPO),
        "NOTIFY_SOCKET": path,
        "WATCHDOG_USEC": "10000000",
    }
    proc = subprocess.Popen([sys.executable, "-c", CHILD], env=env, stderr=subprocess.PIPE)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr.decode()
    received = [sender_credentials(sock) for _ in range(4)]
    assert {pid for _, pid in received} == {proc.pid}
    messages = [data for data, _ in received]
    assert messages[0] == b"READY=1\nSTATUS=child converged with 0 findings"
    assert messages[1] == b"WATCHDOG=1"
    assert messages[2].startswith(b"RELOADING=1\nMONOTONIC_USEC=")
    assert messages[3] == b"STOPPING=1"
    assert nothing_queued(sock)


def test_workers_get_an_environment_that_cannot_notify(
    receiver: tuple[socket.socket, str],
) -> None:
    sock, path = receiver
    daemon_env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "NOTIFY_SOCKET": path,
        "WATCHDOG_USEC": "10000000",
        "WATCHDOG_PID": "1",
    }
    worker_env = child_environment(daemon_env)
    assert "NOTIFY_SOCKET" in daemon_env  # the daemon's own mapping is left as it was
    assert not {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} & set(worker_env)
    assert worker_env["PYTHONPATH"] == str(REPO)
    script = "from agentd.system.notify import Notifier; print(Notifier.from_env().ready('worker'))"
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=worker_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "False"
    assert nothing_queued(sock)


def test_notify_and_journal_import_nothing_heavy() -> None:
    script = (
        "import agentd.system.notify, agentd.system.journald, sys; print('\\n'.join(sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    loaded = {name.split(".")[0] for name in result.stdout.split()}
    assert "agentd" in loaded
    assert not loaded & {"structlog", "pydantic", "requests", "yaml", "psutil", "systemd"}
