"""Start-up: `agentd --version` and `agentd validate` of the benchmark state, each a new process."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.measure import (  # noqa: E402
    Spread,
    Usage,
    goals_exit,
    machine,
    run_measured,
    save_figures,
)
from bench.node import ARCH, agentd_argv  # noqa: E402
from tests.support.standins import build_mirror, desired_document, write_yaml  # noqa: E402

# The goals, on the median wall time.
GOALS_MS = {"version": 150.0, "validate": 300.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=30, help="runs of each command")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="agentd-bench-") as tmp:
        work = Path(tmp)
        mirror = build_mirror(work / "mirror", arches=(ARCH,))
        root = work / "root"
        # validate makes no request: the URLs only need to be well formed.
        doc = desired_document("http://127.0.0.1:8080", mirror, arches=(ARCH,))
        write_yaml(root / "etc/wasm-edge/desired.yaml", doc)
        commands = {
            "python": [sys.executable, "-c", "pass"],  # the interpreter alone: the floor
            "version": [*agentd_argv(), "--version"],
            "validate": [*agentd_argv(), "--root", str(root), "validate"],
        }
        samples: dict[str, list[Usage]] = {name: [] for name in commands}
        for _ in range(2):  # warm the page cache and the bytecode caches
            for cmd in commands.values():
                run_measured(cmd)
        for i in range(args.n):
            names = list(commands) if i % 2 == 0 else list(reversed(commands))
            for name in names:
                usage = run_measured(commands[name], stdout=work / "out", stderr=work / "err")
                if usage.returncode != 0:
                    said = (work / "out").read_text() + (work / "err").read_text()
                    sys.exit(f"{' '.join(commands[name])} exited {usage.returncode}: {said}")
                samples[name].append(usage)
    results: dict[str, Any] = {"machine": machine(), "n": args.n, "commands": {}, "goals": {}}
    for name, runs in samples.items():
        figures = {
            f: Spread.of([getattr(u, f) for u in runs]).to_json()
            for f in ("wall_s", "cpu_s", "max_rss_mb")
        }
        shown = " ".join(commands[name][1:]) if name != "python" else "python -c pass"
        results["commands"][name] = {"command": shown, **figures}
        wall = figures["wall_s"]
        print(
            f"{shown[-60:]:<60} median {wall['median'] * 1000:6.1f} ms "
            f"(min {wall['low'] * 1000:.1f}, max {wall['high'] * 1000:.1f}), "
            f"RSS {figures['max_rss_mb']['median']:.1f} MB"
        )
    for name, goal in GOALS_MS.items():
        value = results["commands"][name]["wall_s"]["median"] * 1000
        results["goals"][name] = {"value": value, "goal": goal, "met": value <= goal}
        verdict = "met" if value <= goal else "MISSED"
        print(f"goal {name}: {value:.1f} ms (goal <= {goal:.0f} ms) {verdict}")
    save_figures(args.json, results)
    return goals_exit(results["goals"])


if __name__ == "__main__":
    sys.exit(main())
