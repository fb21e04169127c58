"""The README's first commands in a clean checkout on a fresh Debian (checks="firstrun").

The tree has the distribution's python3 and make, and no pip package: `make demo` first says
that python3-venv is missing, then (with it installed by apt-get) makes .venv by itself and runs
the demo; a second `make venv` is instant; `make lint` and one test file stand for `make test`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.e2e.container import NODE_ENV
from tests.e2e.hosts import HostSpec
from tests.e2e.packages import REPO
from tests.e2e.scenario import E2EFailure, HostResult, Step

CHECKOUT = "/root/agentd"  # inside the tree
# A test file that needs nothing but the venv (no git daemon, crun or gnupg in the tree).
SMOKE_TEST = "tests/test_layers.py"
DEMO_END = "the sandbox root is"  # tools/demo.py's last banner
HOST_CA = "/etc/ssl/e2e-host-ca.pem"  # inside the tree


def copy_checkout(target: Path) -> int:
    """This checkout as `git clone` would have it plus its uncommitted edits: the files git
    tracks or would add, never build/, .venv or caches. Returns how many files."""
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    count = 0
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the working tree
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target / name, follow_symlinks=False)
        count += 1
    return count


def host_trust(tree: Path) -> dict[str, str]:
    """pip's settings for the tree, when this machine names a CA bundle for it (behind a proxy
    that re-signs TLS, PyPI's certificate is that proxy's): the bundle copied in, and PIP_CERT
    naming it. Empty on a machine that trusts PyPI as it is."""
    for var in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        bundle = os.environ.get(var)
        if bundle and Path(bundle).is_file():
            inside = tree / HOST_CA.lstrip("/")
            inside.parent.mkdir(parents=True, exist_ok=True)  # a minbase tree has no /etc/ssl
            shutil.copyfile(bundle, inside)
            return {"PIP_CERT": HOST_CA}
    return {}


def _in_tree(
    tree: Path, name: str, script: str, timeout: float, env: dict[str, str]
) -> tuple[int, str, float]:
    """`sh -c script` in the checkout inside the tree (systemd-nspawn --pipe, no boot, the
    host's network for apt-get and PyPI): exit code, stdout+stderr, seconds."""
    argv = [
        "systemd-nspawn",
        "--quiet",
        f"--directory={tree}",
        f"--machine=e2e-{name}",
        "--register=no",
        "--keep-unit",
        "--pipe",
        "--timezone=off",
        "--resolv-conf=copy-host",
        f"--chdir={CHECKOUT}",
        *(f"--setenv={k}={v}" for k, v in {**NODE_ENV, **env}.items()),
        "sh",
        "-c",
        f"exec 2>&1; {script}",
    ]
    start = time.monotonic()
    try:
        done = subprocess.run(
            argv,
            stdout=subprocess.PIPE,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise E2EFailure(f"{script!r} did not finish within {timeout:.0f} s") from exc
    return done.returncode, done.stdout, time.monotonic() - start


def check_firstrun(
    spec: HostSpec, tree: Path, result: HostResult, progress: Callable[[str], None]
) -> None:
    """Each step below, timed, into result; the first that fails raises E2EFailure."""
    try:
        files = copy_checkout(tree / CHECKOUT.lstrip("/"))
        env = host_trust(tree)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise E2EFailure(f"copying the checkout and CA bundle into {tree}: {exc}") from exc
    result.figures["pip_cert"] = env.get("PIP_CERT", "")
    result.figures["checkout_files"] = files

    def step(name: str, script: str, timeout: float, want: int = 0, says: str = "") -> str:
        record = Step(name, 0.0, False)
        result.steps.append(record)
        progress(f"{spec.name}: {name} ...")
        code, out, record.seconds = _in_tree(tree, spec.name, script, timeout, env)
        tail = out.strip()[-1500:]
        if (code == 0) != (want == 0) or (want and code != want) or says not in out:
            record.detail = f"exit {code} (wanted {want}, output with {says!r}):\n{tail}"
            raise E2EFailure(f"{name}: {record.detail}")
        record.ok = True
        record.detail = f"exit {code} in {record.seconds:.1f} s"
        progress(f"{spec.name}: {name}: ok ({record.seconds:.1f} s)")
        return out

    python = step("python3 --version", "python3 --version", 30)
    result.figures["python"] = python.strip()
    # PEP 668: the distribution's python3 refuses pip outright; nothing may need it.
    step("no pip outside a venv", "! python3 -m pip --version", 30)
    step(
        "make demo without python3-venv: names the package",
        "make demo",
        120,
        want=2,
        says="apt-get install python3-venv",
    )
    step(
        "apt-get install python3-venv",
        "apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null",
        600,
    )
    out = step("make demo (creates .venv)", "make demo", 1200, says=DEMO_END)
    result.figures["demo_s"] = round(result.steps[-1].seconds, 1)
    if "without the systemd extra" not in out:
        raise E2EFailure("make demo did not say the systemd extra was left out (no gcc here)")
    again = step("make venv again (the stamp: instant)", "make venv", 30)
    result.figures["venv_again_s"] = round(result.steps[-1].seconds, 2)
    if again.strip():
        raise E2EFailure(f"a second make venv did work again: {again.strip()[-500:]}")
    step("make lint", "make lint", 300)
    step(f"make unit {SMOKE_TEST}", f"make unit PYTEST_ARGS={SMOKE_TEST}", 300, says="passed")
    step(
        "nothing installed outside .venv",
        'test -z "$(ls /usr/local/lib/python3*/dist-packages 2>/dev/null)"',
        30,
    )
