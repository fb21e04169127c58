"""`agentd run`: the daemon, as the systemd unit starts it; signals are handled here only."""

from __future__ import annotations

import argparse
import faulthandler
import signal
import threading
from types import FrameType
from typing import Optional

from agentd.daemon.loop import Daemon


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no options of its own: --root, --settings and --log-format are common


def handle(args: argparse.Namespace) -> int:
    settings = getattr(args, "settings", None)
    # Workers log like the daemon: they share its stderr (the journal under systemd).
    daemon = Daemon(
        args.root,
        settings.absolute() if settings else None,
        log_format=getattr(args, "log_format", "auto"),
    )
    stop, ready = threading.Event(), threading.Event()

    def on_stop(signum: int, frame: Optional[FrameType]) -> None:
        stop.set()
        daemon.request_stop()

    def on_reload(signum: int, frame: Optional[FrameType]) -> None:
        daemon.request_reload()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_reload)
    # The kernel hands a process's signal to any of its threads: one that lands on a watchdog
    # thread would wait, unhandled, until the main thread next woke (an hour on a quiet node).
    signal.set_wakeup_fd(daemon.signal_fd, warn_on_full_buffer=False)
    # `kill -USR1` writes every thread's stack to stderr (the journal): what a daemon that seems
    # stuck on a node nobody can reach is doing, without stopping it.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    return daemon.run(stop, ready)
