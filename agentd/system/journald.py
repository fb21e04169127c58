"""Structured log entries to systemd-journald: fields from a log event, and the native protocol."""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import threading
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from agentd.system.notify import SEND_TIMEOUT_S, systemd_binding

DEFAULT_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "agentd"
# One entry is one datagram (systemd's own client moves larger ones into a memfd instead): a value
# is cut well below the socket's default buffer so that the entry still arrives, marked as cut.
MAX_VALUE_BYTES = 48 * 1024
FIELD_NAME_MAX = 64

PRIORITIES = {
    "critical": 2,
    "fatal": 2,
    "error": 3,
    "exception": 3,
    "warning": 4,
    "warn": 4,
    "notice": 5,
    "info": 6,
    "debug": 7,
}
DEFAULT_PRIORITY = 6
# The keys a journalctl filter most wants (`journalctl AGENTD_COMPONENT=crun`) get fixed names.
NAMED_FIELDS = {
    "component": "AGENTD_COMPONENT",
    "action": "AGENTD_ACTION",
    "generation": "AGENTD_GENERATION",
}
# The journal keeps its own priority and timestamp; the event text is MESSAGE.
_NOT_FIELDS = frozenset({"event", "level", "timestamp"})

# Word boundaries of camelCase and of acronyms ("tokenFile", "HTTPStatus", "sha256Digest"), but
# not inside "K3S_VERSION".
_WORD_BREAK_RE = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z0-9])(?=[A-Z][a-z])")
_NOT_NAME_RE = re.compile(r"[^A-Z0-9]+")
# A value shown bare in MESSAGE's key=value pairs; anything else is quoted as a JSON string.
_BARE_RE = re.compile(r"[^\s\"'=\\]+")


def under_journal(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether stderr is connected to the journal: JOURNAL_STREAM ("<dev>:<ino>") names fd 2, as
    systemd.exec(5) says to check (a child with redirected stderr inherits the variable)."""
    dev, sep, ino = environ.get("JOURNAL_STREAM", "").partition(":")
    if not sep:
        return False
    try:
        expected = (int(dev), int(ino))
        st = os.fstat(2)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == expected


def _upper_snake(name: str) -> str:
    return _NOT_NAME_RE.sub("_", _WORD_BREAK_RE.sub("_", name).upper()).strip("_")


def field_name(name: str) -> str | None:
    """`name` as a valid journal field name (A-Z, 0-9 and _, not starting with _ or a digit, at
    most 64 characters), or None when nothing of it is left."""
    # A leading "_" marks the fields journald itself vouches for: it drops them from clients.
    cleaned = _upper_snake(name).lstrip("_0123456789")[:FIELD_NAME_MAX].rstrip("_")
    return cleaned or None


def _render(value: Any) -> tuple[str, bool]:
    """The value as text, and whether that text is JSON."""
    if isinstance(value, str):
        return value, False
    if value is None or isinstance(value, (bool, int, float, list, tuple, dict)):
        try:
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str), True
        except (TypeError, ValueError):  # keys that are not strings, a cycle
            pass
    return str(value), False


def render_value(value: Any) -> str:
    """A field value as text: strings as they are, JSON types as compact JSON, others by str()."""
    return _render(value)[0]


def journal_fields(event_dict: Mapping[str, Any]) -> dict[str, str]:
    """The journal entry for a structlog event: MESSAGE, PRIORITY, SYSLOG_IDENTIFIER and one
    AGENTD_<KEY> field per other key.

    MESSAGE carries the other keys as ` key=value` too, so plain `journalctl` shows everything
    (a traceback follows on lines of its own). A key whose value is None is left out.
    """
    event = event_dict.get("event")
    message = "" if event is None else render_value(event)
    level = str(event_dict.get("level", "")).lower()
    fields = {
        "MESSAGE": message,
        "PRIORITY": str(PRIORITIES.get(level, DEFAULT_PRIORITY)),
        "SYSLOG_IDENTIFIER": IDENTIFIER,
    }
    pairs = []
    traceback = ""
    for key, value in event_dict.items():
        if key in _NOT_FIELDS or value is None:
            continue
        text, is_json = _render(value)
        if key == "exception":  # structlog's formatted traceback: last, as the lines it is
            traceback = "\n" + text
        elif is_json or _BARE_RE.fullmatch(text):
            pairs.append(f" {key}={text}")
        else:  # quoted where bare text would be ambiguous: empty, spaces, quotes, "="
            pairs.append(f" {key}={json.dumps(text, ensure_ascii=False)}")
        suffix = _upper_snake(key)
        name = NAMED_FIELDS.get(key) or (field_name("AGENTD_" + suffix) if suffix else None)
        if name is not None:
            fields[name] = text
    fields["MESSAGE"] = message + "".join(pairs) + traceback
    return fields


def _limited(data: bytes) -> bytes:
    if len(data) <= MAX_VALUE_BYTES:
        return data
    marker = f" [... cut by agentd: {len(data)} bytes in all]".encode()
    # Cut on a character boundary, so the kept part is still valid UTF-8.
    kept = data[: MAX_VALUE_BYTES - len(marker)].decode("utf-8", "ignore").encode("utf-8")
    return kept + marker


def _clean(fields: Mapping[str, str]) -> list[tuple[str, bytes]]:
    entries = []
    for raw_name, value in fields.items():
        name = field_name(raw_name)
        if name is not None:
            entries.append((name, _limited(value.encode("utf-8", "backslashreplace"))))
    return entries


def encode_entry(fields: Mapping[str, str]) -> bytes:
    """One datagram of the native journal protocol: `KEY=value\\n` per field, and for a value
    with a newline `KEY\\n` + its length as 64-bit little endian + the bytes + `\\n`."""
    out = bytearray()
    for name, data in _clean(fields):
        if b"\n" in data:
            out += name.encode("ascii") + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += name.encode("ascii") + b"=" + data + b"\n"
    return bytes(out)


class JournalSender:
    """Sends entries to journald; systemd-python's sendv where it is installed and the socket is
    journald's own, the native protocol written here otherwise (always, for any other socket)."""

    def __init__(self, socket_path: str = DEFAULT_SOCKET, *, use_systemd_python: bool = True):
        self.socket_path = socket_path
        self.use_systemd_python = use_systemd_python
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def send(self, fields: Mapping[str, str]) -> bool:
        """Send one entry; False when it was not delivered (never raises)."""
        try:
            binding = None
            if self.use_systemd_python and self.socket_path == DEFAULT_SOCKET:
                binding = systemd_binding("systemd.journal", "sendv")
            if binding is not None:
                entries = _clean(fields)
                if not entries:
                    return False
                # sendv takes "KEY=value" items and picks the binary form for newlines itself.
                binding.sendv(*(name.encode("ascii") + b"=" + data for name, data in entries))
                return True
            data = encode_entry(fields)
            if not data:
                return False
            with self._lock:
                if self._sock is None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                    sock.settimeout(SEND_TIMEOUT_S)
                    self._sock = sock
                self._sock.sendto(data, os.fsencode(self.socket_path))
        except Exception:  # a log line that cannot be sent must not become a crash
            return False
        return True

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def __enter__(self) -> JournalSender:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
