"""What operators expect of a command line: colour on a terminal (NO_COLOR, --color), a legend
for the plan's markers, "did you mean", the files validate read, a missing file said plainly
(issue 15.8)."""

from __future__ import annotations

import os
import pty
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from agentd.cli.main import COMMANDS, build_parser
from tests.support.node import Node

SHA = "a" * 64
DESIRED = f"""apiVersion: agentd/v1
kind: NodeState
generation: 1
components:
  crun:
    version: "1.15"
    artifacts:
      amd64: {{url: "https://example.invalid/crun-amd64", sha256: "{SHA}"}}
      arm64: {{url: "https://example.invalid/crun-arm64", sha256: "{SHA}"}}
      armv7: {{url: "https://example.invalid/crun-armv7", sha256: "{SHA}"}}
"""
ESC = "\x1b["


@pytest.fixture
def node(sandbox_root: Path) -> Node:
    return Node(sandbox_root)


@pytest.fixture
def desired(tmp_path: Path) -> Path:
    path = tmp_path / "desired.yaml"
    path.write_text(DESIRED)
    return path


def on_a_terminal(node: Node, *args: str, env: dict[str, str] | None = None) -> str:
    """What `agentd ARGS` writes to a real pseudo-terminal as its standard output."""
    leader, follower = pty.openpty()
    inherited = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    full_env = {**inherited, "AGENTD_ROOT": "", "TERM": "xterm", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "agentd", "--root", str(node.root), *args],
        stdout=follower,
        stderr=subprocess.PIPE,
        env=full_env,
        timeout=60,
        check=False,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the terminal's other side is closed and drained
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.returncode == 0, proc.stderr
    return b"".join(chunks).decode()


def test_colour_on_a_terminal_only_and_never_with_no_color(node: Node, desired: Path) -> None:
    plan = ("plan", "--desired", str(desired))
    coloured = on_a_terminal(node, *plan)
    assert f"{ESC}32m+ install{ESC}0m" in coloured
    assert ESC not in on_a_terminal(node, *plan, env={"NO_COLOR": "1"})
    assert ESC not in on_a_terminal(node, *plan, "--color=never")
    assert ESC not in on_a_terminal(node, *plan, env={"TERM": "dumb"})
    # An empty NO_COLOR is no request (no-color.org); --color=always beats NO_COLOR.
    assert ESC in on_a_terminal(node, *plan, env={"NO_COLOR": ""})
    assert ESC in on_a_terminal(node, *plan, "--color=always", env={"NO_COLOR": "1"})
    # Into a pipe: plain text, unless asked for.
    assert ESC not in node.agentd(*plan).stdout
    assert f"{ESC}32m+ install" in node.agentd(*plan, "--color", "always").stdout
    # Without the colour codes, the terminal shows the text a pipe gets.
    plain = re.sub(r"\x1b\[[0-9;]*m", "", coloured).replace("\r\n", "\n")
    assert plain == node.agentd(*plan).stdout


def test_the_plan_has_a_legend_for_the_markers_it_shows(node: Node, desired: Path) -> None:
    out = node.agentd("plan", "--desired", str(desired)).stdout
    legend = [line for line in out.splitlines() if line.startswith("Legend: ")]
    assert len(legend) == 1, out
    shown = set(re.findall(r"^  ([+~\-*!=]) ", out, re.M))
    explained = dict(part.split(" ", 1) for part in legend[0].removeprefix("Legend: ").split(", "))
    assert set(explained) == shown == {"+", "="}
    assert explained == {"+": "install", "=": "unchanged"}
    dry = node.agentd("apply", "--desired", str(desired), "--dry-run").stdout
    assert "Legend: + install, = unchanged" in dry


def test_rollback_of_a_misspelt_component_suggests_the_name(node: Node) -> None:
    res = node.agentd("rollback", "crn")
    assert res.code == 1
    assert "unknown component 'crn': did you mean 'crun'?" in res.stderr
    assert "did you mean 'wasmedge'?" in node.agentd("rollback", "wasmegde").stderr
    # A name it knows goes on to the rollback itself (nothing kept on a fresh node).
    assert "nothing kept for crun" in node.agentd("rollback", "crun").stderr


def test_validate_names_the_files_it_read(node: Node, desired: Path, tmp_path: Path) -> None:
    etc = node.path("/etc/wasm-edge")
    (etc / "desired.d").mkdir(parents=True)
    (etc / "desired.yaml").write_text(DESIRED)
    (etc / "desired.d" / "10-local.yaml").write_text(
        "apiVersion: agentd/v1\nkind: NodeState\ngeneration: 1\n"
    )
    res = node.agentd("validate")
    assert res.code == 0, res.stderr
    assert res.stdout.splitlines() == [
        "valid: 2 file(s) read:",
        "  /etc/wasm-edge/desired.yaml",
        "  /etc/wasm-edge/desired.d/10-local.yaml",
    ]
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: agentd/v1\nkind: Nope\n")
    res = node.agentd("validate", str(desired), str(bad))
    assert res.code == 1
    assert res.stdout.splitlines()[1:] == [f"  {desired}", f"  {bad}"]
    assert res.stdout.startswith("invalid: ")


def test_a_missing_desired_file_is_said_plainly(node: Node, tmp_path: Path) -> None:
    for argv in (("plan", "--desired"), ("apply", "--desired"), ("validate",)):
        res = node.agentd(*argv, str(tmp_path / "nope.yaml"))
        assert res.code == 66, res
        assert f"{tmp_path / 'nope.yaml'}: no such file" in res.stderr
        assert "Traceback" not in res.stderr
        assert res.stdout == ""


def test_the_man_page_examples_are_real_command_lines() -> None:
    man = (Path(__file__).resolve().parents[3] / "packaging" / "agentd.1").read_text()
    section = man.split(".SH EXAMPLES\n", 1)[1].split("\n.SH ", 1)[0]
    examples = [
        line.replace("\\-", "-")
        for block in re.findall(r"^\.EX\n(.*?)^\.EE$", section, re.M | re.S)
        for line in block.splitlines()
    ]
    assert len(examples) >= 6
    used = set()
    for line in examples:
        argv = shlex.split(line.split(" > ")[0])
        assert argv[0] == "agentd", line
        command = next(a for a in argv if a in COMMANDS)
        used.add(command)
        args = build_parser(command).parse_args(argv[1:])  # a usage error raises
        assert args.command == command
    assert {"validate", "plan", "apply", "check", "rollback", "status"} <= used


def test_check_colours_its_verdict_and_errors_their_prefix(node: Node, tmp_path: Path) -> None:
    res = node.agentd("check", "--color=always")
    verdict = f"{ESC}32mhealthy{ESC}0m" if res.code == 0 else f"{ESC}31mUNHEALTHY{ESC}0m"
    assert res.stdout.startswith(verdict), res.stdout
    assert ESC not in node.agentd("check", "--color=never").stdout
    missing = node.agentd("plan", "--desired", str(tmp_path / "nope.yaml"), "--color=always")
    assert missing.stderr.startswith(f"{ESC}31magentd: error:{ESC}0m ")
