"""Disk full (issue 14.4): the real `agentd apply` of test_crash's upgrade, out of space from
each step that takes space on.

`tests.scenarios.crashdriver --full-from N` makes every step that needs space (`FILLS`) fail
with ENOSPC from the N-th step of the apply on, as a file system that fills up there and stays
full. For each such point, on a fresh copy of the generation-1 node: the apply exits 0 or 1 (never
70, the internal error), and when it fails it names the file system and what the next run will
do; every target is old or new and every state file whole (test_crash's "kill" check); then,
with space again, a fresh apply converges to a clean run's tree and inventory and a second one
does nothing ("recovery", "inventory"). `make test` runs the points of FAST; `make stress` every
point. A real small tmpfs, filled to the last byte, shows the same without the driver (root).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.scenarios import crashdriver
from tests.scenarios.test_crash import (  # noqa: F401 - `scenario` is the fixture
    CHECKS,
    STATE_DIR,
    Scenario,
    _apply_args,
    _at_kill,
    _recover,
    scenario,
)
from tests.support.mirror import MirrorServer
from tests.support.node import Node
from tests.support.standins import Mirror, desired_document

# What a failed apply must say: the error, the file system, and what comes next.
NAMED = ("no space left on device writing", "the file system mounted at ")


def fill_points(s: Scenario) -> list[int]:
    return [e.n for e in s.events if e.op in crashdriver.FILLS]


def full_and_recover(s: Scenario, n: int) -> dict[str, list[str]]:
    """Fill the disk at step `n` of the apply on a copy of the generation-1 node, check it, then
    give the space back and check that the next runs converge."""
    case = s.work / f"full-{n:04d}"
    shutil.rmtree(case, ignore_errors=True)
    root = case / "root"
    shutil.copytree(s.before_root, root, symlinks=True)
    out = crashdriver.run(root, _apply_args(s.desired), case / "events.log", full_from=n)
    problems: dict[str, list[str]] = {c: [] for c in CHECKS}
    said = out.stderr + out.stdout
    tail = (out.stderr.strip().splitlines() or ["no output"])[-1][:400]
    if out.code not in (0, 1) or "internal error" in said or "Traceback" in said:
        problems["kill"].append(f"the full apply exited {out.code}: {tail}")
    elif out.code == 1:
        missing = [w for w in (*NAMED, "the next run") if w not in said]
        if missing:
            problems["kill"].append(f"the error does not say {missing}: {tail}")
    problems["kill"] += [p.replace("at the kill", "when full") for p in _at_kill(s, root)]
    _recover(s, root, problems)
    if not any(problems.values()):
        shutil.rmtree(case, ignore_errors=True)
    return problems


def _sweep(s: Scenario, points: list[int]) -> list[str]:
    with concurrent.futures.ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
        verdicts = dict(zip(points, pool.map(lambda n: full_and_recover(s, n), points)))
    return [
        f"full from {s.describe(n)}: {check}: {p}"
        for n, problems in verdicts.items()
        for check in CHECKS
        for p in problems[check]
    ]


# The places a full disk once ended in exit 70 (the lock, the write-ahead record, the commit,
# the run's result), and one of each other kind of step that takes space.
FAST = (
    "open /var/lib/wasm-edge/lock",
    "open /var/lib/wasm-edge/cache/",
    "os.mkdir /var/lib/wasm-edge/staging/",
    "os.mkdir /var/lib/wasm-edge/replaced/",
    "open /usr/local/bin/.crun.agentd-",
    "open /var/lib/prometheus/node-exporter/.",
)


def fast_points(s: Scenario) -> list[int]:
    fills = set(fill_points(s))
    points = []
    for text in FAST:
        found = [e.n for e in s.events if text in e.key and e.n in fills]
        assert found, f"the apply has no step that takes space matching {text!r}"
        points.append(found[0])
    # Writes of state.json: the first and a middle write-ahead record, the commit, the run's
    # result (the last two).
    state = [e.n for e in s.events if e.n in fills and "/.state.json.agentd-" in e.key]
    points += [state[0], state[len(state) // 2], *state[-2:]]
    return sorted(set(points))


def test_a_disk_full_at_the_main_steps_is_a_clear_error_and_the_next_run_converges(
    scenario: Scenario,  # noqa: F811 - the fixture imported above
) -> None:
    points = fast_points(scenario)
    assert len(points) >= 10
    problems = _sweep(scenario, points)
    assert not problems, "\n".join(problems)


@pytest.mark.stress
def test_a_disk_full_at_every_step_is_a_clear_error_and_the_next_run_converges(
    scenario: Scenario,  # noqa: F811 - the fixture imported above
) -> None:
    points = fill_points(scenario)
    assert len(points) >= 30
    problems = _sweep(scenario, points)
    assert not problems, "\n".join(problems)


# --- a real file system, filled to the last byte ----------------------------------------------


@contextlib.contextmanager
def tmpfs(at: Path, options: str) -> Iterator[Path]:
    """A tmpfs of its own at `at` (root only; the test is skipped elsewhere)."""
    at.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(at)], capture_output=True, check=False
    )
    if os.geteuid() != 0 or mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield at
    finally:
        subprocess.run(["umount", "-l", str(at)], check=False)


@pytest.fixture
def full_state_dir(sandbox_root: Path) -> Iterator[Path]:
    """The node's state dir on a 1 MiB tmpfs of its own, to be filled by the test."""
    with tmpfs(sandbox_root / STATE_DIR.lstrip("/"), "size=1m,mode=0700") as state:
        yield state


def fill(directory: Path) -> Path:
    """Write to `directory` until its file system has no byte left."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(OSError, match="No space left on device"):  # noqa: PT012
            while True:
                os.write(fd, b"\0" * 4096)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0")  # the last bytes of a partial block
    finally:
        os.close(fd)
    return filler


def test_a_real_full_file_system_is_named_and_the_run_after_freeing_it_converges(
    sandbox_root: Path,
    full_state_dir: Path,
    mirror: MirrorServer,
    mirror_index: Mirror,
    arch: str,
) -> None:
    node = Node(sandbox_root)
    doc = desired_document(mirror.url, mirror_index, arches=(arch,))
    filler = fill(full_state_dir)
    res = node.apply(doc)
    assert res.code == 1, res.stderr
    assert "internal error" not in res.stderr
    error = [line for line in res.stderr.splitlines() if line.startswith("agentd: error: ")]
    assert error, res.stderr
    assert f"the file system mounted at {full_state_dir}: 0 bytes free of 1.0 MiB" in error[0]
    assert "nothing was changed" in error[0] or "no file of this run was installed" in error[0]
    assert "the next run" in error[0]
    assert not node.path("/usr/local/bin/crun").exists()  # nothing was installed

    filler.unlink()
    res = node.apply(doc)
    assert res.code == 0, res.stderr
    assert res.json()["outcome"] == "converged"
    assert node.version_of("/usr/local/bin/crun") == "crun version 1.15"


def test_a_read_only_state_dir_is_a_clear_error_not_an_internal_one(
    sandbox_root: Path, mirror: MirrorServer, mirror_index: Mirror, arch: str
) -> None:
    node = Node(sandbox_root)
    doc = desired_document(mirror.url, mirror_index, arches=(arch,))
    with tmpfs(sandbox_root / STATE_DIR.lstrip("/"), "ro,size=1m,mode=0700") as state:
        res = node.apply(doc)
        assert res.code == 1, res.stderr
        assert "internal error" not in res.stderr
        assert f"read-only file system writing {state}/" in res.stderr
        assert f"(the file system mounted at {state}: " in res.stderr
        assert "the next run" in res.stderr
        assert not node.path("/usr/local/bin/crun").exists()
