"""Logging: structlog, key=value on a terminal and JSON otherwise, secrets redacted everywhere."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

from agentd.redact import redact_text

_SECRET_KEYS = ("token", "password", "secret", "authorization", "credential")


def _redact(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in list(event.items()):
        if any(s in key.lower() for s in _SECRET_KEYS) and key != "tokenFile":
            event[key] = "***"
        elif isinstance(value, str):
            event[key] = redact_text(value)
    return event


_settings = {"fmt": "auto", "verbose": False}
_configured = False


def configure(fmt: str = "auto", verbose: bool = False) -> None:
    """Choose the format; structlog itself is set up on the first log line (a run that logs
    nothing, like a no-op apply, never imports it)."""
    global _configured  # noqa: PLW0603
    _settings.update(fmt=fmt, verbose=verbose)
    _configured = False


def _setup() -> None:
    import structlog  # noqa: PLC0415

    fmt, verbose = str(_settings["fmt"]), bool(_settings["verbose"])

    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: Any = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.DEBUG if verbose else logging.INFO
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def get_logger() -> Any:
    global _configured  # noqa: PLW0603
    import structlog  # noqa: PLC0415

    if not _configured:
        _setup()
        _configured = True
    return structlog.get_logger("agentd")
