"""Console log lines escape control characters; JSON log lines are whole records whatever a
value holds."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from agentd.system import log

HOSTILE = 'plugin\x1b[2J\n{"level":"error","event":"forged"}\u2028'


@pytest.fixture
def fresh_logging() -> Iterator[None]:
    yield
    log.configure()  # the default again, for the tests after this one


def test_a_console_line_shows_control_characters_escaped(
    capsys: pytest.CaptureFixture[str], fresh_logging: None
) -> None:
    log.configure("console")
    log.get_logger().warning(f"found {HOSTILE}", path=HOSTILE, **{"k\x1b": "v"})
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line, whatever the values hold
    assert "\x1b" not in err
    assert "\u2028" not in err
    assert 'found plugin\\x1b[2J\\n{"level":"error","event":"forged"}\\u2028' in err
    assert "k\\x1b=v" in err


def test_a_json_line_is_one_record(capsys: pytest.CaptureFixture[str], fresh_logging: None) -> None:
    log.configure("json")
    log.get_logger().warning("found", path=HOSTILE)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["path"] == HOSTILE
