"""The project's virtual environment for `make`: created once, reused while pyproject.toml holds."""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STAMP = ".agentd-stamp"
# Exit code for a missing system package (EX_UNAVAILABLE): make stops with our message.
MISSING = 69


def _fail(text: str) -> int:
    print(f"makevenv: {text}", file=sys.stderr)
    return MISSING


def systemd_build_missing() -> list[str]:
    """The Debian packages systemd-python's build needs that this machine lacks (empty: it
    builds). It is optional: without it the journal and sd_notify code fall back."""
    missing = []
    if shutil.which("gcc") is None:
        missing.append("gcc")
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file():
        missing.append("python3-dev")
    if shutil.which("pkg-config") is None:
        missing.append("pkg-config")
    elif subprocess.run(["pkg-config", "--exists", "libsystemd"], check=False).returncode != 0:
        missing.append("libsystemd-dev")
    return missing


def stamp_text(extras: list[str]) -> str:
    """What the environment was made from: another pyproject.toml, Python or extra remakes it."""
    digest = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()
    return json.dumps({"pyproject": digest, "python": sys.version, "extras": extras}) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("venv", type=Path, help="where the environment goes (make's VENV)")
    args = parser.parse_args(argv)
    venv: Path = args.venv
    missing_systemd = systemd_build_missing()
    extras = ["dev", "cosign"] if missing_systemd else ["dev", "cosign", "systemd"]
    python = venv / "bin" / "python"
    stamp = venv / STAMP
    wanted = stamp_text(extras)
    if python.exists() and stamp.is_file() and stamp.read_text() == wanted:
        return 0
    # Debian splits venv's pip bootstrap (ensurepip) into python3-venv.
    if importlib.util.find_spec("ensurepip") is None:
        return _fail(
            f"{sys.executable} cannot create a virtual environment (no ensurepip): "
            "apt-get install python3-venv"
        )
    if not (venv / "bin" / "pip").exists():  # none yet, or half made by an interrupted run
        shutil.rmtree(venv, ignore_errors=True)
        print(f"makevenv: creating {venv} (once)", flush=True)
        made = subprocess.run([sys.executable, "-m", "venv", str(venv)], check=False)
        if made.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            return _fail(f"python3 -m venv {venv} failed: apt-get install python3-venv")
    stamp.unlink(missing_ok=True)
    if missing_systemd:
        print(
            "makevenv: without the systemd extra (journal, sd_notify fall back); for it: "
            f"apt-get install {' '.join(missing_systemd)}",
            flush=True,
        )
    spec = f".[{','.join(extras)}]"
    print(f"makevenv: pip install -e '{spec}' into {venv} (network: PyPI)", flush=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    installed = subprocess.run([*pip, "-e", spec], cwd=REPO, check=False)
    if installed.returncode != 0:
        return _fail(
            f"pip install -e '{spec}' failed (exit {installed.returncode}): see pip's message "
            f"above; `rm -rf {venv}` starts again"
        )
    stamp.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
