"""Pulling the fleet's desired state through the real CLI: a git daemon, HTTPS with a test CA,
signatures by keys made here with ssh-keygen and gpg, and the last good document kept."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest

from tests.support.fleet import (
    FleetRepo,
    GitDaemon,
    GpgKey,
    RecordingServer,
    SshKey,
    TestCA,
    gpg_key,
    make_ca,
    node_file,
    ssh_key,
    write_settings,
)
from tests.support.mirror import MirrorServer, Response
from tests.support.node import Node
from tests.support.standins import Mirror, desired_document, write_yaml

ALLOWED_SIGNERS = "/etc/wasm-edge/allowed_signers"
KEYRING = "/etc/wasm-edge/fleet-keyring.gpg"
CA_FILE = "/etc/wasm-edge/fleet-ca.pem"
SOURCE_DIR = "/var/lib/wasm-edge/source"
CRUN = "/usr/local/bin/crun"
CREDENTIALS = "/etc/wasm-edge/fleet.credentials"


@dataclass(frozen=True)
class Keys:
    alice: SshKey  # in the node's allowed signers
    mallory: SshKey  # a valid key nobody allowed
    fleet_gpg: GpgKey  # in the node's keyring
    other_gpg: GpgKey


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    d = tmp_path_factory.mktemp("keys")
    made = Keys(
        ssh_key(d / "ssh", "alice@example.org"),
        ssh_key(d / "ssh", "mallory@example.org"),
        gpg_key(d / "gpg-fleet", "Fleet Signer <fleet@example.org>"),
        gpg_key(d / "gpg-other", "Someone Else <else@example.org>"),
    )
    yield made
    made.fleet_gpg.stop_agent()
    made.other_gpg.stop_agent()


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """What the fleet's HTTPS server publishes: fleet.yaml and fleet.yaml.sig."""
    path = tmp_path / "site"
    path.mkdir()
    return path


@pytest.fixture
def https(site: Path, ca: TestCA) -> Iterator[MirrorServer]:
    with MirrorServer(site, tls=ca.server_context()) as server:
        yield server


# --- helpers -------------------------------------------------------------------------------------


def fleet_doc(
    mirror: MirrorServer, index: Mirror, arch: str, generation: int, crun: str = "1.14"
) -> dict[str, Any]:
    return desired_document(mirror.url, index, generation=generation, crun=crun, arches=(arch,))


def git_settings(node: Node, url: str, verify: Optional[dict[str, Any]] = None) -> None:
    source: dict[str, Any] = {"type": "git", "url": url, "allowInsecure": True, "ref": "main"}
    if verify:
        source["verify"] = verify
    write_settings(node.root, {"source": source})


def https_settings(
    node: Node,
    url: str,
    ca: Optional[TestCA],
    verify: Optional[dict[str, Any]] = None,
    credentials: Optional[str] = None,
    **tls: Any,
) -> None:
    source: dict[str, Any] = {"type": "https", "url": url}
    if credentials is not None:
        host = url.split("://", 1)[1].split("/", 1)[0]
        node_file(node.root, CREDENTIALS, f"https://fleet-reader:{credentials}@{host}\n").chmod(
            0o600
        )
        source["credentialsFile"] = CREDENTIALS
    if verify:
        source["verify"] = verify
    if ca is not None:
        node_file(node.root, CA_FILE, ca.cert)
        tls["caFile"] = CA_FILE
    write_settings(node.root, {"source": source, "tls": tls})


SSH_VERIFY = {"method": "ssh", "allowedSigners": ALLOWED_SIGNERS}
GPG_VERIFY = {"method": "gpg", "keyring": KEYRING}


def allow(node: Node, *keys: SshKey) -> None:
    node_file(node.root, ALLOWED_SIGNERS, "".join(k.allowed_signers_line() for k in keys))


def publish(site: Path, doc: Any) -> Path:
    """Put a new fleet.yaml on the site; an old signature stays until the test replaces it."""
    path = site / "fleet.yaml"
    if isinstance(doc, str):
        path.write_text(doc)
    else:
        write_yaml(path, doc)
    return path


def pull(node: Node) -> tuple[int, dict[str, Any]]:
    res = node.agentd("pull", "--json")
    assert res.stdout, res.stderr
    doc: dict[str, Any] = res.json()
    return res.code, doc


def apply(node: Node, *args: str) -> tuple[int, dict[str, Any]]:
    res = node.agentd("apply", "--json", *args)
    assert res.stdout, res.stderr
    doc: dict[str, Any] = res.json()
    return res.code, doc


def status(node: Node) -> dict[str, Any]:
    res = node.agentd("status", "--json")
    doc: dict[str, Any] = res.json()
    return doc


def source_status(node: Node) -> dict[str, Any]:
    source: dict[str, Any] = status(node)["source"]
    return source


def crun(node: Node) -> str:
    return node.version_of(CRUN)


def actions(result: dict[str, Any]) -> list[tuple[str, str]]:
    return [(a["component"], a["action"]) for a in result["actions"]]


# --- git -----------------------------------------------------------------------------------------


def test_git_commit_converges_the_node_and_a_higher_generation_upgrades_it(
    node: Node,
    repo: FleetRepo,
    git_server: GitDaemon,
    mirror: MirrorServer,
    mirror_index: Mirror,
    arch: str,
) -> None:
    first = repo.commit(fleet_doc(mirror, mirror_index, arch, 1, crun="1.14"))
    git_settings(node, git_server.url)

    code, result = apply(node)
    assert code == 0, result
    assert result["outcome"] == "converged"
    assert result["pull"]["outcome"] == "updated"
    assert result["fleet"] == {"generation": 1, "origin": first, "signedBy": None}
    assert ("crun", "install") in actions(result)
    assert crun(node) == "crun version 1.14"
    shown = status(node)
    assert shown["lastAppliedGeneration"] == 1
    assert shown["source"]["lastGood"]["generation"] == 1
    assert shown["source"]["lastGood"]["origin"] == first
    assert shown["source"]["source"] == f"git {git_server.url} main:desired.yaml"

    second = repo.commit(fleet_doc(mirror, mirror_index, arch, 2, crun="1.15"))
    code, result = apply(node)
    assert code == 0, result
    assert result["fleet"]["generation"] == 2
    assert result["fleet"]["origin"] == second
    assert actions(result)[0] == ("crun", "upgrade")
    assert crun(node) == "crun version 1.15"
    shown = status(node)
    assert shown["lastAppliedGeneration"] == 2
    assert shown["source"]["lastGood"]["generation"] == 2
    assert (
        node.path(f"{SOURCE_DIR}/fleet.yaml").read_bytes()
        == (repo.work / "desired.yaml").read_bytes()
    )

    # Nothing new on the branch: the pull says so and the node has nothing to do.
    code, result = apply(node)
    assert code == 0, result
    assert result["pull"]["outcome"] == "unchanged"
    assert result["actions"] == []


def test_git_ssh_verification_refuses_unsigned_and_unknown_signers(
    node: Node,
    repo: FleetRepo,
    git_server: GitDaemon,
    keys: Keys,
    mirror: MirrorServer,
    mirror_index: Mirror,
    arch: str,
) -> None:
    allow(node, keys.alice)
    git_settings(node, git_server.url, SSH_VERIFY)
    good = repo.commit(fleet_doc(mirror, mirror_index, arch, 1), ssh=keys.alice)
    code, result = apply(node)
    assert code == 0, result
    assert result["fleet"] == {"generation": 1, "origin": good, "signedBy": "alice@example.org"}
    assert crun(node) == "crun version 1.14"

    unsigned = repo.commit(fleet_doc(mirror, mirror_index, arch, 2, crun="1.15"))
    code, pulled = pull(node)
    assert code == 1
    assert pulled["outcome"] == "rejected"
    assert pulled["origin"] == unsigned
    assert pulled["detail"] == (
        f"commit {unsigned[:12]} is not signed by an allowed signer: the commit is not signed"
    )
    assert pulled["lastGood"]["origin"] == good

    by_mallory = repo.commit(
        fleet_doc(mirror, mirror_index, arch, 3, crun="1.15"), ssh=keys.mallory
    )
    code, pulled = pull(node)
    assert code == 1
    assert pulled["outcome"] == "rejected"
    assert pulled["origin"] == by_mallory
    assert "No principal matched" in pulled["detail"]
    # plan says apply refuses it, with its own exit code (issue 15.2).
    planned = node.agentd("plan", "--json", "--detailed-exitcode")
    assert planned.code == 3, planned.stdout
    (refused,) = planned.json()["refusals"]
    assert (refused["kind"], refused["subject"]) == ("signature", "fleet document")
    assert "No principal matched" in refused["reason"]

    # The node keeps converging to the last good generation, and says why it keeps it.
    code, result = apply(node)
    assert code == 0, result
    assert result["pull"]["outcome"] == "rejected"
    assert result["fleet"]["generation"] == 1
    assert result["actions"] == []
    assert crun(node) == "crun version 1.14"
    source = source_status(node)
    assert source["verification"] == "ssh"
    assert source["lastPull"]["outcome"] == "rejected"
    assert "No principal matched" in source["lastPull"]["detail"]
    assert source["lastGood"]["origin"] == good
    assert not node.path(f"{SOURCE_DIR}/candidate.yaml").exists()

    fixed = repo.commit(fleet_doc(mirror, mirror_index, arch, 4, crun="1.15"), ssh=keys.alice)
    code, result = apply(node)
    assert code == 0, result
    assert result["fleet"] == {"generation": 4, "origin": fixed, "signedBy": "alice@example.org"}
    assert crun(node) == "crun version 1.15"


def test_git_gpg_verification_accepts_the_fleet_key_only(
    node: Node,
    repo: FleetRepo,
    git_server: GitDaemon,
    keys: Keys,
    mirror: MirrorServer,
    mirror_index: Mirror,
    arch: str,
) -> None:
    keys.fleet_gpg.export(node.path(KEYRING))
    git_settings(node, git_server.url, GPG_VERIFY)
    good = repo.commit(fleet_doc(mirror, mirror_index, arch, 1), gpg=keys.fleet_gpg)
    code, pulled = pull(node)
    assert code == 0, pulled
    assert pulled["outcome"] == "updated"
    assert pulled["detail"] == f"generation 1, signed by {keys.fleet_gpg.fingerprint}"
    assert pulled["verification"] == "gpg"

    other = repo.commit(fleet_doc(mirror, mirror_index, arch, 2, crun="1.15"), gpg=keys.other_gpg)
    code, pulled = pull(node)
    assert code == 1
    assert pulled["outcome"] == "rejected"
    assert pulled["origin"] == other
    assert f"NO_PUBKEY {keys.other_gpg.fingerprint[-16:]}" in pulled["detail"]

    unsigned = repo.commit(fleet_doc(mirror, mirror_index, arch, 3, crun="1.15"))
    code, pulled = pull(node)
    assert code == 1
    assert pulled["detail"].endswith("the commit is not signed")
    assert pulled["origin"] == unsigned

    code, result = apply(node)
    assert code == 0, result
    assert result["fleet"] == {
        "generation": 1,
        "origin": good,
        "signedBy": keys.fleet_gpg.fingerprint,
    }
    assert crun(node) == "crun version 1.14"
    # Verifying needs no gpg-agent: none was started in the node's private GNUPGHOME.
    home = node.path(f"{SOURCE_DIR}/gnupg")
    assert (home / "pubring.gpg").is_file()
    assert [p.name for p in home.iterdir() if p.name.startswith("S.")] == []


def test_git_force_push_to_an_older_generation_is_refused(
    node: Node,
    repo: FleetRepo,
    git_server: GitDaemon,
    keys: Keys,
    mirror: MirrorServer,
    mirror_index: Mirror,
    arch: str,
) -> None:
    allow(node, keys.alice)
    git_settings(node, git_server.url, SSH_VERIFY)
    old = repo.commit(fleet_doc(mirror, mirror_index, arch, 1), ssh=keys.alice)
    assert pull(node)[1]["outcome"] == "updated"
    new = repo.commit(fleet_doc(mirror, mirror_index, arch, 2, crun="1.15"), ssh=keys.alice)
    code, result = apply(node)
    assert code == 0, result
    assert crun(node) == "crun version 1.15"

    repo.force_push(old)  # validly signed, but history went backwards
    code, pulled = pull(node)
    assert code == 1
    assert pulled["outcome"] == "rejected"
    assert pulled["origin"] == old
    assert pulled["detail"].startswith("generation 1 is older than generation 2 already accepted")

    code, result = apply(node)
    assert code == 0, result
    assert result["pull"]["outcome"] == "rejected"
    assert result["fleet"]["origin"] == new
    assert result["actions"] == []
    assert crun(node) == "crun version 1.15"
    assert source_status(node)["lastGood"]["generation"] == 2


def test_git_same_generation_with_other_content_and_garbage_are_refused(
    node: Node,
    repo: FleetRepo,
    git_server: GitDaemon,
    mirror: MirrorServer,
    mirror_index: Mirror,
    arch: str,
) -> None:
    good = repo.commit(fleet_doc(mirror, mirror_index, arch, 1))
    git_settings(node, git_server.url)
    code, result = apply(node)
    assert code == 0, result
    assert crun(node) == "crun version 1.14"

    refused: dict[str, Any] = {
        "generation 1 was already accepted with other content": fleet_doc(
            mirror, mirror_index, arch, 1, crun="1.15"
        ),
        "not a valid YAML document": "components: [crun\n",
        "the document has no generation": "apiVersion: agentd/v1\nkind: NodeState\n",
        "not a desired state: the document is not a mapping": "- generation: 2\n",
        "not a desired state: expected apiVersion agentd/v1": "generation: 2\nkind: Other\n",
    }
    for reason, content in refused.items():
        commit = repo.commit(content)
        code, pulled = pull(node)
        assert code == 1, pulled
        assert pulled["outcome"] == "rejected"
        assert pulled["origin"] == commit
        assert reason in pulled["detail"]
        assert pulled["lastGood"]["origin"] == good
        assert not node.path(f"{SOURCE_DIR}/candidate.yaml").exists()

    code, result = apply(node)
    assert code == 0, result
    assert result["fleet"]["origin"] == good
    assert result["actions"] == []
    assert crun(node) == "crun version 1.14"


def test_git_server_stopped_the_node_converges_to_the_last_good_document(
    node: Node,
    repo: FleetRepo,
    git_server: GitDaemon,
    mirror: MirrorServer,
    mirror_index: Mirror,
    arch: str,
) -> None:
    good = repo.commit(fleet_doc(mirror, mirror_index, arch, 1))
    git_settings(node, git_server.url)
    code, result = apply(node)
    assert code == 0, result

    git_server.stop()
    node.path(CRUN).unlink()  # drift, so converging to the last good document has work to do
    code, pulled = pull(node)
    assert code == 1
    assert pulled["outcome"] == "failed"
    assert pulled["detail"].startswith(
        f"git fetch of git {git_server.url} main:desired.yaml failed"
    )

    code, result = apply(node)
    assert code == 0, result
    assert result["pull"]["outcome"] == "failed"
    assert result["fleet"]["origin"] == good
    assert ("crun", "install") in actions(result)
    assert crun(node) == "crun version 1.14"
    source = source_status(node)
    assert source["lastPull"]["outcome"] == "failed"
    assert source["lastSuccessAt"] is not None
    assert source["lastGood"]["origin"] == good


# --- HTTPS ---------------------------------------------------------------------------------------


def test_https_second_poll_of_an_unchanged_document_is_one_304(
    node: Node,
    site: Path,
    https: MirrorServer,
    ca: TestCA,
    keys: Keys,
    mirror: MirrorServer,
    mirror_index: Mirror,
    arch: str,
) -> None:
    allow(node, keys.alice)
    https_settings(node, f"{https.url}/fleet.yaml", ca, SSH_VERIFY)
    keys.alice.sign(publish(site, fleet_doc(mirror, mirror_index, arch, 1)))
    code, pulled = pull(node)
    assert code == 0, pulled
    assert pulled["outcome"] == "updated"
    assert pulled["detail"] == "generation 1, signed by alice@example.org"
    assert [(r.path, r.status) for r in https.responses] == [
        ("/fleet.yaml", 200),
        ("/fleet.yaml.sig", 200),
    ]

    for _ in range(2):
        https.clear_requests()
        code, pulled = pull(node)
        assert code == 0, pulled
        assert pulled["outcome"] == "unchanged"
        assert https.responses == [Response("GET", "/fleet.yaml", 304, 0)]
    assert source_status(node)["lastGood"]["generation"] == 1


def test_https_server_down_keeps_the_last_good_document(
    node: Node,
    site: Path,
    https: MirrorServer,
    ca: TestCA,
    mirror: MirrorServer,
    mirror_index: Mirror,
    arch: str,
) -> None:
    https_settings(node, f"{https.url}/fleet.yaml", ca)
    publish(site, fleet_doc(mirror, mirror_index, arch, 1))
    code, result = apply(node)
    assert code == 0, result
    assert result["fleet"]["generation"] == 1

    https.stop()
    code, result = apply(node)
    assert code == 0, result
    assert result["outcome"] == "converged"
    assert result["pull"]["outcome"] == "failed"
    assert result["pull"]["detail"].startswith(f"{https.url}/fleet.yaml: ")
    assert result["fleet"]["generation"] == 1
    assert crun(node) == "crun version 1.14"
    source = source_status(node)
    assert source["lastPull"]["outcome"] == "failed"
    assert source["lastGood"]["generation"] == 1


def test_https_bad_ssh_signatures_are_refused_and_a_late_signature_is_picked_up(
    node: Node,
    site: Path,
    https: MirrorServer,
    ca: TestCA,
    keys: Keys,
    mirror: MirrorServer,
    mirror_index: Mirror,
    arch: str,
) -> None:
    allow(node, keys.alice)
    https_settings(node, f"{https.url}/fleet.yaml", ca, SSH_VERIFY)
    keys.alice.sign(publish(site, fleet_doc(mirror, mirror_index, arch, 1)))
    code, result = apply(node)
    assert code == 0, result
    assert result["fleet"]["signedBy"] == "alice@example.org"

    # Changed after it was signed.
    doc = publish(site, fleet_doc(mirror, mirror_index, arch, 2, crun="1.15"))
    keys.alice.sign(doc)
    with doc.open("a") as f:
        f.write("# edited after signing\n")
    code, pulled = pull(node)
    assert code == 1
    assert pulled["outcome"] == "rejected"
    assert pulled["detail"].startswith("bad signature: ")

    # Signed by a key the node does not allow.
    publish(site, fleet_doc(mirror, mirror_index, arch, 2, crun="1.15"))
    keys.mallory.sign(doc)
    code, pulled = pull(node)
    assert code == 1
    assert pulled["outcome"] == "rejected"
    assert pulled["detail"].startswith(f"the signature is not by a key in {ALLOWED_SIGNERS}")

    # Not signed at all: the .sig is missing.
    Path(f"{doc}.sig").unlink()
    https.clear_requests()
    code, pulled = pull(node)
    assert code == 1
    assert pulled["outcome"] == "rejected"
    assert pulled["detail"].startswith("the document is not signed: ")
    assert "HTTP 404" in pulled["detail"]
    assert [(r.path, r.status) for r in https.responses] == [
        ("/fleet.yaml", 200),
        ("/fleet.yaml.sig", 404),
    ]

    code, result = apply(node)
    assert code == 0, result
    assert result["pull"]["outcome"] == "rejected"
    assert result["fleet"]["generation"] == 1
    assert crun(node) == "crun version 1.14"
    assert source_status(node)["lastPull"]["outcome"] == "rejected"

    # The signature is published after the document: the next pull checks it again.
    keys.alice.sign(doc)
    https.clear_requests()
    code, result = apply(node)
    assert code == 0, result
    assert result["pull"]["outcome"] == "updated"
    assert result["fleet"] == {
        "generation": 2,
        "origin": result["pull"]["origin"],
        "signedBy": "alice@example.org",
    }
    assert [(r.path, r.status) for r in https.responses] == [
        ("/fleet.yaml", 200),
        ("/fleet.yaml.sig", 200),
    ]
    assert crun(node) == "crun version 1.15"


def test_https_replay_of_an_older_validly_signed_document_is_refused(
    node: Node,
    site: Path,
    https: MirrorServer,
    ca: TestCA,
    keys: Keys,
    mirror: MirrorServer,
    mirror_index: Mirror,
    arch: str,
) -> None:
    """Whoever controls the origin (or sits in front of it) may serve yesterday's document and
    its genuine signature again: the generation may only go up."""
    allow(node, keys.alice)
    https_settings(node, f"{https.url}/fleet.yaml", ca, SSH_VERIFY)
    doc = publish(site, fleet_doc(mirror, mirror_index, arch, 1))
    keys.alice.sign(doc)
    old = (doc.read_bytes(), Path(f"{doc}.sig").read_bytes())
    assert apply(node)[0] == 0
    keys.alice.sign(publish(site, fleet_doc(mirror, mirror_index, arch, 2, crun="1.15")))
    code, result = apply(node)
    assert code == 0, result
    assert crun(node) == "crun version 1.15"

    doc.write_bytes(old[0])
    Path(f"{doc}.sig").write_bytes(old[1])
    code, pulled = pull(node)
    assert code == 1
    assert pulled["outcome"] == "rejected"
    assert pulled["detail"].startswith("generation 1 is older than generation 2 already accepted")
    code, result = apply(node)
    assert code == 0, result
    assert result["fleet"]["generation"] == 2
    assert result["actions"] == []
    assert crun(node) == "crun version 1.15"


def test_https_gpg_detached_signatures(
    node: Node,
    site: Path,
    https: MirrorServer,
    ca: TestCA,
    keys: Keys,
    mirror: MirrorServer,
    mirror_index: Mirror,
    arch: str,
) -> None:
    keys.fleet_gpg.export(node.path(KEYRING), armor=True)
    https_settings(node, f"{https.url}/fleet.yaml", ca, GPG_VERIFY)
    keys.fleet_gpg.sign(publish(site, fleet_doc(mirror, mirror_index, arch, 1)), armor=True)
    code, pulled = pull(node)
    assert code == 0, pulled
    assert pulled["detail"] == f"generation 1, signed by {keys.fleet_gpg.fingerprint}"

    doc = publish(site, fleet_doc(mirror, mirror_index, arch, 2, crun="1.15"))
    keys.other_gpg.sign(doc)
    code, pulled = pull(node)
    assert code == 1
    assert pulled["outcome"] == "rejected"
    assert pulled["detail"].startswith("bad or unknown gpg signature: ")
    assert pulled["lastGood"]["generation"] == 1

    keys.fleet_gpg.sign(doc)  # binary this time; the document itself is unchanged
    code, result = apply(node)
    assert code == 0, result
    assert result["fleet"]["generation"] == 2
    assert result["fleet"]["signedBy"] == keys.fleet_gpg.fingerprint
    assert crun(node) == "crun version 1.15"


def test_https_tls_is_verified_by_default_and_insecure_skip_verify_shows_in_status(
    node: Node,
    site: Path,
    https: MirrorServer,
    ca: TestCA,
    mirror: MirrorServer,
    mirror_index: Mirror,
    arch: str,
) -> None:
    publish(site, fleet_doc(mirror, mirror_index, arch, 1))
    url = f"{https.url}/fleet.yaml"

    https_settings(node, url, None)  # the test CA is not one the system trusts
    code, pulled = pull(node)
    assert code == 1
    assert pulled["outcome"] == "failed"
    assert "CERTIFICATE_VERIFY_FAILED" in pulled["detail"]
    assert https.responses == []  # no request got past the handshake
    assert pulled["lastGood"] is None

    https_settings(node, url, None, insecureSkipVerify=True)
    code, pulled = pull(node)
    assert code == 0, pulled
    assert pulled["outcome"] == "updated"
    assert source_status(node)["tlsVerification"] == "OFF (tls.insecureSkipVerify)"

    https_settings(node, url, ca)
    code, pulled = pull(node)
    assert code == 0, pulled
    assert pulled["outcome"] == "unchanged"
    assert "tlsVerification" not in source_status(node)


def test_https_redirect_to_plain_http_is_refused(
    node: Node,
    site: Path,
    https: MirrorServer,
    ca: TestCA,
    mirror: MirrorServer,
    mirror_index: Mirror,
    arch: str,
) -> None:
    publish(site, fleet_doc(mirror, mirror_index, arch, 1))
    with MirrorServer(site) as plain:
        https.redirect("/fleet.yaml", f"{plain.url}/fleet.yaml")
        https_settings(node, f"{https.url}/fleet.yaml", ca)
        code, pulled = pull(node)
        assert code == 1
        assert pulled["outcome"] == "failed"
        assert pulled["detail"] == (
            f"{https.url}/fleet.yaml redirects to {plain.url}/fleet.yaml, which is not https"
        )
        assert plain.requests == []
    assert [(r.path, r.status) for r in https.responses] == [("/fleet.yaml", 302)]
    assert pulled["lastGood"] is None
    assert not node.path(f"{SOURCE_DIR}/candidate.yaml").exists()


def test_plain_http_source_needs_allow_insecure(node: Node) -> None:
    write_settings(node.root, {"source": {"type": "https", "url": "http://127.0.0.1:9/fleet.yaml"}})
    res = node.agentd("settings")
    assert res.code == 1
    assert re.search(
        r"^/etc/wasm-edge/agentd\.yaml:\d+:\d+: .*http:// has no transport security",
        res.stderr,
        re.MULTILINE,
    ), res.stderr
    # Nothing else runs on such settings either.
    res = node.agentd("pull", "--json")
    assert res.code == 1
    assert "http:// has no transport security" in res.stderr
    assert not node.path(SOURCE_DIR).exists()

    write_settings(
        node.root,
        {
            "source": {
                "type": "https",
                "url": "http://127.0.0.1:9/fleet.yaml",
                "allowInsecure": True,
            }
        },
    )
    res = node.agentd("settings", "--json")
    assert res.code == 0, res.stderr
    assert res.json()["settings"]["source"]["allowInsecure"] is True


def run_daemon_once(node: Node) -> str:
    """`agentd run` until daemon.json shows its first cycle, then SIGTERM; its stderr (logs)."""
    daemon_file = node.path("/var/lib/wasm-edge/daemon.json")
    log = node.root.parent / "daemon.log"
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    argv = [sys.executable, "-m", "agentd", "--root", str(node.root), "--log-format", "json"]
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [*argv, "run"], stdout=subprocess.DEVNULL, stderr=err, env={**env, "AGENTD_ROOT": ""}
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    doc = json.loads(daemon_file.read_text())
                except (OSError, ValueError):
                    doc = {}
                if doc.get("pid") == proc.pid and doc.get("cycles", 0) >= 1:
                    break
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "the daemon did not finish a cycle"
                time.sleep(0.05)  # polling daemon.json, not synchronising on time
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    assert proc.returncode == 0, log.read_text()
    assert json.loads(daemon_file.read_text())["state"] == "stopped"
    return log.read_text()


def test_source_credentials_never_leave_their_file(
    node: Node,
    site: Path,
    https: MirrorServer,
    ca: TestCA,
    mirror: MirrorServer,
    mirror_index: Mirror,
    arch: str,
) -> None:
    secret = "s3cret-Pa55"
    url = https.url + "/fleet.yaml"
    https_settings(node, url, ca, credentials=secret)
    publish(site, fleet_doc(mirror, mirror_index, arch, 1))
    outputs: list[str] = []

    https.fail("/fleet.yaml", 500, times=1)
    res = node.agentd("pull", "--json")
    outputs += [res.stdout, res.stderr]
    assert res.code == 1
    assert res.json()["detail"].startswith(f"{https.url}/fleet.yaml: HTTP 500")
    for args in (("apply", "--json"), ("pull",), ("status", "--json"), ("status",)):
        res = node.agentd(*args)
        assert res.code == 0, res.stderr
        outputs += [res.stdout, res.stderr]
    assert crun(node) == "crun version 1.14"
    assert node.state()["lastRun"]["fleet"]["generation"] == 1
    outputs.append(run_daemon_once(node))

    assert [r.status for r in https.responses] == [500, 200, 304, 304]
    for text in outputs:
        assert secret not in text
    state_dir = node.path("/var/lib/wasm-edge")
    checked = []
    for path in sorted(state_dir.rglob("*")):
        # The settings name the credentials file only: their validated copy has no secret.
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
            checked.append(path.relative_to(state_dir).as_posix())
    names = ("state.json", "daemon.json", "source/status.json", "source/fleet.json")
    for name in (*names, "settings.last-good.json"):
        assert name in checked


def test_source_credentials_follow_a_redirect_on_the_same_origin_only(
    node: Node,
    site: Path,
    https: MirrorServer,
    ca: TestCA,
    mirror: MirrorServer,
    mirror_index: Mirror,
    arch: str,
) -> None:
    doc = publish(site, fleet_doc(mirror, mirror_index, arch, 1))
    basic = "Basic " + base64.b64encode(b"fleet-reader:s3cret-Pa55").decode()
    with RecordingServer(ca.server_context(), bodies={"/fleet.yaml": doc.read_bytes()}) as other:
        other.redirects["/old.yaml"] = "/fleet.yaml"  # the same origin: credentials go along
        https_settings(node, other.url + "/old.yaml", ca, credentials="s3cret-Pa55")
        code, pulled = pull(node)
        assert code == 0, pulled
        assert [(s.path, s.headers.get("Authorization")) for s in other.seen] == [
            ("/old.yaml", basic),
            ("/fleet.yaml", basic),
        ]

        # Another origin (here another port) must not learn them.
        other.seen.clear()
        https.redirect("/fleet.yaml", f"{other.url}/fleet.yaml")
        https_settings(node, https.url + "/fleet.yaml", ca, credentials="s3cret-Pa55")
        code, pulled = pull(node)
        assert code == 0, pulled
        assert [(s.path, s.headers.get("Authorization")) for s in other.seen] == [
            ("/fleet.yaml", None)
        ]
    assert [(r.path, r.status) for r in https.responses] == [("/fleet.yaml", 302)]


# --- the candidate and the node's own drop-ins ---------------------------------------------------


def test_candidate_invalid_with_the_node_files_is_rejected_with_the_reason(
    node: Node,
    repo: FleetRepo,
    git_server: GitDaemon,
    mirror: MirrorServer,
    mirror_index: Mirror,
    arch: str,
) -> None:
    node_file(
        node.root,
        "/etc/wasm-edge/desired.d/50-site.yaml",
        "components:\n  k3s:\n    config:\n      write-kubeconfig-mode: '0600'\n",
    )
    good = repo.commit(fleet_doc(mirror, mirror_index, arch, 1))
    git_settings(node, git_server.url)
    code, result = apply(node)
    assert code == 0, result

    broken = fleet_doc(mirror, mirror_index, arch, 2, crun="1.15")
    broken["components"]["crun"]["artifacts"][arch]["sha256"] = "not-a-digest"
    bad = repo.commit(broken)
    for _ in range(2):  # judged once, remembered by later runs
        code, pulled = pull(node)
        assert pulled["verdict"] == "rejected"
        assert pulled["reason"].startswith("invalid with this node's files: ")
        assert "sha256" in pulled["reason"]
        assert pulled["lastGood"]["origin"] == good
        source = source_status(node)
        assert source["lastPull"]["outcome"] == "rejected"
        assert source["lastPull"]["origin"] == bad
        assert source["lastPull"]["detail"] == pulled["reason"]
        assert source["lastGood"]["origin"] == good
        assert not node.path(f"{SOURCE_DIR}/candidate.yaml").exists()
    planned = node.agentd("plan", "--json", "--detailed-exitcode")
    assert planned.code == 3, planned.stdout  # issue 15.2
    (refused,) = planned.json()["refusals"]
    assert (refused["kind"], refused["subject"]) == ("document", "fleet document")
    assert "invalid with this node's files: " in refused["reason"]

    code, result = apply(node)
    assert code == 0, result
    assert result["fleet"]["origin"] == good
    assert crun(node) == "crun version 1.14"
    assert result["refusals"] == planned.json()["refusals"]


def test_a_broken_node_drop_in_does_not_blame_the_candidate(
    node: Node,
    repo: FleetRepo,
    git_server: GitDaemon,
    mirror: MirrorServer,
    mirror_index: Mirror,
    arch: str,
) -> None:
    drop_in = "/etc/wasm-edge/desired.d/50-site.yaml"
    node_file(node.root, drop_in, "components:\n  k3s:\n    role: server\n")
    repo.commit(fleet_doc(mirror, mirror_index, arch, 1))
    git_settings(node, git_server.url)
    code, result = apply(node)
    assert code == 0, result

    node_file(node.root, drop_in, "components:\n  crun:\n    colour: blue\n")
    new = repo.commit(fleet_doc(mirror, mirror_index, arch, 2, crun="1.15"))
    code, pulled = pull(node)
    assert pulled["outcome"] == "updated"
    assert pulled["verdict"] == "candidate"
    assert pulled["reason"] == "waiting: this node's own desired-state files are invalid"
    assert pulled["lastGood"]["generation"] == 1
    assert node.path(f"{SOURCE_DIR}/candidate.yaml").is_file()

    res = node.agentd("apply", "--json")
    assert res.code == 1
    assert "colour" in res.stderr
    assert crun(node) == "crun version 1.14"
    assert node.path(f"{SOURCE_DIR}/candidate.yaml").is_file()  # still waiting, not rejected

    node_file(node.root, drop_in, "components:\n  k3s:\n    role: server\n")
    code, result = apply(node)
    assert code == 0, result
    assert result["fleet"] == {"generation": 2, "origin": new, "signedBy": None}
    assert crun(node) == "crun version 1.15"
    assert source_status(node)["lastGood"]["generation"] == 2


def test_plan_explain_shows_fleet_values_and_drop_in_overrides(
    node: Node,
    repo: FleetRepo,
    git_server: GitDaemon,
    mirror: MirrorServer,
    mirror_index: Mirror,
    arch: str,
) -> None:
    drop_in = "/etc/wasm-edge/desired.d/50-site.yaml"
    node_file(
        node.root,
        drop_in,
        "components:\n  k3s:\n    config:\n      write-kubeconfig-mode: '0600'\n",
    )
    commit = repo.commit(fleet_doc(mirror, mirror_index, arch, 1))
    git_settings(node, git_server.url)
    assert pull(node)[0] == 0

    res = node.agentd("plan", "--explain", "--json")
    assert res.code == 0, res.stderr
    plan = res.json()
    fleet_name = f"git {git_server.url} main:desired.yaml@{commit[:12]}"
    assert plan["sources"][0] == fleet_name
    assert plan["sources"][1].endswith(drop_in)
    assert plan["fleet"]["origin"] == commit
    explain = {e["path"]: e for e in plan["explain"]}
    assert explain["generation"]["value"] == 1
    assert explain["components.crun.version"]["value"] == "1.14"
    assert re.fullmatch(
        re.escape(fleet_name) + r":\d+:\d+", explain["components.crun.version"]["from"]
    )
    mode = explain["components.k3s.config.write-kubeconfig-mode"]
    assert mode["value"] == "0600"
    assert re.fullmatch(r".*" + re.escape(drop_in) + r":4:\d+", mode["from"])
    assert explain["components.k3s.version"]["from"].startswith(fleet_name)
    k3s_config = node.path("/etc/rancher/k3s/config.yaml")
    assert not k3s_config.exists()  # plan changed nothing

    code, result = apply(node, "--offline")
    assert code == 0, result
    assert "write-kubeconfig-mode: '0600'" in k3s_config.read_text()


# --- the generation ratchet (issue 14.3) ---------------------------------------------------------


def test_https_a_generation_above_2_53_is_refused_and_2_53_is_accepted(
    node: Node,
    site: Path,
    https: MirrorServer,
    ca: TestCA,
    mirror: MirrorServer,
    mirror_index: Mirror,
    arch: str,
) -> None:
    """One publish of 10^18 would freeze every node for good: it is refused at the pull, and
    the node keeps converging to its last good document."""
    https_settings(node, f"{https.url}/fleet.yaml", ca)
    publish(site, fleet_doc(mirror, mirror_index, arch, 1))
    assert apply(node)[0] == 0
    publish(site, fleet_doc(mirror, mirror_index, arch, 10**18, crun="1.15"))
    code, pulled = pull(node)
    assert code == 1
    assert pulled["outcome"] == "rejected"
    assert pulled["detail"].startswith(
        "generation 1000000000000000000 is above the largest agentd accepts (2^53 = "
    )
    code, result = apply(node)
    assert code == 0, result
    assert result["fleet"]["generation"] == 1
    assert result["actions"] == []
    assert crun(node) == "crun version 1.14"
    assert node.state()["lastAppliedGeneration"] == 1

    publish(site, fleet_doc(mirror, mirror_index, arch, 2**53, crun="1.15"))
    code, result = apply(node)
    assert code == 0, result
    assert result["generation"] == 2**53
    assert crun(node) == "crun version 1.15"
    assert node.state()["lastAppliedGeneration"] == 2**53


def test_ratchet_lower_needs_confirming_keeps_the_inventory_and_lets_a_lower_generation_in(
    node: Node,
    site: Path,
    https: MirrorServer,
    ca: TestCA,
    mirror: MirrorServer,
    mirror_index: Mirror,
    arch: str,
) -> None:
    """A mistaken (but valid) publish of a huge generation: the operator publishes the right
    document, lowers the ratchet on the node, and the node takes it without reinstalling."""
    https_settings(node, f"{https.url}/fleet.yaml", ca)
    publish(site, fleet_doc(mirror, mirror_index, arch, 9_000_000_000, crun="1.15"))
    assert apply(node)[0] == 0
    publish(site, fleet_doc(mirror, mirror_index, arch, 8, crun="1.15"))
    code, result = apply(node)
    assert code == 0, result
    assert result["pull"]["outcome"] == "rejected"
    assert "agentd ratchet lower N --confirm" in result["pull"]["detail"]
    before = node.state()

    refused = node.agentd("ratchet", "lower", "7")
    assert refused.code == 1
    assert "not confirmed, nothing was changed" in refused.stderr
    assert "the last applied generation 9000000000 becomes 7" in refused.stderr
    assert node.state() == before

    done = node.agentd("ratchet", "lower", "7", "--confirm")
    assert done.code == 0, done.stderr
    state = node.state()
    assert state["lastAppliedGeneration"] == 7
    assert state["inventory"] == before["inventory"]
    assert state["lastRun"]["kind"] == "ratchet"
    shown = node.agentd("status")
    assert "last run: ratchet: generation 7: lowered" in shown.stdout
    assert "the inventory (" in shown.stdout

    code, result = apply(node)
    assert code == 0, result
    assert result["pull"]["outcome"] == "updated"
    assert result["generation"] == 8
    assert result["actions"] == []  # nothing installed again: the inventory was kept
    assert crun(node) == "crun version 1.15"
    assert node.state()["lastAppliedGeneration"] == 8


def test_ratchet_lower_refuses_a_generation_out_of_bounds(node: Node) -> None:
    res = node.agentd("ratchet", "lower", str(2**53 + 1), "--confirm")
    assert res.code == 1
    assert "is above the largest agentd accepts" in res.stderr


def test_ratchet_lower_brings_back_a_node_an_older_agentd_left_above_2_53(node: Node) -> None:
    """state.json written before the bound may say 10^18: it is read as it is, apply says how
    to get out, and `ratchet lower` does it with the inventory kept."""
    inventory = {"crun": {"version": "1.15", "sha256": "c" * 64, "files": ["/usr/local/bin/crun"]}}
    node_file(
        node.root,
        "/var/lib/wasm-edge/state.json",
        json.dumps({"stateVersion": 1, "lastAppliedGeneration": 10**18, "inventory": inventory}),
    )
    node_file(
        node.root,
        "/etc/wasm-edge/desired.yaml",
        "apiVersion: agentd/v1\nkind: NodeState\ngeneration: 3\n",
    )
    refused = node.agentd("apply")
    assert refused.code == 1
    assert "agentd ratchet lower N --confirm" in refused.stderr
    done = node.agentd("ratchet", "lower", "2", "--confirm")
    assert done.code == 0, done.stderr
    assert "the last applied generation 1000000000000000000 becomes 2" in done.stdout
    state = node.state()
    assert state["lastAppliedGeneration"] == 2
    assert state["inventory"] == inventory
