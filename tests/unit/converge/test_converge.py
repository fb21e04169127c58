"""Converge sandbox roots through the real command line from a real HTTP mirror of stand-ins."""

from __future__ import annotations

import copy
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

import pytest

from agentd.core.paths import Paths
from agentd.state.store import StateLock
from tests.support.mirror import MirrorServer
from tests.support.node import Node
from tests.support.standins import Mirror, crun_binary, desired_document, sha256_hex, write_yaml


@pytest.fixture
def node(sandbox_root: Path) -> Node:
    return Node(sandbox_root)


def doc_for(mirror: MirrorServer, index: Mirror, arch: str, **kw: Any) -> dict[str, Any]:
    arches = tuple(sorted({arch, "amd64", "arm64"}))
    return desired_document(mirror.url, index, arches=arches, **kw)


def actions(result: dict[str, Any]) -> list[tuple[str, str]]:
    return [(a["component"], a["action"]) for a in result["actions"]]


def test_converges_an_empty_root(
    node: Node, mirror: MirrorServer, mirror_index: Mirror, arch: str
) -> None:
    res = node.apply(doc_for(mirror, mirror_index, arch))
    assert res.code == 0, res.stderr
    result = res.json()
    assert result["outcome"] == "converged"
    assert actions(result) == [
        ("wasmedge", "install"),
        ("wasmedge/plugins/wasi_nn-ggml", "install"),
        ("crun", "install"),
        ("k3s", "install"),
        ("k3s/config", "configure"),
        ("k3s/unit", "configure"),
        ("k3s/containerd", "configure"),
        ("k3s/runtimeclasses", "configure"),
        ("k3s", "restart"),
    ]
    assert all(a["status"] == "done" for a in result["actions"])
    assert node.version_of("/usr/local/bin/k3s") == "k3s version v1.30.4+k3s1 (abcd1234)"
    assert node.version_of("/usr/local/bin/crun") == "crun version 1.15"
    assert node.version_of("/usr/local/bin/wasmedge").endswith("version 0.14.1")
    for name in ("kubectl", "crictl", "ctr"):
        assert os.readlink(node.path(f"/usr/local/bin/{name}")) == "k3s"
    # the upstream library symlink chain survives the move from lib64/ to /usr/local/lib
    assert os.readlink(node.path("/usr/local/lib/libwasmedge.so")) == "libwasmedge.so.0"
    assert os.readlink(node.path("/usr/local/lib/libwasmedge.so.0")) == "libwasmedge.so.0.1.0"
    assert node.path("/usr/local/lib/libwasmedge.so.0.1.0").is_file()
    assert node.path("/usr/local/include/wasmedge/wasmedge.h").is_file()
    assert node.path("/usr/local/lib/wasmedge/libwasmedgePluginWasiNN.so").is_file()
    config = node.read("/etc/rancher/k3s/config.yaml")
    assert "token-file: /etc/wasm-edge/k3s-token" in config
    assert "write-kubeconfig-mode: '0644'" in config
    template = node.read("/var/lib/rancher/k3s/agent/etc/containerd/config.toml.tmpl")
    assert template.splitlines()[1] == '{{ template "base" . }}'
    assert 'runtimes."crun-wasm"]' in template
    assert '"module.wasm.image/*"' in template
    assert 'BinaryName = "/usr/local/bin/crun"' in template
    manifest = node.read("/var/lib/rancher/k3s/server/manifests/agentd-runtimeclasses.yaml")
    assert "kind: RuntimeClass" in manifest
    assert "handler: crun-wasm" in manifest
    assert "ExecStart=/usr/local/bin/k3s server" in node.read("/etc/systemd/system/k3s.service")
    # under --root the service manager is only recorded, once per kind of call
    assert result["serviceCalls"] == [
        "ldconfig",  # right after WasmEdge, so that its version can be read back
        "systemctl daemon-reload",
        "systemctl enable k3s.service",
        "systemctl restart k3s.service",
    ]
    state = node.state()
    assert state["lastAppliedGeneration"] == 1
    assert state["lastRun"]["outcome"] == "converged"
    assert state["inventory"]["crun"]["version"] == "1.15"
    # no temporary files left beside any target
    assert not list(node.root.rglob(".*agentd-*"))


def test_second_run_does_nothing_and_downloads_nothing(
    node: Node, mirror: MirrorServer, mirror_index: Mirror, arch: str
) -> None:
    doc = doc_for(mirror, mirror_index, arch)
    assert node.apply(doc).code == 0
    before = node.tree()
    mirror.clear_requests()
    res = node.apply(doc)
    assert res.code == 0, res.stderr
    assert res.json()["actions"] == []
    assert mirror.requests == []
    assert node.tree() == before
    plan = node.agentd("plan", "--desired", str(node.desired(doc)), "--detailed-exitcode")
    assert plan.code == 0
    assert "nothing to do" in plan.stdout


def test_plan_json_and_detailed_exitcode(
    node: Node, mirror: MirrorServer, mirror_index: Mirror, arch: str
) -> None:
    path = node.desired(doc_for(mirror, mirror_index, arch, wasmedge=None))
    res = node.agentd("plan", "--desired", str(path), "--json", "--detailed-exitcode")
    assert res.code == 2
    plan = res.json()
    crun = next(a for a in plan["actions"] if a["component"] == "crun")
    assert crun == {
        "component": "crun",
        "action": "install",
        "to": "1.15",
        "reason": "not installed; desired 1.15",
        "disruptive": False,
    }
    assert {"component": "wasmedge", "reason": "not in the desired state"} in plan["unchanged"]
    human = node.agentd("plan", "--desired", str(path))
    assert "+ install   crun 1.15" in human.stdout
    assert "! restart   k3s" in human.stdout
    assert mirror.requests == []  # planning never downloads


def test_upgrade_downgrade_remove_and_plugins_follow_the_runtime(
    node: Node, mirror: MirrorServer, mirror_index: Mirror, arch: str
) -> None:
    old = doc_for(mirror, mirror_index, arch, crun="1.14", wasmedge="0.13.5", generation=1)
    assert node.apply(old).code == 0
    assert node.version_of("/usr/local/bin/crun") == "crun version 1.14"

    new = doc_for(
        mirror,
        mirror_index,
        arch,
        crun="1.15",
        wasmedge="0.14.1",
        k3s="v1.31.2+k3s1",
        generation=2,
    )
    res = node.apply(new)
    assert res.code == 0, res.stderr
    got = {a["component"]: (a["action"], a.get("from"), a.get("to")) for a in res.json()["actions"]}
    assert got["crun"] == ("upgrade", "1.14", "1.15")
    assert got["wasmedge"] == ("upgrade", "0.13.5", "0.14.1")
    # a plugin must match its runtime's version, so it is reinstalled with it
    assert got["wasmedge/plugins/wasi_nn-ggml"] == ("upgrade", "0.13.5", "0.14.1")
    assert got["k3s"][0] == "restart"
    assert ("k3s", "upgrade") in actions(res.json())
    assert node.version_of("/usr/local/bin/k3s").startswith("k3s version v1.31.2+k3s1")
    assert node.version_of("/usr/local/bin/wasmedge").endswith("version 0.14.1")
    # one restart, whatever number of things changed
    assert res.json()["serviceCalls"].count("systemctl restart k3s.service") == 1

    down = copy.deepcopy(new)
    down["generation"] = 3
    down["components"]["crun"] = doc_for(mirror, mirror_index, arch, crun="1.14")["components"][
        "crun"
    ]
    res = node.apply(down)
    assert res.code == 0, res.stderr
    assert ("crun", "downgrade") in actions(res.json())
    assert node.version_of("/usr/local/bin/crun") == "crun version 1.14"

    gone = copy.deepcopy(down)
    gone["generation"] = 4
    gone["components"]["crun"] = {"state": "absent"}
    gone["components"]["wasmedge"]["plugins"] = [{"name": "wasi_nn-ggml", "state": "absent"}]
    res = node.apply(gone)
    assert res.code == 0, res.stderr
    acts = actions(res.json())
    assert ("crun", "remove") in acts
    assert ("wasmedge/plugins/wasi_nn-ggml", "remove") in acts
    # the template naming the removed crun goes too, or every Wasm pod would fail to start
    assert ("k3s/containerd", "configure") in acts
    assert not node.path("/usr/local/bin/crun").exists()
    assert not node.path("/usr/local/lib/wasmedge/libwasmedgePluginWasiNN.so").exists()
    assert not node.path("/var/lib/rancher/k3s/agent/etc/containerd/config.toml.tmpl").exists()
    assert "crun" not in node.state()["inventory"]


def test_rollback_puts_back_the_replaced_version_and_back_again(
    node: Node, mirror: MirrorServer, mirror_index: Mirror, arch: str
) -> None:
    assert node.apply(doc_for(mirror, mirror_index, arch, crun="1.14", generation=1)).code == 0
    assert node.apply(doc_for(mirror, mirror_index, arch, crun="1.15", generation=2)).code == 0
    res = node.agentd("rollback", "crun", "--json")
    assert res.code == 0, res.stderr
    out = res.json()
    assert out["rollback"]["restoredVersion"] == "1.14"
    # crun is run anew for every container: a version put back at its path needs no k3s
    # restart (issue 15.5), as a crun upgrade needs none in a plan.
    assert out["serviceCalls"] == []
    assert out["rollback"]["restarted"] is None
    assert node.version_of("/usr/local/bin/crun") == "crun version 1.14"
    assert node.state()["inventory"]["crun"]["version"] == "1.14"
    detect = node.agentd("detect", "--json").json()
    assert detect["components"]["crun"]["version"] == "1.14"
    # a rollback is itself kept, so rolling back again returns to 1.15
    assert node.agentd("rollback", "--release", "crun").code == 0
    assert node.agentd("rollback", "crun").code == 0
    assert node.version_of("/usr/local/bin/crun") == "crun version 1.15"
    # a component agentd never changed has nothing to roll back to
    res = node.agentd("rollback", "wasmedge/plugins/wasi_crypto")
    assert res.code == 1
    assert "nothing kept for wasmedge/plugins/wasi_crypto" in res.stderr


def test_rollback_of_a_fresh_install_removes_it(
    node: Node, mirror: MirrorServer, mirror_index: Mirror, arch: str
) -> None:
    assert node.apply(doc_for(mirror, mirror_index, arch, k3s=None, wasmedge=None)).code == 0
    assert node.agentd("rollback", "crun").code == 0
    assert not node.path("/usr/local/bin/crun").exists()


def _broken_crun(doc: dict[str, Any], arch: str, **artifact: str) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    doc["generation"] = 2
    doc["components"]["crun"]["version"] = "1.15"
    doc["components"]["crun"]["artifacts"][arch].update(artifact)
    return doc


@pytest.fixture
def on_crun_114(
    node: Node, mirror: MirrorServer, mirror_index: Mirror, arch: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """A node converged to crun 1.14 alone: its desired document and its file tree."""
    doc = doc_for(mirror, mirror_index, arch, crun="1.14", k3s=None, wasmedge=None)
    assert node.apply(doc).code == 0
    return doc, node.tree()


def _assert_failed_and_untouched(node: Node, res: Any, before: dict[str, str], text: str) -> None:
    assert res.code == 1
    assert text in res.stderr
    assert node.tree() == before
    assert node.version_of("/usr/local/bin/crun") == "crun version 1.14"
    state = node.state()
    assert state["lastRun"]["outcome"] == "failed"
    assert text in state["lastRun"]["error"]
    assert state["lastAppliedGeneration"] == 1


def test_wrong_sha256_installs_nothing(
    node: Node, arch: str, on_crun_114: tuple[dict[str, Any], dict[str, str]]
) -> None:
    doc, before = on_crun_114
    wrong = "0" * 64
    res = node.apply(
        _broken_crun(
            doc,
            arch,
            url=doc["components"]["crun"]["artifacts"][arch]["url"].replace("1.14", "1.15"),
            sha256=wrong,
        )
    )
    _assert_failed_and_untouched(node, res, before, "sha256 mismatch")
    cache = node.path("/var/lib/wasm-edge/cache")
    assert not (cache / "sha256" / wrong).exists()
    leftovers = list((cache / "tmp").iterdir()) if (cache / "tmp").exists() else []
    assert leftovers == []


def test_every_line_a_run_logs_carries_its_generation(
    node: Node, mirror: MirrorServer, mirror_index: Mirror, arch: str
) -> None:
    # `journalctl AGENTD_GENERATION=7` must list what generation 7 changed, step by step (the
    # e2e found the per-action lines without it). The JSON lines are what the journal gets.
    res = node.apply(
        doc_for(mirror, mirror_index, arch, crun="1.15", k3s=None, wasmedge=None)
        | {"generation": 7}
    )
    assert res.code == 0, res.stderr
    lines = [json.loads(line) for line in res.stderr.splitlines() if line.startswith("{")]
    done = [line for line in lines if line.get("event") == "action done"]
    assert [line["component"] for line in done] == ["crun"]
    assert all(line.get("generation") == 7 for line in done), done


def test_an_artifact_of_another_release_is_not_installed(
    node: Node,
    arch: str,
    mirror: MirrorServer,
    mirror_index: Mirror,
    on_crun_114: tuple[dict[str, Any], dict[str, str]],
) -> None:
    """A correct sha256 of the wrong release (a copy-paste slip in a fleet document): installing
    it would report 1.14 where 1.15 is wanted, and every later run would install it again."""
    doc, before = on_crun_114
    path, sha = mirror_index.artifact("crun", "1.14", arch)
    res = node.apply(_broken_crun(doc, arch, url=f"{mirror.url}/{path}", sha256=sha))
    _assert_failed_and_untouched(node, res, before, "reports version 1.14")


@pytest.mark.parametrize(
    ("fault", "text"), [(404, "HTTP 404"), (500, "HTTP 500"), ("truncate", "connection closed")]
)
def test_http_failures_install_nothing(
    node: Node,
    mirror: MirrorServer,
    mirror_index: Mirror,
    arch: str,
    on_crun_114: tuple[dict[str, Any], dict[str, str]],
    fault: Any,
    text: str,
) -> None:
    doc, before = on_crun_114
    path, sha = mirror_index.artifact("crun", "1.15", arch)
    if fault == "truncate":
        mirror.truncate(path, 100)
    else:
        mirror.fail(path, fault)
    res = node.apply(_broken_crun(doc, arch, url=f"{mirror.url}/{path}", sha256=sha))
    _assert_failed_and_untouched(node, res, before, text)


def test_unreachable_mirror_installs_nothing(
    node: Node,
    mirror_index: Mirror,
    arch: str,
    on_crun_114: tuple[dict[str, Any], dict[str, str]],
) -> None:
    doc, before = on_crun_114
    path, sha = mirror_index.artifact("crun", "1.15", arch)
    with MirrorServer(mirror_index.root) as gone:
        url = f"{gone.url}/{path}"
    res = node.apply(_broken_crun(doc, arch, url=url, sha256=sha))
    _assert_failed_and_untouched(node, res, before, "connection failed")


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = 0o755
    return info


TOP = "WasmEdge-0.14.1-Linux"
Members = list[tuple[tarfile.TarInfo, Optional[bytes]]]
GOOD: Members = [
    (_member(f"{TOP}/bin/wasmedge"), b"#!/bin/sh\necho wasmedge version 0.14.1\n"),
    (_member(f"{TOP}/lib64/libwasmedge.so.0.1.0"), b"lib"),
]
HOSTILE: dict[str, Members] = {
    "absolute": [(_member("/usr/local/bin/evil"), b"x")],
    "dotdot": [(_member(f"{TOP}/../../../etc/cron.d/evil"), b"x")],
    "symlink-out-absolute": [
        (_member(f"{TOP}/lib64/libx.so", tarfile.SYMTYPE, "/etc/shadow"), None)
    ],
    "symlink-out-relative": [
        (_member(f"{TOP}/lib64/libx.so", tarfile.SYMTYPE, "../../../../etc/shadow"), None)
    ],
    "through-symlink": [
        (_member(f"{TOP}/include", tarfile.SYMTYPE, "/etc"), None),
        (_member(f"{TOP}/include/cron.d/evil"), b"x"),
    ],
    "hardlink-out": [(_member(f"{TOP}/bin/passwd", tarfile.LNKTYPE, "/etc/passwd"), None)],
    "device": [(_member(f"{TOP}/bin/sda", tarfile.CHRTYPE), None)],
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_archive_installs_nothing(
    node: Node, mirror_index: Mirror, arch: str, tmp_path: Path, kind: str
) -> None:
    if arch not in ("amd64", "arm64"):
        pytest.skip("WasmEdge has no build for this architecture")
    evil_dir = tmp_path / "evil-mirror"
    evil_dir.mkdir()
    archive = _tar(GOOD + HOSTILE[kind])
    (evil_dir / "WasmEdge-0.14.1-evil.tar.gz").write_bytes(archive)
    _, crun_sha = mirror_index.artifact("crun", "1.15", arch)
    (evil_dir / "crun").write_bytes(mirror_index.file("crun", "1.15", arch).read_bytes())
    with MirrorServer(evil_dir) as evil:
        doc = desired_document(evil.url, mirror_index, k3s=None, wasmedge=None, arches=(arch,))
        doc["components"]["crun"]["artifacts"][arch] = {
            "url": f"{evil.url}/crun",
            "sha256": crun_sha,
        }
        doc["components"]["wasmedge"] = {
            "version": "0.14.1",
            "artifacts": {
                arch: {
                    "url": f"{evil.url}/WasmEdge-0.14.1-evil.tar.gz",
                    "sha256": sha256_hex(archive),
                }
            },
        }
        res = node.apply(doc)
    assert res.code == 1
    assert "nothing was changed" in res.stderr
    # not even the good members of the archive, nor the run's other component
    assert node.tree() == {}
    assert not (tmp_path / "etc").exists()


def test_failure_midway_undoes_the_whole_run(
    node: Node, mirror: MirrorServer, mirror_index: Mirror, arch: str
) -> None:
    if arch not in ("amd64", "arm64"):
        pytest.skip("WasmEdge has no build for this architecture")
    # WasmEdge installs first; crun then fails because its target is a directory.
    node.path("/usr/local/bin/crun").mkdir(parents=True)
    before = node.tree()
    res = node.apply(doc_for(mirror, mirror_index, arch, k3s=None))
    assert res.code == 1
    assert "every change of this run was undone" in res.stderr
    assert node.tree() == before
    result = node.state()["lastRun"]
    status = {a["component"]: a["status"] for a in result["actions"]}
    assert status["wasmedge"] == "undone"
    assert status["crun"] == "failed"


class _Killed(BaseException):
    """Stands for SIGKILL: nothing in agentd catches it, so nothing is undone or recorded."""


def test_a_run_killed_after_replacing_crun_is_installed_again_and_recorded(
    node: Node,
    mirror: MirrorServer,
    mirror_index: Mirror,
    arch: str,
    on_crun_114: tuple[dict[str, Any], dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Killed between replacing /usr/local/bin/crun and writing state.json: crun is 1.15 but
    the inventory and the kept version are generation 1's. The intent written ahead makes the
    next apply install crun again and record it, so rollback puts back 1.14, not nothing."""
    from agentd.converge import install as converge
    from agentd.run import apply
    from agentd.system.host import Host

    upgrade = doc_for(mirror, mirror_index, arch, crun="1.15", k3s=None, wasmedge=None)
    upgrade["generation"] = 2

    def killed(host: Host, step: converge.Step) -> None:
        raise _Killed

    monkeypatch.setattr(converge, "_read_back", killed)
    with pytest.raises(_Killed):
        apply(Host.at(node.root), node.desired(upgrade))
    monkeypatch.undo()
    assert node.version_of("/usr/local/bin/crun") == "crun version 1.15"
    state = node.state()
    assert state["inventory"]["crun"]["version"] == "1.14"
    intent = state["installing"]["components"]["crun"]
    assert (intent["from"], intent["to"]) == ("1.14", "1.15")
    assert intent["inventoryAfter"]["version"] == "1.15"
    assert [r["path"] for r in intent["replaced"]] == ["/usr/local/bin/crun"]

    status = node.agentd("status")
    assert (
        "crun: unfinished: an earlier run was interrupted while installing 1.15, unless a run is "
        "going on now; the next apply installs it again\n"
    ) in status.stdout

    refused = node.agentd("rollback", "crun")  # kept: from before 1.14, when there was no crun
    assert refused.code == 1
    assert "interrupted while installing 1.15" in refused.stderr
    assert node.version_of("/usr/local/bin/crun") == "crun version 1.15"

    plan = node.agentd("plan", "--desired", str(node.desired(upgrade)), "--json").json()
    reasons = {a["component"]: (a["action"], a["reason"]) for a in plan["actions"]}
    verb, why = reasons["crun"]
    assert verb == "reinstall"
    assert "an earlier run was interrupted while installing 1.15" in why

    res = node.apply(upgrade)
    assert res.code == 0, res.stderr
    assert actions(res.json()) == [("crun", "reinstall")]
    state = node.state()
    assert state["installing"] is None
    assert state["inventory"]["crun"]["version"] == "1.15"
    assert list(node.path("/var/lib/wasm-edge/replaced").iterdir()) == []  # in the kept version
    assert node.apply(upgrade).json()["actions"] == []

    res = node.agentd("rollback", "crun", "--json")
    assert res.code == 0, res.stderr
    assert res.json()["rollback"]["restoredVersion"] == "1.14"
    assert node.version_of("/usr/local/bin/crun") == "crun version 1.14"


def test_sweep_removes_temp_symlinks_and_the_probe_and_metrics_temps(sandbox_root: Path) -> None:
    from agentd.converge.sweep import sweep
    from agentd.state.store import AgentState
    from agentd.system.host import Host

    node = Node(sandbox_root)
    metrics = "/var/lib/prometheus/node-exporter/agentd.prom"
    links = {
        "/usr/local/lib/.libwasmedge.so.agentd-0123abcd": "libwasmedge.so.0",
        "/usr/local/bin/.kubectl.agentd-89abcdef": "k3s",  # dangling: k3s is not there
    }
    files = [
        "/var/lib/wasm-edge/probe/.agentd-probe.wasm.agentd-00ff00ff",
        "/var/lib/prometheus/node-exporter/.agentd.prom.agentd-11ee11ee",
    ]
    others = ["/var/lib/prometheus/node-exporter/node.prom", "/usr/local/lib/libwasmedge.so.0"]
    for path in [*files, *others]:
        node.path(path).parent.mkdir(parents=True, exist_ok=True)
        node.path(path).write_bytes(b"x")
    for path, target in links.items():
        node.path(path).parent.mkdir(parents=True, exist_ok=True)
        node.path(path).symlink_to(target)
    swept = sweep(Host.at(sandbox_root), AgentState(), metrics)
    assert sorted(swept) == sorted([*links, *files])
    assert not [p for p in [*links, *files] if os.path.lexists(node.path(p))]
    assert all(node.path(p).exists() for p in others)


def test_lower_generation_is_refused(
    node: Node, mirror: MirrorServer, mirror_index: Mirror, arch: str
) -> None:
    assert node.apply(doc_for(mirror, mirror_index, arch, crun="1.15", generation=5)).code == 0
    before = node.tree()
    res = node.apply(doc_for(mirror, mirror_index, arch, crun="1.14", generation=4))
    assert res.code == 1
    assert "desired generation 4 is older than generation 5" in res.stderr
    assert node.tree() == before
    state = node.state()
    assert state["lastAppliedGeneration"] == 5
    assert state["lastRun"]["outcome"] == "refused"
    # the same generation again is fine: a node re-converges to it
    assert node.apply(doc_for(mirror, mirror_index, arch, crun="1.15", generation=5)).code == 0


def test_second_concurrent_apply_says_who_holds_the_lock(
    node: Node, mirror: MirrorServer, mirror_index: Mirror, arch: str
) -> None:
    doc = doc_for(mirror, mirror_index, arch, k3s=None, wasmedge=None)
    lock = StateLock(Paths(node.root))
    lock.acquire("apply")
    try:
        res = node.apply(doc)
        assert res.code == 1
        assert f"pid={os.getpid()} command=apply" in res.stderr
        assert not node.path("/usr/local/bin/crun").exists()
        # with --wait, the second run goes ahead once the first lets go
        threading.Timer(0.5, lock.release).start()
        res = node.apply(doc, "--wait", "20")
    finally:
        lock.release()
    assert res.code == 0, res.stderr
    assert node.path("/usr/local/bin/crun").exists()


def test_concurrent_applies_never_overlap(
    node: Node, mirror: MirrorServer, mirror_index: Mirror, arch: str
) -> None:
    path = node.desired(doc_for(mirror, mirror_index, arch))
    cmd = [
        sys.executable,
        "-m",
        "agentd",
        "--root",
        str(node.root),
        "apply",
        "--desired",
        str(path),
        "--wait",
        "60",
        "--json",
    ]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    done = sorted(len(json.loads(o[0])["actions"]) for o in outs)
    # one converged, the other found nothing left to do
    assert done[0] == 0
    assert done[1] > 0


def test_distribution_crun_is_left_alone(
    node: Node, mirror: MirrorServer, mirror_index: Mirror, arch: str
) -> None:
    """A Debian-style /usr/bin/crun 1.8.1 (stand-in: no Wasm) is not agentd's to replace."""
    distro = node.path("/usr/bin/crun")
    distro.parent.mkdir(parents=True)
    distro.write_bytes(crun_binary("1.8.1", wasm=False))
    distro.chmod(0o755)
    doc = doc_for(mirror, mirror_index, arch, k3s=None, wasmedge=None)
    plan = node.agentd("plan", "--desired", str(node.desired(doc)), "--json").json()
    crun = next(a for a in plan["actions"] if a["component"] == "crun")
    assert crun["action"] == "install"
    assert crun["from"] == "1.8.1"
    assert "/usr/bin/crun (1.8.1) was not installed by agentd" in crun["reason"]
    assert node.apply(doc).code == 0
    assert distro.read_bytes() == crun_binary("1.8.1", wasm=False)
    detect = node.agentd("detect", "--json").json()
    assert detect["components"]["crun"]["path"] == "/usr/local/bin/crun"
    # asking for it to be absent removes only what agentd installed
    doc["components"]["crun"] = {"state": "absent"}
    doc["generation"] = 2
    assert node.apply(doc).code == 0
    assert distro.exists()
    plan = node.agentd("plan", "--desired", str(node.desired(doc)), "--json").json()
    assert any(
        "not installed by agentd" in u["reason"]
        for u in plan["unchanged"]
        if u["component"] == "crun"
    )


def test_credentials_never_reach_logs_or_state(
    node: Node, mirror: MirrorServer, mirror_index: Mirror, arch: str
) -> None:
    doc = doc_for(mirror, mirror_index, arch, k3s=None, wasmedge=None)
    art = doc["components"]["crun"]["artifacts"][arch]
    art["url"] = art["url"].replace("http://", "http://fleet:s3cr3t-pw@")
    res = node.apply(doc)
    assert res.code == 0, res.stderr
    art["sha256"] = "1" * 64
    doc["components"]["crun"]["version"] = "1.14"
    doc["generation"] = 2
    failed = node.apply(doc)
    assert failed.code == 1
    for text in (
        res.stdout,
        res.stderr,
        failed.stdout,
        failed.stderr,
        node.read("/var/lib/wasm-edge/state.json"),
    ):
        assert "s3cr3t-pw" not in text
    assert "***@" in failed.stderr


def test_missing_desired_state_is_a_clear_error(node: Node) -> None:
    res = node.agentd("apply")
    assert res.code == 1
    assert "no desired state: neither /etc/wasm-edge/desired.yaml" in res.stderr


def test_local_sources_merge_drop_ins(
    node: Node, mirror: MirrorServer, mirror_index: Mirror, arch: str
) -> None:
    base = doc_for(mirror, mirror_index, arch, wasmedge=None)
    write_yaml(node.path("/etc/wasm-edge/desired.yaml"), base)
    write_yaml(
        node.path("/etc/wasm-edge/desired.d/50-agent.yaml"),
        {"components": {"k3s": {"role": "agent", "server": "https://10.0.0.1:6443", "config": {}}}},
    )
    res = node.agentd("apply", "--json")
    assert res.code == 0, res.stderr
    config = node.read("/etc/rancher/k3s/config.yaml")
    assert "server: https://10.0.0.1:6443" in config
    assert node.path("/etc/systemd/system/k3s-agent.service").exists()
    # an agent does not write cluster objects
    assert not node.path(
        "/var/lib/rancher/k3s/server/manifests/agentd-runtimeclasses.yaml"
    ).exists()


def test_no_op_apply_runs_no_version_command(
    node: Node, mirror: MirrorServer, mirror_index: Mirror, arch: str
) -> None:
    doc = doc_for(mirror, mirror_index, arch)
    assert node.apply(doc).code == 0
    assert node.apply(doc).code == 0  # the first look at the installed binaries fills the cache
    cache = node.path("/var/lib/wasm-edge/facts-cache.json")
    stamp = cache.stat().st_mtime_ns
    time.sleep(0.01)
    assert node.apply(doc).code == 0
    assert cache.stat().st_mtime_ns == stamp  # every version came from the fingerprint cache


def test_plan_explain_names_the_file_each_value_came_from(
    node: Node, mirror: MirrorServer, mirror_index: Mirror, arch: str
) -> None:
    base = doc_for(mirror, mirror_index, arch, wasmedge=None)
    write_yaml(node.path("/etc/wasm-edge/desired.yaml"), base)
    pin = node.path("/etc/wasm-edge/desired.d/10-pin.yaml")
    pin.parent.mkdir(parents=True, exist_ok=True)
    pin.write_text("# this node stays on crun 1.14\ncomponents:\n  crun:\n    version: '1.14'\n")
    res = node.agentd("plan", "--explain", "--json")
    assert res.code == 0, res.stderr
    doc = res.json()
    where = {e["path"]: (e["value"], e["from"]) for e in doc["explain"]}
    assert where["components.crun.version"] == ("1.14", f"{pin}:4:14")
    value, origin = where["components.k3s.version"]
    assert value == "v1.30.4+k3s1"
    assert origin.startswith(f"{node.path('/etc/wasm-edge/desired.yaml')}:")
    assert doc["sources"] == [str(node.path("/etc/wasm-edge/desired.yaml")), str(pin)]
    # The artifacts of the pinned version still come from the base document.
    url, _ = where[f"components.crun.artifacts.{arch}.url"]
    assert "1.15" in url
    human = node.agentd("plan", "--explain")
    assert "components.crun.version" in human.stdout
    assert "10-pin.yaml:4:14" in human.stdout
