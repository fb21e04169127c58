"""`make bench`: run every benchmark, then write bench/RESULTS.md from their figures.

Each benchmark is its own script and can be run alone (`python bench/NAME.py --help`); this runs
them one after the other (never two at once: they would measure each other), each writing its
figures as JSON into the output directory, then renders RESULTS.md (bench/report.py). A
benchmark that misses a goal still counts as run: the goal is reported as missed, with a
profile of agentd beside it. A benchmark that fails stops everything.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import report  # noqa: E402

# (name, arguments of the full run, arguments of BENCH_QUICK=1): in the order they run. The
# daemon runs last and longest: ten minutes at rest, as the issue asks.
BENCHMARKS: tuple[tuple[str, list[str], list[str]], ...] = (
    ("versus_ansible", ["--rounds", "10"], ["--rounds", "3"]),
    ("startup", ["-n", "30"], ["-n", "10"]),
    ("noop_apply", ["-n", "20"], ["-n", "5"]),
    ("scaling", ["--plugins", "1,10,50", "-n", "7"], ["--plugins", "1,10,50", "-n", "2"]),
    ("throughput", ["--sizes", "64,512", "-n", "3"], ["--sizes", "16,64", "-n", "2"]),
    (
        "daemon_idle",
        ["--busy-seconds", "60", "--idle-seconds", "600", "--edits", "10"],
        ["--busy-seconds", "10", "--idle-seconds", "30", "--edits", "3"],
    ),
)


def bench_env() -> dict[str, str]:
    """The environment every benchmark runs in.

    agentd is imported from this working tree (PYTHONPATH), as compiled bytecode: a node runs an
    installed, byte-compiled agentd, and pip byte-compiled Ansible when it installed it, so a
    PYTHONDONTWRITEBYTECODE set in the caller's environment would make agentd alone compile its
    modules on every start.
    """
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH")
    }
    env["PYTHONPATH"] = str(REPO)
    # Every server the benchmarks talk to is on 127.0.0.1: never through a proxy.
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def settle(limit: float, patience: float) -> float:
    """Wait, up to `patience` seconds, for the 1-minute load average to fall to `limit` (work
    left by the previous benchmark, or by anything else on the machine); the load then."""
    deadline = time.monotonic() + patience
    while os.getloadavg()[0] > limit and time.monotonic() < deadline:
        time.sleep(5)
    return os.getloadavg()[0]


def shown(cmd: list[str]) -> str:
    """A command as RESULTS.md quotes it: paths relative to the repository, `python` for the
    benchmark interpreter."""
    words = []
    for word in cmd:
        if word == sys.executable:
            words.append("python")
        elif word.startswith(str(REPO) + "/"):
            words.append(shlex.quote(word[len(str(REPO)) + 1 :]))
        else:
            words.append(shlex.quote(word))
    return " ".join(words)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short run (fewer rounds)")
    parser.add_argument(
        "--out", type=Path, help="for the figures (default: build/bench, quick: build/bench-quick)"
    )
    parser.add_argument("--results", type=Path, help="default: bench/RESULTS.md (quick: in --out)")
    parser.add_argument("--only", action="append", default=[], help="run only these benchmarks")
    parser.add_argument("--report-only", action="store_true", help="re-render from --out")
    parser.add_argument(
        "--settle",
        type=float,
        default=180.0,
        metavar="SECONDS",
        help="before each benchmark, wait up to this long for the load average to fall to 1",
    )
    args = parser.parse_args()
    out: Path = (args.out or REPO / "build" / ("bench-quick" if args.quick else "bench")).resolve()
    results: Path = args.results or (
        out / "RESULTS.md" if args.quick else REPO / "bench/RESULTS.md"
    )
    if args.report_only:
        results.write_text(report.render(out))
        print(f"wrote {results}")
        return 0

    out.mkdir(parents=True, exist_ok=True)
    env = bench_env()
    compile_cmd = [sys.executable, "-m", "compileall", "-q", str(REPO / "agentd")]
    subprocess.run(compile_cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    run: dict[str, Any] = {
        "quick": args.quick,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": sys.executable,
        "steps": [{"name": "compile", "command": shown(compile_cmd)}],
    }
    selected = [b for b in BENCHMARKS if not args.only or b[0] in args.only]
    for name, full, quick in selected:
        figures = out / f"{name}.json"
        figures.unlink(missing_ok=True)
        cmd = [
            sys.executable,
            str(REPO / "bench" / f"{name}.py"),
            *(quick if args.quick else full),
            "--json",
            str(figures),
        ]
        waited = time.monotonic()
        load = settle(1.0, 0 if args.quick else args.settle)
        waited = time.monotonic() - waited
        print(f"\n=== {shown(cmd)}", flush=True)
        start = time.monotonic()
        code = subprocess.run(cmd, env=env, check=False).returncode
        step = {
            "name": name,
            "command": shown(cmd),
            "exit": code,
            "seconds": round(time.monotonic() - start, 1),
            "load_before": round(load, 2),
            "waited_for_quiet_s": round(waited),
            "load_after": round(os.getloadavg()[0], 2),
        }
        run["steps"].append(step)
        if not figures.exists():  # a failure, not a missed goal: nothing was measured
            sys.exit(f"bench: {name} failed (exit {code}) without writing {figures}")
    if not args.only:
        profile_cmd = [sys.executable, str(REPO / "bench" / "profile.py"), str(out / "profiles")]
        print(f"\n=== {shown(profile_cmd)}", flush=True)
        subprocess.run(profile_cmd, env=env, check=True)
        run["steps"].append({"name": "profile", "command": shown(profile_cmd)})
    run["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    (out / "run.json").write_text(json.dumps(run, indent=2))
    if args.only:
        print(f"\nfigures in {out} (RESULTS.md is written by a full run)")
        return 0
    results.write_text(report.render(out))
    print(f"\nwrote {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
