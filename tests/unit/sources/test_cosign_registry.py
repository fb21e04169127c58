"""`cosign sign --tlog-upload=false` against a real registry (Debian's docker-registry, the CNCF
distribution registry) on 127.0.0.1: its signature manifest, checked by verify_simple_signing."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from agentd.sources import cosign
from tests.support.cosigntool import cosign_binary, run_cosign

REPO = "wasm/app"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Registry:
    """The registry's base URL and its host:port as cosign names images."""

    url: str
    host: str

    def blob(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        started = requests.post(f"{self.url}/v2/{REPO}/blobs/uploads/", timeout=10)
        started.raise_for_status()
        where = started.headers["Location"]
        where = where if where.startswith("http") else self.url + where
        sep = "&" if "?" in where else "?"
        done = requests.put(f"{where}{sep}digest={digest}", data=data, timeout=10)
        done.raise_for_status()
        return digest

    def push(self, tag: str, module: bytes) -> str:
        """A single-layer Wasm artifact as `oras push` makes one; its manifest digest."""
        config = b"{}"
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.wasm.content.layer.v1+wasm",
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": self.blob(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.wasm.content.layer.v1+wasm",
                    "digest": self.blob(module),
                    "size": len(module),
                }
            ],
        }
        put = requests.put(
            f"{self.url}/v2/{REPO}/manifests/{tag}",
            data=json.dumps(manifest).encode(),
            headers={"Content-Type": OCI_MANIFEST},
            timeout=10,
        )
        put.raise_for_status()
        return str(put.headers["Docker-Content-Digest"])

    def manifest(self, ref: str) -> tuple[str, dict[str, Any]]:
        got = requests.get(
            f"{self.url}/v2/{REPO}/manifests/{ref}", headers={"Accept": OCI_MANIFEST}, timeout=10
        )
        got.raise_for_status()
        return str(got.headers["Docker-Content-Digest"]), got.json()

    def signature(self, manifest_digest: str) -> tuple[bytes, str]:
        """cosign's signature of a manifest: the `sha256-<hex>.sig` tag's simple-signing layer
        (the payload) and its signature annotation."""
        _, sig_manifest = self.manifest(manifest_digest.replace(":", "-") + ".sig")
        (layer,) = sig_manifest["layers"]
        assert layer["mediaType"] == "application/vnd.dev.cosign.simplesigning.v1+json"
        payload = requests.get(f"{self.url}/v2/{REPO}/blobs/{layer['digest']}", timeout=10)
        payload.raise_for_status()
        return payload.content, str(layer["annotations"][SIGNATURE_ANNOTATION])


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    program = shutil.which("docker-registry")
    if program is None:
        pytest.skip("no docker-registry (Debian 12: apt-get install docker-registry)")
    d = tmp_path_factory.mktemp("registry")
    port = _free_port()
    (d / "config.yml").write_text(
        "version: 0.1\nlog: {level: error}\n"
        f"storage: {{filesystem: {{rootdirectory: {d / 'data'}}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}'}}\n"
    )
    with (d / "registry.log").open("wb") as log:
        proc = subprocess.Popen(
            [program, "serve", str(d / "config.yml")], stdout=subprocess.DEVNULL, stderr=log
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if requests.get(f"{url}/v2/", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError((d / "registry.log").read_text()[-500:])
            time.sleep(0.1)
        yield Registry(url, f"127.0.0.1:{port}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[cosign.PublicKey]]:
    binary, why = cosign_binary()
    if binary is None:
        pytest.skip(f"the real cosign is not available: {why}")
    d = tmp_path_factory.mktemp("cosign-sign")
    for who in ("a", "b"):
        (d / who).mkdir()
        run_cosign(binary, "generate-key-pair", cwd=d / who)
    keys = cosign.load_keys(
        [(f"/keys/{w}.pub", (d / w / "cosign.pub").read_bytes()) for w in ("a", "b")]
    )
    return binary, d, keys


def sign(signer: tuple[Path, Path, list[cosign.PublicKey]], image: str) -> None:
    binary, d, _ = signer
    run_cosign(
        binary,
        *("sign", "--key", str(d / "a" / "cosign.key"), "--tlog-upload=false"),
        *("--allow-http-registry", "--allow-insecure-registry", image),
        cwd=d,
    )


def test_cosign_sign_of_a_registry_artifact_verifies_for_its_manifest_only(
    registry: Registry, signer: tuple[Path, Path, list[cosign.PublicKey]]
) -> None:
    key_a, key_b = signer[2]
    digest = registry.push("v1", b"\0asm\1\0\0\0 one")
    sign(signer, f"{registry.host}/{REPO}@{digest}")
    payload, signature = registry.signature(digest)
    assert cosign.verify_simple_signing(payload, signature, digest, [key_b, key_a]) == key_a
    with pytest.raises(cosign.SignatureError, match="signed by another key"):
        cosign.verify_simple_signing(payload, signature, digest, [key_b])
    with pytest.raises(cosign.SignatureError, match="does not verify"):
        cosign.verify_simple_signing(payload, signature[:40], digest, [key_a])

    # The tag moved after signing: the tag now names another manifest, which that signature
    # (the only one there is) does not cover.
    moved = registry.push("v1", b"\0asm\1\0\0\0 two")
    assert registry.manifest("v1")[0] == moved != digest
    with pytest.raises(cosign.SignatureError, match=f"for manifest {digest}, not {moved}"):
        cosign.verify_simple_signing(payload, signature, moved, [key_a])
    with pytest.raises(requests.HTTPError):
        registry.signature(moved)  # and it has no signature of its own
