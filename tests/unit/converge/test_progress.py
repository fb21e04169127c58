"""Progress: a \\r-updated line per download and stage on a terminal (a real pty), nothing when
not a terminal, each action once, and the daemon's STATUS showing the download."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agentd.system.progress import (
    PROGRESS_FD_ENV,
    PipeProgress,
    Progress,
    TerminalProgress,
    clear_terminal_line,
    progress_for,
)
from tests.support.mirror import MirrorServer
from tests.support.node import Node
from tests.support.standins import Mirror, desired_document, write_yaml
from tests.unit.daemon.test_daemon import launch_daemon

REPO = Path(__file__).resolve().parents[3]
CRUN = "/usr/local/bin/crun"


@pytest.fixture
def node(sandbox_root: Path) -> Node:
    return Node(sandbox_root)


def crun_only(mirror: MirrorServer, index: Mirror, arch: str) -> dict[str, Any]:
    return desired_document(mirror.url, index, k3s=None, wasmedge=None, arches=(arch,))


def slow_crun(mirror: MirrorServer, index: Mirror, arch: str, seconds: float = 2.0) -> int:
    """crun's artifact sent over about `seconds`; its size."""
    path, _ = index.artifact("crun", "1.15", arch)
    size = index.file("crun", "1.15", arch).stat().st_size
    mirror.throttle(f"/{path}", size / seconds)
    return size


def on_a_terminal(node: Node, *args: str, timeout: float = 60) -> tuple[int, str]:
    """`agentd ARGS` with stdout and stderr on a pty, as in a terminal: its exit code and
    everything it wrote there."""
    master, slave = pty.openpty()
    env = {**os.environ, "AGENTD_ROOT": "", "TERM": "xterm", "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "agentd", "--root", str(node.root), *args]
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env, cwd=REPO
    )
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every end of the pty's slave side is closed
                    break
                if not data:
                    break
                out += data
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
    return proc.wait(timeout=10), out.decode("utf-8", "replace")


def test_apply_on_a_terminal_shows_the_download_and_prints_each_action_once(
    node: Node, mirror: MirrorServer, mirror_index: Mirror, arch: str
) -> None:
    write_yaml(node.path("/etc/wasm-edge/desired.yaml"), crun_only(mirror, mirror_index, arch))
    size = slow_crun(mirror, mirror_index, arch)
    code, shown = on_a_terminal(node, "apply")
    assert code == 0, shown
    total = f"{size / 1e3:.1f}"
    updates = re.findall(rf"\r\x1b\[Kdownloading crun ([\d.]+)/{re.escape(total)} kB", shown)
    assert len(updates) >= 3, shown  # rewritten in place while it arrives
    assert [float(u) for u in updates] == sorted(float(u) for u in updates)
    assert re.search(r"\r\x1b\[Kdownloading crun [\d.]+/[\d.]+ kB, [\d.]+ kB/s, \d+s left", shown)
    for stage in ("\r\x1b[Kfetching crun", "\r\x1b[Kstaging crun", "\r\x1b[Kinstall crun (1/1)"):
        assert stage in shown, shown
    # The progress line is erased before the summary, which names the action once.
    summary = shown[shown.rindex("\r\x1b[K") :]
    assert "apply: generation 1: converged" in summary
    uncoloured = re.sub(r"\x1b\[\d+m", "", shown)  # a terminal's colours (cli/color.py)
    lines = [ln for ln in uncoloured.replace("\r", "\n").splitlines() if "install" in ln]
    assert [ln for ln in lines if "crun" in ln and "1.15" in ln] == [
        "  + install   crun 1.15  [ok]"
    ]
    assert "action done" not in shown  # the log line would repeat the summary's
    assert node.version_of(CRUN) == "crun version 1.15"


def test_nothing_extra_when_not_a_terminal(
    node: Node, mirror: MirrorServer, mirror_index: Mirror, arch: str
) -> None:
    write_yaml(node.path("/etc/wasm-edge/desired.yaml"), crun_only(mirror, mirror_index, arch))
    slow_crun(mirror, mirror_index, arch, seconds=1.0)
    res = node.agentd("apply")
    assert res.code == 0, res.stderr
    assert "\r" not in res.stdout + res.stderr
    assert "downloading" not in res.stdout + res.stderr
    assert "\x1b" not in res.stdout + res.stderr
    assert res.stdout.startswith("apply: generation 1: converged")


def test_the_terminal_line_says_bytes_rate_and_time_left_and_is_cleared() -> None:
    now = [100.0]
    out = io.StringIO()
    line = TerminalProgress(out, interval=0.1, clock=lambda: now[0])
    line.download("k3s", 0, 60_000_000)
    now[0] += 2.0
    line.download("k3s", 12_000_000, 60_000_000)
    assert out.getvalue().endswith("\r\x1b[Kdownloading k3s 12/60 MB, 6.0 MB/s, 8s left")
    now[0] += 0.05
    line.download("k3s", 13_000_000, 60_000_000)  # too soon after the last: not drawn
    assert "13/60" not in out.getvalue()
    line.download("k3s", 60_000_000, 60_000_000)  # the end is always drawn
    assert "60/60 MB" in out.getvalue()
    line.done()
    assert out.getvalue().endswith("\r\x1b[K")


def test_the_daemon_status_shows_the_download_in_progress(
    node: Node, mirror: MirrorServer, mirror_index: Mirror, arch: str, tmp_path: Path
) -> None:
    write_yaml(node.path("/etc/wasm-edge/desired.yaml"), crun_only(mirror, mirror_index, arch))
    size = slow_crun(mirror, mirror_index, arch, seconds=3.0)
    daemon = launch_daemon(node, tmp_path / "notify.sock", tmp_path / "daemon.stderr")
    try:
        notice = daemon.notices.next(
            lambda n: "downloading crun" in n.fields.get("STATUS", ""), "a download STATUS"
        )
        status = notice.fields["STATUS"]
        assert re.fullmatch(
            rf"converging \(.+\): downloading crun [\d.]+/{size / 1e3:.1f} kB", status
        ), status
        assert notice.pid == daemon.proc.pid  # from the daemon itself (NotifyAccess=main)
        daemon.notices.next(lambda n: n.status.startswith("converged"), "the converged STATUS")
    finally:
        daemon.kill()


def test_a_pipe_nobody_reads_never_blocks_the_run() -> None:
    listen, report = os.pipe()
    try:
        progress = PipeProgress(report, interval=0)
        for n in range(20_000):  # far more than a pipe holds
            progress.stage(f"installing component {n}")
        first = os.read(listen, 64)
        assert first.startswith(b"installing component 0\n")
    finally:
        os.close(listen)
        os.close(report)


def test_only_the_daemons_pipe_or_a_terminal_get_progress(tmp_path: Path) -> None:
    listen, report = os.pipe()
    with (tmp_path / "out").open("w") as plain:
        try:
            env = {PROGRESS_FD_ENV: str(report)}
            assert type(progress_for(plain, env)) is PipeProgress
            # A variable naming something else than a pipe (a file, a closed fd): nothing.
            assert type(progress_for(plain, {PROGRESS_FD_ENV: str(plain.fileno())})) is Progress
            assert type(progress_for(plain, {PROGRESS_FD_ENV: "987"})) is Progress
            assert type(progress_for(plain, {})) is Progress
        finally:
            os.close(listen)
            os.close(report)


def test_a_log_line_erases_the_progress_line_which_comes_back_at_once() -> None:
    now = [10.0]
    out = io.StringIO()
    line = TerminalProgress(out, interval=1.0, clock=lambda: now[0])
    line.download("crun", 1_000, 5_000)
    clear_terminal_line()  # what a log line on the terminal does first
    assert out.getvalue().endswith("\r\x1b[K")
    now[0] += 0.01  # well inside the interval: redrawn all the same
    line.download("crun", 2_000, 5_000)
    assert out.getvalue().endswith("\r\x1b[Kdownloading crun 2.0/5.0 kB")
    clear_terminal_line()
    clear_terminal_line()  # nothing shown: nothing written
    assert out.getvalue().count("\r\x1b[K") == 4  # two draws, two clears: the third wrote nothing
