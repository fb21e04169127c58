"""Download and sha256 check of a big artifact through agentd, against `sha256sum` of the file.

A file of random bytes is served on 127.0.0.1 by bench/fileserver.py (sendfile: the server costs
next to nothing); agentd's own ArtifactCache.fetch (what converge calls for every artifact:
stream to a temp file, hash on the way, fsync, rename into the cache) downloads and checks it.
`sha256sum` of the same file, read from the page cache, is the limit the issue sets. Debian's
coreutils hashes in portable C, while Python's hashlib (OpenSSL) uses the CPU's SHA extensions
where it has them, so `openssl dgst -sha256` of the file is measured too, as the limit of
hashing on this CPU. Two sizes show whether agentd's memory grows with the artifact (it should
not: it streams in 1 MiB pieces).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
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

MIB = 1 << 20
THROUGHPUT_GOAL = 0.5  # agentd's download+verify at least half as fast as sha256sum
RSS_GROWTH_LIMIT = 1.10  # peak RSS at the biggest size within 10% of that at the smallest


def random_file(path: Path, size: int) -> str:
    """Write `size` random bytes to `path`; their sha256."""
    hasher = hashlib.sha256()
    with path.open("wb") as out:
        left = size
        while left:
            chunk = os.urandom(min(left, 4 * MIB))
            hasher.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    return hasher.hexdigest()


def start_server(directory: Path, work: Path) -> tuple[subprocess.Popen[bytes], str]:
    ready = work / "server-url"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "bench" / "fileserver.py"),
            str(directory),
            "--ready-file",
            str(ready),
        ]
    )
    deadline = time.monotonic() + 30
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            sys.exit("the file server did not start")
        time.sleep(0.02)
    return proc, ready.read_text()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="64,512", help="artifact sizes in MiB, comma-separated")
    parser.add_argument("-n", type=int, default=3, help="runs of each tool per size")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    results: dict[str, Any] = {"machine": machine(), "n": args.n, "sizes": {}}
    with tempfile.TemporaryDirectory(prefix="agentd-bench-") as tmp:
        work = Path(tmp)
        need = (sum(sizes) + 2 * max(sizes)) * MIB + 256 * MIB
        free = shutil.disk_usage(work).free
        if free < need:
            sys.exit(f"{work} has {free // MIB} MiB free; this benchmark needs {need // MIB} MiB")
        served = work / "served"
        served.mkdir()
        digests = {
            size: random_file(served / f"artifact-{size}MiB.bin", size * MIB) for size in sizes
        }
        server, base_url = start_server(served, work)
        openssl = shutil.which("openssl")
        cache = work / "cache"
        try:
            for size in sizes:
                name = f"artifact-{size}MiB.bin"
                path, sha = served / name, digests[size]
                plain: list[Usage] = []
                ssl: list[Usage] = []
                fetched: list[Usage] = []
                fetch_s: list[float] = []
                tools = ["sha256sum", "agentd"] + (["openssl"] if openssl else [])
                for i in range(args.n):
                    for tool in tools if i % 2 == 0 else reversed(tools):
                        out = work / "out"
                        if tool in ("sha256sum", "openssl"):
                            cmd = (
                                ["sha256sum", str(path)]
                                if tool == "sha256sum"
                                else [str(openssl), "dgst", "-sha256", "-r", str(path)]
                            )
                            usage = run_measured(cmd, stdout=out)
                            if usage.returncode != 0 or out.read_text().split()[0] != sha:
                                sys.exit(f"{tool} failed or disagrees")
                            (plain if tool == "sha256sum" else ssl).append(usage)
                            continue
                        shutil.rmtree(cache, ignore_errors=True)
                        usage = run_measured(
                            [
                                sys.executable,
                                str(REPO / "bench" / "fetch_artifact.py"),
                                str(cache),
                                f"{base_url}/{name}",
                                sha,
                            ],
                            stdout=out,
                            stderr=work / "err",
                        )
                        if usage.returncode != 0:
                            sys.exit(f"agentd's fetch failed: {(work / 'err').read_text()}")
                        fetched.append(usage)
                        fetch_s.append(json.loads(out.read_text())["seconds"])
                shutil.rmtree(cache, ignore_errors=True)
                mb = size * MIB / 1e6
                entry: dict[str, Any] = {
                    "mib": size,
                    "sha256sum_s": Spread.of([u.wall_s for u in plain]).to_json(),
                    "sha256sum_mb_s": Spread.of([mb / u.wall_s for u in plain]).to_json(),
                    "agentd_fetch_s": Spread.of(fetch_s).to_json(),
                    "agentd_mb_s": Spread.of([mb / s for s in fetch_s]).to_json(),
                    "agentd_process_s": Spread.of([u.wall_s for u in fetched]).to_json(),
                    "agentd_cpu_s": Spread.of([u.cpu_s for u in fetched]).to_json(),
                    "agentd_max_rss_mb": Spread.of([u.max_rss_mb for u in fetched]).to_json(),
                    # agentd's throughput as a share of sha256sum's, round by round
                    "ratio": Spread.of([u.wall_s / s for u, s in zip(plain, fetch_s)]).to_json(),
                }
                if ssl:
                    entry["openssl_mb_s"] = Spread.of([mb / u.wall_s for u in ssl]).to_json()
                    entry["ratio_openssl"] = Spread.of(
                        [u.wall_s / s for u, s in zip(ssl, fetch_s)]
                    ).to_json()
                results["sizes"][str(size)] = entry
                print(
                    f"{size:5d} MiB: sha256sum {entry['sha256sum_mb_s']['median']:7.0f} MB/s, "
                    f"agentd download+verify {entry['agentd_mb_s']['median']:7.0f} MB/s "
                    f"({entry['ratio']['median']:.0%} of sha256sum), agentd peak RSS "
                    f"{entry['agentd_max_rss_mb']['median']:.1f} MB",
                    flush=True,
                )
        finally:
            server.terminate()
            server.wait(10)
    big, small = results["sizes"][str(sizes[-1])], results["sizes"][str(sizes[0])]
    share = big["ratio"]["median"]
    growth = big["agentd_max_rss_mb"]["median"] / small["agentd_max_rss_mb"]["median"]
    results["goals"] = {
        "throughput": {"value": share, "goal": THROUGHPUT_GOAL, "met": share >= THROUGHPUT_GOAL},
        "rss_growth": {
            "value": growth,
            "goal": RSS_GROWTH_LIMIT,
            "met": growth <= RSS_GROWTH_LIMIT,
        },
    }
    for name, goal in results["goals"].items():
        print(
            f"goal {name}: {goal['value']:.2f} (goal {goal['goal']}) "
            f"{'met' if goal['met'] else 'MISSED'}"
        )
    save_figures(args.json, results)
    return goals_exit(results["goals"])


if __name__ == "__main__":
    sys.exit(main())
