"""How agentd's convergence grows with the number of WasmEdge plugins it manages (1, 10, 50).

The benchmark state (crun, k3s, WasmEdge, the k3s files) with 1, 10 or 50 plugins: the first one
is the stand-in wasi_nn-ggml, the others are generated stand-in plugins named as upstream names
its tarballs (WasmEdge-plugin-<name>-<version>-manylinux2014_<arch>.tar.gz), each with its own
library, which the stand-in wasmedge lists as loaded. A made-up plugin name is only a warning for
agentd. In every round: an empty root is converged, then converged again twice: the first no-op
plans in full (detection, plan) and stores the no-op digest, the second answers from it.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.measure import Spread, Usage, machine, run_measured, save_figures  # noqa: E402
from bench.node import ARCH, apply_argv  # noqa: E402
from tests.support.mirror import MirrorServer  # noqa: E402
from tests.support.standins import (  # noqa: E402
    FIXED_MTIME,
    build_mirror,
    desired_document,
    plugin_asset_name,
    plugin_library,
    write_yaml,
)

WASMEDGE = "0.14.1"


def plugin_tarball(name: str, library: str, version: str) -> bytes:
    """A stand-in plugin tarball: the library at top level, built for the runtime's plugin API
    (the stand-in wasmedge lists only plugins of its own plugin API version, as WasmEdge does)."""
    data = plugin_library(name, name, library, version, arch=ARCH)
    info = tarfile.TarInfo(library)
    info.size, info.mode, info.mtime = len(data), 0o644, FIXED_MTIME
    info.uname = info.gname = "root"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), mtime=0)


def extra_plugins(mirror_root: Path, base_url: str, count: int) -> list[dict[str, Any]]:
    """`count` generated plugins in the mirror, as desired-state entries."""
    entries = []
    for i in range(1, count + 1):
        name = f"bench_plugin_{i:02d}"
        asset = plugin_asset_name(name, WASMEDGE, ARCH)
        data = plugin_tarball(name, f"libwasmedgePluginBench{i:02d}.so", WASMEDGE)
        (mirror_root / "wasmedge" / WASMEDGE / asset).write_bytes(data)
        url = f"{base_url}/wasmedge/{WASMEDGE}/{asset}"
        sha = hashlib.sha256(data).hexdigest()
        entries.append({"name": name, "artifacts": {ARCH: {"url": url, "sha256": sha}}})
    return entries


def apply(root: Path, desired: Path, out: Path) -> tuple[Usage, int]:
    usage = run_measured(apply_argv(root, desired), stdout=out, stderr=out.with_suffix(".err"))
    if usage.returncode != 0:
        sys.exit(f"agentd apply failed: {out.with_suffix('.err').read_text()[-2000:]}")
    doc = json.loads(out.read_text())
    return usage, len(doc.get("actions", []))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--plugins", default="1,10,50", help="plugin counts, comma-separated")
    parser.add_argument("-n", type=int, default=7, help="rounds per count")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    counts = [int(c) for c in args.plugins.split(",")]
    results: dict[str, Any] = {"machine": machine(), "n": args.n, "counts": {}}
    with tempfile.TemporaryDirectory(prefix="agentd-bench-") as tmp:
        work = Path(tmp)
        mirror = build_mirror(work / "mirror", arches=(ARCH,))
        out = work / "apply.json"
        with MirrorServer(mirror.root) as server:
            generated = extra_plugins(mirror.root, server.url, max(counts) - 1)
            for count in counts:
                doc = desired_document(server.url, mirror, arches=(ARCH,))
                doc["components"]["wasmedge"]["plugins"] += generated[: count - 1]
                desired = write_yaml(work / f"desired-{count}.yaml", doc)
                root = work / f"root-{count}"
                runs: dict[str, list[Usage]] = {"first": [], "noop_planned": [], "noop": []}
                for _ in range(args.n):
                    shutil.rmtree(root, ignore_errors=True)
                    usage, actions = apply(root, desired, out)
                    if actions < count + 3:
                        sys.exit(f"a first convergence with {count} plugins took {actions} actions")
                    runs["first"].append(usage)
                    for kind in ("noop_planned", "noop"):
                        usage, actions = apply(root, desired, out)
                        if actions:
                            sys.exit(f"a no-op with {count} plugins took {actions} actions")
                        runs[kind].append(usage)
                entry = {
                    kind: {
                        f: Spread.of([getattr(u, f) for u in samples]).to_json()
                        for f in ("wall_s", "cpu_s", "max_rss_mb")
                    }
                    for kind, samples in runs.items()
                }
                results["counts"][str(count)] = entry
                print(
                    f"{count:3d} plugins: first "
                    f"{entry['first']['wall_s']['median'] * 1000:7.1f} ms, no-op planned "
                    f"{entry['noop_planned']['wall_s']['median'] * 1000:6.1f} ms, no-op "
                    f"{entry['noop']['wall_s']['median'] * 1000:6.1f} ms",
                    flush=True,
                )
    save_figures(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
