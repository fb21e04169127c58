"""The node's OS as os-release(5) names it: light enough for the no-op path's node identity."""

from __future__ import annotations

import re
from pathlib import Path

from agentd.core.paths import Paths
from agentd.system.readfile import SMALL_FILE_BYTES, read_text_bounded


def _unquote_os_release(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1]
        if value and value[0] != "'":
            # os-release(5) follows shell double-quote rules: these are the escapable characters.
            value = re.sub(r'\\([\\"$`])', r"\1", value)
    return value.strip()


def parse_os_release(text: str) -> str:
    """ "<ID> <VERSION_ID>" from os-release text ("debian 12"); "unknown" without an ID."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        if re.fullmatch(r"[A-Z_][A-Z0-9_]*", key):
            values[key] = _unquote_os_release(value.strip())
    os_id = values.get("ID", "")
    if not os_id or not re.fullmatch(r"[0-9a-z._-]+", os_id):
        return "unknown"
    version_id = values.get("VERSION_ID", "")
    return f"{os_id} {version_id}" if version_id and " " not in version_id else os_id


def os_name(paths: Paths) -> str:
    """The OS as os-release names it ("debian 12"), or "unknown"."""
    candidates = [
        paths.os_release,
        paths.under("/usr/lib/os-release"),
        Path("/etc/os-release"),
        Path("/usr/lib/os-release"),
    ]
    for candidate in candidates:
        try:
            return parse_os_release(read_text_bounded(candidate, SMALL_FILE_BYTES))
        except OSError:
            continue
    return "unknown"
