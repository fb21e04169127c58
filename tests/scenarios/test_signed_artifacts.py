"""cosign-signed artifacts end to end: `agentd apply` against a real HTTPS server that publishes
each artifact's signature (made by the real cosign 2.5) at `<url>.sig` or `<url>.bundle`.

For every fault (a tampered file, another key, a truncated signature, a missing one when
signatures are required, a garbage bundle): nothing is installed, and the error names the URL
with its credentials masked and the cause. A good signature is recorded in the inventory and
shown by `agentd status`.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest

from tests.support.cosigntool import cosign_binary, run_cosign
from tests.support.fleet import TestCA, make_ca
from tests.support.mirror import MirrorServer
from tests.support.node import Node, Result
from tests.support.standins import Mirror, desired_document, write_yaml

SETTINGS = "/etc/wasm-edge/agentd.yaml"
KEY = "/etc/wasm-edge/keys/release.pub"
CA_FILE = "/etc/wasm-edge/ca.pem"
USERINFO = "user:secret@"


@dataclass(frozen=True)
class Signing:
    """Keys A (the fleet's) and B (someone else's), and what each signed, as cosign wrote it."""

    pub_a: bytes
    pub_b: bytes
    made: dict[str, bytes]  # "<version>.<a|b>.<sig|bundle|sigstore.json>" -> the file's bytes


@pytest.fixture(scope="module")
def signing(tmp_path_factory: pytest.TempPathFactory, mirror_index: Mirror) -> Signing:
    binary, why = cosign_binary()
    if binary is None:
        pytest.skip(f"the real cosign is not available: {why}")
    d = tmp_path_factory.mktemp("signing")
    made: dict[str, bytes] = {}
    for who in ("a", "b"):
        (d / who).mkdir()
        run_cosign(binary, "generate-key-pair", cwd=d / who)
    arch = _arch()
    for version in ("1.14", "1.15"):
        blob = mirror_index.root / mirror_index.artifact("crun", version, arch)[0]
        for who in ("a", "b") if version == "1.15" else ("a",):
            common = ("sign-blob", "--key", str(d / who / "cosign.key"), "--tlog-upload=false")
            out = d / f"{version}.{who}"
            run_cosign(binary, *common, "--output-signature", f"{out}.sig", str(blob), cwd=d)
            run_cosign(binary, *common, "--bundle", f"{out}.bundle", str(blob), cwd=d)
            new = ("--new-bundle-format", "--bundle", f"{out}.sigstore.json")
            run_cosign(binary, *common, *new, str(blob), cwd=d)
            for kind in ("sig", "bundle", "sigstore.json"):
                made[f"{version}.{who}.{kind}"] = Path(f"{out}.{kind}").read_bytes()
    return Signing(
        (d / "a" / "cosign.pub").read_bytes(), (d / "b" / "cosign.pub").read_bytes(), made
    )


def _arch() -> str:
    from tests.support.standins import node_arch

    return node_arch()


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def https(mirror_dir: Path, ca: TestCA) -> Iterator[MirrorServer]:
    with MirrorServer(mirror_dir, tls=ca.server_context()) as server:
        yield server


@dataclass
class Scene:
    """A node whose settings require signatures by key A, converged to a signed crun 1.14."""

    node: Node
    server: MirrorServer
    index: Mirror
    signing: Signing
    arch: str

    def path(self, version: str) -> str:
        return "/" + self.index.artifact("crun", version, self.arch)[0]

    def shown(self, version: str) -> str:
        """The artifact's URL as every message must show it: credentials masked."""
        return self.server.url.replace("https://", "https://***@") + self.path(version)

    def publish(self, version: str, name: Optional[str], suffix: str = ".sig") -> None:
        """Serve `name` (from `signing.made`) as the signature beside `version`'s artifact."""
        if name is not None:
            self.server.serve_bytes(self.path(version) + suffix, self.signing.made[name])

    def settings(self, required: Optional[bool] = True) -> None:
        verify: dict[str, Any] = {"cosign": {"publicKeys": [KEY]}}
        if required is not None:
            verify["required"] = required
        doc = {"downloads": {"verify": verify}, "tls": {"caFile": CA_FILE}}
        write_yaml(self.node.path(SETTINGS), doc)

    def desired(
        self, version: str, generation: int, sha256: Optional[str] = None
    ) -> dict[str, Any]:
        url = self.server.url.replace("https://", f"https://{USERINFO}")
        doc = desired_document(
            url,
            self.index,
            generation=generation,
            crun=version,
            k3s=None,
            wasmedge=None,
            arches=(self.arch,),
        )
        doc = {**doc, "components": {"crun": doc["components"]["crun"]}}
        if sha256 is not None:
            doc["components"]["crun"]["artifacts"][self.arch]["sha256"] = sha256
        return doc


@pytest.fixture
def scene(
    sandbox_root: Path, https: MirrorServer, mirror_index: Mirror, signing: Signing, ca: TestCA
) -> Scene:
    node = Node(sandbox_root)
    s = Scene(node, https, mirror_index, signing, _arch())
    node.path(KEY).parent.mkdir(parents=True)
    node.path(KEY).write_bytes(signing.pub_a)
    node.path(CA_FILE).write_bytes(ca.cert.read_bytes())
    s.settings(required=True)
    s.publish("1.14", "1.14.a.sig")
    first = node.apply(s.desired("1.14", 1))
    assert first.code == 0, first.stderr
    return s


def tree_hash(node: Node) -> str:
    return hashlib.sha256(json.dumps(node.tree(), sort_keys=True).encode()).hexdigest()


def assert_refused(scene: Scene, res: Result, before: str, cause: str) -> None:
    """Nothing installed; one error with the masked URL and the cause, credentials nowhere."""
    node = scene.node
    assert res.code == 1, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    assert tree_hash(node) == before
    assert node.version_of("/usr/local/bin/crun") == "crun version 1.14"
    state_text = node.read("/var/lib/wasm-edge/state.json")
    state = json.loads(state_text)
    assert state["lastAppliedGeneration"] == 1
    assert state["inventory"]["crun"]["version"] == "1.14"
    error = state["lastRun"]["error"]
    for text in (error, res.stderr):
        assert f"signature check of {scene.shown('1.15')}" in text, text
        assert cause in text, text
    assert error.endswith("nothing was changed"), error
    for text in (res.stdout, res.stderr, state_text):
        assert "secret" not in text


def test_a_signed_artifact_is_installed_and_its_key_recorded_and_shown(scene: Scene) -> None:
    node = scene.node
    entry = node.state()["inventory"]["crun"]
    assert entry["signedBy"].startswith(f"cosign {KEY} (sha256:")
    status = node.agentd("status")
    assert status.code == 0, status.stderr
    line = next(x for x in status.stdout.splitlines() if x.strip().startswith("crun "))
    assert f"signature verified by cosign {KEY} (sha256:" in line
    # The signature was fetched over the same TLS (the test CA from tls.caFile).
    assert scene.server.count(scene.path("1.14") + ".sig") == 1


@pytest.mark.parametrize("bundle", ["1.15.a.bundle", "1.15.a.sigstore.json"])
def test_either_bundle_format_verifies(scene: Scene, bundle: str) -> None:
    scene.publish("1.15", bundle, ".bundle")
    res = scene.node.apply(scene.desired("1.15", 2))
    assert res.code == 0, res.stderr
    assert scene.node.version_of("/usr/local/bin/crun") == "crun version 1.15"
    assert scene.node.state()["inventory"]["crun"]["signedBy"].startswith(f"cosign {KEY}")
    (download,) = scene.node.state()["lastRun"]["downloads"]
    assert download["signedBy"] == scene.node.state()["inventory"]["crun"]["signedBy"]
    # .sig was asked for first (absent), then the bundle.
    assert scene.server.count(scene.path("1.15") + ".sig") == 1


@dataclass(frozen=True)
class Fault:
    name: str
    signature: Optional[str]  # what `signing.made` entry is served beside 1.15 (None: nothing)
    cause: str
    suffix: str = ".sig"
    tampered: bool = False  # the file is replaced, with a pin that matches the new bytes
    required: Optional[bool] = True


FAULTS = [
    Fault("tampered-file", "1.15.a.sig", "does not verify with any configured key", tampered=True),
    Fault("another-key", "1.15.b.sig", f"does not verify with any configured key ({KEY})"),
    Fault("another-key-bundle", "1.15.b.sigstore.json", "signed by another key", ".bundle"),
    Fault("truncated", "1.15.a.sig:20", "does not verify"),
    Fault("missing", None, "not signed (no "),
    Fault("garbage-bundle", "garbage", "the bundle is not JSON", ".bundle"),
    # Signatures not required: a bad one is still refused.
    Fault("another-key-not-required", "1.15.b.sig", "does not verify", required=False),
    Fault("another-key-optional", "1.15.b.sig", "does not verify", required=None),
]


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_a_bad_or_missing_signature_installs_nothing(scene: Scene, fault: Fault) -> None:
    sha256 = None
    if fault.tampered:
        evil = b"#!/bin/sh\necho 'crun version 6.6.6'\n"
        scene.server.serve_bytes(scene.path("1.15"), evil)
        sha256 = hashlib.sha256(evil).hexdigest()
    if fault.signature == "garbage":
        scene.server.serve_bytes(scene.path("1.15") + fault.suffix, b"\x89PNG\r\n garbage")
    elif fault.signature is not None and ":" in fault.signature:
        name, keep = fault.signature.split(":")
        scene.server.serve_bytes(
            scene.path("1.15") + fault.suffix, scene.signing.made[name][: int(keep)]
        )
    else:
        scene.publish("1.15", fault.signature, fault.suffix)
    scene.settings(required=fault.required)
    before = tree_hash(scene.node)
    res = scene.node.apply(scene.desired("1.15", 2, sha256))
    assert_refused(scene, res, before, fault.cause)


def test_unsigned_is_installed_when_signatures_are_not_required(scene: Scene) -> None:
    scene.settings(required=False)
    res = scene.node.apply(scene.desired("1.15", 2))
    assert res.code == 0, res.stderr
    assert scene.node.version_of("/usr/local/bin/crun") == "crun version 1.15"
    assert "signedBy" not in scene.node.state()["inventory"]["crun"]
    downloads = scene.node.state()["lastRun"]["downloads"]
    assert [(d["component"], d["signedBy"]) for d in downloads] == [("crun", None)]


def test_a_key_that_cannot_be_read_installs_nothing(scene: Scene) -> None:
    scene.node.path(KEY).unlink()
    before = tree_hash(scene.node)
    scene.publish("1.15", "1.15.a.sig")
    res = scene.node.apply(copy.deepcopy(scene.desired("1.15", 2)))
    assert res.code == 1
    assert f"cannot read the public key {KEY}" in res.stderr
    assert tree_hash(scene.node) == before
    assert scene.node.version_of("/usr/local/bin/crun") == "crun version 1.14"
