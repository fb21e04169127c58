"""tools/makevenv.py, what `make` runs first: the missing Debian package named, the stamp."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAKEVENV = ROOT / "tools" / "makevenv.py"
# makevenv.py as `python3 tools/makevenv.py VENV` runs it, on an interpreter without ensurepip
# (as Debian's python3 is until python3-venv is installed): find_spec() then says None.
NO_ENSUREPIP = (
    "import runpy, sys; sys.modules['ensurepip'] = None; sys.argv = ['makevenv.py', sys.argv[1]]; "
    f"runpy.run_path({str(MAKEVENV)!r}, run_name='__main__')"
)


def _makevenv() -> ModuleType:
    spec = importlib.util.spec_from_file_location("agentd_tools_makevenv", MAKEVENV)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, check=False, env={**os.environ, **env}, timeout=60
    )


def test_without_ensurepip_it_names_python3_venv(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    done = _run([sys.executable, "-c", NO_ENSUREPIP, str(venv)])
    assert done.returncode == 69, done.stderr
    assert "apt-get install python3-venv" in done.stderr
    assert not venv.exists()


def test_a_second_run_does_nothing_while_the_stamp_holds(tmp_path: Path) -> None:
    makevenv = _makevenv()
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    (venv / "bin" / "pip").touch()
    extras = ["dev", "cosign"] + ([] if makevenv.systemd_build_missing() else ["systemd"])
    (venv / makevenv.STAMP).write_text(makevenv.stamp_text(extras))
    done = _run([sys.executable, str(MAKEVENV), str(venv)])
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    # A stamp of another pyproject.toml, Python or extras does not hold: the run goes on (to
    # the ensurepip check here, which stops it).
    (venv / makevenv.STAMP).write_text(makevenv.stamp_text([*extras, "other"]))
    done = _run([sys.executable, "-c", NO_ENSUREPIP, str(venv)])
    assert done.returncode == 69, done.stderr


def test_the_systemd_extra_names_what_its_build_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    makevenv = _makevenv()
    monkeypatch.setenv("PATH", str(tmp_path))  # no gcc, no pkg-config
    missing = makevenv.systemd_build_missing()
    assert "gcc" in missing
    assert "pkg-config" in missing
