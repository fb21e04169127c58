"""Cluster add-ons through the real command line: plan, apply, rollback of their files."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentd.core.paths import (
    GATEKEEPER_CHART,
    GATEKEEPER_MANIFEST,
    GATEKEEPER_POLICIES,
    K3S_REGISTRIES,
)
from tests.scenarios import crashdriver
from tests.support.k3sarchives import chart_archive, image_archive
from tests.support.mirror import MirrorServer
from tests.support.node import Node
from tests.support.standins import Mirror, desired_document, sha256_hex

PASSWORD = "hunter2-registry-secret"
AUTH = "dXNlcjpodW50ZXIy"  # registries.yaml's base64 user:password
GUIDE_POLICIES = Path(__file__).resolve().parents[2] / "fixtures/gatekeeper/policies/guide.yaml"


@pytest.fixture
def node(sandbox_root: Path) -> Node:
    return Node(sandbox_root)


def _served(mirror: MirrorServer, mirror_dir: Path, name: str) -> tuple[Path, str]:
    """Where a file the mirror serves as `name` goes, and its URL."""
    return mirror_dir / "addons-test" / name, f"{mirror.url.rstrip('/')}/addons-test/{name}"


def _image(mirror: MirrorServer, mirror_dir: Path, name: str, layer: bytes) -> dict[str, str]:
    path, url = _served(mirror, mirror_dir, name)
    data = image_archive(path, ["docker.io/openpolicyagent/gatekeeper:v3.15.1"], layer)
    return {"url": url, "sha256": sha256_hex(data)}


def _doc(
    mirror: MirrorServer, index: Mirror, mirror_dir: Path, arch: str, **extra: Any
) -> dict[str, Any]:
    doc = desired_document(
        mirror.url, index, arches=tuple(sorted({arch, "amd64", "arm64"})), wasmedge=None, crun=None
    )
    doc.update(extra)
    return doc


def _gatekeeper(mirror: MirrorServer, mirror_dir: Path, version: str) -> dict[str, Any]:
    path, url = _served(mirror, mirror_dir, f"gatekeeper-{version}.tgz")
    chart = {"url": url, "sha256": sha256_hex(chart_archive(path, "gatekeeper", version))}
    return {
        "gatekeeper": {"version": version, "chart": chart, "values": {"enableExternalData": True}}
    }


def _actions(result: dict[str, Any]) -> list[tuple[str, str]]:
    return [(a["component"], a["action"]) for a in result["actions"]]


def test_apply_places_chart_helmchart_images_and_registries(
    node: Node, mirror: MirrorServer, mirror_index: Mirror, mirror_dir: Path, arch: str
) -> None:
    image = _image(mirror, mirror_dir, "gk-images.tar", b"layers")
    doc = _doc(
        mirror,
        mirror_index,
        mirror_dir,
        arch,
        addons=_gatekeeper(mirror, mirror_dir, "3.15.1"),
        images=[{"name": "gatekeeper", "artifacts": {arch: image}}],
    )
    doc["components"]["k3s"]["registries"] = {
        "mirrors": {"docker.io": {"endpoint": ["https://registry.example:5000"]}},
        "configs": {"registry.example:5000": {"auth": {"username": "u", "password": PASSWORD}}},
    }
    doc["components"]["k3s"]["registries"]["configs"]["other.example"] = {"auth": {"auth": AUTH}}
    plan = node.agentd("plan", "--desired", str(node.desired(doc)), "--json", "--explain")
    assert plan.code == 0, plan.stderr
    assert PASSWORD not in plan.stdout + plan.stderr
    assert AUTH not in plan.stdout + plan.stderr
    explained = {e["path"]: e["value"] for e in plan.json()["explain"]}
    assert (
        explained["components.k3s.registries.configs.registry.example:5000.auth.password"] == "***"
    )
    assert explained["components.k3s.registries.configs.registry.example:5000.auth.username"] == "u"
    diffs = {d["component"]: d["diff"] for d in plan.json()["diffs"]}
    assert "+      password: ***" in diffs["k3s/registries"]
    assert "+      username: u" in diffs["k3s/registries"]
    res = node.apply(doc)
    assert res.code == 0, res.stderr
    assert PASSWORD not in res.stdout + res.stderr
    assert AUTH not in res.stdout + res.stderr
    done = _actions(res.json())
    for expected in [
        ("addons/gatekeeper/chart", "install"),
        ("images/gatekeeper", "install"),
        ("addons/gatekeeper", "configure"),
        ("k3s/registries", "configure"),
    ]:
        assert expected in done
    restart = next(a for a in res.json()["actions"] if a["action"] == "restart")
    assert "k3s/registries configure" in restart["reason"]
    assert (
        sha256_hex(node.path(GATEKEEPER_CHART).read_bytes())
        == doc["addons"]["gatekeeper"]["chart"]["sha256"]
    )
    placed = node.path("/var/lib/rancher/k3s/agent/images/gatekeeper.tar")
    assert sha256_hex(placed.read_bytes()) == image["sha256"]
    helmchart = yaml.safe_load(node.read(GATEKEEPER_MANIFEST))
    assert helmchart["spec"]["chart"] == "https://%{KUBERNETES_API}%/static/charts/gatekeeper.tgz"
    assert helmchart["spec"]["targetNamespace"] == "gatekeeper-system"
    assert yaml.safe_load(helmchart["spec"]["valuesContent"]) == {"enableExternalData": True}
    registries = node.path(K3S_REGISTRIES)
    assert stat.S_IMODE(registries.stat().st_mode) == 0o600
    assert (
        yaml.safe_load(registries.read_text())["configs"]["registry.example:5000"]["auth"][
            "password"
        ]
        == PASSWORD
    )
    # A second run has nothing to do.
    again = node.apply(doc)
    assert again.code == 0, again.stderr
    assert again.json()["actions"] == []
    # An archive removed by hand is put back, and says why.
    placed.unlink()
    back = node.apply(doc)
    assert back.code == 0, back.stderr
    (action,) = back.json()["actions"]
    assert action["component"] == "images/gatekeeper"
    assert f"{placed.relative_to(node.root)} is missing".lstrip("/") in action["reason"]
    assert sha256_hex(placed.read_bytes()) == image["sha256"]
    assert not list(node.root.rglob(".*agentd-*"))


def test_upgrade_then_rollback_puts_the_old_chart_back(
    node: Node, mirror: MirrorServer, mirror_index: Mirror, mirror_dir: Path, arch: str
) -> None:
    old = _doc(
        mirror, mirror_index, mirror_dir, arch, addons=_gatekeeper(mirror, mirror_dir, "3.15.0")
    )
    assert node.apply(old).code == 0
    old_chart = node.path(GATEKEEPER_CHART).read_bytes()
    old_manifest = node.read(GATEKEEPER_MANIFEST)
    new = _doc(
        mirror, mirror_index, mirror_dir, arch, addons=_gatekeeper(mirror, mirror_dir, "3.15.1")
    )
    new["generation"] = 2
    plan = node.agentd("plan", "--desired", str(node.desired(new)), "--json")
    reasons = {a["component"]: a["reason"] for a in plan.json()["actions"]}
    assert "replacing it" in reasons["addons/gatekeeper/chart"]
    assert "differs from the HelmChart of Gatekeeper 3.15.1" in reasons["addons/gatekeeper"]
    assert node.apply(new).code == 0
    assert "version: 3.15.1" in node.read(GATEKEEPER_MANIFEST)
    for component in ("addons/gatekeeper/chart", "addons/gatekeeper"):
        res = node.agentd("rollback", component, "--json")
        assert res.code == 0, res.stdout + res.stderr
    assert node.path(GATEKEEPER_CHART).read_bytes() == old_chart
    assert node.read(GATEKEEPER_MANIFEST) == old_manifest


def test_removing_the_addon_removes_its_files_and_says_what_k3s_keeps(
    node: Node, mirror: MirrorServer, mirror_index: Mirror, mirror_dir: Path, arch: str
) -> None:
    image = _image(mirror, mirror_dir, "gk-images-2.tar", b"layers2")
    doc = _doc(
        mirror,
        mirror_index,
        mirror_dir,
        arch,
        addons=_gatekeeper(mirror, mirror_dir, "3.15.1"),
        images=[{"name": "gatekeeper", "artifacts": {arch: image}}],
    )
    policies = yaml.safe_load(GUIDE_POLICIES.read_text())
    doc["addons"]["gatekeeper"]["policies"] = policies
    # The guide's Config: Gatekeeper leaves k3s's own namespaces alone.
    match = [{"excludedNamespaces": ["kube-system", "kube-public", "kube-node-lease"]}]
    doc["addons"]["gatekeeper"]["config"] = {"match": match}
    assert node.apply(doc).code == 0
    config, *written = yaml.safe_load_all(node.read(GATEKEEPER_POLICIES))
    assert (config["kind"], config["metadata"]["name"]) == ("Config", "config")
    assert config["metadata"]["namespace"] == "gatekeeper-system"
    assert config["spec"] == {"match": match}
    assert [d["kind"] for d in written] == [p["kind"] for p in policies]
    assert all(d["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "agentd" for d in written)
    assert written[1]["spec"] == policies[1]["spec"]
    gone = _doc(mirror, mirror_index, mirror_dir, arch)
    gone["generation"] = 2
    res = node.apply(gone)
    assert res.code == 0, res.stderr
    reasons = {a["component"]: a["reason"] for a in res.json()["actions"]}
    assert "leaves the HelmChart object in the cluster" in reasons["addons/gatekeeper"]
    assert "containerd keeps the images" in reasons["images/gatekeeper"]
    assert "delete constrainttemplates" in reasons["addons/gatekeeper/policies"]
    assert not node.path(GATEKEEPER_POLICIES).exists()
    assert not node.path(GATEKEEPER_MANIFEST).exists()
    assert not node.path(GATEKEEPER_CHART).exists()
    assert not node.path("/var/lib/rancher/k3s/agent/images/gatekeeper.tar").exists()
    # ...and rollback brings the manifest back.
    assert node.agentd("rollback", "addons/gatekeeper", "--json").code == 0
    assert node.path(GATEKEEPER_MANIFEST).exists()


def test_an_agent_node_writes_no_addon(
    node: Node, mirror: MirrorServer, mirror_index: Mirror, mirror_dir: Path, arch: str
) -> None:
    doc = desired_document(
        mirror.url,
        mirror_index,
        arches=tuple(sorted({arch, "amd64", "arm64"})),
        wasmedge=None,
        crun=None,
        role="agent",
        server="https://10.0.0.1:6443",
    )
    doc["addons"] = _gatekeeper(mirror, mirror_dir, "3.15.1")
    path = node.desired(doc)
    res = node.agentd("validate", str(path))
    assert res.code != 0
    assert "k3s agent" in res.stdout + res.stderr


def test_killed_at_each_addon_replace_the_files_are_whole_and_a_fresh_apply_converges(
    tmp_path: Path, mirror: MirrorServer, mirror_index: Mirror, mirror_dir: Path, arch: str
) -> None:
    old = _doc(
        mirror, mirror_index, mirror_dir, arch, addons=_gatekeeper(mirror, mirror_dir, "3.15.0")
    )
    new = _doc(
        mirror, mirror_index, mirror_dir, arch, addons=_gatekeeper(mirror, mirror_dir, "3.15.1")
    )
    new["generation"] = 2
    new["components"]["k3s"]["registries"] = {
        "configs": {"r.example": {"auth": {"username": "u", "password": PASSWORD}}}
    }
    targets = (GATEKEEPER_CHART, GATEKEEPER_MANIFEST, K3S_REGISTRIES)

    def fresh(name: str) -> Node:
        node = Node(tmp_path / name / "root")
        node.root.mkdir(parents=True)
        assert node.apply(old).code == 0
        return node

    def files(node: Node) -> dict[str, bytes | None]:
        return {t: node.path(t).read_bytes() if node.path(t).exists() else None for t in targets}

    counted = fresh("counted")
    before = files(counted)
    args = ["apply", "--desired", str(counted.desired(new)), "--json"]
    outcome = crashdriver.run(counted.root, args, tmp_path / "counted.log")
    assert outcome.code == 0, outcome.stderr
    after = files(counted)
    # Every step on an add-on file, its backup or its temporary file, and the one after the
    # last rename (each earlier one is followed by the next file's first step).
    names = tuple(t.rsplit("/", 1)[1] for t in targets)
    touching = [e.n for e in outcome.events if any(n in a for a in e.args for n in names)]
    renames = [e.n for e in outcome.events if e.op == "os.rename" and e.args[-1] in targets]
    assert len(renames) == len(targets)
    points = sorted({*touching, renames[-1] + 1})
    for n in points:
        node = fresh(f"kill-{n}")
        killed = crashdriver.run(node.root, args, tmp_path / f"kill-{n}.log", kill_at=n)
        assert killed.killed
        for target, content in files(node).items():
            assert content in (before[target], after[target]), f"{target} torn at event {n}"
        again = node.apply(new)
        assert again.code == 0, again.stderr
        assert files(node) == after
        assert stat.S_IMODE(node.path(K3S_REGISTRIES).stat().st_mode) == 0o600


@pytest.mark.skipif(shutil.which("zstd") is None, reason="Debian's zstd is needed")
def test_archives_k3s_cannot_read_are_refused_before_the_node_changes(
    node: Node, mirror: MirrorServer, mirror_index: Mirror, mirror_dir: Path, arch: str
) -> None:
    path, url = _served(mirror, mirror_dir, "gk-long.tar.zst")
    tar = image_archive(path.with_name("src.tar"), ["docker.io/openpolicyagent/gatekeeper:v3.15.1"])
    # `zstd --long=27` from a pipe: a 128 MiB window, which k3s's decoder refuses.
    packed = subprocess.run(
        ["zstd", "-q", "-c", "--long=27"], input=tar, capture_output=True, check=True
    ).stdout
    path.write_bytes(packed)
    image = {"url": url, "sha256": sha256_hex(packed)}
    doc = _doc(
        mirror,
        mirror_index,
        mirror_dir,
        arch,
        images=[{"name": "gatekeeper", "artifacts": {arch: image}}],
    )
    res = node.apply(doc)
    assert res.code == 1, res.stdout + res.stderr
    assert "zstd window is 128 MiB" in res.stderr
    assert "zstd --long=25" in res.stderr
    assert not node.path("/var/lib/rancher/k3s/agent/images/gatekeeper.tar.zst").exists()
    # The whole run is undone: k3s, planned with it, is not left half installed either.
    for where in ("/var/lib/rancher", "/usr/local/bin"):
        assert not [p for p in node.path(where).rglob("*") if not p.is_dir()]
    # A chart that is another version than the desired state says is refused too.
    wrong, chart_url = _served(mirror, mirror_dir, "gatekeeper-wrong.tgz")
    chart = {"url": chart_url, "sha256": sha256_hex(chart_archive(wrong, "gatekeeper", "3.14.0"))}
    doc = _doc(
        mirror,
        mirror_index,
        mirror_dir,
        arch,
        addons={"gatekeeper": {"version": "3.15.1", "chart": chart}},
    )
    res = node.apply(doc)
    assert res.code == 1, res.stdout + res.stderr
    assert "chart gatekeeper 3.14.0, and the desired state says gatekeeper 3.15.1" in res.stderr
    assert not node.path(GATEKEEPER_CHART).exists()
    assert not node.path(GATEKEEPER_MANIFEST).exists()
