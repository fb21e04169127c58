"""OCI artifacts end to end: `agentd apply` installs crun from a real docker-registry on
127.0.0.1, pushed there by the real oras, anonymously, with Basic auth (htpasswd) and with bearer
tokens (the registry's token auth, a token endpoint signing with openssl).

For every fault (no credentials, a wrong password, a token the registry does not trust, a
missing blob, a manifest of another artifact, a tag moved after pinning, a tampered blob, a
registry that stalls): nothing is installed, the error names the oci:// reference and the cause,
and the password and the token are nowhere in the output or state.json.
"""

from __future__ import annotations

import copy
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

from tests.scenarios.test_faulty_mirror import (
    Scene,
    converged_root,
    crun_114,
    crun_only,
    tree_hash,
)
from tests.support.mirror import MirrorServer
from tests.support.node import Node, Result
from tests.support.registry import Registry, Staller, oras
from tests.support.standins import Mirror, write_yaml

__all__ = ["converged_root"]  # a fixture, shared with test_faulty_mirror

# One attempt; a timeout a loaded machine meets (the stall test sets its own).
FAST = {"timeout": "5s", "attempts": 1, "backoff": "0.1s"}
STATE = "/var/lib/wasm-edge/state.json"


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    oras()  # fetched (or skipped with its reason) once, before any registry starts


@pytest.fixture
def scene(
    sandbox_root: Path, converged_root: Path, mirror: MirrorServer, mirror_index: Mirror, arch: str
) -> Scene:
    shutil.copytree(converged_root, sandbox_root, symlinks=True, dirs_exist_ok=True)
    node = Node(sandbox_root)
    assert node.version_of("/usr/local/bin/crun") == "crun version 1.14"
    return Scene(node, mirror, mirror_index, arch, crun_114(mirror.url, mirror_index, arch))


def crun(scene: Scene, version: str) -> tuple[Path, str]:
    path, sha = scene.index.artifact("crun", version, scene.arch)
    return scene.index.root / path, sha


def upgrade(scene: Scene, url: str, sha: str) -> dict[str, Any]:
    doc = copy.deepcopy(scene.doc)
    doc["generation"] = 2
    c = doc["components"]["crun"]
    c["version"] = "1.15"
    c["artifacts"][scene.arch] = {"url": url, "sha256": sha}
    return crun_only(doc)


def settings(
    scene: Scene, host: str, auth: Optional[dict[str, str]] = None, timeout: str = "5s"
) -> None:
    registries: dict[str, Any] = {"mirrors": {host: {"endpoint": [f"http://{host}"]}}}
    if auth is not None:
        registries["configs"] = {host: {"auth": auth}}
    write_yaml(
        scene.node.path("/etc/wasm-edge/agentd.yaml"),
        {"downloads": {**FAST, "timeout": timeout}, "registries": registries},
    )


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with Registry(tmp_path / "registry-anonymous") as r:
        yield r


def assert_refused(scene: Scene, res: Result, ref: str, cause: str, *secrets: str) -> None:
    assert res.code == 1, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    state_text = scene.node.read(STATE)
    for text in (res.stderr, state_text):
        assert f"download of {ref} failed: " in text, text
        assert cause in text, text
    for text in (res.stdout, res.stderr, state_text):
        for secret in secrets:
            assert secret not in text


def test_an_oras_pushed_crun_is_installed_by_tag_and_then_by_manifest_digest(
    scene: Scene, registry: Registry
) -> None:
    file, sha = crun(scene, "1.15")
    digest = registry.push("crun:1.15", file, media_type="application/octet-stream")
    settings(scene, registry.host)
    ref = f"oci://{registry.host}/crun:1.15"
    res = scene.node.apply(upgrade(scene, ref, sha))
    assert res.code == 0, res.stderr
    assert scene.node.version_of("/usr/local/bin/crun") == "crun version 1.15"
    blob = scene.node.path(f"/var/lib/wasm-edge/cache/sha256/{sha}")
    assert blob.read_bytes() == file.read_bytes()  # the one content-addressed cache
    (download,) = scene.node.state()["lastRun"]["downloads"]
    assert download["url"] == ref
    # The same bytes pinned by the manifest's digest: found in the cache, nothing fetched.
    doc = upgrade(scene, f"oci://{registry.host}/crun@{digest}", sha)
    doc["generation"] = 3
    doc["components"]["crun"]["version"] = "1.15"
    assert scene.node.apply(doc).code == 0


@pytest.mark.parametrize("auth", ["htpasswd", "token"])
def test_credentials_basic_and_bearer(scene: Scene, tmp_path: Path, auth: str) -> None:
    with Registry(tmp_path / "registry", auth) as r:
        file, sha = crun(scene, "1.15")
        r.push("wasm/crun:1.15", file)
        ref = f"oci://{r.host}/wasm/crun:1.15"
        before = tree_hash(scene.node, but="/etc/wasm-edge/agentd.yaml")

        settings(scene, r.host)  # no credentials at all
        res = scene.node.apply(upgrade(scene, ref, sha))
        no_creds = (
            "the registry asks for a user name and password"
            if auth == "htpasswd"
            else "the token endpoint refused a token anonymously (HTTP 401)"
        )
        assert_refused(scene, res, ref, no_creds)

        settings(scene, r.host, {"username": r.user, "password": "wrong-" + r.password})
        res = scene.node.apply(upgrade(scene, ref, sha))
        wrong = (
            "HTTP 401: the credentials were refused for the manifest of 1.15"
            if auth == "htpasswd"
            else "the token endpoint refused a token with the configured credentials (HTTP 401)"
        )
        assert_refused(scene, res, ref, wrong, r.password)
        assert_nothing_installed_but_settings(scene, before)

        if r.tokens is not None:  # a token the registry does not trust: signed by another key
            r.tokens.sign_with_other_key = True
            settings(scene, r.host, {"username": r.user, "password": r.password})
            res = scene.node.apply(upgrade(scene, ref, sha))
            assert_refused(scene, res, ref, "the credentials were refused", r.password, "Bearer ")
            r.tokens.sign_with_other_key = False
            assert any("scope=repository%3Awasm%2Fcrun%3Apull" in q for q in r.tokens.requests)

        settings(scene, r.host, {"username": r.user, "password": r.password})
        res = scene.node.apply(upgrade(scene, ref, sha))
        assert res.code == 0, res.stderr
        assert scene.node.version_of("/usr/local/bin/crun") == "crun version 1.15"
        for text in (res.stdout, res.stderr, scene.node.read(STATE)):
            assert r.password not in text


def assert_nothing_installed_but_settings(scene: Scene, before: str) -> None:
    assert tree_hash(scene.node, but="/etc/wasm-edge/agentd.yaml") == before
    assert scene.node.version_of("/usr/local/bin/crun") == "crun version 1.14"
    assert not list(scene.node.path("/var/lib/wasm-edge/cache/tmp").iterdir())


def test_registry_faults_install_nothing(scene: Scene, registry: Registry) -> None:
    """Each fault in turn against the one registry: the error names the reference and why."""
    file, sha = crun(scene, "1.15")
    other, _ = crun(scene, "1.14")
    settings(scene, registry.host)
    before = tree_hash(scene.node, but="/etc/wasm-edge/agentd.yaml")
    host = registry.host

    # A manifest of another artifact: the tag holds 1.14, the document wants 1.15's bytes.
    registry.push("crun:other", other)
    ref = f"oci://{host}/crun:other"
    res = scene.node.apply(upgrade(scene, ref, sha))
    assert_refused(scene, res, ref, f"the manifest of other has no layer sha256:{sha}")
    assert_nothing_installed_but_settings(scene, before)

    # A tag moved after its manifest digest was pinned: asked for by tag, the digest checked.
    pinned = registry.push("crun:moving", file)
    moved = registry.push("crun:moving", other)
    ref = f"oci://{host}/crun:moving@{pinned}"
    res = scene.node.apply(upgrade(scene, ref, sha))
    cause = f"the tag moving has moved: it names manifest {moved}, not the pinned {pinned}"
    assert_refused(scene, res, ref, cause)
    assert_nothing_installed_but_settings(scene, before)

    # A tampered blob: the registry serves other bytes under the layer's digest.
    registry.push("crun:1.15", file)
    blob = registry.blob_path(f"sha256:{sha}")
    blob.write_bytes(b"#!/bin/sh\necho pwned\n")
    ref = f"oci://{host}/crun:1.15"
    res = scene.node.apply(upgrade(scene, ref, sha))
    assert_refused(scene, res, ref, f"sha256 mismatch: expected {sha}")
    assert_nothing_installed_but_settings(scene, before)

    # A missing blob: the manifest names it, the registry has lost it.
    blob.unlink()
    res = scene.node.apply(upgrade(scene, ref, sha))
    assert_refused(scene, res, ref, f"the blob sha256:{sha} from http://{host}: HTTP 404")
    assert_nothing_installed_but_settings(scene, before)


def test_a_stalling_registry_is_given_up_on_after_the_timeout(scene: Scene) -> None:
    stall = Staller()
    try:
        settings(scene, stall.host, timeout="0.5s")
        before = tree_hash(scene.node, but="/etc/wasm-edge/agentd.yaml")
        _, sha = crun(scene, "1.15")
        ref = f"oci://{stall.host}/crun:1.15"
        started = time.monotonic()
        res = scene.node.apply(upgrade(scene, ref, sha))
        took = time.monotonic() - started
        assert_refused(scene, res, ref, f"http://{stall.host}: no answer for 0.5s (timed out)")
        assert_nothing_installed_but_settings(scene, before)
        assert took < 20, took  # bounded by the 0.5 s timeout, not the stall
    finally:
        stall.stop()
