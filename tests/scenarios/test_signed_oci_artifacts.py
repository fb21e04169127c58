"""cosign-signed OCI artifacts end to end: crun pushed by the real oras to a real docker-registry
on 127.0.0.1, signed there by the real `cosign sign --tlog-upload=false`, installed by `agentd
apply` only when cosign's `sha256-<digest>.sig` manifest verifies with a configured key.

For every fault (another key, the tag moved after signing with the old signature copied to the
new manifest, the tag moved with no signature, no signature at all, a tampered signature
annotation, a signature tag without a signature layer, an oversized payload, a lost payload):
nothing is installed and the error names the reference and the cause.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest
import requests

from tests.scenarios.test_faulty_mirror import Scene, tree_hash
from tests.scenarios.test_oci_artifacts import (
    STATE,
    assert_nothing_installed_but_settings,
    converged_root,
    crun,
    registry,
    scene,
    upgrade,
)
from tests.support.cosigntool import cosign_binary, run_cosign
from tests.support.registry import Registry, oras
from tests.support.standins import write_yaml

__all__ = ["converged_root", "registry", "scene"]  # fixtures, shared with test_oci_artifacts

KEY = "/etc/wasm-edge/keys/release.pub"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"


@dataclass(frozen=True)
class Signer:
    """The real cosign and two key pairs: a (the fleet's, configured) and b (someone else's)."""

    binary: Path
    home: Path

    def sign(self, who: str, image: str, home: Optional[Path] = None) -> None:
        """`cosign sign`; `home`: where its ~/.docker/config.json (the registry login) is."""
        run_cosign(
            self.binary,
            *("sign", "--key", str(self.home / who / "cosign.key"), "--tlog-upload=false"),
            *("--allow-http-registry", "--allow-insecure-registry", image),
            cwd=home or self.home,
        )


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Signer:
    binary, why = cosign_binary()
    if binary is None:
        pytest.skip(f"the real cosign is not available: {why}")
    d = tmp_path_factory.mktemp("cosign-keys")
    for who in ("a", "b"):
        (d / who).mkdir()
        run_cosign(binary, "generate-key-pair", cwd=d / who)  # COSIGN_PASSWORD in env only
    return Signer(binary, d)


def settings(
    scene: Scene,
    signer: Signer,
    host: str,
    required: Optional[bool],
    auth: Optional[dict[str, str]] = None,
) -> None:
    key = scene.node.path(KEY)
    key.parent.mkdir(parents=True, exist_ok=True)
    key.write_bytes((signer.home / "a" / "cosign.pub").read_bytes())
    verify: dict[str, Any] = {"cosign": {"publicKeys": [KEY]}}
    if required is not None:
        verify["required"] = required
    registries: dict[str, Any] = {"mirrors": {host: {"endpoint": [f"http://{host}"]}}}
    if auth is not None:
        registries["configs"] = {host: {"auth": auth}}
    write_yaml(
        scene.node.path("/etc/wasm-edge/agentd.yaml"),
        {
            "downloads": {"timeout": "5s", "attempts": 1, "backoff": "0.1s", "verify": verify},
            "registries": registries,
        },
    )


def retag(registry: Registry, source: str, tag: str) -> None:
    """`oras tag`: the manifest at `source` (REPO:TAG) also under `tag`, as a registry user can."""
    env = {**os.environ, "HOME": str(registry.root / "home")}
    subprocess.run(
        [str(oras()), "tag", "--plain-http", f"{registry.host}/{source}", tag],
        check=True, env=env, capture_output=True, timeout=60,
    )  # fmt: skip


def signature_manifest(registry: Registry, tag: str) -> dict[str, Any]:
    got = requests.get(
        f"http://{registry.host}/v2/crun/manifests/{tag}",
        headers={"Accept": OCI_MANIFEST},
        timeout=10,
    )
    got.raise_for_status()
    manifest: dict[str, Any] = got.json()
    return manifest


def tamper_annotation(registry: Registry, tag: str) -> None:
    """The signature manifest at `tag` put back with its signature's last byte flipped."""
    manifest = signature_manifest(registry, tag)
    annotations = manifest["layers"][0]["annotations"]
    raw = bytearray(base64.b64decode(annotations[SIGNATURE_ANNOTATION]))
    raw[-1] ^= 0x01
    annotations[SIGNATURE_ANNOTATION] = base64.b64encode(bytes(raw)).decode()
    put = requests.put(
        f"http://{registry.host}/v2/crun/manifests/{tag}",
        data=json.dumps(manifest).encode(),
        headers={"Content-Type": OCI_MANIFEST},
        timeout=10,
    )
    put.raise_for_status()


def sig_tag(digest: str) -> str:
    return digest.replace(":", "-") + ".sig"


def test_a_cosign_signed_oci_artifact_is_installed_and_its_key_shown(
    scene: Scene, registry: Registry, signer: Signer
) -> None:
    file, sha = crun(scene, "1.15")
    digest = registry.push("crun:1.15", file, media_type="application/octet-stream")
    # Signed by someone else too: the manifest holds both layers, one verifying is enough.
    signer.sign("b", f"{registry.host}/crun@{digest}")
    signer.sign("a", f"{registry.host}/crun@{digest}")
    settings(scene, signer, registry.host, required=True)
    res = scene.node.apply(upgrade(scene, f"oci://{registry.host}/crun:1.15", sha))
    assert res.code == 0, res.stderr
    assert scene.node.version_of("/usr/local/bin/crun") == "crun version 1.15"
    signed_by = scene.node.state()["inventory"]["crun"]["signedBy"]
    assert signed_by.startswith(f"cosign {KEY} (sha256:"), signed_by
    (download,) = scene.node.state()["lastRun"]["downloads"]
    assert download["signedBy"] == signed_by
    status = scene.node.agentd("status")
    assert status.code == 0, status.stderr
    line = next(x for x in status.stdout.splitlines() if x.strip().startswith("crun "))
    assert f"signature verified by {signed_by}" in line, line


def test_the_signature_is_read_with_the_registrys_bearer_token(
    scene: Scene, tmp_path: Path, signer: Signer
) -> None:
    """A registry with token auth: the signature manifest and payload are asked for with the
    token the artifact's manifest got (its repository's pull scope); no secret is shown."""
    with Registry(tmp_path / "registry-token", "token") as r:
        assert r.tokens is not None
        file, sha = crun(scene, "1.15")
        digest = r.push("wasm/crun:1.15", file)
        home = tmp_path / "cosign-home"
        (home / ".docker").mkdir(parents=True)
        login = base64.b64encode(f"{r.user}:{r.password}".encode()).decode()
        config = home / ".docker" / "config.json"
        config.write_text(json.dumps({"auths": {r.host: {"auth": login}}}))
        config.chmod(0o600)
        signer.sign("a", f"{r.host}/wasm/crun@{digest}", home)
        auth = {"username": r.user, "password": r.password}
        settings(scene, signer, r.host, required=True, auth=auth)
        res = scene.node.apply(upgrade(scene, f"oci://{r.host}/wasm/crun:1.15", sha))
        assert res.code == 0, res.stderr
        assert scene.node.version_of("/usr/local/bin/crun") == "crun version 1.15"
        signed_by = scene.node.state()["inventory"]["crun"]["signedBy"]
        assert signed_by.startswith(f"cosign {KEY} (sha256:"), signed_by
        for text in (res.stdout, res.stderr, scene.node.read(STATE)):
            assert r.password not in text
            assert "Bearer " not in text


@dataclass(frozen=True)
class Fault:
    name: str
    cause: str
    required: Optional[bool] = True


FAULTS = [
    Fault("another-key", f"does not verify with any configured key ({KEY})"),
    Fault("another-key-not-required", "signed by another key", required=None),
    Fault("moved-signature-copied", "the tag was moved after signing?", required=False),
    Fault("moved", "not signed (no sha256-"),
    Fault("unsigned", "not signed (no sha256-"),
    Fault("tampered-annotation", "tampered, truncated, or signed by another key", required=False),
    # Not cosign's: the artifact's own manifest under the signature tag; a 70 KiB "payload".
    Fault("no-signature-layer", "holds no cosign signature layer", required=False),
    Fault("oversized-payload", "is over 65536 bytes", required=False),
    Fault("lost-payload", "is not in the registry", required=False),
]


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_a_bad_or_missing_oci_signature_installs_nothing(
    scene: Scene, registry: Registry, signer: Signer, fault: Fault
) -> None:
    file, sha = crun(scene, "1.15")
    host = registry.host
    digest = registry.push("crun:1.15", file, media_type="application/octet-stream")
    if fault.name != "unsigned":
        signer.sign("b" if fault.name.startswith("another-key") else "a", f"{host}/crun@{digest}")
    if fault.name.startswith("moved"):
        # The same file pushed again under the tag: another manifest, which nobody signed.
        moved = registry.push("crun:1.15", file, media_type="application/wasm")
        assert moved != digest
        if fault.name == "moved-signature-copied":
            retag(registry, f"crun:{sig_tag(digest)}", sig_tag(moved))
            fault = Fault(fault.name, f"for manifest {digest}, not {moved}", fault.required)
        digest = moved
    elif fault.name == "tampered-annotation":
        tamper_annotation(registry, sig_tag(digest))
    elif fault.name == "lost-payload":
        payload = signature_manifest(registry, sig_tag(digest))["layers"][0]["digest"]
        registry.blob_path(payload).unlink()
        fault = Fault(
            fault.name, f"HTTP 404: the signature payload {payload} {fault.cause}", fault.required
        )
    elif fault.name == "no-signature-layer":
        retag(registry, "crun:1.15", sig_tag(digest))
    elif fault.name == "oversized-payload":
        big = registry.root / "payload.json"
        big.write_bytes(b'{"critical": {}, "pad": "' + b"x" * (70 << 10) + b'"}')
        registry.push(f"crun:{sig_tag(digest)}", big, media_type=SIMPLE_SIGNING)
    settings(scene, signer, host, fault.required)
    before = tree_hash(scene.node, but="/etc/wasm-edge/agentd.yaml")
    ref = f"oci://{host}/crun:1.15"
    res = scene.node.apply(upgrade(scene, ref, sha))
    assert res.code == 1, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    state_text = scene.node.read(STATE)
    for text in (res.stderr, state_text):
        assert f"signature check of {ref} failed: " in text, text
        assert fault.cause in text, text
        if fault.name in ("moved", "unsigned"):
            assert f"no {sig_tag(digest)} for its manifest {digest}" in text, text
    assert_nothing_installed_but_settings(scene, before)
    assert "signedBy" not in scene.node.state()["inventory"].get("crun", {})
