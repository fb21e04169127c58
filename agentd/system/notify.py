"""The sd_notify protocol: readiness, status, watchdog and reload/stop notices to systemd."""

from __future__ import annotations

import importlib
import os
import socket
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from agentd.core.printable import printable

# The variables systemd sets for the main process only (sd_notify(3), sd_watchdog_enabled(3)).
NOTIFY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
# systemd ignores a whole notify datagram of more than PIPE_BUF (NOTIFY_BUFFER_MAX, 4096 bytes),
# so a long STATUS is cut to leave room for the other assignments of the same message.
STATUS_MAX_BYTES = 1024
# sendto blocks while the receiver's queue is full: bounded, so a stuck manager cannot hang the
# daemon (sd_notify itself would wait; a lost notice is the lesser harm here).
SEND_TIMEOUT_S = 2.0


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """A copy of `environ` for a worker process: without the notify socket and the watchdog, so
    that only the daemon itself ever talks to systemd."""
    return {k: v for k, v in environ.items() if k not in NOTIFY_VARIABLES}


def socket_address(value: str) -> bytes | None:
    """NOTIFY_SOCKET as an AF_UNIX address: a path, or `@name` for the abstract `\\0name`.

    None for anything else (empty, relative, or a `vsock:` address, which is not spoken here).
    """
    if value.startswith("/"):
        return os.fsencode(value)
    if value.startswith("@") and len(value) > 1:
        return b"\0" + os.fsencode(value[1:])
    return None


def _one_line(text: str) -> str:
    # systemd splits a notify message at "\n" and "\r": a newline inside a value would start a
    # new (and wrong) assignment (a forged READY=1 or MAINPID=). `systemctl status` shows
    # STATUS= on a terminal, and a file name's non-UTF-8 bytes could not even be encoded: the
    # other control characters are escaped.
    return printable(" ".join(part for part in text.splitlines() if part)) if text else text


def _cut(text: str, limit: int) -> str:
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode("utf-8", "ignore") + "..."


def _positive_int(value: str | None) -> int | None:
    try:
        number = int(value or "")
    except ValueError:
        return None
    return number if number > 0 else None


class Notifier:
    """Sends notify messages to the service manager; does nothing when not run by systemd.

    `use_systemd_python=False` always speaks the protocol directly, even where systemd-python
    is installed (the tests cover both paths that way).
    """

    def __init__(
        self,
        notify_socket: str | None,
        watchdog_usec: int | None = None,
        watchdog_pid: int | None = None,
        *,
        use_systemd_python: bool = True,
    ) -> None:
        self.notify_socket = notify_socket or None
        self.address = socket_address(notify_socket) if notify_socket else None
        self.watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self.watchdog_pid = watchdog_pid
        self.use_systemd_python = use_systemd_python
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] = os.environ, *, use_systemd_python: bool = True
    ) -> Notifier:
        return cls(
            environ.get("NOTIFY_SOCKET"),
            _positive_int(environ.get("WATCHDOG_USEC")),
            _positive_int(environ.get("WATCHDOG_PID")),
            use_systemd_python=use_systemd_python,
        )

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half the timeout, as sd_watchdog_enabled(3)
        advises), or None when there is no watchdog for this process."""
        if self.watchdog_usec is None:
            return None
        # Checked at call time: a forked child holding this object is not the watched process.
        if self.watchdog_pid is not None and self.watchdog_pid != os.getpid():
            return None
        return self.watchdog_usec / 2 / 1_000_000

    def send(self, *assignments: str) -> bool:
        """Send `KEY=value` assignments in one datagram; False when nothing was delivered.

        Never raises: an unreachable manager must not take the daemon down with it.
        """
        lines = []
        for assignment in assignments:
            line = _one_line(assignment)
            if line.startswith("STATUS="):
                line = _cut(line, len("STATUS=") + STATUS_MAX_BYTES)
            if line:
                lines.append(line)
        if self.address is None or not lines:
            return False
        message = "\n".join(lines)
        daemon = self._systemd_daemon()
        if daemon is not None:
            try:
                return bool(daemon.notify(message))
            except Exception:  # whatever the binding raises, it is a lost notice, not a crash
                return False
        return self._sendto(message.encode("utf-8"))

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *(() if status is None else (f"STATUS={status}",)))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def reloading(self, status: str | None = None) -> bool:
        # systemd 253+ (Type=notify-reload) wants the CLOCK_MONOTONIC time of the reload with it.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        extra = () if status is None else (f"STATUS={status}",)
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", *extra)

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *(() if status is None else (f"STATUS={status}",)))

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _systemd_daemon(self) -> Any:
        """systemd.daemon when it is installed and would reach our socket, else None."""
        # libsystemd reads NOTIFY_SOCKET from the process environment, not from ours: only when
        # the two agree does it send where this Notifier was pointed.
        if not self.use_systemd_python or os.environ.get("NOTIFY_SOCKET") != self.notify_socket:
            return None
        return systemd_binding("systemd.daemon", "notify")

    def _sendto(self, data: bytes) -> bool:
        assert self.address is not None
        with self._lock:
            for attempt in (1, 2):
                try:
                    if self._sock is None:
                        self._sock = socket.socket(
                            socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                        )
                        self._sock.settimeout(SEND_TIMEOUT_S)
                        # Connected, not sendto: only then does poll() wait for room in the
                        # manager's queue. Unconnected, it reports "writable" while sendto()
                        # fails with EAGAIN, and the timeout becomes two seconds of busy loop.
                        self._sock.connect(self.address)
                    self._sock.send(data)
                    return True
                except OSError as exc:
                    if self._sock is not None:
                        self._sock.close()
                        self._sock = None
                    # A socket re-created by a manager restart refuses the old connection:
                    # connect again, once. A full queue (timeout) or no socket: a lost notice.
                    if attempt == 2 or not isinstance(exc, ConnectionRefusedError):
                        return False
        return False  # pragma: no cover - the loop always returns


_MODULES: dict[str, Any] = {}


def systemd_binding(name: str, attribute: str) -> Any:
    """The systemd-python module `name` if it imports and has `attribute`, else None (cached).

    Imported by name so that neither its absence nor its lack of type hints matters here.
    """
    if name not in _MODULES:
        try:
            module: Any = importlib.import_module(name)
        except Exception:  # not installed, or broken: the fallback speaks the protocol
            module = None
        _MODULES[name] = module if callable(getattr(module, attribute, None)) else None
    return _MODULES[name]
