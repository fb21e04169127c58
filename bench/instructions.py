"""Two checkouts side by side in instructions (callgrind), which a loaded machine does not move.

`python3 bench/instructions.py OLD_TREE NEW_TREE`, e.g. a `git worktree` of the commit before a
change against this checkout: for each tree, its own agentd and stand-ins converge a sandbox
root, then valgrind counts the instructions of a no-op apply (the memo), a no-op apply with a
full plan, `--version` and `validate` of OLD_TREE's example desired state. Wall-clock figures
(bench/compare_trees.py) need a quiet machine; these do not.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

_SETUP = """
import json, sys, time
from pathlib import Path
from tests.support.mirror import MirrorServer
from tests.support.standins import build_mirror, desired_document, node_arch, write_yaml
work = Path(sys.argv[1])
mirror = build_mirror(work / "mirror", arches=(node_arch(),))
with MirrorServer(mirror.root) as server:
    doc = desired_document(server.url, mirror, arches=(node_arch(),))
    print(write_yaml(work / "desired.yaml", doc), flush=True)
    time.sleep(3600)  # serving until killed
"""


def _interpreter() -> str:
    # The real binary, not a shim script: valgrind would count the shell that execs it.
    return os.path.realpath(sys.executable)


def instructions(tree: Path, args: list[str], count: bool = True) -> int:
    cmd = [_interpreter(), "-m", "agentd", *args]
    if count:
        cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *cmd]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    # cwd too: `python -m` puts the working directory ahead of PYTHONPATH.
    done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{tree}: agentd {' '.join(args)}: exit {done.returncode}\n{done.stderr[-2000:]}")
    found = re.search(r"Collected : (\d+)", done.stderr)
    return int(found.group(1)) if found else 0


def one_tree(tree: Path, example: Path) -> dict[str, int]:
    with tempfile.TemporaryDirectory() as tmp:
        work, root = Path(tmp), Path(tmp) / "root"
        env = {**os.environ, "PYTHONPATH": str(tree)}
        # The mirror is served only while the first apply downloads; the rest are no-ops.
        setup = subprocess.Popen(
            [_interpreter(), "-c", _SETUP, str(work)],
            cwd=tree,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert setup.stdout is not None
        desired = setup.stdout.readline().strip()
        try:
            apply = ["--root", str(root), "apply", "--desired", desired]
            instructions(tree, apply, count=False)  # converges
        finally:
            setup.kill()
            setup.wait()
        instructions(tree, apply, count=False)  # a full plan that stores the no-op memo
        figures = {"no-op apply (memo)": instructions(tree, apply)}
        state = root / "var/lib/wasm-edge/state.json"
        doc = json.loads(state.read_text())
        doc["noop"] = None
        state.write_text(json.dumps(doc))
        figures["no-op apply, full plan"] = instructions(tree, apply)
        figures["--version"] = instructions(tree, ["--version"])
        figures["validate (example)"] = instructions(
            tree, ["validate", str(example), "--arch", "amd64"]
        )
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    args = parser.parse_args()
    example = args.old.absolute() / "config" / "desired.example.yaml"
    old, new = (one_tree(t.absolute(), example) for t in (args.old, args.new))
    print(f"{'instructions (callgrind)':<28} {'old':>14} {'new':>14}  change")
    for name, before in old.items():
        after = new[name]
        print(f"{name:<28} {before:>14,} {after:>14,}  {(after - before) / before:+.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
