"""Journal entries over a real datagram socket, read back with a parser of the native protocol."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from agentd.system.journald import (
    FIELD_NAME_MAX,
    MAX_VALUE_BYTES,
    JournalSender,
    field_name,
    journal_fields,
    under_journal,
)

REPO = Path(__file__).resolve().parents[3]
RECV_TIMEOUT_S = 10.0  # only ever reached when a datagram that should have come did not


def parse_native(data: bytes) -> list[tuple[str, bytes]]:
    """The fields of one native-protocol datagram, in order, as journald reads them."""
    fields = []
    pos = 0
    while pos < len(data):
        newline = data.index(b"\n", pos)
        equals = data.find(b"=", pos, newline)
        if equals != -1:  # KEY=value\n
            fields.append((data[pos:equals].decode("ascii"), data[equals + 1 : newline]))
            pos = newline + 1
        else:  # KEY\n, 64-bit little-endian length, the bytes, \n
            name = data[pos:newline].decode("ascii")
            (size,) = struct.unpack("<Q", data[newline + 1 : newline + 9])
            start = newline + 9
            fields.append((name, data[start : start + size]))
            assert data[start + size : start + size + 1] == b"\n", "binary field not closed"
            pos = start + size + 1
    return fields


def test_the_parser_reads_both_forms() -> None:
    raw = b"A=1\nB\n" + struct.pack("<Q", 3) + b"x\ny\nC=\n"
    assert parse_native(raw) == [("A", b"1"), ("B", b"x\ny"), ("C", b"")]


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket standing in for /run/systemd/journal/socket."""
    path = str(tmp_path / "journal.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(RECV_TIMEOUT_S)
        yield sock, path


def receive(sock: socket.socket) -> tuple[bytes, dict[str, str]]:
    data = sock.recv(1 << 20)
    return data, {name: value.decode("utf-8") for name, value in parse_native(data)}


def nothing_queued(sock: socket.socket) -> bool:
    # A unix datagram is in the receiver's queue when sendto returns: nothing to wait for.
    sock.setblocking(False)
    try:
        sock.recv(1 << 20)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(RECV_TIMEOUT_S)
    return False


def deliver(
    path: str, sock: socket.socket, fields: Mapping[str, str]
) -> tuple[bytes, dict[str, str]]:
    """Send `fields` with a JournalSender and read back what the socket got."""
    with JournalSender(socket_path=path) as sender:
        assert sender.send(fields)
    return receive(sock)


# --- the sender ----------------------------------------------------------------------------------


def test_fields_arrive_in_the_native_protocol(journal: tuple[socket.socket, str]) -> None:
    sock, path = journal
    with JournalSender(socket_path=path) as sender:
        assert sender.send(
            {
                "MESSAGE": "converged generation 12",
                "PRIORITY": "6",
                "AGENTD_TRACE": "line one\nline two",
                "AGENTD_NODE": "pi-04 ünïcode",
                "AGENTD_EMPTY": "",
            }
        )
        data, _ = receive(sock)
    assert data == (
        b"MESSAGE=converged generation 12\n"
        b"PRIORITY=6\n"
        b"AGENTD_TRACE\n" + struct.pack("<Q", 17) + b"line one\nline two\n"
        b"AGENTD_NODE=pi-04 \xc3\xbcn\xc3\xafcode\n"
        b"AGENTD_EMPTY=\n"
    )


def test_field_names_are_made_valid(journal: tuple[socket.socket, str]) -> None:
    sock, path = journal
    _, received = deliver(
        path,
        sock,
        {
            "message": "hello",
            "my-field": "a",
            "_SYSTEMD_UNIT": "forged.service",  # journald's own trusted fields cannot be set
            "9lives": "b",
            "tokenFile": "c",
            "x" * 100: "d",
            "---": "dropped: nothing of the name is left",
        },
    )
    assert received == {
        "MESSAGE": "hello",
        "MY_FIELD": "a",
        "SYSTEMD_UNIT": "forged.service",
        "LIVES": "b",
        "TOKEN_FILE": "c",
        "X" * FIELD_NAME_MAX: "d",
    }
    assert field_name("HTTPStatus") == "HTTP_STATUS"
    assert field_name("sha256Digest") == "SHA256_DIGEST"
    assert field_name("K3S_VERSION") == "K3S_VERSION"
    assert field_name("_") is None


def test_a_huge_message_is_cut_and_marked(journal: tuple[socket.socket, str]) -> None:
    sock, path = journal
    _, received = deliver(path, sock, {"MESSAGE": "ü" * 100_000, "PRIORITY": "3"})
    message = received["MESSAGE"]
    assert len(message.encode()) <= MAX_VALUE_BYTES
    assert message.startswith("üüü")
    assert message.endswith("[... cut by agentd: 200000 bytes in all]")
    assert received["PRIORITY"] == "3"


def test_an_unreachable_socket_is_false_never_an_exception(tmp_path: Path) -> None:
    path = str(tmp_path / "journal.sock")
    with JournalSender(socket_path=path) as sender:
        assert sender.send({"MESSAGE": "nobody listens"}) is False
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            sock.settimeout(RECV_TIMEOUT_S)
            assert sender.send({"MESSAGE": "journald is back"})
            assert receive(sock)[1] == {"MESSAGE": "journald is back"}
        os.unlink(path)
        assert sender.send({"MESSAGE": "gone again"}) is False


# --- from a log event to fields ------------------------------------------------------------------


def test_event_keys_become_agentd_fields_and_message_pairs(
    journal: tuple[socket.socket, str],
) -> None:
    sock, path = journal
    event: dict[str, Any] = {
        "event": "action done",
        "component": "crun",
        "action": "install",
        "generation": 12,
        "version": "1.15",
        "target": None,
        "reason": "wanted 1.15, found 1.8.1",
        "ms": 12.5,
        "steps": ["fetch", "verify"],
        "dryRun": False,
        "path": Path("/usr/local/bin/crun"),
        "level": "info",
        "timestamp": "2024-05-01T12:00:00Z",
    }
    fields = journal_fields(event)
    assert deliver(path, sock, fields)[1] == {
        "MESSAGE": (
            "action done component=crun action=install generation=12 version=1.15"
            ' reason="wanted 1.15, found 1.8.1" ms=12.5 steps=["fetch","verify"] dryRun=false'
            " path=/usr/local/bin/crun"
        ),
        "PRIORITY": "6",
        "SYSLOG_IDENTIFIER": "agentd",
        "AGENTD_COMPONENT": "crun",
        "AGENTD_ACTION": "install",
        "AGENTD_GENERATION": "12",
        "AGENTD_VERSION": "1.15",
        "AGENTD_REASON": "wanted 1.15, found 1.8.1",
        "AGENTD_MS": "12.5",
        "AGENTD_STEPS": '["fetch","verify"]',
        "AGENTD_DRY_RUN": "false",
        "AGENTD_PATH": "/usr/local/bin/crun",
    }


@pytest.mark.parametrize(
    ("level", "priority"),
    [
        ("critical", "2"),
        ("error", "3"),
        ("warning", "4"),
        ("info", "6"),
        ("debug", "7"),
        ("unheard-of", "6"),
    ],
)
def test_the_level_becomes_the_priority(
    journal: tuple[socket.socket, str], level: str, priority: str
) -> None:
    sock, path = journal
    _, received = deliver(path, sock, journal_fields({"event": "e", "level": level}))
    assert received == {"MESSAGE": "e", "PRIORITY": priority, "SYSLOG_IDENTIFIER": "agentd"}


def test_a_traceback_follows_the_message_on_lines_of_its_own(
    journal: tuple[socket.socket, str],
) -> None:
    sock, path = journal
    trace = 'Traceback (most recent call last):\n  File "x.py", line 1\nOSError: boom'
    event = {"event": "converge failed", "exception": trace, "component": "k3s", "level": "error"}
    data, received = deliver(path, sock, journal_fields(event))
    assert received["MESSAGE"] == "converge failed component=k3s\n" + trace
    assert received["AGENTD_EXCEPTION"] == trace
    assert b"AGENTD_EXCEPTION\n" + struct.pack("<Q", len(trace)) in data
    assert received["PRIORITY"] == "3"


# --- is stderr the journal? ----------------------------------------------------------------------


def test_under_journal_compares_journal_stream_with_fd_2() -> None:
    st = os.fstat(2)
    assert under_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    assert not under_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
    assert not under_journal({"JOURNAL_STREAM": "garbage"})
    assert not under_journal({"JOURNAL_STREAM": "1:x"})
    assert not under_journal({})


def run_child(
    script: str, env: Mapping[str, str], stderr_path: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """`script` in a child whose stderr is the file `stderr_path`, as journald's stream would be."""
    base = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    with stderr_path.open("w") as stderr:
        return subprocess.run(
            [sys.executable, "-c", script, *args],
            env={**base, "PYTHONPATH": str(REPO), **env},
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            timeout=60,
            check=True,
        )


def stream_of(path: Path) -> str:
    st = path.stat()
    return f"{st.st_dev}:{st.st_ino}"


def test_a_child_whose_stderr_is_the_stream_knows_it(tmp_path: Path) -> None:
    stream, other = tmp_path / "stream", tmp_path / "other"
    stream.touch()
    other.touch()
    script = "from agentd.system.journald import under_journal; print(under_journal())"
    assert run_child(script, {"JOURNAL_STREAM": stream_of(stream)}, stream).stdout == "True\n"
    # Inherited from a parent whose stderr was the journal, but this stderr is elsewhere.
    assert run_child(script, {"JOURNAL_STREAM": stream_of(other)}, stream).stdout == "False\n"
    assert run_child(script, {}, stream).stdout == "False\n"


# --- agentd.log in journal mode ------------------------------------------------------------------

LOG_LINES = """
import sys
from agentd.system import log
log.configure(sys.argv[1])
logger = log.get_logger()
logger.info(
    "action done",
    component="crun",
    action="install",
    generation=12,
    url="https://user:hunter2@mirror.example/crun?token=s3cr3t&arch=amd64",
    password="hunter3",
)
try:
    raise OSError("fetch https://user:hunter4@mirror.example/x failed")
except OSError:
    logger.exception("converge failed", component="k3s")
"""


def test_journal_mode_sends_fields_with_secrets_redacted(
    journal: tuple[socket.socket, str], tmp_path: Path
) -> None:
    sock, path = journal
    stderr = tmp_path / "stderr"
    run_child(LOG_LINES, {"AGENTD_JOURNAL_SOCKET": path}, stderr, "journal")
    info_raw, info = receive(sock)
    error_raw, error = receive(sock)
    assert nothing_queued(sock)
    assert stderr.read_text() == ""  # everything went to the journal
    for raw in (info_raw, error_raw):
        assert b"hunter" not in raw
        assert b"s3cr3t" not in raw
    assert info["MESSAGE"].startswith("action done component=crun action=install generation=12 ")
    assert info["PRIORITY"] == "6"
    assert info["SYSLOG_IDENTIFIER"] == "agentd"
    assert info["AGENTD_COMPONENT"] == "crun"
    assert info["AGENTD_ACTION"] == "install"
    assert info["AGENTD_GENERATION"] == "12"
    assert info["AGENTD_URL"] == "https://***@mirror.example/crun?token=***&arch=amd64"
    assert info["AGENTD_PASSWORD"] == "***"
    assert "AGENTD_TIMESTAMP" not in info
    assert "AGENTD_LEVEL" not in info
    assert error["PRIORITY"] == "3"
    assert error["AGENTD_COMPONENT"] == "k3s"
    assert error["AGENTD_EXCEPTION"].startswith("Traceback (most recent call last):")
    assert "OSError: fetch https://***@mirror.example/x failed" in error["AGENTD_EXCEPTION"]
    assert error["MESSAGE"].startswith("converge failed component=k3s\nTraceback")


def test_auto_picks_the_journal_when_stderr_is_its_stream(
    journal: tuple[socket.socket, str], tmp_path: Path
) -> None:
    sock, path = journal
    stderr = tmp_path / "stderr"
    stderr.touch()
    env = {"AGENTD_JOURNAL_SOCKET": path, "JOURNAL_STREAM": stream_of(stderr)}
    run_child(LOG_LINES, env, stderr, "auto")
    assert receive(sock)[1]["AGENTD_COMPONENT"] == "crun"
    assert receive(sock)[1]["AGENTD_COMPONENT"] == "k3s"
    assert stderr.read_text() == ""
    # Not its stream: JSON lines on stderr, and nothing for the journal socket.
    other = tmp_path / "other"
    other.touch()
    env = {"AGENTD_JOURNAL_SOCKET": path, "JOURNAL_STREAM": stream_of(other)}
    run_child(LOG_LINES, env, stderr, "auto")
    assert nothing_queued(sock)
    lines = [json.loads(line) for line in stderr.read_text().splitlines()]
    assert [(line["event"], line["component"]) for line in lines] == [
        ("action done", "crun"),
        ("converge failed", "k3s"),
    ]


def test_an_unreachable_journal_falls_back_to_json_on_stderr(tmp_path: Path) -> None:
    stderr = tmp_path / "stderr"
    run_child(LOG_LINES, {"AGENTD_JOURNAL_SOCKET": str(tmp_path / "no.sock")}, stderr, "journal")
    text = stderr.read_text()
    assert "hunter" not in text
    assert "s3cr3t" not in text
    info, error = (json.loads(line) for line in text.splitlines())
    assert info["event"] == "action done"
    assert info["component"] == "crun"
    assert info["generation"] == 12
    assert info["url"] == "https://***@mirror.example/crun?token=***&arch=amd64"
    assert info["level"] == "info"
    assert "timestamp" in info
    assert error["event"] == "converge failed"
    assert "OSError: fetch https://***@mirror.example/x failed" in error["exception"]


def test_a_no_op_run_loads_neither_structlog_nor_the_journal() -> None:
    script = (
        "from agentd.system import log; log.configure('journal'); import sys; "
        "print('\\n'.join(sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    loaded = result.stdout.split()
    assert "agentd.system.log" in loaded
    assert "structlog" not in loaded
    assert "agentd.system.journald" not in loaded
