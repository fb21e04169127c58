"""Exit codes: usage errors are 64, every --help and the man page list the same codes as the
code, and a closed standard output ends quietly (issue 15.6)."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agentd.cli import exits
from agentd.cli.main import COMMANDS
from tests.support.node import Node

REPO = Path(__file__).resolve().parents[3]
MAN = REPO / "packaging" / "agentd.1"


@pytest.fixture
def node(sandbox_root: Path) -> Node:
    return Node(sandbox_root)


@pytest.mark.parametrize(
    "argv",
    [
        ("plan", "--bogus"),
        ("bogus-command",),
        ("rollback",),  # its COMPONENT is missing
        ("--log-format", "xml", "status"),
        ("validate", "--arch", "sparc"),
        (),
    ],
)
def test_a_usage_error_exits_64_never_2(node: Node, argv: tuple[str, ...]) -> None:
    res = node.agentd(*argv)
    assert res.code == exits.EXIT_USAGE == 64, res
    assert "usage: agentd" in res.stderr
    assert "Traceback" not in res.stderr


def test_a_misspelt_command_or_choice_is_named(node: Node) -> None:
    res = node.agentd("pln")
    assert res.code == 64
    assert "invalid choice: 'pln'" in res.stderr
    assert "did you mean 'plan'?" in res.stderr
    assert "did you mean 'journal'?" in node.agentd("--log-format", "jurnal", "status").stderr
    assert "did you mean" not in node.agentd("zzzzzz").stderr


def _help_exit_rows(text: str) -> list[tuple[int, str]]:
    block = text.split("exit status:\n", 1)[1]
    return [(int(code), what) for code, what in re.findall(r"^  (\d+) +(.+)$", block, re.M)]


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_help_ends_with_its_exit_status_list(node: Node, command: str | None) -> None:
    res = node.agentd(*([command] if command else []), "--help")
    assert res.code == 0, res.stderr
    tail = res.stdout.rstrip("\n").split("\n\n")[-1]
    assert tail.startswith("exit status:"), res.stdout
    rows = _help_exit_rows(res.stdout)
    assert rows == exits.exit_codes(command)
    codes = {code for code, _ in rows}
    # The shared codes are on every command's list, and each command's own codes on its.
    assert {0, 1, 64, 70, 130, 141} <= codes
    if command == "plan":
        assert {2, 3, 66} <= codes
        assert "apply would refuse something (see the plan's refusals)" in dict(rows)[3]
    if command == "check":
        assert dict(rows)[2] == "the node is unhealthy"


def _man_exit_codes() -> dict[int, str]:
    """The man page's EXIT STATUS: each `.IP CODE` paragraph's text, roff macros dropped."""
    text = MAN.read_text(encoding="utf-8")
    section = text.split(".SH EXIT STATUS\n", 1)[1].split("\n.SH ", 1)[0].split("\n.PP", 1)[0]
    out = {}
    for para in section.split("\n.IP ")[1:]:
        code, _, body = para.partition("\n")
        words = re.sub(r"^\.[A-Z]+ ?", "", body, flags=re.M).replace("\\-", "-")
        out[int(code)] = " ".join(words.split())
    return out


def test_the_man_page_exit_status_matches_the_code() -> None:
    documented = _man_exit_codes()
    in_code = {code for code, _ in exits.SHARED}
    in_code |= {code for rows in exits.OWN.values() for code, _ in rows}
    assert set(documented) == in_code
    # Each command's own code is named in the man page's line for it.
    for command, rows in exits.OWN.items():
        for code, _ in rows:
            if code not in {c for c, _ in exits.SHARED}:
                assert command in documented[code], (command, code)


def _codes_in_the_code() -> dict[str, set[int]]:
    """Every exit code the commands can return: literal `return N` (N in an if-expression too)
    and EXIT_* names in each cli module's handle(), and every error class's `exit_code = N`."""
    found: dict[str, set[int]] = {}
    constants = {name: getattr(exits, name) for name in dir(exits) if name.startswith("EXIT_")}
    for path in sorted((REPO / "agentd" / "cli").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        handle = next((n for n in tree.body if getattr(n, "name", "") == "handle"), None)
        if handle is None:
            continue
        codes = found.setdefault(path.stem.replace("_", "-"), set())
        for ret in (n for n in ast.walk(handle) if isinstance(n, ast.Return) and n.value):
            for leaf in ast.walk(ret.value):  # type: ignore[arg-type]
                if isinstance(leaf, ast.Constant) and isinstance(leaf.value, int):
                    codes.add(leaf.value)
                elif isinstance(leaf, ast.Name) and leaf.id in constants:
                    codes.add(constants[leaf.id])
    raised = set()
    for path in sorted((REPO / "agentd").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                for stmt in node.body:
                    target = getattr(stmt, "targets", [None])[0]
                    if isinstance(target, ast.Name) and target.id == "exit_code":
                        value = stmt.value  # type: ignore[attr-defined]
                        if isinstance(value, ast.Name):
                            raised.add(constants[value.id])
                        else:
                            raised.add(value.value)
    found["*"] = raised
    return found


def test_every_code_the_commands_return_is_documented() -> None:
    found = _codes_in_the_code()
    # The walk sees what it should (else the test below would pass on nothing).
    assert found["plan"] >= {0, 2}
    assert found["check"] >= {0, 2}
    assert found["*"] >= {1, 64, 66, 70, 130}, found["*"]
    anywhere = {code for command in [None, *COMMANDS] for code, _ in exits.exit_codes(command)}
    assert found.pop("*") <= anywhere
    for command, codes in found.items():
        documented = {code for code, _ in exits.exit_codes(command)}
        assert codes <= documented, (command, codes - documented)


def _agentd(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "agentd", "--root", str(root), *args]


LONG_OUTPUTS = [("schema",), ("plan", "--help"), ("--help",), ("detect",), ("schema", "--json")]


@pytest.mark.parametrize("argv", LONG_OUTPUTS)
def test_a_closed_stdout_ends_quietly_with_141(sandbox_root: Path, argv: tuple[str, ...]) -> None:
    env = {**os.environ, "AGENTD_ROOT": ""}
    for _ in range(5):
        # A real pipe whose reader is gone before agentd writes: every write fails with EPIPE.
        read_end, write_end = os.pipe()
        os.close(read_end)
        proc = subprocess.run(
            _agentd(sandbox_root, *argv),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        os.close(write_end)
        assert proc.returncode == exits.EXIT_CLOSED_STDOUT == 141, proc.stderr
        assert proc.stderr == "", proc.stderr


def test_plan_piped_to_head_never_fails_loudly(node: Node, tmp_path: Path) -> None:
    desired = tmp_path / "d.yaml"
    desired.write_text("apiVersion: agentd/v1\nkind: NodeState\ngeneration: 1\n")
    cmd = " ".join(_agentd(node.root, "plan", "--desired", str(desired), "--explain"))
    for _ in range(10):
        out = subprocess.run(
            ["bash", "-c", f'{cmd} | head -1; echo "status=${{PIPESTATUS[0]}}" >&2'],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "AGENTD_ROOT": ""},
            check=False,
        )
        assert out.stdout.startswith("Plan for generation 1"), out
        status = int(re.findall(r"status=(\d+)", out.stderr)[-1])
        # 0 when head read before agentd finished writing, 141 when it left first.
        assert status in (0, 141), out.stderr
        assert "internal error" not in out.stderr
        assert "Traceback" not in out.stderr
