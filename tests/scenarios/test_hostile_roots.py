"""Hostile roots: every file agentd reads replaced by a FIFO, a directory, a link (to /dev/zero,
out of the root, to itself), a huge sparse file or a document of the wrong shape, and the real
`agentd` command run over it.

The contract under test: every command ends (no hang: a timeout), never with exit 70 or a
traceback, and when it refuses the file it names it. Under --root nothing is written outside
the root, whatever links inside it point at.
"""

from __future__ import annotations

import fcntl
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agentd.core.paths import Paths
from agentd.state.store import StateError, load_state
from tests.support.mirror import MirrorServer
from tests.support.node import Node, Result
from tests.support.standins import Mirror, desired_document, node_arch, write_yaml

EXIT_INTERNAL = 70
TIMEOUT_S = 30.0
DESIRED = "/etc/wasm-edge/desired.yaml"
DROP_IN = "/etc/wasm-edge/desired.d/10-local.yaml"
SETTINGS = "/etc/wasm-edge/agentd.yaml"
STATE = "/var/lib/wasm-edge/state.json"
SNAPSHOT = "/var/lib/wasm-edge/settings.last-good.json"
FACTS_CACHE = "/var/lib/wasm-edge/facts-cache.json"
LOCK = "/var/lib/wasm-edge/lock"
K3S_CONFIG = "/etc/rancher/k3s/config.yaml"
MACHINE_ID = "/etc/machine-id"
OS_RELEASE = "/etc/os-release"

# Every command that reads the node's files, as a user would type it.
COMMANDS: dict[str, tuple[str, ...]] = {
    "detect": ("detect", "--json"),
    "validate": ("validate", "--json"),
    "plan": ("plan", "--json"),
    "apply": ("apply", "--offline", "--json"),
    "status": ("status", "--json"),
    "check": ("check", "--json"),
    "settings": ("settings", "--json"),
    "rollback": ("rollback", "crun", "--json"),
}


@pytest.fixture(scope="module")
def base_root(tmp_path_factory: pytest.TempPathFactory, mirror_index: Mirror) -> Iterator[Path]:
    """A node that applied twice (crun 1.14, then 1.15: a version kept for rollback), with its
    desired state, a drop-in and settings in /etc/wasm-edge; the mirror stays up for re-runs."""
    arch = node_arch()
    root = tmp_path_factory.mktemp("base") / "root"
    root.mkdir()
    node = Node(root)
    with MirrorServer(mirror_index.root) as server:
        for version in ("1.14", "1.15"):
            doc = desired_document(
                server.url, mirror_index, crun=version, k3s=None, wasmedge=None, arches=(arch,)
            )
            write_yaml(node.path(DESIRED), doc)
            res = node.agentd("apply", "--json")
            assert res.code == 0, res.stderr
        write_yaml(node.path(DROP_IN), {"apiVersion": "agentd/v1", "kind": "NodeState"})
        write_yaml(
            node.path(SETTINGS),
            {"apiVersion": "agentd/v1", "kind": "AgentSettings", "labels": {"site": "lab"}},
        )
        node.path(MACHINE_ID).write_text("0123456789abcdef0123456789abcdef\n")
        node.path(OS_RELEASE).write_text('ID=debian\nVERSION_ID="12"\n')
        node.path(K3S_CONFIG).parent.mkdir(parents=True, exist_ok=True)
        node.path(K3S_CONFIG).write_text("node-name: lab-1\n")
        assert node.agentd("settings", "--json").code == 0  # leaves the settings snapshot
        assert node.path(SNAPSHOT).is_file()
        assert node.path(FACTS_CACHE).is_file()
        yield root


@pytest.fixture
def hostile_root(base_root: Path, tmp_path: Path) -> Node:
    root = tmp_path / "root"
    shutil.copytree(base_root, root, symlinks=True)
    return Node(root)


@dataclass(frozen=True)
class Outside:
    """A directory outside the root, and a file in it, that no command may change."""

    dir: Path
    file: Path

    def snapshot(self) -> dict[str, tuple[int, bytes]]:
        return {
            str(p): (p.lstat().st_mode, p.read_bytes() if p.is_file() else b"")
            for p in sorted(self.dir.rglob("*"))
        }


@pytest.fixture
def outside(tmp_path: Path) -> Outside:
    directory = tmp_path / "outside"
    directory.mkdir()
    file = directory / "precious"
    file.write_text("apiVersion: agentd/v1\nkind: NodeState\n")
    return Outside(directory, file)


# --- the hostile files --------------------------------------------------------------------------


def _replace(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)


def fifo(path: Path, outside: Outside) -> None:
    _replace(path)
    os.mkfifo(path)


def directory(path: Path, outside: Outside) -> None:
    _replace(path)
    path.mkdir()
    (path / "inner").write_text("x")


def dev_zero(path: Path, outside: Outside) -> None:
    _replace(path)
    path.symlink_to("/dev/zero")


def loop(path: Path, outside: Outside) -> None:
    _replace(path)
    path.symlink_to(path.name)


def out_of_root(path: Path, outside: Outside) -> None:
    _replace(path)
    path.symlink_to(outside.file)


def sparse(path: Path, outside: Outside) -> None:
    _replace(path)
    with path.open("wb") as f:
        f.truncate(2 << 30)  # 2 GiB of hole: read whole, it would take 2 GiB of memory


def json_list(path: Path, outside: Outside) -> None:
    _replace(path)
    path.write_text("[1, 2, 3]\n")


def yaml_list(path: Path, outside: Outside) -> None:
    _replace(path)
    path.write_text("- 1\n- 2\n")


def wrong_types(path: Path, outside: Outside) -> None:
    """A YAML mapping whose every field has a type it must not have."""
    _replace(path)
    path.write_text(
        "apiVersion: [agentd/v1]\nkind: {a: 1}\ngeneration: 'seven'\ncomponents: 3\n"
        "labels: [x]\nsource: 12\n"
    )


HOSTILE: dict[str, Callable[[Path, Outside], None]] = {
    f.__name__: f for f in (fifo, directory, dev_zero, loop, out_of_root, sparse)
}
# For each file: the commands that read it (each run over it; the whole set runs once over every
# hostile file at a time, below), and those of them that cannot do their work without it, which
# must name it when they refuse it.
READERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    DESIRED: (("validate", "plan", "apply", "check"), ("validate", "plan")),
    DROP_IN: (("validate", "plan", "apply"), ("validate", "plan")),
    SETTINGS: (("settings", "plan", "status", "detect"), ("settings",)),
    STATE: (("status", "plan", "apply", "rollback", "check"), ("status", "plan", "rollback")),
    SNAPSHOT: (("settings", "plan", "status"), ()),
    FACTS_CACHE: (("detect", "plan", "apply"), ()),
    LOCK: (("apply", "rollback", "status"), ("apply", "rollback")),
    K3S_CONFIG: (("plan", "apply", "check"), ()),
    MACHINE_ID: (("detect", "plan"), ()),
    OS_RELEASE: (("detect", "plan"), ()),
    "/var/lib/wasm-edge/previous/crun": (("rollback", "status"), ()),
    "/var/lib/wasm-edge/daemon.json": (("status",), ()),
    "/usr/local/bin/crun": (("detect", "plan", "apply", "check"), ()),
}


def run_all(node: Node, commands: dict[str, tuple[str, ...]] = COMMANDS) -> dict[str, Result]:
    """Every command, four at a time; a hang fails the test (subprocess's timeout)."""

    def one(args: tuple[str, ...]) -> Result:
        try:
            return node.agentd(*args, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"agentd {' '.join(args)} still running after {TIMEOUT_S} s (a hang)")

    with ThreadPoolExecutor(4) as pool:
        return dict(zip(commands, pool.map(one, commands.values())))


def assert_clean(results: dict[str, Result], node_path: str, needed: tuple[str, ...]) -> None:
    for name, res in results.items():
        said = res.stdout + res.stderr
        assert res.code != EXIT_INTERNAL, f"agentd {name}: internal error\n{res.stderr[-2000:]}"
        assert "Traceback" not in said, f"agentd {name}: traceback\n{res.stderr[-3000:]}"
        if name in needed and res.code not in (0, 2):
            assert node_path in said, (
                f"agentd {name} (exit {res.code}) names no {node_path}:\n{said}"
            )


# `make test` runs every file with these; `make stress` with all of HOSTILE.
FAST = ("fifo", "sparse", "out_of_root")
EVERY_HOSTILITY = [pytest.param(h, marks=() if h in FAST else pytest.mark.stress) for h in HOSTILE]


@pytest.mark.parametrize("node_path", list(READERS))
@pytest.mark.parametrize("hostility", EVERY_HOSTILITY)
def test_every_reader_ends_cleanly_over_a_hostile_file(
    hostile_root: Node, outside: Outside, node_path: str, hostility: str
) -> None:
    HOSTILE[hostility](hostile_root.path(node_path), outside)
    before = outside.snapshot()
    readers, needed = READERS[node_path]
    assert_clean(run_all(hostile_root, {k: COMMANDS[k] for k in readers}), node_path, needed)
    assert outside.snapshot() == before


@pytest.mark.parametrize("hostility", list(HOSTILE))
def test_every_command_ends_cleanly_over_every_file_hostile_at_once(
    hostile_root: Node, outside: Outside, hostility: str
) -> None:
    for node_path in READERS:
        HOSTILE[hostility](hostile_root.path(node_path), outside)
    before = outside.snapshot()
    assert_clean(run_all(hostile_root), "", ())
    assert outside.snapshot() == before


@pytest.mark.parametrize(
    ("node_path", "shape"),
    [
        (DESIRED, yaml_list),
        (DESIRED, wrong_types),
        (DROP_IN, wrong_types),
        (SETTINGS, yaml_list),
        (SETTINGS, wrong_types),
        (STATE, json_list),
        (SNAPSHOT, json_list),
        (FACTS_CACHE, json_list),
        ("/var/lib/wasm-edge/daemon.json", json_list),
        ("/var/lib/wasm-edge/previous/crun/manifest.json", json_list),
    ],
)
def test_every_command_ends_cleanly_over_a_document_of_the_wrong_shape(
    hostile_root: Node, outside: Outside, node_path: str, shape: Callable[[Path, Outside], None]
) -> None:
    shape(hostile_root.path(node_path), outside)
    assert_clean(run_all(hostile_root), node_path, READERS.get(node_path, ((), ()))[1])


# --- state.json: every field of the wrong type --------------------------------------------------

WRONG_VALUES: tuple[Any, ...] = ("x", 7, True, [1], {"k": 1}, None, 1.5)


def _mutations(doc: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """(where, value) for every field in `doc` (every depth) and every value of another type."""
    if not isinstance(doc, (dict, list)):
        return
    for key, value in doc.items() if isinstance(doc, dict) else enumerate(doc):
        where = (*path, key)
        for wrong in WRONG_VALUES:
            if type(wrong) is not type(value):
                yield where, wrong
        yield from _mutations(value, where)


def _mutated(doc: Any, where: tuple[Any, ...], value: Any) -> Any:
    out = json.loads(json.dumps(doc))
    target = out
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = value
    return out


def test_state_json_of_the_wrong_shape_is_corrupt_never_an_internal_error(
    hostile_root: Node,
) -> None:
    """In-process over every field at every depth: loaded, or refused as corrupt; then the
    commands that read it most over one wrong type per top-level field."""
    state_file = hostile_root.path(STATE)
    good = json.loads(state_file.read_text())
    paths = Paths(hostile_root.root)
    seen = 0
    refused = []
    for where, value in _mutations(good):
        state_file.write_text(json.dumps(_mutated(good, where, value)))
        seen += 1
        try:
            load_state(paths)
        except StateError as exc:
            refused.append(str(exc))
    assert seen > 100
    assert refused
    assert all("is corrupt" in e and e.endswith("move it aside to start over") for e in refused)
    for key in good:
        state_file.write_text(json.dumps({**good, key: ["wrong"]}))
        commands = {k: COMMANDS[k] for k in ("status", "plan", "apply", "rollback", "check")}
        assert_clean(run_all(hostile_root, commands), STATE, ())


@pytest.mark.stress
def test_every_command_ends_cleanly_over_state_json_wrong_at_any_depth(hostile_root: Node) -> None:
    state_file = hostile_root.path(STATE)
    good = json.loads(state_file.read_text())
    done: set[tuple[Any, ...]] = set()
    for where, value in _mutations(good):
        if len(where) > 3 or where in done:
            continue  # one wrong value per field, down to the fields of list items
        done.add(where)
        state_file.write_text(json.dumps(_mutated(good, where, value)))
        assert_clean(run_all(hostile_root), STATE, ())
    assert len(done) > 50


def test_state_json_as_a_directory_says_move_it_aside(hostile_root: Node, outside: Outside) -> None:
    directory(hostile_root.path(STATE), outside)
    res = hostile_root.agentd("status")
    assert res.code == 1, res.stderr
    assert f"{STATE} is corrupt" in res.stderr
    assert "move it aside" in res.stderr


# --- links: nothing written outside the root, nothing followed in the state dir ----------------


def test_a_lock_file_link_is_refused_and_its_target_untouched(
    hostile_root: Node, outside: Outside
) -> None:
    out_of_root(hostile_root.path(LOCK), outside)
    before = outside.snapshot()
    res = hostile_root.agentd("apply", "--offline")
    assert res.code == 1, res.stderr
    assert f"{LOCK} is a symbolic link" in res.stderr
    assert outside.snapshot() == before


def test_a_link_in_the_state_dir_is_refused_before_anything_is_written(
    hostile_root: Node, outside: Outside
) -> None:
    cache = hostile_root.path("/var/lib/wasm-edge/cache")
    shutil.rmtree(cache, ignore_errors=True)
    cache.symlink_to(outside.dir)
    before = outside.snapshot()
    res = hostile_root.agentd("apply", "--offline")
    assert res.code == 1, res.stderr
    assert "/var/lib/wasm-edge/cache is a symbolic link" in res.stderr
    assert outside.snapshot() == before


@pytest.mark.parametrize("how", ["absolute", "relative-up"])
def test_directory_links_inside_the_root_never_lead_writes_out_of_it(
    sandbox_root: Path, mirror: MirrorServer, mirror_index: Mirror, arch: str, how: str,
    outside: Outside,
) -> None:  # fmt: skip
    node = Node(sandbox_root)
    bin_dir = node.path("/usr/local/bin")
    bin_dir.parent.mkdir(parents=True)
    up = os.path.relpath(outside.dir, bin_dir.parent)  # ../../.. past the root, then outside
    bin_dir.symlink_to(outside.dir if how == "absolute" else up)
    state = node.path("/var/lib")
    state.mkdir(parents=True)
    (state / "wasm-edge").symlink_to(outside.dir / "state")
    before = outside.snapshot()
    doc = desired_document(mirror.url, mirror_index, k3s=None, wasmedge=None, arches=(arch,))
    res = node.apply(doc)
    assert res.code == 0, res.stderr
    assert outside.snapshot() == before
    # Written where a chroot at the root would have put it: the link's target, taken inside.
    inside = sandbox_root / str(outside.dir).lstrip("/")
    if how == "absolute":
        assert (inside / "crun").is_file()
    else:
        assert (sandbox_root / "outside" / "crun").is_file()  # `..` stops at the root
    assert (inside / "state" / "state.json").is_file()
    assert node.agentd("status", "--json").json()["lastRun"]["outcome"] == "converged"


# --- SIGTERM ends a command whatever it waits on -----------------------------------------------


@pytest.mark.parametrize(
    "args",
    [("apply", "--offline", "--wait", "120"), ("rollback", "crun", "--wait", "120")],
)
def test_sigterm_ends_a_command_waiting_for_the_lock(
    hostile_root: Node, args: tuple[str, ...]
) -> None:
    with open(hostile_root.path(LOCK), "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        env = {**os.environ, "AGENTD_ROOT": ""}
        proc = subprocess.Popen(
            [sys.executable, "-m", "agentd", "--root", str(hostile_root.root), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        time.sleep(2.0)  # well into its wait for the lock
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        _, stderr = proc.communicate(timeout=10)
    assert time.monotonic() - started < 5
    assert proc.returncode not in (0, EXIT_INTERNAL), stderr
    assert "Traceback" not in stderr


def test_directory_link_loops_inside_the_root_are_clear_errors(hostile_root: Node) -> None:
    for top in ("var", "etc"):
        path = hostile_root.path(f"/{top}")
        shutil.rmtree(path)
        path.symlink_to(f"/{top}")  # itself, seen from inside the root
    results = run_all(hostile_root)
    assert_clean(results, "", ())
    for name, res in results.items():
        assert res.code == 1, f"agentd {name}: {res.stderr}"
        assert "too many levels of symbolic links under the root" in res.stderr


def _limit_memory() -> None:
    # 1 GiB of address space: ample for agentd, far short of a 2 GiB file read whole.
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


@pytest.mark.parametrize("node_path", [DROP_IN, DESIRED, SETTINGS, STATE, K3S_CONFIG])
def test_a_huge_sparse_file_is_refused_without_reading_it(
    hostile_root: Node, outside: Outside, node_path: str
) -> None:
    sparse(hostile_root.path(node_path), outside)
    for args in (COMMANDS["apply"], COMMANDS["plan"]):
        proc = subprocess.run(
            [sys.executable, "-m", "agentd", "--root", str(hostile_root.root), *args],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            env={**os.environ, "AGENTD_ROOT": ""},
            preexec_fn=_limit_memory,
            check=False,
        )
        assert proc.returncode != EXIT_INTERNAL, proc.stderr[-2000:]
        assert "MemoryError" not in proc.stderr


CA_FILE = "/etc/wasm-edge/ca.pem"


@pytest.mark.parametrize("hostility", ["fifo", "directory", "sparse"])
def test_a_hostile_ca_file_is_refused_not_opened_by_tls(
    hostile_root: Node, outside: Outside, hostility: str
) -> None:
    # ssl and requests open caFile themselves: a FIFO there would hang pull and every download.
    source = {"type": "https", "url": "https://127.0.0.1:9/fleet.yaml"}
    write_yaml(
        hostile_root.path(SETTINGS),
        {
            "apiVersion": "agentd/v1",
            "kind": "AgentSettings",
            "source": source,
            "tls": {"caFile": CA_FILE},
        },
    )
    HOSTILE[hostility](hostile_root.path(CA_FILE), outside)
    results = {  # one after the other: both take the state lock
        name: run_all(hostile_root, {name: (name, "--json")})[name] for name in ("pull", "apply")
    }
    assert_clean(results, CA_FILE, ("pull", "apply"))
    assert results["pull"].code == 1, results["pull"]
