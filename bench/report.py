"""bench/RESULTS.md from the figures the benchmarks wrote (bench/all.py calls `render`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

Figures = dict[str, Any]
TIMES = "\u00d7"  # the multiplication sign
TO = "\u2013"  # an en dash, for ranges


def _load(out: Path, name: str) -> Figures:
    path = out / f"{name}.json"
    if not path.exists():
        sys.exit(f"report: no {path}; run the benchmarks first (make bench)")
    data: Figures = json.loads(path.read_text())
    return data


def _t(seconds: float) -> str:
    if seconds < 0.1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 10:
        return f"{seconds:.2f} s"
    return f"{seconds:.1f} s"


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _time(s: Figures) -> str:
    return f"{_t(s['median'])} ({_t(s['low'])}{TO}{_t(s['high'])})"


def _mb(s: Figures) -> str:
    return f"{s['median']:.1f} MB ({s['low']:.1f}{TO}{s['high']:.1f})"


def _x(s: Figures) -> str:
    return f"**{s['median']:.1f}{TIMES}** ({s['low']:.1f}{TO}{s['high']:.1f})"


def _share(s: Figures) -> str:
    """An Ansible ÷ agentd memory ratio shown the other way up: agentd's share of Ansible's."""
    return f"**{1 / s['median']:.2f}** ({1 / s['high']:.2f}{TO}{1 / s['low']:.2f})"


def _cpu_ms(startup: Figures, name: str) -> float:
    return float(startup["commands"][name]["cpu_s"]["median"]) * 1000


def _verdict(met: bool) -> str:
    return "met" if met else "**MISSED**"


def _git() -> str:
    def git(*args: str) -> str:
        try:
            proc = subprocess.run(
                ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False
            )
        except OSError:  # no git on this machine
            return ""
        return proc.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "agentd", "bench")
    return f"{commit}{' + uncommitted changes to agentd/ or bench/' if dirty else ''}"


def _agentd_version() -> str:
    for line in (REPO / "agentd" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    return "unknown"


def _heaviest_imports(out: Path, command: str, count: int) -> list[tuple[str, float]]:
    """The first `count` rows of bench/profile.py's import list for `command`."""
    path = out / "profiles" / f"{command}-imports.txt"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines()[1:]:
        cumulative, _, module = line.split()
        rows.append((module, float(cumulative)))
    return rows[:count]


def _profile(out: Path, name: str) -> str:
    path = out / "profiles" / name
    if not path.exists():
        return "(not profiled in this run)"
    lines = [ln.rstrip() for ln in path.read_text().splitlines()]
    # pyinstrument's banner: keep its duration line, drop the logo.
    lines = [ln for ln in lines if ln and not ln.lstrip().startswith(("_", "/_", "/   _/"))]
    body = "\n".join(ln.replace(str(REPO) + "/", "") for ln in lines)
    return f"```\n{body}\n```"


MEANING = """\
## What each figure means

- **Wall time** is from the fork of the command to the return of its wait4(): what a person or a
  timer waiting for the run sees, interpreter start-up included. **CPU time** is user + system
  time of the command and every process it started and waited for (wait4's rusage of that one
  child), so Ansible's forked workers and module processes count, as do the `--version` commands
  agentd runs.
- **Peak RSS, process tree** is the highest sum of VmRSS over all live processes of the command,
  sampled from /proc every 5 ms. For Ansible that is the controller, its forked worker and the
  Python process each module runs in; pages a forked worker shares with the controller count
  twice, so it is an upper bound of what Ansible really holds. **Largest process** is the highest
  VmHWM of any one process of the tree (for agentd: the apply process itself). wait4's ru_maxrss
  is not used: exec() carries the forking process's own peak into it. The memory goal is judged
  on the largest process: agentd's apply process against Ansible's largest single process (its
  controller), which leaves Ansible's worker and module processes out, in Ansible's favour; the
  process-tree figures give agentd an even smaller share. A short spike of the tree figure for
  agentd's first convergence is a `--version` command caught between fork and exec, while it
  still shares agentd's pages.
- **First convergence** starts from an empty root (for agentd: no state, no cache): every artifact
  is downloaded from the local server, checked, installed, every file written, the versions read
  back. **No-op** converges a root that is already converged. agentd's steady-state no-op answers
  from its digest of every planning input (`agentd plan`'s inputs: desired-state bytes, binaries
  and libraries by stat fingerprint, managed files by content); the first no-op after a change
  loads, detects and plans in full, and is shown as well. Ansible's no-op runs every task: its
  checks (checksums, `tar --diff`) find nothing to change, and the version commands run again.
- **Ratios** are taken round by round (both tools measured back to back, the order alternating)
  and their median and range quoted, so a slower or busier moment of the machine hits both tools
  of a round alike.
- **Download + verify** is agentd's `ArtifactCache.fetch` (what converge runs for each artifact:
  streamed to a temp file in 1 MiB pieces, hashed on the way, fsynced, renamed into the cache),
  timed inside its process; `sha256sum` reading the same file from the page cache is the limit no
  download-and-check can beat.
- **Daemon idle RSS** is the VmRSS of `agentd run` after the stated time at rest with the default
  interval; **CPU per idle cycle** is the daemon's CPU over a minute of cycles every second (each
  a conditional GET of the fleet document answered 304, and the no-op digest), divided by the
  cycles.
"""

SETUP = """\
## The two tools

- **agentd** converges its sandbox root with `agentd --root ROOT apply --desired desired.yaml
  --json`: the benchmark desired state of `tests/support/standins.py` (`desired_document`):
  crun 1.15,
  k3s v1.30.4+k3s1 (server, a `config:` entry and a token file), WasmEdge 0.14.1 with the
  wasi_nn-ggml plugin, the `crun-wasm` RuntimeClass. agentd writes the k3s config, the k3s unit,
  the containerd template and the RuntimeClass manifest, and reads the versions back.
- **Ansible** converges another root with `ansible-playbook -i localhost, -c local
  bench/ansible/converge.yml -e @vars.json`: `get_url` with the same sha256 checksums, `unarchive`
  of the WasmEdge and plugin tarballs, `copy` of the same four files (bench/ansible/files/),
  `command` for the three versions and an `assert` on them. It is set up to cost Ansible as little
  as an experienced user would make it: no fact gathering, pipelining on, the interpreter given
  (bench/ansible/ansible.cfg).
- Both download the same stand-in artifacts (tests/support/standins.py: the real names and
  layouts) from the same server on 127.0.0.1 (tests/support/mirror.py), run on the same
  interpreter, in a virtualenv
  without this machine's site hooks (build/bench-venv), agentd as byte-compiled modules as a node
  has them. Neither touches a service: under `--root`, agentd records the ldconfig and systemctl
  calls a node would make, and the playbook has no service tasks.
- Before anything is timed, both roots are compared: the same files, bytes, modes and symlink
  targets (agentd's own state and metrics and the playbook's download cache aside), and a second
  run of each changes nothing.
"""


def render(out: Path) -> str:
    run = _load(out, "run")
    versus = _load(out, "versus_ansible")
    startup = _load(out, "startup")
    noop = _load(out, "noop_apply")
    scaling = _load(out, "scaling")
    throughput = _load(out, "throughput")
    daemon = _load(out, "daemon_idle")
    m = versus["machine"]
    lines: list[str] = []
    add = lines.append

    add("# agentd's costs, measured beside Ansible")
    add("")
    add(
        "Written by `make bench` (bench/all.py, bench/report.py): do not edit by hand, run it "
        "again. Every figure below comes from the run described here."
    )
    if run.get("quick"):
        add("")
        add(
            "**A quick run (BENCH_QUICK=1): fewer rounds and shorter phases than the figures "
            "RESULTS.md quotes.**"
        )
    add("")
    add("| | |")
    add("| --- | --- |")
    took = sum(step.get("seconds", 0) for step in run["steps"])
    add(f"| date | {run['started']}; the benchmarks took {took / 60:.0f} min |")
    add(f"| agentd | {_agentd_version()}, commit {_git()} |")
    add(f"| Ansible | {versus['ansible']} |")
    add(f"| machine | {m['cpu']}, {m['cpus']} CPUs, {m['memory_gib']} GiB, {m['arch']} |")
    add(f"| system | {m['os']}, Linux {m['kernel']}, Python {m['python']} |")
    loads = ", ".join(f"{s['name']} {s['load_before']}" for s in run["steps"] if "load_before" in s)
    add(f"| 1-min load average as each benchmark started | {loads} |")
    add("")
    busy = [s for s in run["steps"] if s.get("load_before", 0) > 1.0]
    if busy:
        add(
            f"**The machine was busy with other work during this run** (a load average above 1 "
            f"on {m['cpus']} CPUs as {', '.join(s['name'] for s in busy)} started"
            + (
                ", after waiting for it to fall"
                if any(s.get("waited_for_quiet_s", 0) > 0 for s in busy)
                else ""
            )
            + "): their wall times are inflated. CPU times, and the ratios of the comparison "
            "(both tools measured back to back), are the steadier figures."
        )
        add("")

    # --- goals -------------------------------------------------------------------------------
    goals = versus["goals"]
    sg = startup["goals"]
    tg = throughput["goals"]
    sizes = sorted(throughput["sizes"].values(), key=lambda e: e["mib"])
    idle_ok = daemon["idle_rss_mb"] <= daemon["budgets"]["rss_mb"]
    cpu_ok = daemon["cpu_per_cycle_ms"] <= daemon["budgets"]["cpu_per_cycle_ms"]
    rows = (
        (
            "no-op convergence, agentd against Ansible",
            f"\u2265 40{TIMES} faster",
            f"{goals['noop_speedup']['value']:.0f}{TIMES}",
            goals["noop_speedup"]["met"],
        ),
        (
            "no-op convergence, agentd's peak RSS against Ansible's largest process",
            "\u2264 \u00bd",
            f"{goals['noop_memory']['value']:.2f}",
            goals["noop_memory"]["met"],
        ),
        (
            "first convergence, agentd against Ansible",
            f"\u2265 10{TIMES} faster",
            f"{goals['first_speedup']['value']:.0f}{TIMES}",
            goals["first_speedup"]["met"],
        ),
        (
            f"daemon RSS after {_duration(daemon['idle_seconds'])} at rest",
            "\u2264 35 MB",
            f"{daemon['idle_rss_mb']:.1f} MB",
            idle_ok,
        ),
        (
            "daemon CPU per idle cycle",
            "\u2264 50 ms",
            f"{daemon['cpu_per_cycle_ms']:.1f} ms",
            cpu_ok,
        ),
        (
            "`agentd --version`",
            "\u2264 150 ms",
            f"{sg['version']['value']:.0f} ms (CPU {_cpu_ms(startup, 'version'):.0f} ms)",
            sg["version"]["met"],
        ),
        (
            "`agentd validate`",
            "\u2264 300 ms",
            f"{sg['validate']['value']:.0f} ms (CPU {_cpu_ms(startup, 'validate'):.0f} ms)",
            sg["validate"]["met"],
        ),
        (
            f"download + verify of {sizes[-1]['mib']} MiB",
            "\u2265 50% of `sha256sum`",
            f"{tg['throughput']['value']:.0%}",
            tg["throughput"]["met"],
        ),
        (
            "peak RSS during the download",
            "not growing with size",
            f"{sizes[0]['agentd_max_rss_mb']['median']:.1f} MB at {sizes[0]['mib']} MiB, "
            f"{sizes[-1]['agentd_max_rss_mb']['median']:.1f} MB at {sizes[-1]['mib']} MiB",
            tg["rss_growth"]["met"],
        ),
    )
    add("## The goals (issue 7)")
    add("")
    add("| goal | target | measured (median) | |")
    add("| --- | --- | --- | --- |")
    for goal, target, measured, ok in rows:
        add(f"| {goal} | {target} | {measured} | {_verdict(ok)} |")
    add("")
    missed = [goal for goal, _, _, ok in rows if not ok]
    if missed:
        add(
            f"Missed in this run: {', '.join(missed)}. The profiles at the end say where the "
            "time goes."
        )
        startup_busy = any(
            st["name"] == "startup" and st.get("load_before", 0) > 1.0 for st in run["steps"]
        )
        for name in ("version", "validate"):
            if sg[name]["met"]:
                continue
            cpu = _cpu_ms(startup, name)
            heaviest = ", ".join(
                f"{module} {ms:.0f} ms" for module, ms in _heaviest_imports(out, name, 3)
            )
            add("")
            add(
                f"- `agentd {'--version' if name == 'version' else name}`: "
                f"{sg[name]['value']:.0f} ms of wall time for {cpu:.0f} ms of CPU"
                + (
                    ", which is within the goal: the rest is waiting"
                    + (" for a CPU the machine's other work held" if startup_busy else "")
                    if cpu <= sg[name]["goal"]
                    else ""
                )
                + f". The heaviest imports (cumulative, python -X importtime): {heaviest}."
            )
    else:
        add(
            "Every goal is met in this run. The profiles at the end say where agentd's time "
            "goes all the same."
        )
    add("")

    # --- the comparison ----------------------------------------------------------------------
    f, r = versus["figures"], versus["ratios"]
    add("## 1. The same work, two tools")
    add("")
    add(
        f"{versus['rounds']} rounds; medians, with the range (lowest{TO}highest) in brackets. The "
        f"ratio column is Ansible's figure divided by agentd's in the same round (for memory: "
        f"agentd's divided by Ansible's). Both built the same {len(versus['same_files'])} files "
        "and symlinks."
    )
    add("")
    add("| | agentd | Ansible | ratio, per round |")
    add("| --- | --- | --- | --- |")
    for label, a, b, key in (
        ("first convergence", "agentd_first", "ansible_first", "first"),
        ("no-op convergence", "agentd_noop", "ansible_noop", "noop"),
        ("no-op, agentd planning in full", "agentd_noop_planned", "ansible_noop", "noop_planned"),
    ):
        add(
            f"| **{label}**: wall | {_time(f[a]['wall_s'])} | {_time(f[b]['wall_s'])} | "
            f"{_x(r[key]['wall_s'])} faster |"
        )
        add(
            f"| CPU | {_time(f[a]['cpu_s'])} | {_time(f[b]['cpu_s'])} | "
            f"{_x(r[key]['cpu_s'])} less |"
        )
        add(
            f"| peak RSS, process tree | {_mb(f[a]['tree_rss_mb'])} | "
            f"{_mb(f[b]['tree_rss_mb'])} | {_share(r[key]['tree_rss_mb'])} |"
        )
        add(
            f"| peak RSS, largest process | {_mb(f[a]['max_rss_mb'])} | "
            f"{_mb(f[b]['max_rss_mb'])} | {_share(r[key]['max_rss_mb'])} |"
        )
    add("")
    add(SETUP)

    # --- agentd alone ------------------------------------------------------------------------
    add("## 2. agentd alone")
    add("")
    how = "`python -S`" if daemon["interpreter"] != "python" else "the plain interpreter"
    add(f"### The daemon at rest (`agentd run` on {how})")
    add("")
    add("| | |")
    add("| --- | --- |")
    add(
        f"| RSS after {daemon['idle_seconds']:.0f} s at rest (interval 5m) | "
        f"{daemon['idle_rss_mb']:.1f} MB (peak {daemon['idle_hwm_mb']:.1f} MB) |"
    )
    add(
        f"| CPU at rest over those {daemon['idle_seconds']:.0f} s | {daemon['idle_cpu_ms']:.0f} ms "
        f"({daemon['idle_cycles']} cycle{'' if daemon['idle_cycles'] == 1 else 's'}) |"
    )
    add(
        f"| CPU per no-op cycle (interval 1s, {daemon['busy_cycles']} cycles in "
        f"{daemon['busy_seconds']:.0f} s) | {daemon['cpu_per_cycle_ms']:.1f} ms |"
    )
    add(
        f"| fleet document answers in those cycles | {daemon['fleet_304']} {TIMES} 304, "
        f"{daemon['fleet_200']} {TIMES} 200 |"
    )
    add(f"| RSS after the 1s-interval phase | {daemon['busy_rss_mb']:.1f} MB |")
    to_start, to_end = daemon["edit_to_start_ms"], daemon["edit_to_converged_ms"]
    add(
        f"| drop-in edit → run starts (median, max of {len(to_start)}) | "
        f"{to_start[len(to_start) // 2]:.0f} ms, {max(to_start):.0f} ms |"
    )
    add(
        f"| drop-in edit → converged (median, max) | {to_end[len(to_end) // 2]:.0f} ms, "
        f"{max(to_end):.0f} ms |"
    )
    add(f"| `python -c pass` RSS, the interpreter alone | {daemon['interpreter_rss_mb']:.1f} MB |")
    add("")
    add(f"### Start-up ({startup['n']} runs each, alternating)")
    add("")
    add("| command | wall | CPU | peak RSS | goal |")
    add("| --- | --- | --- | --- | --- |")
    for name, goal in (("python", "the floor"), ("version", "≤ 150 ms"), ("validate", "≤ 300 ms")):
        c = startup["commands"][name]
        cmd = {"python": "python -c pass", "version": "agentd --version"}.get(
            name, "agentd validate"
        )
        add(
            f"| `{cmd}` | {_time(c['wall_s'])} | {_time(c['cpu_s'])} | {_mb(c['max_rss_mb'])} | "
            f"{goal} |"
        )
    add("")
    add(
        "`agentd validate` validates the benchmark desired state (`/etc/wasm-edge/desired.yaml` "
        "under a sandbox root)."
    )
    add("")
    add(f"### Download and verify ({throughput['n']} runs per size, alternating with sha256sum)")
    add("")
    add(
        "| artifact | `sha256sum` (the limit) | agentd download + verify | share of the limit | "
        "`openssl dgst -sha256` | share of it | agentd process, start to exit | agentd CPU | "
        "agentd peak RSS |"
    )
    add("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for e in sizes:
        ssl = e.get("openssl_mb_s")
        add(
            f"| {e['mib']} MiB | {e['sha256sum_mb_s']['median']:.0f} MB/s | "
            f"{e['agentd_mb_s']['median']:.0f} MB/s ({e['agentd_mb_s']['low']:.0f}{TO}"
            f"{e['agentd_mb_s']['high']:.0f}) | {e['ratio']['median']:.0%} | "
            + (
                f"{ssl['median']:.0f} MB/s | {e['ratio_openssl']['median']:.0%} | "
                if ssl
                else "not installed | | "
            )
            + f"{_time(e['agentd_process_s'])} | {_time(e['agentd_cpu_s'])} | "
            f"{_mb(e['agentd_max_rss_mb'])} |"
        )
    add("")
    add(
        "Debian's `sha256sum` (coreutils) hashes in portable C; Python's hashlib, which agentd "
        "uses, is OpenSSL's, with the CPU's SHA extensions where it has them: so agentd can beat "
        "the limit the issue set, and `openssl dgst -sha256` of the same file is the real "
        "limit of hashing on this CPU."
    )
    add("")
    add(
        "Served by bench/fileserver.py (sendfile from the page cache; tests/support/mirror.py "
        "reads a "
        "whole file into memory for each answer, right for the small stand-ins only). "
        "agentd's figure includes writing the artifact to disk and fsyncing it."
    )
    add("")
    counts = sorted(scaling["counts"], key=int)
    add(f"### Growth with the number of plugins ({scaling['n']} rounds per count)")
    add("")
    add(
        "crun, k3s, WasmEdge and the four k3s files, with 1, 10 or 50 WasmEdge plugins "
        "(stand-ins, one library each)."
    )
    add("")
    add(
        "Wall time, median (range), then the median CPU time. The first no-op after a "
        "convergence runs `wasmedge --version` again (the plugins came after the read-back): "
        "the stand-in is a shell script that greps every plugin library, about 4 ms of CPU "
        "each, so most of the full plan's growth is the stand-in's, not agentd's or WasmEdge's."
    )
    add("")
    add(
        "| plugins | first convergence | no-op, planning in full | no-op (digest) | "
        "no-op peak RSS |"
    )
    add("| --- | --- | --- | --- | --- |")

    def both(e: Figures) -> str:
        return f"{_time(e['wall_s'])}; CPU {_t(e['cpu_s']['median'])}"

    for c in counts:
        e = scaling["counts"][c]
        add(
            f"| {c} | {both(e['first'])} | {both(e['noop_planned'])} | {both(e['noop'])} | "
            f"{_mb(e['noop']['max_rss_mb'])} |"
        )
    if len(counts) > 1:
        lo, hi = scaling["counts"][counts[0]], scaling["counts"][counts[-1]]
        extra = int(counts[-1]) - int(counts[0])

        def slope(kind: str) -> str:
            wall, cpu = (
                (hi[kind][f]["median"] - lo[kind][f]["median"]) * 1000 / extra
                for f in ("wall_s", "cpu_s")
            )
            return f"{wall:.1f} ms (CPU {cpu:.1f} ms)"

        add("")
        add(
            f"Each plugin more costs, from {counts[0]} to {counts[-1]}: {slope('first')} of "
            f"first convergence, {slope('noop_planned')} of a full plan, {slope('noop')} of a "
            "no-op from the digest."
        )
    add("")
    ms = noop["ms"]
    add(f"### No-op variants (bench/noop_apply.py, {ms['noop']['n']} runs each)")
    add("")
    add("| | median | range |")
    add("| --- | --- | --- |")
    for key, label in (
        ("python", "`python -c pass` (the interpreter alone)"),
        ("noop", "no-op from the digest"),
        ("noop_planned", "no-op planning in full, version cache kept"),
        ("noop_uncached", "no-op planning in full, no version cache (every `--version` run)"),
    ):
        v = ms[key]
        add(f"| {label} | {v['median']:.1f} ms | {v['low']:.1f}{TO}{v['high']:.1f} ms |")
    add("")
    add(MEANING)

    # --- commands ----------------------------------------------------------------------------
    add("## Exact commands")
    add("")
    add(
        "`make bench` (`make bench BENCH_QUICK=1` for a short run that writes "
        "build/bench-quick/RESULTS.md instead) does:"
    )
    add("")
    add("```sh")
    add("python3 -m venv build/bench-venv")
    add("build/bench-venv/bin/python -m pip install '.[bench]'   # ansible-core, pyinstrument")
    add("build/bench-venv/bin/python bench/all.py")
    add("```")
    add("")
    add(
        "and bench/all.py runs, one after the other, with `PYTHONPATH=.` (agentd from this "
        "working tree) and `python` the virtualenv's interpreter:"
    )
    add("")
    add("```sh")
    for step in run["steps"]:
        add(step["command"].replace(str(REPO) + "/", ""))
    add("```")
    add("")
    add("A benchmark alone: `PYTHONPATH=. build/bench-venv/bin/python bench/NAME.py --help`.")
    add("")

    # --- profiles ----------------------------------------------------------------------------
    add("## Where agentd's time goes (pyinstrument, bench/profile.py)")
    add("")
    add(
        "Each run profiled once, sampling every 0.5 ms; frames under 2% of the run are hidden. "
        "Profiling slows a run down a little."
    )
    add("")
    for title, name in (
        ("No-op from the digest", "noop.txt"),
        ("No-op planning in full", "noop-planned.txt"),
        ("First convergence", "first.txt"),
        ("`agentd validate`", "validate.txt"),
        ("Download and verify of a 256 MiB artifact (ArtifactCache.fetch)", "download.txt"),
    ):
        add(f"<details><summary>{title}</summary>")
        add("")
        add(_profile(out, name))
        add("")
        add("</details>")
        add("")
    for title, name in (
        ("Imports of a no-op apply (python -X importtime)", "noop-imports.txt"),
        ("Imports of `agentd validate`", "validate-imports.txt"),
        ("Imports of `agentd --version`", "version-imports.txt"),
    ):
        add(f"<details><summary>{title}</summary>")
        add("")
        add(_profile(out, name))
        add("")
        add("</details>")
        add("")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "build" / "bench"
    sys.stdout.write(render(target))
