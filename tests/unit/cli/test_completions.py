"""Shell completion for bash, zsh and fish: generated from the parser, run in the real shells,
installed by both packages (issue 15.8)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[3]
COMPLETIONS = REPO / "packaging" / "completions"


def _load(path: Path) -> ModuleType:
    # tools/ and packaging/ are no Python packages: load by path.
    spec = importlib.util.spec_from_file_location(f"agentd_test_{path.stem}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


generator = _load(REPO / "tools" / "completions.py")
pkgbuild = _load(REPO / "packaging" / "pkgbuild.py")


def test_the_shipped_files_are_generated_from_the_current_parser() -> None:
    for name, text in generator.generate().items():
        shipped = (COMPLETIONS / name).read_text(encoding="utf-8")
        assert shipped == text, f"{name} is stale: run python3 tools/completions.py"


BASH = """
source {file}
complete -p agentd
t() {{ COMP_WORDS=("$@"); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); COMPREPLY=(); _agentd
      echo "${{COMPREPLY[*]}}"; }}
"""
BASH_CASES = [
    (("agentd", "pl"), "plan"),
    (("agentd", "--root", "/tmp", "ro"), "rollback"),
    (("agentd", "plan", "--d"), "--desired --detailed-exitcode"),
    (("agentd", "rollback", "cr"), "crun"),
    (("agentd", "--log-format", "j"), "json journal"),
    (("agentd", "status", "--color", "a"), "auto always"),
    (("agentd", "validate", "--arch", "arm"), "arm64 armv7"),
    (("agentd", "check", "--a"), "--act"),
]


def test_bash_completes_commands_options_and_values(tmp_path: Path) -> None:
    script = BASH.format(file=COMPLETIONS / "agentd.bash")
    for words, _ in BASH_CASES:
        script += "t " + " ".join(f"'{w}'" for w in words) + "\n"
    out = subprocess.run(
        ["bash", "--norc", "-c", script], capture_output=True, text=True, check=True, timeout=30
    )
    lines = out.stdout.splitlines()
    assert lines[0] == "complete -F _agentd agentd"
    assert lines[1:] == [want for _, want in BASH_CASES], out.stderr
    # A file argument completes file names (validate FILE...).
    (tmp_path / "desired-one.yaml").write_text("")
    script = (
        BASH.format(file=COMPLETIONS / "agentd.bash") + f"t agentd validate {tmp_path}/desired-\n"
    )
    out = subprocess.run(
        ["bash", "--norc", "-c", script], capture_output=True, text=True, check=True
    )
    assert out.stdout.splitlines()[1] == f"{tmp_path}/desired-one.yaml"


@pytest.mark.skipif(
    shutil.which("fish") is None, reason="fish is not installed (apt-get install fish)"
)
def test_fish_completes_commands_options_and_values() -> None:
    file = COMPLETIONS / "agentd.fish"
    assert subprocess.run(["fish", "--no-execute", str(file)], check=False).returncode == 0
    cases = {
        "agentd pl": ["plan"],
        "agentd rollback cr": ["crun"],
        "agentd plan --det": ["--detailed-exitcode"],
        "agentd --color ": ["always", "auto", "never"],
        "agentd validate --arch arm": ["arm64", "armv7"],
    }
    for line, want in cases.items():
        out = subprocess.run(
            ["fish", "--no-config", "-c", f"source {file}; complete -C '{line}'"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        assert sorted(x.split("\t")[0] for x in out.stdout.splitlines()) == want, out


@pytest.mark.skipif(
    shutil.which("zsh") is None, reason="zsh is not installed (apt-get install zsh)"
)
def test_zsh_parses_the_file_and_compinit_registers_it(tmp_path: Path) -> None:
    file = COMPLETIONS / "_agentd"
    assert subprocess.run(["zsh", "-n", str(file)], check=False).returncode == 0
    script = (
        f"fpath=({COMPLETIONS} $fpath); autoload -U compinit; compinit -u -d {tmp_path}/zcd; "
        "print -r -- $_comps[agentd]"
    )
    out = subprocess.run(["zsh", "-f", "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "_agentd", out


@pytest.mark.parametrize("fmt", ["deb", "rpm"])
def test_both_packages_install_the_completions(fmt: str, tmp_path: Path) -> None:
    pkgbuild.stage_completions(fmt, tmp_path)
    zsh_dir = "vendor-completions" if fmt == "deb" else "site-functions"
    for where, name in (
        ("usr/share/bash-completion/completions/agentd", "agentd.bash"),
        (f"usr/share/zsh/{zsh_dir}/_agentd", "_agentd"),
        ("usr/share/fish/vendor_completions.d/agentd.fish", "agentd.fish"),
    ):
        assert (tmp_path / where).read_bytes() == (COMPLETIONS / name).read_bytes()
        if fmt == "rpm":
            spec = (REPO / "packaging/rpm/wasm-edge-agentd.spec.in").read_text(encoding="utf-8")
            assert "%{_datadir}/" + where.removeprefix("usr/share/") in spec.splitlines()
