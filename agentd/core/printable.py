"""Text made safe for a terminal or a line-based record: control characters shown as escapes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TextIO

# What a terminal or a reader of lines acts on instead of showing: C0 controls (ESC starts a
# screen clear or a title change, NL forges a line), DEL, C1 controls (CSI is ESC's one-byte
# twin), the Unicode line and paragraph separators, the bidirectional overrides that reorder
# what is shown (CVE-2021-42574), and lone surrogates, which are a file name's non-UTF-8 bytes
# as os.fsdecode gives them and which no UTF-8 stream can even write.
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_UNSAFE_BUT_NEWLINE = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"  # the byte os.fsdecode carried as a surrogate
    if code == 0x0A:
        return "\\n"
    if code == 0x09:
        return "\\t"
    if code == 0x0D:
        return "\\r"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def unprintable(text: str) -> str | None:
    """What makes `text` unfit for a name (a control character, bytes that are not UTF-8), or
    None when it has neither."""
    found = _UNSAFE.search(text)
    if found is None:
        return None
    if "\ud800" <= found.group() <= "\udfff":
        return "bytes that are not UTF-8"
    return f"the control character {_escaped(found)}"


def printable(text: str) -> str:
    """`text` with every control character as an escape (\\x1b, \\n, \\u2028): one line, shown
    as it is, whatever a host's file name or a document's string holds."""
    return _UNSAFE.sub(_escaped, text)


def printable_line(text: str) -> str:
    """Like `printable`, but a final newline stays: one line of output, written in pieces."""
    body = text.removesuffix("\n")
    return printable(body) + text[len(body) :]


def printable_lines(text: str) -> str:
    """Like `printable`, but newlines stay: for output whose lines agentd itself composed."""
    return _UNSAFE_BUT_NEWLINE.sub(_escaped, text)


def printable_tree(value: Any) -> Any:
    """`value` (JSON-like) with `printable` applied to every string in it, keys included."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, Mapping):
        return {printable_tree(k): printable_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [printable_tree(v) for v in value]
    return value


class PrintableWriter:
    """Stands in for a text stream (stdout, stderr) and makes everything written printable,
    newlines kept: the last guard for whatever a renderer forgot to escape."""

    def __init__(self, stream: TextIO, keep: re.Pattern[str] | None = None) -> None:
        self.stream = stream
        self.keep = keep  # agentd's own sequences (its colours), passed as they are

    def write(self, text: str) -> int:
        if self.keep is None:
            self.stream.write(printable_lines(text))
        else:
            pieces = self.keep.split(text)  # the pattern's one group keeps each sequence
            self.stream.write(
                "".join(p if i % 2 else printable_lines(p) for i, p in enumerate(pieces))
            )
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)  # flush, isatty, fileno, buffer (binary output), ...
