"""cosign signatures made by the real cosign 2.5, verified by agentd.sources.cosign."""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from agentd.sources import cosign
from tests.support.cosigntool import cosign_binary, run_cosign


@dataclass(frozen=True)
class Signed:
    """One blob, signed by key A as cosign writes it: a .sig, an old and a new bundle."""

    dir: Path
    binary: Path
    blob: bytes
    sig: bytes
    bundle: bytes
    new_bundle: bytes
    key_a: cosign.PublicKey
    key_b: cosign.PublicKey

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.blob).hexdigest()


def keypair(binary: Path, where: Path) -> Path:
    where.mkdir()
    run_cosign(binary, "generate-key-pair", cwd=where)
    return where / "cosign.pub"


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Signed:
    binary, why = cosign_binary()
    if binary is None:
        pytest.skip(f"the real cosign is not available: {why}")
    d = tmp_path_factory.mktemp("cosign")
    pub_a, pub_b = keypair(binary, d / "a"), keypair(binary, d / "b")
    blob = b"\0asm\1\0\0\0 a module\n" * 50
    (d / "blob").write_bytes(blob)
    key = str(d / "a" / "cosign.key")
    common = ("sign-blob", "--key", key, "--tlog-upload=false", "--yes")
    run_cosign(binary, *common, "--output-signature", "blob.sig", "blob", cwd=d)
    run_cosign(binary, *common, "--bundle", "blob.bundle", "blob", cwd=d)
    run_cosign(
        binary, *common, "--new-bundle-format", "--bundle", "blob.sigstore.json", "blob", cwd=d
    )
    keys = cosign.load_keys(
        [("/keys/a.pub", pub_a.read_bytes()), ("/keys/b.pub", pub_b.read_bytes())]
    )
    return Signed(
        d,
        binary,
        blob,
        (d / "blob.sig").read_bytes(),
        (d / "blob.bundle").read_bytes(),
        (d / "blob.sigstore.json").read_bytes(),
        keys[0],
        keys[1],
    )


def test_a_sign_blob_signature_verifies_and_names_its_key(signed: Signed) -> None:
    assert signed.sig.strip()
    assert b"{" not in signed.sig  # cosign's .sig is plain base64
    found = cosign.verify_digest(signed.digest, signed.sig, [signed.key_b, signed.key_a])
    assert found == signed.key_a
    assert found.describe() == f"/keys/a.pub (sha256:{signed.key_a.fingerprint[:16]})"


def test_both_bundle_formats_verify(signed: Signed) -> None:
    old = json.loads(signed.bundle)
    assert "base64Signature" in old
    assert "mediaType" not in old
    new = json.loads(signed.new_bundle)
    assert new["mediaType"].startswith("application/vnd.dev.sigstore.bundle")
    # cosign's key hint is the same fingerprint agentd shows.
    hint = new["verificationMaterial"]["publicKey"]["hint"]
    assert base64.b64decode(hint).hex() == signed.key_a.fingerprint
    for data in (signed.bundle, signed.new_bundle):
        assert cosign.verify_bundle(signed.digest, data, [signed.key_a]) == signed.key_a


def test_a_tampered_file_is_refused(signed: Signed) -> None:
    other = hashlib.sha256(signed.blob + b"x").hexdigest()
    with pytest.raises(cosign.SignatureError, match="does not verify with any configured key"):
        cosign.verify_digest(other, signed.sig, [signed.key_a])
    # The old bundle carries no digest: the signature itself fails.
    with pytest.raises(cosign.SignatureError, match="does not verify"):
        cosign.verify_bundle(other, signed.bundle, [signed.key_a])
    # The new one names its file: refused on that, before any key is tried.
    with pytest.raises(cosign.SignatureError, match="the bundle is for another file"):
        cosign.verify_bundle(other, signed.new_bundle, [signed.key_a])


def test_a_signature_by_another_key_is_refused(signed: Signed) -> None:
    with pytest.raises(cosign.SignatureError, match=r"any configured key \(/keys/b.pub\)"):
        cosign.verify_digest(signed.digest, signed.sig, [signed.key_b])
    with pytest.raises(cosign.SignatureError, match="signed by another key"):
        cosign.verify_bundle(signed.digest, signed.new_bundle, [signed.key_b])


@pytest.mark.parametrize("keep", [0, 8, 40, -4])
def test_a_truncated_signature_is_refused(signed: Signed, keep: int) -> None:
    cut = signed.sig.strip()[:keep]
    with pytest.raises(cosign.SignatureError, match=r"empty|not base64|does not verify"):
        cosign.verify_digest(signed.digest, cut, [signed.key_a])


@pytest.mark.parametrize(
    ("data", "cause"),
    [
        (b"\x89PNG garbage", "not JSON"),
        (b"[" * 60000, "not JSON"),  # nested past Python's recursion limit: no traceback
        (b"[1, 2]", "not a JSON object"),
        (b'{"payload": "x"}', "not a cosign bundle"),
        (b'{"base64Signature": ""}', "no signature"),
        (b'{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json"}', "no messageSignature"),
        (
            b'{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json", "dsseEnvelope": {}}',
            "a DSSE attestation",
        ),
    ],
)
def test_a_garbage_bundle_is_refused(signed: Signed, data: bytes, cause: str) -> None:
    with pytest.raises(cosign.SignatureError, match=cause):
        cosign.verify_bundle(signed.digest, data, [signed.key_a])


def test_keys_that_cannot_be_used_are_refused_by_name(signed: Signed) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    with pytest.raises(cosign.SignatureError, match=r"/keys/x\.pub: "):
        cosign.load_keys([("/keys/x.pub", b"not a key")])
    ed = ed25519.Ed25519PrivateKey.generate().public_key()
    pem = ed.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(cosign.SignatureError, match="only ECDSA P-256"):
        cosign.load_keys([("/keys/ed.pub", pem)])
    # The private key is not a public key (and is encrypted).
    with pytest.raises(cosign.SignatureError, match="cannot use the public key"):
        cosign.load_keys([("/keys/a.key", (signed.dir / "a" / "cosign.key").read_bytes())])
    with pytest.raises(cosign.SignatureError, match="no public key"):
        cosign.load_keys([])


# --- cosign's image signatures (what `cosign sign` stores in the sha256-<digest>.sig tag) -------


def simple_signing(signed: Signed, manifest_digest: str, name: str) -> tuple[bytes, bytes]:
    """cosign's own payload for an image (`cosign generate`, offline), signed by key A."""
    payload = run_cosign(
        signed.binary, "generate", f"127.0.0.1:5000/wasm/app@{manifest_digest}", cwd=signed.dir
    ).encode()
    (signed.dir / name).write_bytes(payload)
    key = str(signed.dir / "a" / "cosign.key")
    run_cosign(
        signed.binary,
        *("sign-blob", "--key", key, "--tlog-upload=false", "--yes"),
        *("--output-signature", f"{name}.sig", name),
        cwd=signed.dir,
    )
    return payload, (signed.dir / f"{name}.sig").read_bytes()


def test_an_image_signature_verifies_for_its_manifest_only(signed: Signed) -> None:
    manifest = "sha256:" + hashlib.sha256(b"manifest one").hexdigest()
    moved = "sha256:" + hashlib.sha256(b"manifest two").hexdigest()
    payload, sig = simple_signing(signed, manifest, "payload.json")
    doc = json.loads(payload)
    assert doc["critical"]["image"]["docker-manifest-digest"] == manifest
    assert doc["critical"]["type"] == cosign.SIMPLE_SIGNING_TYPE
    keys = [signed.key_b, signed.key_a]
    assert cosign.verify_simple_signing(payload, sig, manifest, keys) == signed.key_a
    with pytest.raises(cosign.SignatureError, match=f"for manifest {manifest}, not {moved}"):
        cosign.verify_simple_signing(payload, sig, moved, keys)
    # A payload edited to name another manifest no longer matches its signature.
    forged = payload.replace(manifest.encode(), moved.encode())
    with pytest.raises(cosign.SignatureError, match="does not verify"):
        cosign.verify_simple_signing(forged, sig, moved, keys)
    with pytest.raises(cosign.SignatureError, match="signed by another key"):
        cosign.verify_simple_signing(payload, sig, manifest, [signed.key_b])
    with pytest.raises(cosign.SignatureError, match="not a manifest digest"):
        cosign.verify_simple_signing(payload, sig, "latest", keys)


def test_a_signed_payload_of_another_kind_is_refused(signed: Signed) -> None:
    # Signed by the right key, but not a cosign image signature: a blob signature reused.
    with pytest.raises(cosign.SignatureError, match="not JSON"):
        cosign.verify_simple_signing(signed.blob, signed.sig, "sha256:" + "0" * 64, [signed.key_a])


def test_without_the_cryptography_library_the_error_names_the_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A package install without python3-cryptography (a Recommends): only a node configured
    # with keys needs it, and it says what to install instead of failing with a traceback.
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives", None)
    with pytest.raises(cosign.SignatureError, match="apt-get install python3-cryptography"):
        cosign.load_keys([("/keys/a.pub", b"-----BEGIN PUBLIC KEY-----\n")])
