"""agentd against an equivalent Ansible playbook: first and no-op convergence, in the same run.

Both tools converge their own sandbox root to the same node state (bench/ansible/converge.yml
is the playbook; its variables are the URLs and checksums of agentd's desired state), from the
same stand-in releases served on 127.0.0.1. Before anything is timed, both roots are checked to
hold the same files (bytes, modes, symlink targets). Then, in every round: both roots are emptied,
each tool converges its root (first convergence), then converges it again (no-op). The tools
alternate which goes first. For agentd the first no-op after a convergence is a full plan (it
stores the no-op digest) and the next ones answer from the digest: both are measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
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
from bench.node import (  # noqa: E402
    AGENTD_OWN,
    ANSIBLE_OWN,
    ARCH,
    ansible_vars,
    apply_argv,
    differences,
    node_files,
)
from tests.support.mirror import MirrorServer  # noqa: E402
from tests.support.standins import build_mirror, desired_document, write_yaml  # noqa: E402

PLAYBOOK = REPO / "bench" / "ansible" / "converge.yml"
ANSIBLE_CFG = REPO / "bench" / "ansible" / "ansible.cfg"
FIGURES = ("wall_s", "cpu_s", "tree_rss_mb", "max_rss_mb")
# The goals: agentd's no-op >= 40x faster than Ansible's with <= half its memory, its
# first convergence >= 10x faster.
NOOP_SPEEDUP_GOAL = 40.0
NOOP_MEMORY_GOAL = 0.5
FIRST_SPEEDUP_GOAL = 10.0


class Tool:
    """One way of converging a root, with the checks that a run did what it should."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], out: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.out = out

    def run(self, what: str) -> tuple[Usage, str]:
        out, err = (self.out / f"{self.name}-{what}.{s}" for s in ("out", "err"))
        usage = run_measured(self.argv, env=self.env, stdout=out, stderr=err)
        text = out.read_text(errors="replace")
        if usage.returncode != 0:
            said = (text + err.read_text(errors="replace"))[-3000:]
            sys.exit(f"{self.name} ({what}) exited {usage.returncode}; its output:\n{said}")
        return usage, text


def agentd_changes(text: str) -> int:
    """How many actions an `agentd apply --json` run took (its JSON document is on stdout)."""
    doc = json.loads(text)
    if doc.get("outcome") not in ("converged", "unchanged", None):
        sys.exit(f"agentd apply: outcome {doc.get('outcome')}: {doc.get('error')}")
    return len(doc.get("actions", []))


def ansible_changes(text: str) -> int:
    """The changed= count of the play recap."""
    for line in text.splitlines():
        if line.startswith("localhost") and "changed=" in line:
            return int(line.split("changed=")[1].split()[0])
    sys.exit("ansible-playbook printed no play recap")


def ansible_version(playbook: str) -> str:
    out = subprocess.run([playbook, "--version"], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()[0].strip()


def spreads(samples: Sequence[Usage]) -> dict[str, dict[str, Any]]:
    return {f: Spread.of([getattr(u, f) for u in samples]).to_json() for f in FIGURES}


def pair_ratios(
    numerators: Sequence[Usage], denominators: Sequence[Usage]
) -> dict[str, dict[str, Any]]:
    """Per-round ratios numerator/denominator of every figure: their median and range."""
    out = {}
    for f in FIGURES:
        ratios = [getattr(a, f) / getattr(b, f) for a, b in zip(numerators, denominators)]
        out[f] = Spread.of(ratios).to_json()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--rounds", type=int, default=10, help="rounds (each tool once)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument(
        "--ansible-playbook",
        default=str(Path(sys.executable).with_name("ansible-playbook")),
        help="the ansible-playbook to run (default: beside this interpreter)",
    )
    args = parser.parse_args()
    if not Path(args.ansible_playbook).exists():
        sys.exit(f"no {args.ansible_playbook}: pip install -e '.[bench]' (make bench does)")

    results: dict[str, Any] = {"machine": machine(), "arch": ARCH, "rounds": args.rounds}
    results["ansible"] = ansible_version(args.ansible_playbook)
    with tempfile.TemporaryDirectory(prefix="agentd-bench-") as tmp:
        work = Path(tmp)
        logs = work / "logs"
        logs.mkdir()
        mirror = build_mirror(work / "mirror", arches=(ARCH,))
        agentd_root, ansible_root = work / "agentd-root", work / "ansible-root"
        with MirrorServer(mirror.root) as server:
            doc = desired_document(server.url, mirror, arches=(ARCH,))
            desired = write_yaml(work / "desired.yaml", doc)
            variables = work / "vars.json"
            variables.write_text(json.dumps(ansible_vars(doc, ansible_root), indent=2))
            env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
            ansible_env = {
                # agentd's working tree on PYTHONPATH is for agentd only
                **{k: v for k, v in env.items() if k != "PYTHONPATH"},
                "ANSIBLE_CONFIG": str(ANSIBLE_CFG),
                "ANSIBLE_HOME": str(work / "ansible-home"),
                "ANSIBLE_LOCAL_TEMP": str(work / "ansible-home" / "tmp"),
                "ANSIBLE_REMOTE_TEMP": str(work / "ansible-home" / "remote-tmp"),
            }
            agentd = Tool("agentd", apply_argv(agentd_root, desired), env, logs)
            ansible = Tool(
                "ansible",
                [
                    args.ansible_playbook,
                    "-i",
                    "localhost,",
                    "-c",
                    "local",
                    str(PLAYBOOK),
                    "-e",
                    f"@{variables}",
                ],
                ansible_env,
                logs,
            )

            # Once, before timing anything: both build the same node, and both then find
            # nothing to do.
            _, a_text = agentd.run("check")
            _, b_text = ansible.run("check")
            if agentd_changes(a_text) == 0 or ansible_changes(b_text) == 0:
                sys.exit("a first convergence changed nothing")
            mine = node_files(agentd_root, AGENTD_OWN)
            theirs = node_files(ansible_root, ANSIBLE_OWN)
            diff = differences(mine, theirs)
            if diff:
                sys.exit(
                    "agentd (first) and the playbook (second) built different nodes; keep "
                    "bench/ansible/ in step with agentd:\n  " + "\n  ".join(diff)
                )
            results["same_files"] = sorted(mine)
            print(f"same node from both tools: {len(mine)} files and symlinks, same bytes")
            for what in ("check-noop", "check-noop-again"):
                if agentd_changes(agentd.run(what)[1]) or ansible_changes(ansible.run(what)[1]):
                    sys.exit("a convergence of a converged root changed something")

            samples: dict[str, list[Usage]] = {
                k: []
                for k in (
                    "agentd_first",
                    "ansible_first",
                    "agentd_noop_planned",
                    "agentd_noop",
                    "ansible_noop",
                )
            }
            for i in range(args.rounds):
                shutil.rmtree(agentd_root)
                shutil.rmtree(ansible_root)
                tools = (agentd, ansible) if i % 2 == 0 else (ansible, agentd)
                for tool in tools:
                    usage, _ = tool.run("first")
                    samples[f"{tool.name}_first"].append(usage)
                for tool in tools:
                    if tool is agentd:
                        # The first no-op after a convergence plans in full and stores the
                        # digest; the next one is the steady state.
                        usage, text = tool.run("noop-planned")
                        samples["agentd_noop_planned"].append(usage)
                        if agentd_changes(text):
                            sys.exit("agentd changed a converged root")
                        usage, text = tool.run("noop")
                        samples["agentd_noop"].append(usage)
                        if agentd_changes(text):
                            sys.exit("agentd changed a converged root")
                    else:
                        usage, text = tool.run("noop")
                        samples["ansible_noop"].append(usage)
                        if ansible_changes(text):
                            sys.exit("the playbook changed a converged root")
                first = samples["agentd_first"][-1], samples["ansible_first"][-1]
                noop = samples["agentd_noop"][-1], samples["ansible_noop"][-1]
                print(
                    f"round {i + 1}/{args.rounds}: first {first[0].wall_s:.3f} s vs "
                    f"{first[1].wall_s:.3f} s, no-op {noop[0].wall_s:.3f} s vs "
                    f"{noop[1].wall_s:.3f} s",
                    flush=True,
                )

    results["samples"] = {k: [u.to_json() for u in v] for k, v in samples.items()}
    results["figures"] = {k: spreads(v) for k, v in samples.items()}
    results["ratios"] = {
        # how many times Ansible's figure agentd's is (speed: Ansible / agentd)
        "first": pair_ratios(samples["ansible_first"], samples["agentd_first"]),
        "noop": pair_ratios(samples["ansible_noop"], samples["agentd_noop"]),
        "noop_planned": pair_ratios(samples["ansible_noop"], samples["agentd_noop_planned"]),
    }
    ratios = results["ratios"]
    noop_speedup = ratios["noop"]["wall_s"]["median"]
    # Judged on the largest single process of each tool: for Ansible the controller alone, which
    # leaves out its worker and module processes, so the ratio errs in Ansible's favour.
    noop_memory = 1 / ratios["noop"]["max_rss_mb"]["median"]
    first_speedup = ratios["first"]["wall_s"]["median"]
    results["goals"] = {
        "noop_speedup": {
            "value": noop_speedup,
            "goal": NOOP_SPEEDUP_GOAL,
            "met": noop_speedup >= NOOP_SPEEDUP_GOAL,
        },
        "noop_memory": {
            "value": noop_memory,
            "goal": NOOP_MEMORY_GOAL,
            "met": noop_memory <= NOOP_MEMORY_GOAL,
        },
        "first_speedup": {
            "value": first_speedup,
            "goal": FIRST_SPEEDUP_GOAL,
            "met": first_speedup >= FIRST_SPEEDUP_GOAL,
        },
    }
    for name, figures in results["figures"].items():
        wall, cpu, tree = (figures[f] for f in ("wall_s", "cpu_s", "tree_rss_mb"))
        print(
            f"{name:<22} wall {wall['median'] * 1000:8.1f} ms  cpu {cpu['median'] * 1000:8.1f} ms"
            f"  tree RSS {tree['median']:6.1f} MB"
        )
    for name, goal in results["goals"].items():
        verdict = "met" if goal["met"] else "MISSED"
        print(f"goal {name}: {goal['value']:.2f} (goal {goal['goal']}) {verdict}")
    save_figures(args.json, results)
    return goals_exit(results["goals"])


if __name__ == "__main__":
    sys.exit(main())
