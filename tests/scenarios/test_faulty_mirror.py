"""A faulty mirror, end to end: `agentd apply` and the daemon against a real HTTP server that
answers 500s, stalls, hangs up, sends the wrong bytes, redirects in a loop or floods.

For every fault: nothing is installed (the node's tree is unchanged, by hash), the error names
the URL with its credentials redacted and the cause, the read timeout is honoured, transient
failures are tried three times with a growing pause and permanent ones once, and the daemon
stays up and says so in STATUS.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from tests.support.mirror import MirrorServer
from tests.support.node import Node, Result
from tests.support.standins import Mirror, desired_document, node_arch, write_yaml
from tests.unit.daemon.test_daemon import RunningDaemon, launch_daemon, wait_until

SETTINGS = "/etc/wasm-edge/agentd.yaml"
USERINFO = "user:secret@"
# Short enough for a test, long enough that a loaded machine does not time out a good answer.
READ_TIMEOUT_S = 0.5
BACKOFF_S = 0.1
FAST = {"timeout": f"{READ_TIMEOUT_S}s", "attempts": 3, "backoff": f"{BACKOFF_S}s", "maxMiB": 1}
DEFAULT_LIMIT = 2048 << 20
FLOOD_BYTES = 64 << 20  # what the server would send, where the 1 MiB limit must cut it off


def tree_hash(node: Node, *, but: str = "") -> str:
    """One digest of every file and symlink the node has outside agentd's own state (and `but`,
    the desired-state file a test writes)."""
    tree = {path: data for path, data in node.tree().items() if path != but}
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()


@dataclass
class Scene:
    """A node converged to crun 1.14 from the mirror, about to be asked for crun 1.15 from a URL
    with credentials in it."""

    node: Node
    mirror: MirrorServer
    index: Mirror
    arch: str
    doc: dict[str, Any]

    @property
    def path(self) -> str:
        """The URL path of crun 1.15 on the mirror (what the faults are set on)."""
        return "/" + self.index.artifact("crun", "1.15", self.arch)[0]

    @property
    def shown_url(self) -> str:
        """The crun 1.15 URL as every message must show it: credentials masked."""
        return f"{self.mirror.url.replace('http://', 'http://***@')}{self.path}"

    def upgrade(self, generation: int = 2) -> dict[str, Any]:
        doc = copy.deepcopy(self.doc)
        doc["generation"] = generation
        crun = doc["components"]["crun"]
        crun["version"] = "1.15"
        path, sha = self.index.artifact("crun", "1.15", self.arch)
        url = self.mirror.url.replace("http://", f"http://{USERINFO}")
        crun["artifacts"][self.arch] = {"url": f"{url}/{path}", "sha256": sha}
        return crun_only(doc)

    def settings(self, downloads: Optional[dict[str, Any]]) -> None:
        doc: dict[str, Any] = {"downloads": downloads} if downloads else {}
        write_yaml(self.node.path(SETTINGS), doc)


def crun_only(doc: dict[str, Any]) -> dict[str, Any]:
    return {**doc, "components": {"crun": doc["components"]["crun"]}}


def crun_114(base_url: str, index: Mirror, arch: str) -> dict[str, Any]:
    return crun_only(
        desired_document(base_url, index, crun="1.14", k3s=None, wasmedge=None, arches=(arch,))
    )


@pytest.fixture(scope="session")
def converged_root(
    tmp_path_factory: pytest.TempPathFactory, mirror_dir: Path, mirror_index: Mirror
) -> Path:
    """A root converged to crun 1.14 by `agentd apply`, once: each test starts from a copy."""
    root = tmp_path_factory.mktemp("converged") / "root"
    root.mkdir()
    with MirrorServer(mirror_dir) as server:
        first = Node(root).apply(crun_114(server.url, mirror_index, node_arch()))
    assert first.code == 0, first.stderr
    return root


@pytest.fixture
def scene(
    sandbox_root: Path,
    converged_root: Path,
    mirror: MirrorServer,
    mirror_index: Mirror,
    arch: str,
) -> Scene:
    shutil.copytree(converged_root, sandbox_root, symlinks=True, dirs_exist_ok=True)
    node = Node(sandbox_root)
    assert node.version_of("/usr/local/bin/crun") == "crun version 1.14"
    assert node.state()["lastAppliedGeneration"] == 1
    return Scene(node, mirror, mirror_index, arch, crun_114(mirror.url, mirror_index, arch))


def assert_nothing_installed(scene: Scene, before: str) -> None:
    node = scene.node
    assert tree_hash(node) == before
    assert node.version_of("/usr/local/bin/crun") == "crun version 1.14"
    cache = node.path("/var/lib/wasm-edge/cache")
    # No partial download left, and every blob kept is whole and verified.
    assert [p.name for p in (cache / "tmp").iterdir()] == []
    for blob in (cache / "sha256").iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    state = node.state()
    assert state["lastAppliedGeneration"] == 1
    assert state["inventory"]["crun"]["version"] == "1.14"


def assert_reported(scene: Scene, res: Result, cause: str) -> None:
    """The run failed with one error that names the redacted URL and the cause, in stderr and in
    state.json, and the credentials are nowhere."""
    assert res.code == 1, (res.stdout, res.stderr)
    assert "internal error" not in res.stderr
    assert "Traceback" not in res.stderr
    state_text = scene.node.read("/var/lib/wasm-edge/state.json")
    error = json.loads(state_text)["lastRun"]["error"]
    assert json.loads(state_text)["lastRun"]["outcome"] == "failed"
    for text in (error, res.stderr):
        assert f"download of {scene.shown_url} failed: " in text, text
        assert cause in text, text
    assert error.endswith("nothing was changed"), error
    for text in (res.stdout, res.stderr, state_text):
        assert "secret" not in text
        assert USERINFO not in text


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:])]


# --- each fault through `agentd apply` ----------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    name: str
    arm: Callable[[Scene], None]
    cause: str  # in the error, after the URL
    attempts: int  # requests the mirror sees for the artifact
    downloads: Optional[dict[str, Any]] = None  # the settings; None: the defaults


def _flood_with_length(s: Scene) -> None:
    # A crun of a few hundred bytes announced as 3 GiB: refused on the header, under the
    # default limit, before the body is read.
    s.mirror.flood(s.path, FLOOD_BYTES, content_length=3 << 30)


FAULTS = [
    Fault(
        "500",
        lambda s: s.mirror.fail(s.path, 500),
        "HTTP 500 Internal Server Error (after 3 attempts)",
        3,
        FAST,
    ),
    Fault("404", lambda s: s.mirror.fail(s.path, 404), "HTTP 404 Not Found", 1, FAST),
    Fault(
        "close-mid-body",
        lambda s: s.mirror.truncate(s.path, 100),
        "connection closed after 100 of ",
        3,
        FAST,
    ),
    Fault(
        "hang-up",
        lambda s: s.mirror.hangup(s.path),
        "Remote end closed connection without response",
        3,
        FAST,
    ),
    Fault(
        "wrong-bytes",
        lambda s: s.mirror.serve_bytes(s.path, b"#!/bin/sh\necho pwned\n"),
        "sha256 mismatch: expected ",
        1,
        FAST,
    ),
    Fault(
        "redirect-loop",
        lambda s: s.mirror.redirect(s.path, s.path),
        "Exceeded 30 redirects",
        31,
        FAST,
    ),
    Fault(
        "huge-body",
        lambda s: s.mirror.flood(s.path, FLOOD_BYTES),
        "larger than the 1048576-byte limit",
        1,
        FAST,
    ),
    Fault(
        "huge-content-length",
        _flood_with_length,
        f"Content-Length {3 << 30} is over the {DEFAULT_LIMIT}-byte limit",
        1,
        None,
    ),
]


# Stalls have a test of their own (below): it also checks the time between attempts.
@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_a_faulty_mirror_installs_nothing_and_says_where_and_why(
    scene: Scene, fault: Fault
) -> None:
    scene.settings(fault.downloads)
    before = tree_hash(scene.node)
    fault.arm(scene)

    res = scene.node.apply(scene.upgrade())

    assert_reported(scene, res, fault.cause)
    assert_nothing_installed(scene, before)
    assert scene.mirror.count(scene.path) == fault.attempts


def test_transient_failures_are_retried_after_a_growing_pause(scene: Scene) -> None:
    scene.settings({**FAST, "backoff": "0.3s"})
    scene.mirror.fail(scene.path, 500)
    res = scene.node.apply(scene.upgrade())
    assert_reported(scene, res, "HTTP 500 Internal Server Error (after 3 attempts)")
    arrived = scene.mirror.arrivals(scene.path)
    assert len(arrived) == 3
    # The pause before the second attempt is the setting, before the third twice that.
    first, second = gaps(arrived)
    assert first >= 0.3
    assert second >= 0.6


def test_two_500s_then_the_file_is_a_success_on_the_third_attempt(scene: Scene) -> None:
    scene.settings(FAST)
    scene.mirror.fail(scene.path, 503, times=2)
    res = scene.node.apply(scene.upgrade())
    assert res.code == 0, res.stderr
    assert scene.mirror.count(scene.path) == 3
    assert scene.node.version_of("/usr/local/bin/crun") == "crun version 1.15"
    assert [r.status for r in scene.mirror.responses] == [503, 503, 200]
    assert "secret" not in res.stdout + res.stderr + scene.node.read(
        "/var/lib/wasm-edge/state.json"
    )


STALL_CAUSE = f"no data for {READ_TIMEOUT_S:g}s (read timed out) (after 3 attempts)"


@pytest.mark.parametrize("stall_after", [None, 100], ids=["no-answer", "mid-body"])
def test_a_stalled_mirror_is_given_up_on_after_the_read_timeout(
    scene: Scene, stall_after: Optional[int]
) -> None:
    """The client waits the read timeout for each attempt (not less: a slow answer is not cut
    short), then gives up while the server still holds the connection open."""
    scene.settings(FAST)
    before = tree_hash(scene.node)
    scene.mirror.stall(scene.path, stall_after)
    res = scene.node.apply(scene.upgrade())
    assert_reported(scene, res, STALL_CAUSE)
    assert_nothing_installed(scene, before)
    arrived = scene.mirror.arrivals(scene.path)
    assert len(arrived) == 3
    # Each attempt came after a whole read timeout of the one before (and the pause).
    assert all(gap >= READ_TIMEOUT_S for gap in gaps(arrived)), gaps(arrived)
    # The server had not finished a single answer when the client gave up...
    assert scene.mirror.responses == []
    # ... and had sent what it was told to before stalling.
    scene.mirror.clear_faults()
    wait_until(lambda: len(scene.mirror.responses) == 3, "the stalled answers to end")
    assert [r.body_bytes for r in scene.mirror.responses] == [stall_after or 0] * 3


def test_a_redirect_loop_between_two_paths_ends(scene: Scene) -> None:
    scene.settings(FAST)
    other = "/elsewhere/crun"
    scene.mirror.redirect(scene.path, other)
    scene.mirror.redirect(other, scene.path)
    res = scene.node.apply(scene.upgrade())
    assert_reported(scene, res, "Exceeded 30 redirects")
    # One attempt (a loop is not the network's passing trouble), 31 requests in all.
    assert scene.mirror.count(scene.path) + scene.mirror.count(other) == 31


def test_a_redirect_to_a_url_with_other_credentials_redacts_them_too(scene: Scene) -> None:
    scene.settings(FAST)
    target = scene.mirror.url.replace("http://", "http://mirror-admin:hunter2@") + "/gone"
    scene.mirror.redirect(scene.path, target)
    res = scene.node.apply(scene.upgrade())
    shown = scene.mirror.url.replace("http://", "http://***@") + "/gone"
    assert_reported(scene, res, f"HTTP 404 File not found from {shown}")
    for text in (res.stdout, res.stderr, scene.node.read("/var/lib/wasm-edge/state.json")):
        assert "hunter2" not in text
        assert "mirror-admin" not in text


def test_a_huge_body_is_cut_off_at_the_limit_not_read_to_the_end(scene: Scene) -> None:
    """64 MiB of filler for a crun of a few hundred bytes, with no Content-Length: the download
    stops once the 1 MiB limit is passed; the server could not send the rest."""
    scene.settings(FAST)
    scene.mirror.flood(scene.path, FLOOD_BYTES)
    res = scene.node.apply(scene.upgrade())
    assert_reported(scene, res, "larger than the 1048576-byte limit")
    (sent,) = [r.body_bytes for r in scene.mirror.responses]
    assert sent < FLOOD_BYTES // 2, sent


def test_the_default_size_limit_is_two_gib_whatever_the_artifact(scene: Scene) -> None:
    """Nothing in the desired state says how big an artifact is: without `downloads.maxMiB`, the
    limit for a crun of a few kilobytes is 2 GiB, and a body without Content-Length is
    written to the cache's temp file until then (sha256 refuses it only at the end)."""
    scene.settings(None)
    shown = scene.node.agentd("settings", "--json")
    assert shown.code == 0, shown.stderr
    assert shown.json()["settings"]["downloads"]["maxMiB"] == 2048
    size = scene.index.file("crun", "1.15", scene.arch).stat().st_size
    assert size < 64 * 1024  # the stand-in crun: far below any limit that could be meant
    scene.mirror.flood(scene.path, FLOOD_BYTES, content_length=DEFAULT_LIMIT + 1)
    res = scene.node.apply(scene.upgrade())
    assert_reported(scene, res, f"Content-Length {DEFAULT_LIMIT + 1} is over the")


# --- the daemon through all of it ---------------------------------------------------------------


@pytest.fixture
def daemon(tmp_path: Path, scene: Scene) -> Iterator[RunningDaemon]:
    """`agentd run` on the scene's node, as systemd starts it, with the fast download settings
    and a backoff of an hour: every cycle in the test is started by a local file change."""
    write_yaml(scene.node.path("/etc/wasm-edge/desired.yaml"), scene.doc)
    write_yaml(
        scene.node.path(SETTINGS),
        {
            "interval": "1h",
            "splay": 0,
            "healthInterval": "1h",
            "backoff": {"initial": "1h", "max": "1h"},
            "downloads": FAST,
        },
    )
    running = launch_daemon(
        scene.node, tmp_path / "notify.sock", tmp_path / "daemon.stderr", watchdog_usec=2_000_000
    )
    try:
        yield running
    finally:
        running.kill()


STALLS = [
    Fault("no-answer", lambda s: s.mirror.stall(s.path), STALL_CAUSE, 3, FAST),
    Fault("stall-mid-body", lambda s: s.mirror.stall(s.path, 100), STALL_CAUSE, 3, FAST),
]
EVERY_FAULT = [f for f in FAULTS if f.downloads is FAST] + STALLS
# `make test` takes one of each kind: the network's (retried), the server's, the content's.
COMMON = ["500", "404", "stall-mid-body", "wrong-bytes", "redirect-loop", "huge-body"]


@pytest.mark.parametrize(
    "faults",
    [
        pytest.param([f for f in EVERY_FAULT if f.name in COMMON], id="common"),
        pytest.param(EVERY_FAULT, id="every-fault", marks=pytest.mark.stress),
    ],
)
def test_the_daemon_stays_up_through_faults_and_says_what_failed(
    scene: Scene, daemon: RunningDaemon, faults: list[Fault]
) -> None:
    node = scene.node
    ready = daemon.notices.ready()
    assert ready.status.startswith("converged generation 1,"), ready.status
    # Each fault comes with a new generation of desired.yaml (a drop-in cannot set one).
    drop_in_path = "/etc/wasm-edge/desired.yaml"
    drop_in = node.path(drop_in_path)
    before = tree_hash(node, but=drop_in_path)
    generation = 1
    for fault in faults:
        scene.mirror.clear_faults()
        scene.mirror.clear_requests()
        fault.arm(scene)
        generation += 1
        rewrite(drop_in, scene.upgrade(generation))
        status = failure_of(daemon, generation, fault.cause)
        assert f"download of {scene.shown_url} failed: " in status, (fault.name, status)
        assert fault.cause in status, (fault.name, status)
        # The backoff (an hour, give or take its jitter) is said too.
        assert re.search(r"; retrying in \d+[hm]", status), status
        assert "secret" not in status
        last = daemon.daemon_json()["lastCycle"]
        assert last["outcome"] == "failed"
        assert last["reason"] == "local change"
        assert fault.cause in last["error"]
        state = node.state()
        assert state["lastRun"]["generation"] == generation
        assert fault.cause in state["lastRun"]["error"]
        assert scene.mirror.count(scene.path) == fault.attempts, fault.name
        assert daemon.proc.poll() is None, daemon.stderr()
        assert tree_hash(node, but=drop_in_path) == before, fault.name
    # The mirror mends: the next change converges, and the daemon never went down.
    scene.mirror.clear_faults()
    generation += 1
    rewrite(drop_in, scene.upgrade(generation))
    daemon.notices.status(f"converged generation {generation},")
    assert node.version_of("/usr/local/bin/crun") == "crun version 1.15"
    assert daemon.daemon_json()["consecutiveFailures"] == 0
    for text in (daemon.stderr(), node.read("/var/lib/wasm-edge/state.json")):
        assert "secret" not in text
    assert daemon.proc.poll() is None


def rewrite(path: Path, doc: dict[str, Any]) -> None:
    """Replace `path` in one rename: the watching daemon never reads it half-written."""
    tmp = write_yaml(path.with_name(f".{path.name}.tmp"), doc)
    tmp.replace(path)


def failure_of(daemon: RunningDaemon, generation: int, cause: str) -> str:
    """The STATUS of the failed cycle for `generation`: a failure with this cause whose cycle,
    as daemon.json has it (written before the STATUS is sent), was for this generation."""
    while True:
        notice = daemon.notices.next(
            lambda n: n.status.startswith("failed:") and cause in n.status,
            f"STATUS failed: ... {cause} for generation {generation}",
        )
        if (daemon.daemon_json().get("lastCycle") or {}).get("generation") == generation:
            return notice.status
