"""The worker: `agentd <command>` in a child process, waited for while the daemon stays alive."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Optional

import agentd
from agentd.daemon.heartbeat import Heartbeat
from agentd.settings.snapshot import AgentConfig
from agentd.system.commands import ProcessTimeout, start_process
from agentd.system.notify import child_environment
from agentd.system.progress import PROGRESS_FD_ENV

# How long a worker may run before it is asked to stop (at its next safe point), and how long
# it then has before it is killed.
WORKER_TIMEOUT_S = 3600.0
WORKER_GRACE_S = 120.0
# How a worker starts: the daemon's import path first, then `agentd ARGS...` as the command line.
WORKER_BOOT = (
    "import json, sys; sys.path[0:0] = json.loads(sys.argv.pop(1)); "
    "from agentd.cli.main import main; sys.exit(main())"
)


def settings_env(config: AgentConfig) -> dict[str, str]:
    """The daemon's settings for a worker, so that it runs on them (a broken file's last good
    settings included) instead of reading and validating the file again."""
    return {
        "AGENTD_SETTINGS_JSON": json.dumps(dict(config.raw)),
        "AGENTD_SETTINGS_ORIGIN": config.origin,
    }


class Worker:
    """Runs `agentd <command>` in a child process and waits for it, keeping the daemon alive:
    watchdog pings while it runs, and a stop request passed on as SIGTERM (the child stops at
    its next safe point, never in the middle of installing)."""

    def __init__(
        self, root: Path, heartbeat: Heartbeat, stopping: threading.Event, log_format: str
    ) -> None:
        self.root = root
        self.heartbeat = heartbeat
        self.stopping = stopping
        self.log_format = log_format

    def run(
        self,
        args: list[str],
        env_extra: Mapping[str, str],
        timeout: float = WORKER_TIMEOUT_S,
        progress: Optional[Callable[[str], None]] = None,
    ) -> tuple[int, bytes]:
        """The worker's exit code and stdout; `progress` is given each line it reports on the
        way (a download, a stage), for the daemon's STATUS."""
        # The worker imports agentd and its dependencies from where the daemon did (a package
        # bundles them outside the interpreter's own path; its launcher adds them to sys.path),
        # and nothing else: -I keeps the working directory and PYTHON* variables out.
        home = str(Path(agentd.__file__).resolve().parent.parent)
        path = [home, *(p for p in sys.path if p and p != home)]
        argv = [
            sys.executable,
            "-I",
            "-c",
            WORKER_BOOT,
            json.dumps(path),
            "--root",
            str(self.root),
            "--log-format",
            self.log_format,
            *args,
        ]
        env = {**child_environment(os.environ), **env_extra}
        report_fd, listen = -1, None
        if progress is not None:
            listen, report_fd = os.pipe()
            env[PROGRESS_FD_ENV] = str(report_fd)
        # stderr is the daemon's own (the journal under systemd); stdout carries the JSON result.
        try:
            proc = start_process(argv, env, pass_fds=(report_fd,) if report_fd >= 0 else ())
        finally:
            if report_fd >= 0:
                os.close(report_fd)  # the worker's copy alone: EOF when it exits
        relay = None
        if listen is not None and progress is not None:
            relay = threading.Thread(target=_relay, args=(listen, progress), daemon=True)
            relay.start()
        chunks: list[bytes] = []

        def read_stdout() -> None:
            if proc.stdout is not None:
                chunks.append(proc.stdout.read())

        # Read while waiting: a large result must not block the child on a full pipe.
        reader = threading.Thread(target=read_stdout, daemon=True)
        reader.start()
        started = time.monotonic()
        asked_to_stop = False
        while True:
            try:
                # Never longer than until the next watchdog ping is due: a WatchdogSec of a
                # second or two must not be missed while a worker runs.
                code = proc.wait(timeout=self.heartbeat.until_ping())
                break
            except ProcessTimeout:
                pass
            self.heartbeat.ping_if_due()
            overdue = time.monotonic() - started > timeout
            if (self.stopping.is_set() or overdue) and not asked_to_stop:
                proc.send_signal(signal.SIGTERM)
                asked_to_stop, started = True, time.monotonic()
                timeout = WORKER_GRACE_S
            elif asked_to_stop and overdue:
                proc.kill()
        reader.join(timeout=5)
        if relay is not None:
            relay.join(timeout=5)  # its last line must not come after the cycle's own STATUS
        if proc.stdout is not None:
            proc.stdout.close()
        return code, b"".join(chunks)


def _relay(fd: int, progress: Callable[[str], None]) -> None:
    """Each line the worker reports, passed on until it exits (EOF)."""
    with os.fdopen(fd, "rb") as lines:
        for line in lines:
            text = line.decode("utf-8", "replace").strip()
            if text:
                progress(text)
