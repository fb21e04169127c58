"""Desired values checked against the node (issue 15.8): a tokenFile that does not exist (a
warning in validate, an error finding in check) and a desired sha256 that differs from the one
agentd installed the same version from (a warning in validate and plan)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.mirror import MirrorServer
from tests.support.node import Node
from tests.support.standins import Mirror, desired_document

TOKEN = "/etc/rancher/k3s/token"
SHA = "b" * 64


def k3s_doc(token: str = TOKEN) -> str:
    arts = "".join(
        f'      {a}: {{url: "https://example.invalid/k3s-{a}", sha256: "{SHA}"}}\n'
        for a in ("amd64", "arm64", "armv7")
    )
    return (
        "apiVersion: agentd/v1\nkind: NodeState\ngeneration: 1\ncomponents:\n  k3s:\n"
        f'    version: "v1.30.4+k3s1"\n    tokenFile: {token}\n    artifacts:\n{arts}'
    )


@pytest.fixture
def node(sandbox_root: Path) -> Node:
    return Node(sandbox_root)


def test_a_missing_token_file_is_a_located_warning_in_validate(node: Node, tmp_path: Path) -> None:
    path = tmp_path / "desired.yaml"
    path.write_text(k3s_doc())
    res = node.agentd("validate", str(path))
    assert res.code == 0, res.stderr  # a warning: validate may run far from the node
    line = k3s_doc().splitlines().index(f"    tokenFile: {TOKEN}") + 1
    assert f"{path}:{line}:16: warning: {TOKEN} does not exist on this node" in res.stderr
    doc = node.agentd("validate", str(path), "--json").json()
    assert [(d["severity"], d["line"]) for d in doc["diagnostics"]] == [("warning", line)]
    node.path(TOKEN).parent.mkdir(parents=True)
    node.path(TOKEN).write_text("K10secret\n")
    res = node.agentd("validate", str(path))
    assert "does not exist" not in res.stderr, res.stderr


def test_a_missing_token_file_is_an_error_finding_in_check(node: Node) -> None:
    node.path("/etc/wasm-edge").mkdir(parents=True)
    node.path("/etc/wasm-edge/desired.yaml").write_text(k3s_doc())
    res = node.agentd("check", "--json")
    found = {f["code"]: f for f in res.json()["findings"]}
    assert found["k3s.token-file-missing"]["severity"] == "error", found
    assert TOKEN in found["k3s.token-file-missing"]["message"]
    assert res.code == 2
    node.path(TOKEN).parent.mkdir(parents=True)
    node.path(TOKEN).write_text("K10secret\n")
    codes = {f["code"] for f in node.agentd("check", "--json").json()["findings"]}
    assert "k3s.token-file-missing" not in codes
    assert "k3s.missing" in codes  # the rest of the k3s check still runs


def test_a_changed_sha256_for_the_installed_version_is_a_warning(
    node: Node, mirror: MirrorServer, mirror_index: Mirror, arch: str
) -> None:
    arches = tuple(sorted({arch, "amd64", "arm64"}))
    doc = desired_document(mirror.url, mirror_index, arches=arches, k3s=None, wasmedge=None)
    assert node.apply(doc).code == 0
    installed = node.state()["inventory"]["crun"]["sha256"]
    repinned = node.desired(doc, "repinned.yaml")
    text = repinned.read_text()
    assert installed in text
    repinned.write_text(text.replace(installed, "c" * 64))
    want = f"crun 1.15 was installed from sha256 {installed[:12]}..., not this cccccccccccc..."
    res = node.agentd("validate", str(repinned))
    assert res.code == 0, res.stderr
    assert want in res.stderr
    assert f"{repinned}:" in res.stderr.split(want)[0].splitlines()[-1]
    plan = node.agentd("plan", "--desired", str(repinned), "--json")
    assert plan.code == 0, plan.stderr
    assert any(want in w for w in plan.json()["warnings"]), plan.stdout
    # The sha256 it was installed from: nothing to say.
    same = node.agentd("plan", "--desired", str(node.desired(doc, "same.yaml")), "--json")
    assert not same.json().get("warnings"), same.stdout
