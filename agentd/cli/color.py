"""Colour on a terminal: `--color=auto|always|never`, and NO_COLOR (no-color.org) for auto."""

from __future__ import annotations

import os
import re
from typing import TextIO

from agentd.system.progress import CLEAR_LINE

CODES = {"red": "31", "green": "32", "yellow": "33", "magenta": "35", "cyan": "36", "bold": "1"}
# The plan's markers (cli.output.MARKERS), each in the colour terraform uses for it.
MARKER_COLOURS = {"+": "green", "~": "yellow", "-": "red", "*": "cyan", "!": "magenta"}
# Exactly the sequences `paint` and the progress line write: the output's last guard
# (core.printable) lets these through and escapes every other one.
OWN_SEQUENCES = re.compile(
    "("
    + "|".join([re.escape(CLEAR_LINE)] + [f"\033\\[{c}m" for c in sorted({*CODES.values(), "0"})])
    + ")"
)
_MARKER_LINE = re.compile(r"^(  )([+~\-*!]) (\S+)", re.MULTILINE)

_mode = "auto"


def configure(mode: str) -> None:
    global _mode  # noqa: PLW0603 - set once per process, from the command line
    _mode = mode


def wanted(stream: TextIO) -> bool:
    """always and never win; auto: a terminal, unless NO_COLOR is set (non-empty) or TERM=dumb."""
    if _mode != "auto":
        return _mode == "always"
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (OSError, ValueError):
        return False


def paint(text: str, colour: str, stream: TextIO) -> str:
    return f"\033[{CODES[colour]}m{text}\033[0m" if wanted(stream) else text


def paint_plan(text: str, stream: TextIO) -> str:
    """The plan's or a run's text with each action's marker and verb in its colour."""
    if not wanted(stream):
        return text

    def one(m: re.Match[str]) -> str:
        code = CODES[MARKER_COLOURS[m[2]]]
        return f"{m[1]}\033[{code}m{m[2]} {m[3]}\033[0m"

    return _MARKER_LINE.sub(one, text)
