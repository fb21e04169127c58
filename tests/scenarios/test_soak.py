"""Soak: the real daemon through thousands of reconcile cycles, alternating generations and
with faults injected: its memory, its open files and what it leaves on disk stay flat."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.mirror import MirrorServer
from tests.support.node import Node
from tests.support.standins import Mirror, desired_document, write_yaml
from tests.unit.daemon.test_daemon import launch_daemon

REPO = Path(__file__).resolve().parents[2]
CYCLES = int(os.environ.get("AGENTD_SOAK_CYCLES", "10000"))
FLIP_EVERY = 10  # a new generation (crun 1.14 <-> 1.15) every tenth cycle: a worker run
FAULT_EVERY = 13  # the fleet origin answers 503 to the pull of every thirteenth cycle
SAMPLE_EVERY = int(os.environ.get("AGENTD_SOAK_SAMPLE_EVERY", "250"))


def _proc(pid: int, what: str) -> int:
    if what == "rss":
        status = Path(f"/proc/{pid}/status").read_text()
        return int(status.split("VmRSS:")[1].split()[0])
    return len(os.listdir(f"/proc/{pid}/fd"))


def _children(pid: int) -> list[str]:
    out: list[str] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError):
            out += Path(f"/proc/{pid}/task/{task}/children").read_text().split()
    return out


def _busy(pid: int) -> bool:
    # A child (a health check's program, with its pipes) or the state lock open (state being
    # written): work the cycle set off after its READY=1, holding fds for a moment.
    return bool(_children(pid)) or any(
        t.endswith("/var/lib/wasm-edge/lock") for t in _fd_targets(pid)
    )


def _at_rest(pid: int, timeout: float = 30.0) -> None:
    """Wait until the daemon is at rest, so that open fds are compared between like moments."""
    deadline = time.monotonic() + timeout
    while _busy(pid) and time.monotonic() < deadline:
        time.sleep(0.01)


def _fd_targets(pid: int) -> list[str]:
    """What each open fd of `pid` is (a file's path, socket:[inode], pipe:[inode], ...)."""
    out = []
    for fd in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
        with contextlib.suppress(FileNotFoundError):
            out.append(f"{fd} -> {os.readlink(f'/proc/{pid}/fd/{fd}')}")
    return out


def _leftovers(root: Path) -> list[str]:
    found = [
        str(p.relative_to(root))
        for p in root.rglob("*")
        if ".agentd-" in p.name or p.name.endswith(".part")
    ]
    staging = root / "var/lib/wasm-edge/staging"
    if staging.is_dir():
        found += [str(p.relative_to(root)) for p in staging.iterdir()]
    return found


@pytest.mark.stress
def test_thousands_of_cycles_leave_memory_files_and_disk_flat(
    sandbox_root: Path, mirror: MirrorServer, mirror_index: Mirror, arch: str, tmp_path: Path
) -> None:
    node = Node(sandbox_root)
    fleet = mirror.directory / f"soak-{os.getpid()}"
    fleet.mkdir(exist_ok=True)
    fleet_path = f"/{fleet.name}/desired.yaml"

    def publish(generation: int) -> None:
        crun = "1.15" if generation % 2 else "1.14"
        doc = desired_document(
            mirror.url, mirror_index, generation=generation, crun=crun, arches=(arch,)
        )
        write_yaml(fleet / "desired.yaml", doc)

    publish(1)
    write_yaml(
        node.path("/etc/wasm-edge/agentd.yaml"),
        {
            "source": {"type": "https", "url": mirror.url + fleet_path, "allowInsecure": True},
            "interval": "1h",
            "healthInterval": "1h",
            "backoff": {"initial": "1h", "max": "1h"},  # only the test starts cycles
        },
    )
    log = tmp_path / "daemon.stderr"
    daemon = launch_daemon(node, tmp_path / "notify.sock", log)
    notices, proc = daemon.notices, daemon.proc
    samples: list[tuple[int, int, int]] = []
    outcomes: dict[str, int] = {}
    generation = 1
    started = time.monotonic()
    try:
        notices.ready()
        for cycle in range(1, CYCLES + 1):
            if cycle % FAULT_EVERY == 0:
                mirror.fail(fleet_path, 503, times=1)
            if cycle % FLIP_EVERY == 0:
                generation += 1
                publish(generation)
            # SIGHUP: pull now and converge (a new generation runs a worker, an unchanged one
            # is answered from the no-op digest); READY=1 says the cycle is over.
            proc.send_signal(signal.SIGHUP)
            try:
                notices.next(lambda n: n.has("RELOADING"), "RELOADING=1")
                ready = notices.next(lambda n: n.has("READY"), f"READY=1 after cycle {cycle}")
            except AssertionError as exc:
                proc.send_signal(signal.SIGUSR1)  # agentd run: every thread's stack to stderr
                time.sleep(1)
                tail = log.read_text(errors="replace")[-8000:]
                raise AssertionError(f"cycle {cycle}: {exc}\n--- with stacks ---\n{tail}") from None
            kind = ready.status.split(":")[0].split(" generation")[0]
            outcomes[kind] = outcomes.get(kind, 0) + 1
            if cycle % SAMPLE_EVERY == 0:
                _at_rest(proc.pid)
                samples.append((cycle, _proc(proc.pid, "rss"), _proc(proc.pid, "fds")))
                if os.environ.get("AGENTD_SOAK_FD_DEBUG"):
                    print(cycle, _fd_targets(proc.pid), flush=True)
        elapsed = time.monotonic() - started
        state = json.loads(node.read("/var/lib/wasm-edge/state.json"))
        assert state["lastAppliedGeneration"] == generation
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        notices.close()
    assert code == 0
    # Memory: after the first samples (caches and imports settle), growth stays under 5 MB.
    assert samples, f"no samples: {CYCLES} cycles, one sample every {SAMPLE_EVERY} (lower it)"
    warm = samples[min(2, len(samples) - 1)]
    growth_kb = max(rss for _, rss, _ in samples) - warm[1]
    fds = [n for _, _, n in samples]
    report: dict[str, Any] = {
        "cycles": CYCLES,
        "seconds": round(elapsed, 1),
        "generations": generation,
        "outcomes": outcomes,
        "rssKiB": [(c, r) for c, r, _ in samples],
        "fds": fds,
        "rssGrowthKiB": growth_kb,
    }
    (REPO / "build").mkdir(exist_ok=True)
    (REPO / "build" / "soak.json").write_text(json.dumps(report, indent=1))
    assert growth_kb < 5 * 1024, report
    assert max(fds) - min(fds) <= 2, report
    assert _leftovers(node.root) == []
    assert outcomes.get("converged", 0) > CYCLES * 0.8, outcomes
