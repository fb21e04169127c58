"""No-op `agentd apply` wall time on the demo state: memoised, fully planned and uncached."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.mirror import MirrorServer  # noqa: E402
from tests.support.standins import build_mirror, desired_document, node_arch, write_yaml  # noqa: E402

BUDGET_MS = 150.0


def timed_apply(root: Path, desired: Path) -> float:
    cmd = [sys.executable, "-m", "agentd", "--root", str(root), "apply", "--desired", str(desired)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    elapsed = (time.perf_counter() - start) * 1000
    if proc.returncode != 0:
        sys.exit(f"apply failed: {proc.stderr}")
    return elapsed


def forget_noop(state_dir: Path) -> None:
    """Drop the stored no-op digest so the next apply loads, detects and plans in full."""
    state_file = state_dir / "state.json"
    state = json.loads(state_file.read_text())
    state["noop"] = None
    state_file.write_text(json.dumps(state))


def summary(name: str, samples: list[float]) -> str:
    samples = sorted(samples)
    p90 = samples[int(len(samples) * 0.9) - 1]
    return (
        f"{name:<38} median {statistics.median(samples):6.1f} ms   p90 {p90:6.1f} ms   "
        f"min {samples[0]:6.1f} ms   (n={len(samples)})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=20, help="runs per variant")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        mirror = build_mirror(work / "mirror", arches=(node_arch(),))
        root = work / "root"
        with MirrorServer(mirror.root) as server:
            desired = write_yaml(
                work / "desired.yaml", desired_document(server.url, mirror, arches=(node_arch(),))
            )
            timed_apply(root, desired)  # converge once: everything after is a no-op
        timed_apply(root, desired)  # a full plan that finds nothing to do: stores the digest
        state_dir = root / "var/lib/wasm-edge"
        memo, planned, uncached, bare = [], [], [], []
        for _ in range(args.n):  # interleaved, so machine noise hits every variant alike
            memo.append(timed_apply(root, desired))
            forget_noop(state_dir)
            planned.append(timed_apply(root, desired))
            forget_noop(state_dir)
            (state_dir / "facts-cache.json").unlink()
            uncached.append(timed_apply(root, desired))
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            bare.append((time.perf_counter() - start) * 1000)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, arch {node_arch()}")
    print(summary("python -c pass (interpreter floor)", bare))
    print(summary("no-op apply (inputs digest)", memo))
    print(summary("no-op apply, full plan, facts cache", planned))
    print(summary("no-op apply, full plan, no cache", uncached))
    median = statistics.median(memo)
    verdict = "within" if median <= BUDGET_MS else "OVER"
    print(f"budget {BUDGET_MS:.0f} ms: {verdict} (median {median:.1f} ms)")
    if args.json:
        variants = {
            "python": bare,
            "noop": memo,
            "noop_planned": planned,
            "noop_uncached": uncached,
        }
        figures = {
            name: {"median": statistics.median(v), "low": min(v), "high": max(v), "n": len(v)}
            for name, v in variants.items()
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"ms": figures, "budget_ms": BUDGET_MS}, indent=2))
    return 0 if median <= BUDGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
