"""file:// artifacts: from the node's own files, or from the fleet only when the settings allow it;
a local file that does not match is never described (no digest, no size)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from tests.support.fleet import FleetRepo, GitDaemon, write_settings
from tests.support.mirror import MirrorServer
from tests.support.node import Node
from tests.support.standins import Mirror, desired_document, write_yaml

CRUN = "/usr/local/bin/crun"
REFUSED = "a file:// artifact is accepted from this node's own files only"


def crun_only(
    base: str, index: Mirror, arch: str, generation: int, crun: str = "1.15"
) -> dict[str, Any]:
    return desired_document(
        base, index, generation=generation, k3s=None, wasmedge=None, crun=crun, arches=(arch,)
    )


def settings(node: Node, url: str, **downloads: Any) -> None:
    source = {"type": "git", "url": url, "allowInsecure": True, "ref": "main"}
    write_settings(node.root, {"source": source, "downloads": downloads})


def test_the_fleet_cannot_name_a_local_file_unless_the_settings_allow_it(
    node: Node,
    repo: FleetRepo,
    git_server: GitDaemon,
    mirror: MirrorServer,
    mirror_index: Mirror,
    arch: str,
) -> None:
    local = f"file://{mirror.directory}"
    repo.commit(crun_only(local, mirror_index, arch, 1))
    settings(node, git_server.url)
    pulled = node.agentd("pull", "--json").json()
    assert pulled["verdict"] == "rejected"
    assert REFUSED in pulled["reason"]
    assert not node.path(CRUN).exists()
    assert not list(node.path("/var/cache/wasm-edge").rglob("sha256/*"))

    # A local drop-in that changes only the sha256 does not make the fleet's URL the node's.
    url = f"{local}/{mirror_index.artifact('crun', '1.15', arch)[0]}"
    sha = mirror_index.artifact("crun", "1.15", arch)[1]
    write_yaml(
        node.path("/etc/wasm-edge/desired.d/50-pin.yaml"),
        {"components": {"crun": {"artifacts": {arch: {"url": url, "sha256": sha}}}}},
    )
    repo.commit(crun_only(mirror.url, mirror_index, arch, 2))
    res = node.agentd("apply", "--json")
    assert res.code == 0, res.stderr
    # The node's own file named it: installed from the local file, no setting needed.
    assert node.version_of(CRUN) == "crun version 1.15"
    assert res.json()["downloads"][0]["url"] == url

    node.path("/etc/wasm-edge/desired.d/50-pin.yaml").unlink()
    settings(node, git_server.url, allowLocalFiles=True)
    repo.commit(crun_only(local, mirror_index, arch, 3, crun="1.14"))
    res = node.agentd("apply", "--json")
    assert res.code == 0, res.stderr
    assert res.json()["fleet"]["generation"] == 3
    assert res.json()["downloads"][0]["url"].startswith(local)
    assert node.version_of(CRUN) == "crun version 1.14"


def test_validate_and_plan_say_where_the_refused_url_came_from(
    node: Node,
    repo: FleetRepo,
    git_server: GitDaemon,
    mirror: MirrorServer,
    mirror_index: Mirror,
    arch: str,
) -> None:
    local = f"file://{mirror.directory}"
    repo.commit(crun_only(local, mirror_index, arch, 1))
    settings(node, git_server.url, allowLocalFiles=True)
    assert node.agentd("pull", "--json").json()["outcome"] == "updated"
    assert node.agentd("validate").code == 0
    # The setting withdrawn: the last good document's file:// URL is refused where it is.
    settings(node, git_server.url)
    for args in (("validate",), ("plan",)):
        res = node.agentd(*args)
        assert res.code == 1, res.stdout
        assert re.search(
            rf"^git {re.escape(git_server.url)} main:desired.yaml@[0-9a-f]{{12}}:\d+:\d+: "
            f"{REFUSED}",
            res.stderr,
            re.MULTILINE,
        ), res.stderr
    # The same URLs in the node's own desired.yaml (later, so theirs) are the node's choice.
    write_yaml(node.path("/etc/wasm-edge/desired.yaml"), crun_only(local, mirror_index, arch, 1))
    res = node.agentd("validate")
    assert res.code == 0, res.stderr


def test_a_local_file_that_does_not_match_is_never_described(
    node: Node, tmp_path: Path, mirror_index: Mirror, arch: str
) -> None:
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$not-for-your-eyes:19000:0:99999:7:::\n")
    secret.chmod(0o600)
    real = hashlib.sha256(secret.read_bytes()).hexdigest()
    doc = crun_only("https://mirror.invalid", mirror_index, arch, 1)
    doc["components"]["crun"]["artifacts"][arch]["url"] = f"file://{secret}"
    res = node.apply(doc, "--json")
    assert res.code == 1
    text = res.stdout + res.stderr
    assert "sha256 mismatch" in text
    assert "the local file differs" in text
    assert real not in text
    assert f"({secret.stat().st_size} bytes)" not in text
    assert not node.path(CRUN).exists()
