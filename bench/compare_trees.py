"""Two checkouts side by side in one run: no-op/full-plan apply and start-up, rounds alternating.

`python3 bench/compare_trees.py OLD_TREE NEW_TREE [-n ROUNDS]`, e.g. a `git worktree` of the
commit before a change against this checkout. Each tree runs its own bench/noop_apply.py and
bench/startup.py (its own agentd, its own stand-ins); the order alternates round by round, so
machine noise hits both alike; the figure is the median of the round medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BENCHES = (("noop_apply.py", ("-n", "6")), ("startup.py", ("-n", "10")))


def one_round(tree: Path, out: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    figures: dict[str, float] = {}
    for script, args in BENCHES:
        result = out / f"{script}.json"
        done = subprocess.run(
            [sys.executable, f"bench/{script}", *args, "--json", str(result)],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if not result.exists():
            sys.exit(f"{tree}: bench/{script} wrote nothing: {done.stderr[-2000:]}")
        doc = json.loads(result.read_text())
        if script == "noop_apply.py":
            figures.update({f"apply {k} ms": v["median"] for k, v in doc["ms"].items()})
        else:
            for name, v in doc["commands"].items():
                figures[f"start-up {name} ms"] = v["wall_s"]["median"] * 1000
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("-n", type=int, default=4, help="rounds")
    args = parser.parse_args()
    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
    with tempfile.TemporaryDirectory(prefix="agentd-compare-") as tmp:
        for r in range(args.n):
            order = list(trees) if r % 2 == 0 else list(reversed(trees))
            for name in order:
                out = Path(tmp) / f"{name}-{r}"
                out.mkdir()
                for key, value in one_round(trees[name], out).items():
                    samples[name].setdefault(key, []).append(value)
    print(f"{'median of round medians':<34} {'old':>9} {'new':>9} {'change':>8}")
    for key in samples["old"]:
        old, new = (statistics.median(samples[n][key]) for n in ("old", "new"))
        print(f"{key:<34} {old:9.1f} {new:9.1f} {100 * (new - old) / old:+7.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
