"""`make demo`: build stand-in releases, serve them on 127.0.0.1, converge a sandbox root."""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.mirror import MirrorServer  # noqa: E402
from tests.support.standins import build_mirror  # noqa: E402

TEMPLATE = REPO / "config" / "demo-desired.yaml"


def banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def agentd(root: Path, *args: str, check: bool = True) -> int:
    cmd = [sys.executable, "-m", "agentd", "--root", str(root), "--log-format", "console", *args]
    print("$ agentd --root", root.name, " ".join(args), flush=True)
    code = subprocess.run(cmd, check=False).returncode
    if check and code != 0:
        sys.exit(f"demo: agentd {' '.join(args)} exited {code}")
    return code


def render_desired(mirror_dir: Path, base_url: str) -> str:
    def sha(match: re.Match[str]) -> str:
        return hashlib.sha256((mirror_dir / match.group(1)).read_bytes()).hexdigest()

    text = TEMPLATE.read_text()
    text = re.sub(r"@SHA256\(([a-z][^)<>\s]*)\)@", sha, text)
    return text.replace("@MIRROR@", base_url)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=REPO / "demo-root")
    parser.add_argument("--mirror", type=Path, default=REPO / "demo-mirror")
    args = parser.parse_args()
    root: Path = args.root.resolve()
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(args.mirror, ignore_errors=True)

    banner(f"building stand-in k3s, crun and WasmEdge releases in {args.mirror}")
    build_mirror(args.mirror, arches=("amd64", "arm64"))
    for f in sorted(p for p in args.mirror.rglob("*") if p.is_file()):
        print(f"  {f.relative_to(args.mirror)}  ({f.stat().st_size} bytes)")

    with MirrorServer(args.mirror) as server:
        banner(f"serving them on {server.url}; desired state from {TEMPLATE.relative_to(REPO)}")
        desired = root / "etc" / "wasm-edge" / "desired.yaml"
        desired.parent.mkdir(parents=True)
        desired.write_text(render_desired(args.mirror, server.url))
        # A sandbox root stands for a node: give it the os-release and resolv.conf of the machine
        # it runs on (the health checks read both).
        for name in ("os-release", "resolv.conf"):
            if Path("/etc", name).exists():
                (root / "etc" / name).write_text(Path("/etc", name).read_text())
        agentd(root, "validate")

        banner("plan: what apply would do, and why")
        agentd(root, "plan")
        banner("apply: download, verify sha256, install atomically, configure k3s")
        agentd(root, "apply")
        banner("apply again: nothing to do, nothing downloaded")
        agentd(root, "apply")
        print(f"  requests the mirror served in all: {len(server.requests)}")

    banner("detect: what the sandbox node has now")
    agentd(root, "detect")
    banner("check: the health checks (the stand-in WasmEdge runs agentd's WASI probe in wasmtime)")
    agentd(root, "check", check=False)
    banner("status: the last run, from the state dir")
    agentd(root, "status")
    banner(f"the sandbox root is {root}; try: agentd --root {root} rollback crun")
    return 0


if __name__ == "__main__":
    sys.exit(main())
