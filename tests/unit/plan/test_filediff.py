"""The plan's unified diffs of the config files it changes, secrets masked (issue 15.4)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agentd.core.paths import K3S_CONFIG
from agentd.plan.filediff import config_diffs, mask_line
from agentd.plan.model import Action, Plan
from tests.support.mirror import MirrorServer
from tests.support.node import Node
from tests.support.standins import Mirror, desired_document

SECRET = "s3cr3t-Zq9"
HAND_WRITTEN = (
    f"token: {SECRET}\n"
    f"agent-token: '{SECRET}'\n"
    f"datastore-endpoint: postgres://k3s:{SECRET}@db:5432/k3s\n"
    f'etcd-s3-secret-key = "{SECRET}"\n'
    "token-file: /etc/wasm-edge/k3s-token\n"
    "write-kubeconfig-mode: '0600'\n"
)


@pytest.mark.parametrize(
    "line",
    [
        f"token: {SECRET}",
        f"-agent-token: '{SECRET}'",
        f'+  password = "{SECRET}"',
        f"ExecStart=/usr/local/bin/k3s server --token {SECRET}",
        f"Environment=K3S_TOKEN={SECRET}",
        f"datastore-endpoint: postgres://k3s:{SECRET}@db/k3s",
        f"etcd-s3-access-key: {SECRET}",
    ],
)
def test_a_secret_in_a_config_line_is_masked(line: str) -> None:
    masked = mask_line(line)
    assert SECRET not in masked
    assert "***" in masked


def test_what_is_not_a_secret_stays_readable() -> None:
    for line in ("token-file: /etc/wasm-edge/k3s-token", 'BinaryName = "/usr/local/bin/crun"'):
        assert mask_line(line) == line


def test_a_changed_secret_is_a_changed_line_but_never_shown() -> None:
    action = Action("k3s/config", "configure", "differs", target=K3S_CONFIG, content=b"token: b\n")
    (diff,) = config_diffs(Plan(1, "amd64", (action,)), {K3S_CONFIG: b"token: a\n"})
    assert diff["diff"].splitlines()[2:] == ["@@ -1 +1 @@", "-token: ***", "+token: ***"]
    removal = Action("k3s/config", "configure", "gone", target=K3S_CONFIG, content=None)
    (gone,) = config_diffs(Plan(1, "amd64", (removal,)), {K3S_CONFIG: b"a: 1\n"})
    assert gone["diff"].splitlines()[:2] == [f"--- {K3S_CONFIG}", "+++ /dev/null"]


@pytest.fixture
def node(sandbox_root: Path) -> Node:
    return Node(sandbox_root)


def test_plan_shows_every_config_diff_masked_and_cut_in_human_output(
    node: Node, mirror: MirrorServer, mirror_index: Mirror, arch: str
) -> None:
    config = node.path(K3S_CONFIG)
    config.parent.mkdir(parents=True)
    config.write_text(HAND_WRITTEN)
    classes: list[dict[str, Any]] = [
        {"name": f"wasm-{i}", "handler": "crun-wasm", "nodeSelector": {"zone": f"z{i}"}}
        for i in range(6)
    ]
    doc = desired_document(
        mirror.url, mirror_index, arches=(arch,), runtime_classes=classes, wasmedge=None
    )
    path = str(node.desired(doc))
    res = node.agentd("plan", "--desired", path, "--json")
    assert res.code == 0, res.stderr
    diffs = {d["component"]: d for d in res.json()["diffs"]}
    assert sorted(diffs) == ["k3s/config", "k3s/containerd", "k3s/runtimeclasses", "k3s/unit"]
    assert SECRET not in res.stdout
    ours = diffs["k3s/config"]["diff"]
    assert "-token: ***" in ours
    assert "-datastore-endpoint: postgres://***@db:5432/k3s" in ours
    assert "\n token-file: /etc/wasm-edge/k3s-token\n" in ours  # a path, readable
    assert "-write-kubeconfig-mode: '0600'\n+write-kubeconfig-mode: '0644'\n" in ours
    manifest = diffs["k3s/runtimeclasses"]
    assert manifest["diff"].startswith("--- /dev/null\n+++ /var/lib/rancher/k3s/server/manifests/")
    assert manifest["lines"] == len(manifest["diff"].splitlines()) > 40
    assert "name: wasm-5" in manifest["diff"]  # JSON: in full
    human = node.agentd("plan", "--desired", path)
    assert SECRET not in human.stdout
    assert f"Diff of {K3S_CONFIG} (k3s/config):" in human.stdout
    assert "    -token: ***" in human.stdout
    assert f"    ... {manifest['lines'] - 40} more lines" in human.stdout
    assert "name: wasm-5" not in human.stdout  # cut at 40 lines
