"""Where agentd's time goes: pyinstrument over a first convergence, both kinds of no-op,
`agentd validate` and the download of a big artifact, and the imports that start-up spends its
time (and most of its memory) on.

Written to DIR as text files that bench/report.py quotes in RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.node import ARCH, apply_args, forget_noop  # noqa: E402
from bench.throughput import random_file, start_server  # noqa: E402
from tests.support.mirror import MirrorServer  # noqa: E402
from tests.support.standins import build_mirror, desired_document, write_yaml  # noqa: E402


def pyinstrument(args: list[str], out: Path, *, target: tuple[str, ...] = ("-m", "agentd")) -> None:
    """Profile `agentd ARGS` (python -m agentd; or another `target`) into `out` as text."""
    cmd = [
        sys.executable,
        "-m",
        "pyinstrument",
        "--interval",
        "0.0005",
        "--no-color",
        "--no-unicode",
        "-r",
        "text",
        "-p",
        "processor_options.filter_threshold=0.02",  # frames under 2% of the run hidden
        "-o",
        str(out),
        *target,
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"pyinstrument {' '.join(target)} {' '.join(args)} failed: {proc.stderr[-2000:]}")


def importtime(args: list[str], out: Path, top: int = 25) -> None:
    """The `top` imports by cumulative time (python -X importtime) of `agentd ARGS`."""
    cmd = [sys.executable, "-X", "importtime", "-m", "agentd", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    rows = []
    for line in proc.stderr.splitlines():
        found = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        # agentd's own modules and every other top-level package, at any depth
        if found and (found.group(4).startswith("agentd") or "." not in found.group(4)):
            rows.append((int(found.group(2)), int(found.group(1)), found.group(4)))
    rows.sort(reverse=True)
    text = ["cumulative ms  self ms  module (cumulative: with everything it imported first)"]
    text += [f"{c / 1000:13.1f}  {s / 1000:7.1f}  {name}" for c, s, name in rows[:top]]
    out.write_text("\n".join(text) + "\n")


def profile_download(work: Path, out: Path, mib: int) -> None:
    """agentd's ArtifactCache.fetch of a `mib` MiB artifact, as bench/throughput.py times it."""
    served = work / "served"
    served.mkdir()
    sha = random_file(served / "artifact.bin", mib << 20)
    server, base_url = start_server(served, work)
    try:
        fetch = [str(REPO / "bench" / "fetch_artifact.py")]
        args = [str(work / "cache"), f"{base_url}/artifact.bin", sha]
        pyinstrument(args, out, target=tuple(fetch))
    finally:
        server.terminate()
        server.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path, help="directory for the profiles")
    parser.add_argument("--download-mib", type=int, default=256, help="size of the download")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="agentd-bench-") as tmp:
        work = Path(tmp)
        mirror = build_mirror(work / "mirror", arches=(ARCH,))
        root = work / "root"
        with MirrorServer(mirror.root) as server:
            doc = desired_document(server.url, mirror, arches=(ARCH,))
            desired = write_yaml(work / "desired.yaml", doc)
            apply = apply_args(root, desired)
            # A warm-up convergence: the bytecode caches and the page cache as in the benchmarks.
            subprocess.run(
                [sys.executable, "-m", "agentd", *apply], capture_output=True, check=True
            )
            shutil.rmtree(root)
            pyinstrument(apply, args.out / "first.txt")
            pyinstrument(apply, args.out / "noop-planned.txt")
            pyinstrument(apply, args.out / "noop.txt")
            forget_noop(root)
            subprocess.run(
                [sys.executable, "-m", "agentd", *apply], capture_output=True, check=True
            )
            importtime(apply, args.out / "noop-imports.txt")
            write_yaml(root / "etc/wasm-edge/desired.yaml", doc)
            pyinstrument(["--root", str(root), "validate"], args.out / "validate.txt")
            importtime(["--root", str(root), "validate"], args.out / "validate-imports.txt")
            importtime(["--version"], args.out / "version-imports.txt")
        profile_download(work, args.out / "download.txt", args.download_mib)
    for path in sorted(args.out.glob("*.txt")):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(os.EX_OK if main() == 0 else 1)
