"""Crash safety (issue 8): SIGKILL the real `agentd apply` at every step of an upgrade.

The node starts converged to generation 1 (crun 1.14, WasmEdge 0.13.5 with wasi_nn-ggml, k3s
v1.30.4+k3s1) and applies generation 2 (crun 1.15, WasmEdge 0.14.1 with its plugin and one more,
k3s v1.31.2+k3s1, another k3s config and a second RuntimeClass), all from the session's
stand-in mirror over real HTTP. `tests.scenarios.crashdriver` numbers every file-system and
network step
of that apply; kill point N is "SIGKILL just before step N". For each one, on a fresh copy of
the generation-1 node, three checks:

- "kill": at the kill, every target path (each file or symlink agentd installs, replaces or
  removes, and the configs it writes) is as before or exactly as after a clean run (sha256 and
  mode, or link text): never partial; nothing else appears outside the state dir but agentd's
  temp files; every JSON file under /var/lib/wasm-edge parses; the metrics file is whole;
- "recovery": a fresh `agentd apply` exits 0 and leaves the clean run's tree (every target,
  byte for byte) and no temp files, `.part` files, staging or half-swapped kept versions
  anywhere; a second apply does nothing;
- "inventory": after that fresh apply, state.json records what a clean run records (version,
  sha256 and files of every component), and the kept versions are a clean run's (generation 1's
  files, byte for byte): `rollback`, `remove` and `status` go by them.

`make test` runs the named points of FAST; `make stress` runs every step of the apply. Known
agentd bugs are listed in BUGS, each with the points and checks it breaks: those are expected to
fail (strictly: a fixed bug fails the test until its entry is removed), every other check must
pass.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from tests.scenarios import crashdriver
from tests.scenarios.crashdriver import PART_FLUSH, Event
from tests.support.mirror import MirrorServer
from tests.support.node import Node
from tests.support.standins import WASMEDGE_ARCHES, Mirror, desired_document, node_arch, write_yaml

STATE_DIR = "/var/lib/wasm-edge"
METRICS = "/var/lib/prometheus/node-exporter/agentd.prom"
# Not targets: agentd's own state and the metrics file change with every run.
STATE_DIRS = (STATE_DIR, "/var/lib/prometheus")
TEMP_RE = re.compile(r"^\..+\.agentd-[0-9a-f]{8}$")  # agentd.host's temp files beside a target

DOWNLOAD = "download"
VERIFY_RENAME = "verify/rename"
BETWEEN = "between components"
MID = "mid-component"
STATE = "writing state"
STAGE = "staging"  # unpacking archives before installing, removing the scratch dir after
DETECT = "detect/plan"

CHECKS = ("kill", "recovery", "inventory")

# A file: ("file", sha256, mode); a symlink: ("link", its text, 0).
Entry = tuple[str, str, int]
Tree = dict[str, Entry]


def snapshot(root: Path) -> Tree:
    """Every file and symlink under `root` (node paths), by content hash and mode."""
    out: Tree = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            node = "/" + str(path.relative_to(root))
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[node] = ("link", os.readlink(path), 0)
            elif stat.S_ISREG(st.st_mode):
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                out[node] = ("file", digest, stat.S_IMODE(st.st_mode))
    return out


def outside_state(tree: Tree) -> Tree:
    return {p: e for p, e in tree.items() if not p.startswith(STATE_DIRS)}


def shown(entry: Optional[Entry]) -> str:
    if entry is None:
        return "absent"
    if entry[0] == "link":
        return f"symlink -> {entry[1]}"
    return f"sha256 {entry[1][:12]} mode {entry[2]:o}"


def node_paths(e: Event) -> list[str]:
    return [a for a in e.args if a.startswith("/")]


# --- the scenario: generation 1 -> 2, counted once ------------------------------------------


def _doc(url: str, index: Mirror, arch: str, generation: int) -> dict[str, Any]:
    arches = tuple(sorted({arch, "amd64", "arm64"}))
    if generation == 1:
        return desired_document(
            url, index, arches=arches, generation=1, crun="1.14", wasmedge="0.13.5"
        )
    doc = desired_document(
        url,
        index,
        arches=arches,
        generation=2,
        crun="1.15",
        wasmedge="0.14.1",
        k3s="v1.31.2+k3s1",
        plugins=("wasi_nn-ggml", "wasi_crypto") if arch == "amd64" else ("wasi_nn-ggml",),
    )
    doc["components"]["k3s"]["config"]["node-label"] = ["wasm-edge/generation=2"]
    doc["runtimeClasses"] = [
        *doc["runtimeClasses"],
        {"name": "wasmedge", "handler": "crun-wasm", "nodeSelector": {"wasm-runtime": "enabled"}},
    ]
    return doc


def _apply_args(desired: Path) -> list[str]:
    return ["apply", "--desired", str(desired), "--json"]


@dataclass
class Verdict:
    """What one kill point did to the node: the problems found, by check."""

    n: int
    problems: dict[str, list[str]]
    seconds: float

    def failed(self) -> set[str]:
        return {c for c in CHECKS if self.problems[c]}


@dataclass
class Scenario:
    before_root: Path  # the generation-1 node: copied for every kill point, never changed
    work: Path
    desired: Path  # generation 2
    before: Tree
    after: Tree  # a clean run's result (the counting run)
    after_state: dict[str, Any]
    after_kept: dict[str, Any]  # a clean run's kept versions
    events: list[Event]
    owner: dict[str, str]  # target node path -> component
    categories: dict[int, tuple[str, ...]] = field(default_factory=dict)
    _verdicts: dict[int, Verdict] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def targets(self) -> set[str]:
        return set(outside_state(self.before)) | set(outside_state(self.after))

    def first(self, text: str, nth: int = 1) -> Event:
        """The nth event whose key contains `text`."""
        found = [e for e in self.events if text in e.key]
        if len(found) < nth:
            raise LookupError(f"the apply has no step {nth} matching {text!r}")
        return found[nth - 1]

    def changes_target(self, e: Event) -> Optional[str]:
        """The target an event replaces or removes, if it does."""
        names = node_paths(e)
        if e.op in ("os.rename", "os.replace", "os.remove") and names[-1] in self.owner:
            return names[-1]
        return None

    def describe(self, n: int) -> str:
        return f"event {n} [{', '.join(self.categories[n])}]: {self.events[n - 1].text}"

    def prefetch(self, points: list[int]) -> None:
        """Run the kill points not run yet, a few at a time."""
        with self._lock:
            missing = [n for n in points if n not in self._verdicts]
        workers = max(1, min(4, os.cpu_count() or 1))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            list(pool.map(self.verdict, missing))

    def verdict(self, n: int) -> Verdict:
        """Kill point `n`, run once and remembered (several tests look at one run)."""
        with self._lock:
            known = self._verdicts.get(n)
        if known is None:
            known = kill_and_recover(self, n)  # on its own copy: runs in parallel with others
            with self._lock:
                known = self._verdicts.setdefault(n, known)
        return known


def _categorize(s: Scenario) -> dict[int, tuple[str, ...]]:
    """Which categories each kill point falls in (it may fall in several)."""
    total: dict[str, int] = {}
    for e in s.events:
        target = s.changes_target(e)
        if target is not None:
            total[s.owner[target]] = total.get(s.owner[target], 0) + 1
    # The install phase starts with the journal's first save of a target (running one, as
    # detection does, is no change).
    touching = [
        e.n
        for e in s.events
        if e.op != "subprocess.Popen" and any(p in s.owner for p in node_paths(e))
    ]
    changing = [e.n for e in s.events if s.changes_target(e)]
    first_install, last_change = touching[0], changing[-1]
    done: dict[str, int] = {}
    out: dict[int, tuple[str, ...]] = {}
    for e in s.events:
        cats: list[str] = []
        names = node_paths(e)
        in_cache = [p for p in names if p.startswith(f"{STATE_DIR}/cache/")]
        if e.op in ("socket.connect", PART_FLUSH) or in_cache:
            cats.append(DOWNLOAD)
        base = os.path.basename(names[0]) if names else ""
        moving = e.op in ("os.chmod", "os.rename", "os.replace")
        if moving and (TEMP_RE.match(base) or base.endswith(".part")):
            cats.append(VERIFY_RENAME)  # written (and verified), not yet renamed into place
        in_state = [p for p in names if p.startswith(STATE_DIRS) and p not in in_cache]
        if first_install <= e.n <= last_change:
            # Installing: between components when each is untouched or wholly done.
            whole = all(done.get(c, 0) in (0, k) for c, k in total.items())
            cats.append(BETWEEN if whole else MID)
        elif any(p.startswith(f"{STATE_DIR}/staging/") for p in in_state):
            cats.append(STAGE)
        elif in_state:
            cats.append(STATE)
        elif not cats:
            cats.append(DETECT)
        out[e.n] = tuple(cats)
        target = s.changes_target(e)
        if target is not None:
            done[s.owner[target]] = done.get(s.owner[target], 0) + 1
    return out


@pytest.fixture(scope="module")
def scenario(
    mirror_index: Mirror, mirror_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scenario]:
    arch = node_arch()
    if arch not in WASMEDGE_ARCHES:
        pytest.skip("WasmEdge has no build for this architecture")
    work = tmp_path_factory.mktemp("crash")
    with MirrorServer(mirror_dir) as server:
        before_root = work / "before" / "root"
        before_root.mkdir(parents=True)
        gen1 = Node(before_root).apply(_doc(server.url, mirror_index, arch, 1))
        assert gen1.code == 0, gen1.stderr
        desired = write_yaml(work / "gen2.yaml", _doc(server.url, mirror_index, arch, 2))

        # The counting run is also the clean reference run.
        ref = work / "reference" / "root"
        shutil.copytree(before_root, ref, symlinks=True)
        counted = crashdriver.run(ref, _apply_args(desired), ref.parent / "events.log")
        assert counted.code == 0, counted.stderr
        assert json.loads(counted.stdout)["outcome"] == "converged"
        before_state = json.loads((before_root / "var/lib/wasm-edge/state.json").read_text())
        after_state = json.loads((ref / "var/lib/wasm-edge/state.json").read_text())
        owner = {
            path: component
            for state in (before_state, after_state)
            for component, entry in state["inventory"].items()
            for path in entry["files"]
        }
        s = Scenario(
            before_root=before_root,
            work=work,
            desired=desired,
            before=snapshot(before_root),
            after=snapshot(ref),
            after_state=after_state,
            after_kept=kept_versions(ref),
            events=counted.events,
            owner=owner,
        )
        # The old and the new bytes are the mirror's artifacts where a target is one.
        for version, tree in (("1.14", s.before), ("1.15", s.after)):
            sha = mirror_index.artifact("crun", version, arch)[1]
            assert tree["/usr/local/bin/crun"] == ("file", sha, 0o755)
        for version, tree in (("v1.30.4+k3s1", s.before), ("v1.31.2+k3s1", s.after)):
            sha = mirror_index.artifact("k3s", version, arch)[1]
            assert tree["/usr/local/bin/k3s"] == ("file", sha, 0o755)
        assert s.targets <= set(owner), "every target is in an inventory"
        assert any(s.before.get(p) != s.after.get(p) for p in s.targets)
        s.categories = _categorize(s)
        yield s


# --- one kill point ----------------------------------------------------------------------------


def _json_problems(root: Path) -> list[str]:
    problems = []
    for node, entry in sorted(snapshot(root).items()):
        if node.startswith(STATE_DIR) and node.endswith(".json") and entry[0] == "file":
            try:
                json.loads((root / node.lstrip("/")).read_bytes())
            except ValueError as exc:
                problems.append(f"{node} is corrupt: {exc}")
    if not (root / STATE_DIR.lstrip("/") / "state.json").is_file():
        problems.append(f"{STATE_DIR}/state.json is gone")
    metrics = root / METRICS.lstrip("/")
    if metrics.exists():
        from prometheus_client.parser import text_string_to_metric_families

        text = metrics.read_text()
        try:
            families = list(text_string_to_metric_families(text))
        except ValueError as exc:
            problems.append(f"{METRICS} is not whole: {exc}")
        else:
            if not text.endswith("\n") or not families:
                problems.append(f"{METRICS} is not whole ({len(text)} bytes)")
    return problems


def _at_kill(s: Scenario, root: Path) -> list[str]:
    """The node as the kill left it: every target old or new, state files whole."""
    now = snapshot(root)
    problems = []
    for path in sorted(s.targets):
        got, old, new = now.get(path), s.before.get(path), s.after.get(path)
        if got not in (old, new):
            problems.append(
                f"at the kill, {path} is {shown(got)}: neither the old ({shown(old)}) "
                f"nor the new ({shown(new)})"
            )
    for path in sorted(set(outside_state(now)) - s.targets):
        if not TEMP_RE.match(os.path.basename(path)):
            problems.append(f"at the kill, {path} exists: not a target, not a temp file")
    return problems + [f"at the kill: {p}" for p in _json_problems(root)]


def _leftovers(root: Path) -> list[str]:
    """What a converged node must not hold: temp files, partial downloads, scratch dirs."""
    found = []
    for path in snapshot(root):
        name = os.path.basename(path)
        if TEMP_RE.match(name) or name.endswith(".part"):
            found.append(path)
        elif re.search(r"\.(new|old)-[0-9a-f]{6}(/|$)", path):
            found.append(path)  # a kept version swapped half-way
    for scratch in ("staging", "cache/tmp", "replaced"):
        directory = root / STATE_DIR.lstrip("/") / scratch
        if directory.is_dir():
            found += [f"{STATE_DIR}/{scratch}/{p.name}" for p in directory.iterdir()]
    return sorted(set(found))


def kept_versions(root: Path) -> dict[str, Any]:
    """What `agentd rollback` would put back for each component: its kept manifest without the
    time, and each kept file by content hash instead of its blob name."""
    out = {}
    for manifest in sorted((root / STATE_DIR.lstrip("/") / "previous").glob("*/manifest.json")):
        data = json.loads(manifest.read_text())
        data.pop("replacedAt", None)
        for item in data["files"]:
            blob = item.pop("blob", None)
            if blob is not None:
                item["sha256"] = hashlib.sha256((manifest.parent / blob).read_bytes()).hexdigest()
        out[manifest.parent.name] = data
    return out


def _inventory_diff(got: dict[str, Any], want: dict[str, Any]) -> str:
    return "; ".join(
        f"{k}: {json.dumps(got.get(k))} where a clean run has {json.dumps(want.get(k))}"
        for k in sorted(set(got) | set(want))
        if got.get(k) != want.get(k)
    )


def _recover(s: Scenario, root: Path, problems: dict[str, list[str]]) -> None:
    node = Node(root)
    res = node.agentd(*_apply_args(s.desired))
    if res.code != 0:
        tail = (res.stderr.strip().splitlines() or ["no output"])[-1]
        problems["recovery"].append(f"the fresh apply exited {res.code}: {tail[:400]}")
        problems["inventory"].append("not checked: the fresh apply failed")
        return
    rec = problems["recovery"]
    outcome = res.json().get("outcome")
    if outcome != "converged":
        rec.append(f"the fresh apply's outcome is {outcome}")
    now = snapshot(root)
    mine, ref = outside_state(now), outside_state(s.after)
    for path in sorted(set(mine) | set(ref)):
        if mine.get(path) != ref.get(path):
            rec.append(
                f"after the fresh apply, {path} is {shown(mine.get(path))}, "
                f"a clean run leaves {shown(ref.get(path))}"
            )
    rec += [f"after the fresh apply, left behind: {p}" for p in _leftovers(root)]
    rec += [f"after the fresh apply: {p}" for p in _json_problems(root)]
    state = node.state()
    if state.get("lastAppliedGeneration") != 2:
        rec.append(f"lastAppliedGeneration is {state.get('lastAppliedGeneration')}")
    if state.get("inventory") != s.after_state["inventory"]:
        diff = _inventory_diff(state.get("inventory") or {}, s.after_state["inventory"])
        problems["inventory"].append(f"after the fresh apply, the inventory has {diff}")
    kept = kept_versions(root)
    for name in sorted(set(kept) | set(s.after_kept)):
        got, want = kept.get(name), s.after_kept.get(name)
        if got != want:
            problems["inventory"].append(
                f"after the fresh apply, the kept version of {name} is {json.dumps(got)}, "
                f"a clean run keeps {json.dumps(want)}"
            )
    again = node.agentd(*_apply_args(s.desired))
    acts = [(a["component"], a["action"]) for a in again.json().get("actions", [])]
    if again.code != 0 or acts:
        rec.append(f"the second apply did not do nothing: exit {again.code}, {acts}")
    if outside_state(snapshot(root)) != mine:
        rec.append("the second apply changed the node")


def kill_and_recover(s: Scenario, n: int) -> Verdict:
    """Kill the apply at event `n` on a copy of the generation-1 node, check, recover, check."""
    t0 = time.monotonic()
    case = s.work / f"kill-{n:04d}"
    shutil.rmtree(case, ignore_errors=True)
    root = case / "root"
    shutil.copytree(s.before_root, root, symlinks=True)
    out = crashdriver.run(root, _apply_args(s.desired), case / "events.log", kill_at=n)
    problems: dict[str, list[str]] = {c: [] for c in CHECKS}
    got = [e.key for e in out.events]
    want = [e.key for e in s.events[:n]]
    if not out.killed:
        problems["kill"].append(f"the apply was not killed (exit {out.code}): {out.stderr[-300:]}")
    elif got != want:
        i = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), n))
        problems["kill"].append(
            f"the killed run did not repeat the counting run: its step {i + 1} is "
            f"{got[i] if i < len(got) else 'missing'!r}, not {want[i]!r}"
        )
    if problems["kill"]:
        for check in CHECKS[1:]:
            problems[check].append("not checked: no kill at this point")
    else:
        problems["kill"] += _at_kill(s, root)
        _recover(s, root, problems)
    verdict = Verdict(n, problems, time.monotonic() - t0)
    if not verdict.failed():
        shutil.rmtree(case, ignore_errors=True)  # keep only the evidence of failures
    return verdict


# --- known agentd bugs ------------------------------------------------------------------------


@dataclass(frozen=True)
class Bug:
    name: str
    checks: frozenset[str]  # the checks it makes fail
    reason: str
    hits: Callable[[Scenario, int], bool]  # the kill points it affects


# None known. Fixed here: the stale inventory and kept versions of a run killed before writing
# state.json, the mixed WasmEdge install, temp symlinks and temp files in the probe and metrics
# directories left by sweep() (agentd.converge's write-ahead intent and sweep).
BUGS: tuple[Bug, ...] = ()


def expected_failures(s: Scenario, n: int) -> dict[str, list[str]]:
    """The checks known bugs make fail at kill point n, with the bugs' names."""
    out: dict[str, list[str]] = {}
    for bug in BUGS:
        if bug.hits(s, n):
            for check in bug.checks:
                out.setdefault(check, []).append(bug.name)
    return out


# --- the fast subset (`make test`) -------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    text: str  # what the step's key contains
    nth: int = 1  # which such step
    bugs: tuple[str, ...] = ()  # the known bugs that hit it


FAST: dict[str, Point] = {
    "download-connect": Point("socket.connect"),
    "download-body-flushed-not-verified": Point(PART_FLUSH, 2),
    "download-verified-not-renamed": Point(".part -> /var/lib/wasm-edge/cache/sha256/", 3),
    "probe-written-not-renamed": Point("os.chmod /var/lib/wasm-edge/probe/."),
    "before-the-first-target": Point("os.link /usr/local/bin/wasmedge -> "),
    "wasmedge-binary-new-rest-old": Point("-> /usr/local/bin/wasmedgec"),
    "wasmedge-temp-symlink": Point("os.rename /usr/local/lib/.libwasmedge.so.agentd-"),
    "crun-written-not-renamed": Point("os.chmod /usr/local/bin/.crun.agentd-"),
    "between-crun-and-k3s": Point("os.link /usr/local/bin/k3s -> "),
    "k3s-config-rename": Point("-> /etc/rancher/k3s/config.yaml"),
    "kept-version-half-swapped": Point("os.rename /var/lib/wasm-edge/previous/crun.new-XXXX ->"),
    # state.json is written ahead of each component (the intent), with the inventory (the
    # commit), then with the run's result.
    "intent-written-before-the-first-target": Point("-> /var/lib/wasm-edge/state.json"),
    "intent-written-before-crun": Point("-> /var/lib/wasm-edge/state.json", 4),
    "state-json-rename": Point("-> /var/lib/wasm-edge/state.json", 8),
    "backups-half-pruned": Point("os.remove /var/lib/wasm-edge/replaced/run-XXXX/"),
    "run-recorded": Point("-> /var/lib/wasm-edge/state.json", 9),
    "metrics-written-not-renamed": Point("os.chmod /var/lib/prometheus/node-exporter/."),
    "lock-released": Point("os.truncate /var/lib/wasm-edge/lock", 2),
}


def _fast_params(check: str) -> list[Any]:
    params = []
    for name, point in FAST.items():
        hit = [b for b in BUGS if b.name in point.bugs and check in b.checks]
        marks = [pytest.mark.xfail(strict=True, reason="; ".join(b.reason for b in hit))]
        params.append(pytest.param(name, id=name, marks=marks if hit else []))
    return params


def _check_point(scenario: Scenario, name: str, check: str) -> None:
    scenario.prefetch([scenario.first(p.text, p.nth).n for p in FAST.values()])
    point = FAST[name]
    n = scenario.first(point.text, point.nth).n
    problems = scenario.verdict(n).problems[check]
    assert not problems, f"{scenario.describe(n)}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("name", _fast_params("kill"))
def test_at_the_kill_every_target_is_old_or_new(scenario: Scenario, name: str) -> None:
    _check_point(scenario, name, "kill")


@pytest.mark.parametrize("name", _fast_params("recovery"))
def test_a_fresh_apply_converges_and_leaves_nothing(scenario: Scenario, name: str) -> None:
    _check_point(scenario, name, "recovery")


@pytest.mark.parametrize("name", _fast_params("inventory"))
def test_a_fresh_apply_records_what_is_installed(scenario: Scenario, name: str) -> None:
    _check_point(scenario, name, "inventory")


def test_the_fast_points_cover_every_category(scenario: Scenario) -> None:
    cats: set[str] = set()
    for name, point in FAST.items():
        n = scenario.first(point.text, point.nth).n
        cats.update(scenario.categories[n])
        hit = {b for names in expected_failures(scenario, n).values() for b in names}
        assert hit == set(point.bugs), f"{name}: update its bugs to {sorted(hit)}"
    assert {DOWNLOAD, VERIFY_RENAME, BETWEEN, STATE} <= cats


# --- every kill point (`make stress`) ----------------------------------------------------------


@pytest.mark.stress
def test_every_kill_point(scenario: Scenario) -> None:
    points = [e.n for e in scenario.events]
    assert len(points) >= 50
    for cat in (DOWNLOAD, VERIFY_RENAME, BETWEEN, STATE):
        assert sum(cat in scenario.categories[n] for n in points) >= 5, cat
    scenario.prefetch(points)
    verdicts = [scenario.verdict(n) for n in points]
    lines, wrong = [], 0
    for v in verdicts:
        expected = expected_failures(scenario, v.n)
        marks = []
        for check in CHECKS:
            failed, known = bool(v.problems[check]), check in expected
            if failed and known:
                marks.append(f"{check}: xfail ({', '.join(expected[check])})")
            elif failed:
                marks.append(f"{check}: FAIL")
            elif known:
                marks.append(f"{check}: XPASS (remove {', '.join(expected[check])} from BUGS)")
            wrong += failed != known
        lines.append(f"{v.seconds:4.1f}s {scenario.describe(v.n)}")
        lines.append("        " + ("; ".join(marks) or "ok"))
        lines += [f"          {p}" for c in CHECKS for p in v.problems[c] if c not in expected]
    report = "\n".join(lines)
    dest = os.environ.get("AGENTD_CRASH_REPORT")
    if dest:
        Path(dest).write_text(report + "\n")
    assert wrong == 0, f"{wrong} checks did not go as expected:\n{report}"
