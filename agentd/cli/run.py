"""`agentd run`: the daemon, as the systemd unit starts it; signals are handled here only."""

from __future__ import annotations

import argparse
import signal
import threading
from types import FrameType
from typing import Optional

from agentd.daemon import Daemon


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
    return daemon.run(stop, ready)
