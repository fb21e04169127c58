"""Control characters shown as escapes: what a terminal or a line reader would act on."""

from __future__ import annotations

import io
import os

import pytest

from agentd.core.printable import (
    PrintableWriter,
    printable,
    printable_line,
    printable_lines,
    printable_tree,
    unprintable,
)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain /usr/local/bin/crun 1.15", "plain /usr/local/bin/crun 1.15"),
        ("caf\u00e9 \u4e2d\u6587", "caf\u00e9 \u4e2d\u6587"),  # printable Unicode stays
        ("\x1b[2J", "\\x1b[2J"),
        ("a\nb\r\tc", "a\\nb\\r\\tc"),
        ("\x00\x07\x7f", "\\x00\\x07\\x7f"),
        ("\x9b31m\x85", "\\x9b31m\\x85"),  # C1: CSI, NEL
        ("a\u2028b\u2029c", "a\\u2028b\\u2029c"),
        ("\u202eevil\u2066", "\\u202eevil\\u2066"),  # bidirectional overrides
        (os.fsdecode(b"lib\xff\xfe.so"), "lib\\xff\\xfe.so"),  # the bytes a name really has
        ("\ud800", "\\ud800"),
    ],
)
def test_printable(text: str, shown: str) -> None:
    assert printable(text) == shown
    assert printable(shown) == shown  # escaping twice changes nothing more
    shown.encode("utf-8")  # whatever the input, the output can be written


def test_printable_lines_keeps_newlines_only() -> None:
    assert printable_lines("a\x1b[2J\nb\r\n") == "a\\x1b[2J\nb\\r\n"


def test_printable_line_keeps_only_the_final_newline() -> None:
    assert printable_line('name\n{"level":"error"}\n') == 'name\\n{"level":"error"}\n'
    assert printable_line("no newline") == "no newline"


def test_printable_tree_escapes_keys_and_values_at_any_depth() -> None:
    tree = {"a\x1b": ["x\ny", {"k": "\x07"}], "n": 3, "none": None}
    assert printable_tree(tree) == {"a\\x1b": ["x\\ny", {"k": "\\x07"}], "n": 3, "none": None}


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("libwasmedgePluginWasiNN.so", None),
        ("caf\u00e9", None),
        ("a\x00b", "the control character \\x00"),
        ("a\nb", "the control character \\n"),
        ("a\u2028b", "the control character \\u2028"),
        (os.fsdecode(b"a\xffb"), "bytes that are not UTF-8"),
    ],
)
def test_unprintable(name: str, why: str | None) -> None:
    assert unprintable(name) == why


def test_writer_escapes_what_passes_through_it_and_delegates_the_rest() -> None:
    stream = io.StringIO()
    writer = PrintableWriter(stream)
    assert writer.write("ok \x1b[31mred\n") == len("ok \x1b[31mred\n")
    writer.flush()
    assert stream.getvalue() == "ok \\x1b[31mred\n"
    assert writer.isatty() is False
