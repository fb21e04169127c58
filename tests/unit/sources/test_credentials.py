"""A source's credentials come from a 0600 credentialsFile only: never in a URL, an argument or
an environment another process can read, shown by a real git smart-HTTP server that stalls."""

from __future__ import annotations

import base64
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.support.fleet import FleetRepo, RecordingServer, TestCA, make_ca, node_file
from tests.support.fleet import write_settings as settings_file
from tests.support.githttp import GitHttpServer
from tests.support.mirror import MirrorServer
from tests.support.node import Node, Result
from tests.support.standins import Mirror, desired_document

TOKEN = "ghp-tok3n-never-on-a-command-line-71c2"
CREDENTIALS = "/etc/wasm-edge/fleet.credentials"


@pytest.fixture
def server(repo: FleetRepo) -> Any:
    with GitHttpServer(repo.served, "fleet-reader", TOKEN) as srv:
        yield srv


def credentials(node: Node, url: str, token: str = TOKEN, mode: int = 0o600) -> Path:
    scheme, rest = url.split("://", 1)
    host = rest.split("/", 1)[0]
    path = node_file(
        node.root, CREDENTIALS, f"# the fleet's reader\n{scheme}://fleet-reader:{token}@{host}\n"
    )
    path.chmod(mode)
    return path


def git_source(node: Node, url: str) -> None:
    source = {"type": "git", "url": url, "ref": "main", "allowInsecure": True}
    settings_file(node.root, {"source": {**source, "credentialsFile": CREDENTIALS}})


def pull(node: Node) -> Result:
    res = node.agentd("pull", "--json")
    assert res.stdout, res.stderr
    return res


def holders(secret: str) -> list[str]:
    """Every process whose command line or environment holds `secret` (all are readable: the
    tests run as root, which is also who an attacker on /proc would have to be for environ)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        for what in ("cmdline", "environ"):
            try:
                data = Path(f"/proc/{pid}/{what}").read_bytes()
            except OSError:
                continue  # gone already
            if secret.encode() in data:
                found.append(f"{pid} {what}: {data[:200]!r}")
    return found


def test_a_stalled_git_fetch_shows_the_token_to_no_process(
    node: Node,
    repo: FleetRepo,
    server: GitHttpServer,
    mirror: MirrorServer,
    mirror_index: Mirror,
    arch: str,
) -> None:
    commit = repo.commit(desired_document(mirror.url, mirror_index, generation=1, arches=(arch,)))
    credentials(node, server.url)
    git_source(node, server.url)
    server.stall.set()
    done: list[Result] = []
    puller = threading.Thread(target=lambda: done.append(pull(node)))
    puller.start()
    try:
        assert server.stalled.wait(60), "the fetch never reached the pack request"
        # git fetch, git-remote-http and agentd are all alive and waiting, the token in use.
        assert "git-remote-http" in _commands()
        assert holders(TOKEN) == []
    finally:
        server.release.set()
        puller.join(60)
    res = done[0]
    assert res.code == 0, res.stdout + res.stderr
    assert res.json()["outcome"] == "updated"
    assert res.json()["origin"] == commit
    # The unauthenticated probe, then the credentials: the server saw them, so they were sent.
    assert [s for s in server.seen if s[2] == 200][-1][1].endswith("/git-upload-pack")
    assert ("GET", "/fleet.git/info/refs", 401) in server.seen


def _commands() -> set[str]:
    """The command names of every process (one that exits meanwhile is left out)."""
    names = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            names.add(Path(f"/proc/{pid}/comm").read_text().strip())
        except OSError:
            continue
    return names


def test_a_wrong_git_token_fails_clearly_and_the_token_is_masked(
    node: Node,
    repo: FleetRepo,
    server: GitHttpServer,
    mirror: MirrorServer,
    mirror_index: Mirror,
    arch: str,
) -> None:
    repo.commit(desired_document(mirror.url, mirror_index, generation=1, arches=(arch,)))
    wrong = "wrong-tok3n-5e1d"
    credentials(node, server.url, token=wrong)
    git_source(node, server.url)
    res = pull(node)
    assert res.code == 1
    detail = res.json()["detail"]
    assert "Authentication failed" in detail
    assert f"the credentials in {CREDENTIALS} were refused" in detail
    assert wrong not in res.stdout + res.stderr
    assert not node.path("/var/lib/wasm-edge/source/candidate.yaml").exists()


@pytest.mark.parametrize(
    ("mode", "owner", "expected"),
    [
        (0o644, None, "is mode 0644, readable by others: refused (chmod 600"),
        (0o640, None, "is mode 0640, readable by others"),
        (0o400, 4242, "is owned by uid 4242: it must be owned by root"),
    ],
)
def test_a_credentials_file_others_can_read_is_refused_before_git_runs(
    node: Node, repo: FleetRepo, server: GitHttpServer, mode: int, owner: Any, expected: str
) -> None:
    path = credentials(node, server.url, mode=mode)
    if owner is not None:
        os.chown(path, owner, owner)
    git_source(node, server.url)
    res = pull(node)
    assert res.code == 1
    assert expected in res.json()["detail"]
    assert server.seen == []  # refused before any request
    assert TOKEN not in res.stdout + res.stderr


def test_a_link_or_a_line_for_another_host_is_refused(
    node: Node, repo: FleetRepo, server: GitHttpServer
) -> None:
    real = credentials(node, "http://elsewhere.example:8080")
    git_source(node, server.url)
    res = pull(node)
    assert res.code == 1
    port = server.url.split(":")[2].split("/")[0]
    assert f"has no line for http://127.0.0.1:{port}" in res.json()["detail"]
    # A line for a path of the right host is one git would not use either.
    real.write_text(f"http://fleet-reader:{TOKEN}@127.0.0.1:{port}/other.git\n")
    res = pull(node)
    assert f"has no line for http://127.0.0.1:{port}" in res.json()["detail"]
    assert TOKEN not in res.stdout + res.stderr
    moved = real.with_name("real.credentials")
    real.rename(moved)
    real.symlink_to(moved)
    res = pull(node)
    assert "is not a regular file" in res.json()["detail"]


@pytest.mark.parametrize(
    "url",
    [
        "https://fleet-reader:s3cret@git.example.org/fleet.git",
        "https://TOKEN123@git.example.org/fleet.git",
        "ssh://git:pw@git.example.org/fleet.git",
    ],
)
def test_credentials_in_a_source_url_are_refused_for_credentials_file(node: Node, url: str) -> None:
    settings_file(node.root, {"source": {"type": "git", "url": url, "ref": "main"}})
    res = node.agentd("settings")
    assert res.code == 1
    assert "put https://USER:TOKEN@HOST in a 0600 credentialsFile" in res.stderr
    secret = url.split("//", 1)[1].partition("@")[0].rpartition(":")[2]
    assert secret not in res.stdout + res.stderr


def test_an_ssh_user_name_is_not_a_credential(node: Node) -> None:
    for url in ("ssh://git@git.example.org/fleet.git", "git@git.example.org:fleet.git"):
        settings_file(node.root, {"source": {"type": "git", "url": url, "ref": "main"}})
        res = node.agentd("settings")
        assert res.code == 0, res.stderr


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return make_ca(tmp_path_factory.mktemp("ca"))


def test_https_credentials_are_a_basic_header_for_the_origin_only(
    node: Node,
    ca: TestCA,
    mirror: MirrorServer,
    mirror_index: Mirror,
    arch: str,
    tmp_path: Path,
) -> None:
    doc = tmp_path / "fleet.yaml"
    from tests.support.standins import write_yaml

    write_yaml(doc, desired_document(mirror.url, mirror_index, generation=1, arches=(arch,)))
    basic = "Basic " + base64.b64encode(f"fleet-reader:{TOKEN}".encode()).decode()
    node_file(node.root, "/etc/wasm-edge/ca.pem", ca.cert)
    with RecordingServer(ca.server_context(), bodies={"/fleet.yaml": doc.read_bytes()}) as srv:
        srv.redirects["/old.yaml"] = "/fleet.yaml"
        credentials(node, srv.url)
        source = {"type": "https", "url": f"{srv.url}/old.yaml", "credentialsFile": CREDENTIALS}
        settings_file(node.root, {"source": source, "tls": {"caFile": "/etc/wasm-edge/ca.pem"}})
        res = pull(node)
        assert res.code == 0, res.stdout + res.stderr
        assert [(s.path, s.headers.get("Authorization")) for s in srv.seen] == [
            ("/old.yaml", basic),
            ("/fleet.yaml", basic),
        ]
    assert TOKEN not in res.stdout + res.stderr


def test_url_credentials_in_settings_an_older_agentd_validated_are_not_used(
    node: Node, repo: FleetRepo, server: GitHttpServer
) -> None:
    git_source(node, server.url)
    shown = node.agentd("settings", "--json")
    assert shown.code == 0, shown.stderr
    raw = shown.json()["settings"]
    del raw["source"]["credentialsFile"]
    raw["source"]["url"] = server.url.replace("http://", f"http://fleet-reader:{TOKEN}@")
    # The daemon hands its workers the settings it last validated, as JSON.
    res = node.agentd("pull", "--json", env={"AGENTD_SETTINGS_JSON": json.dumps(raw)})
    assert res.code == 1
    assert "credentials in a source URL are refused" in res.json()["detail"]
    assert server.seen == []
    assert TOKEN not in res.stdout + res.stderr


def test_a_wrong_https_token_fails_clearly_and_the_token_is_masked(
    node: Node, ca: TestCA, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "fleet.yaml").write_text("apiVersion: agentd/v1\n")
    node_file(node.root, "/etc/wasm-edge/ca.pem", ca.cert)
    with MirrorServer(site, tls=ca.server_context()) as srv:
        srv.fail("/fleet.yaml", 401)
        credentials(node, srv.url)
        source = {"type": "https", "url": f"{srv.url}/fleet.yaml", "credentialsFile": CREDENTIALS}
        settings_file(node.root, {"source": source, "tls": {"caFile": "/etc/wasm-edge/ca.pem"}})
        res = pull(node)
    assert res.code == 1
    assert res.json()["detail"] == (
        f"{srv.url}/fleet.yaml: HTTP 401 Unauthorized "
        f"(the credentials in {CREDENTIALS} were refused)"
    )
    assert TOKEN not in res.stdout + res.stderr
