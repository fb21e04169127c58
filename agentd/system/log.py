"""Logging: structlog, key=value on a terminal, the journal under systemd, JSON otherwise."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from agentd.core.printable import printable, printable_lines, printable_tree
from agentd.core.redact import redact_text

if TYPE_CHECKING:
    from agentd.system.journald import JournalSender

FORMATS = ("auto", "console", "json", "journal")
# For tests only: journal mode sends to this socket instead of journald's.
JOURNAL_SOCKET_ENV = "AGENTD_JOURNAL_SOCKET"

_SECRET_KEYS = ("token", "password", "secret", "authorization", "credential")


def _secret_key(key: object) -> bool:
    name = str(key).lower()
    return any(s in name for s in _SECRET_KEYS) and name != "tokenfile"


def _scrub(value: Any, depth: int = 0) -> Any:
    """`value` with secrets masked at any depth: strings, lists, mappings, and anything else by
    its text (a Path or an exception can hold a URL with a password too)."""
    if isinstance(value, str):
        return redact_text(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if depth > 8:
        return redact_text(str(value))
    if isinstance(value, Mapping):
        return {k: "***" if _secret_key(k) else _scrub(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_scrub(v, depth + 1) for v in value]
    return redact_text(str(value))


def _redact(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in list(event.items()):
        event[key] = "***" if _secret_key(key) else _scrub(value)
    return event


def _printable(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Console lines are read on a terminal: no value may clear it or start a line of its own.
    A traceback keeps its lines; JSON lines need no such step (json.dumps escapes them)."""
    return {
        printable(str(k)): printable_lines(v)
        if k == "exception" and isinstance(v, str)
        else printable_tree(v)
        for k, v in event.items()
    }


def _to_journal(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> tuple[tuple[Mapping[str, str], Mapping[str, Any]], dict[str, Any]]:
    """The last processor in journal mode: (args, kwargs) for the logger, which are the entry's
    journal fields and the event itself, to write as JSON if the entry cannot be sent."""
    from agentd.system.journald import journal_fields  # noqa: PLC0415 - only journal mode loads it

    return (journal_fields(event), dict(event)), {}


class JournalLogger:
    """structlog's logger in journal mode: sends each entry to journald, and writes it as a JSON
    line to stderr instead when that fails, so that nothing is lost."""

    def __init__(self, sender: JournalSender) -> None:
        self.sender = sender

    def msg(self, fields: Mapping[str, str], event: Mapping[str, Any]) -> None:
        if not self.sender.send(fields):
            sys.stderr.write(json.dumps(event, default=str) + "\n")
            sys.stderr.flush()

    log = debug = info = warning = warn = error = err = critical = fatal = exception = msg
    failure = msg


_settings = {"fmt": "auto", "verbose": False}
_configured = False
_journal_sender: JournalSender | None = None


def configure(fmt: str = "auto", verbose: bool = False) -> None:
    """Choose the format (one of FORMATS); structlog itself is set up on the first log line (a
    run that logs nothing, like a no-op apply, never imports it).

    "auto" is "journal" when stderr is the journal's stream, "console" on a terminal, and
    "json" otherwise.
    """
    global _configured  # noqa: PLW0603
    _settings.update(fmt=fmt, verbose=verbose)
    _configured = False


def _below_progress(_logger: Any, _method: str, event: Any) -> Any:
    """A log line on a terminal starts where a progress line was, not after its text."""
    from agentd.system.progress import clear_terminal_line  # noqa: PLC0415

    clear_terminal_line()
    return event


def summary_follows() -> None:
    """The command ends with a summary of what it did: on a terminal, its info lines would say
    each action twice, so only warnings and errors are shown there (--verbose shows all)."""
    global _configured  # noqa: PLW0603
    _settings["summary"] = True
    _configured = False


def _setup() -> None:
    global _journal_sender  # noqa: PLW0603
    import structlog  # noqa: PLC0415

    fmt, verbose = str(_settings["fmt"]), bool(_settings["verbose"])

    if fmt == "auto":
        from agentd.system.journald import under_journal  # noqa: PLC0415

        fmt = "journal" if under_journal() else "console" if sys.stderr.isatty() else "json"
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "journal":
        from agentd.system.journald import DEFAULT_SOCKET, JournalSender  # noqa: PLC0415

        if _journal_sender is not None:
            _journal_sender.close()  # a logger cached before reopens it on its next line
        _journal_sender = JournalSender(os.environ.get(JOURNAL_SOCKET_ENV) or DEFAULT_SOCKET)
        journal_logger = JournalLogger(_journal_sender)

        def logger_factory(*_args: Any) -> JournalLogger:
            return journal_logger

        # The traceback becomes a field of its own, and is redacted like every other string.
        processors += [structlog.processors.format_exc_info, _redact, _to_journal]
        factory: Any = logger_factory
    else:
        renderer: Any = (
            structlog.processors.JSONRenderer(sort_keys=False)
            if fmt == "json"
            else structlog.dev.ConsoleRenderer(colors=False)
        )
        # Tracebacks become text first, so that they are redacted like every other string.
        processors += [structlog.processors.format_exc_info, _redact]
        processors += [renderer] if fmt == "json" else [_printable, renderer]
        if fmt == "console":
            processors.insert(0, _below_progress)
        factory = structlog.PrintLoggerFactory(file=sys.stderr)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.DEBUG
            if verbose
            else logging.WARNING
            if _settings.get("summary") and fmt == "console" and sys.stderr.isatty()
            else logging.INFO
        ),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )


@contextlib.contextmanager
def log_fields(**fields: Any) -> Iterator[None]:
    """Add `fields` to every line logged inside the block (this thread's, or this task's)."""
    import structlog.contextvars  # noqa: PLC0415

    with structlog.contextvars.bound_contextvars(**fields):
        yield


def get_logger() -> Any:
    global _configured  # noqa: PLW0603
    import structlog  # noqa: PLC0415

    if not _configured:
        _setup()
        _configured = True
    return structlog.get_logger("agentd")
