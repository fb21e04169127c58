"""cosign signatures and bundles, verified offline against the node's public keys only."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

from agentd.core.errors import AgentError

# cosign's signatures and bundles are a few hundred bytes (a bundle with a Rekor entry a few
# KiB): anything near this is not one.
MAX_SIGNATURE_BYTES = 64 << 10
SIMPLE_SIGNING_TYPE = "cosign container image signature"
_BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle"
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}\Z")


class SignatureError(AgentError):
    """A signature that is missing, malformed, or not by any of the configured keys."""


@dataclass(frozen=True)
class PublicKey:
    """One configured key: where it came from, its fingerprint, and the loaded key."""

    name: str  # the node path it was read from
    fingerprint: str  # sha256 of the DER SubjectPublicKeyInfo, hex (cosign's bundle "hint")
    key: Any  # cryptography's EllipticCurvePublicKey

    def describe(self) -> str:
        return f"{self.name} (sha256:{self.fingerprint[:16]})"


def load_keys(named: Sequence[tuple[str, bytes]]) -> list[PublicKey]:
    """The keys from (name, PEM) pairs, as `cosign generate-key-pair` writes cosign.pub."""
    # Imported here: cryptography costs start-up time that only a signed setup needs, and a
    # node without signatures configured does not need it installed at all.
    try:
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
        from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    except ImportError:
        raise SignatureError(
            "cosign signatures need the Python library cryptography: apt-get install "
            "python3-cryptography (dnf install python3-cryptography), or pip install "
            "'wasm-edge-agentd[cosign]'"
        ) from None

    keys: list[PublicKey] = []
    for name, pem in named:
        try:
            key = serialization.load_pem_public_key(pem)
        except (ValueError, TypeError) as exc:
            why = " ".join(str(exc).split())[:200] or "not a PEM public key"
            raise SignatureError(f"cannot use the public key {name}: {why}") from None
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            # What cosign generate-key-pair makes; other kinds would need other hash rules.
            raise SignatureError(
                f"cannot use the public key {name}: only ECDSA P-256 keys are supported "
                "(what cosign generate-key-pair makes)"
            )
        der = key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        keys.append(PublicKey(name, hashlib.sha256(der).hexdigest(), key))
    if not keys:
        raise SignatureError("no public key is configured to verify signatures with")
    return keys


def _decode_signature(signature_b64: Union[str, bytes]) -> bytes:
    if isinstance(signature_b64, bytes):
        signature_b64 = signature_b64.decode("ascii", "replace")
    text = "".join(signature_b64.split())
    if not text:
        raise SignatureError("the signature is empty")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("the signature is not base64 (cosign writes it so)") from None


def verify_digest(
    sha256_hex: str, signature_b64: Union[str, bytes], keys: Sequence[PublicKey]
) -> PublicKey:
    """The key whose ECDSA signature over the SHA-256 digest `sha256_hex` this is.

    `cosign sign-blob` signs the blob's SHA-256 digest; the blob itself need not be read again.
    """
    from cryptography.exceptions import InvalidSignature  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec, utils  # noqa: PLC0415

    raw = _decode_signature(signature_b64)
    try:
        digest = bytes.fromhex(sha256_hex)
    except ValueError:
        raise SignatureError(f"not a sha256 digest: {sha256_hex!r}") from None
    if len(digest) != 32:
        raise SignatureError(f"not a sha256 digest: {sha256_hex!r}")
    for candidate in keys:
        try:
            candidate.key.verify(raw, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        except InvalidSignature:
            continue
        return candidate
    names = ", ".join(k.name for k in keys)
    raise SignatureError(
        f"the signature does not verify with any configured key ({names}): "
        "tampered, truncated, or signed by another key"
    )


@dataclass(frozen=True)
class Bundle:
    """What a cosign bundle says: the signature, and the digest it claims (new format only)."""

    signature_b64: str
    sha256_hex: Optional[str] = None


def parse_bundle(data: bytes) -> Bundle:
    """A `cosign sign-blob --bundle` file: the old format ({"base64Signature", "cert"?,
    "rekorBundle"?}) or the sigstore bundle (`--new-bundle-format`, a messageSignature).

    Only the signature is used: a certificate (keyless) and a Rekor entry are not verified.
    """
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise SignatureError("the bundle is not JSON") from None
    if not isinstance(doc, dict):
        raise SignatureError("the bundle is not a JSON object")
    media = doc.get("mediaType")
    if isinstance(media, str) and media.startswith(_BUNDLE_MEDIA_TYPE):
        message = doc.get("messageSignature")
        if not isinstance(message, dict):
            what = "a DSSE attestation" if "dsseEnvelope" in doc else "no messageSignature"
            raise SignatureError(f"the sigstore bundle holds {what}, not a blob signature")
        signature = message.get("signature")
        claimed = message.get("messageDigest")
        sha256_hex = None
        if isinstance(claimed, dict):
            if claimed.get("algorithm") != "SHA2_256" or not isinstance(claimed.get("digest"), str):
                raise SignatureError("the bundle's messageDigest is not a SHA2_256 digest")
            try:
                sha256_hex = base64.b64decode(claimed["digest"], validate=True).hex()
            except (binascii.Error, ValueError):
                raise SignatureError("the bundle's messageDigest is not base64") from None
    elif "base64Signature" in doc:
        signature = doc.get("base64Signature")
        sha256_hex = None
    else:
        raise SignatureError("not a cosign bundle (no base64Signature, no sigstore mediaType)")
    if not isinstance(signature, str) or not signature:
        raise SignatureError("the bundle has no signature")
    return Bundle(signature, sha256_hex)


def verify_bundle(sha256_hex: str, data: bytes, keys: Sequence[PublicKey]) -> PublicKey:
    """The key that signed the file of this digest, by the bundle `data`."""
    bundle = parse_bundle(data)
    if bundle.sha256_hex is not None and bundle.sha256_hex != sha256_hex.lower():
        raise SignatureError(
            f"the bundle is for another file (sha256 {bundle.sha256_hex}, not {sha256_hex})"
        )
    return verify_digest(sha256_hex, bundle.signature_b64, keys)


def verify_simple_signing(
    payload: bytes,
    signature_b64: Union[str, bytes],
    manifest_digest: str,
    keys: Sequence[PublicKey],
) -> PublicKey:
    """The key that signed this cosign image signature (`cosign sign`: the simple-signing JSON
    payload of a `sha256-<digest>.sig` manifest's layer, its signature annotation), provided
    the payload names `manifest_digest` ("sha256:<hex>") as the signed manifest."""
    if not _DIGEST_RE.match(manifest_digest):
        raise SignatureError(f"not a manifest digest: {manifest_digest!r}")
    # The signature first: nothing of an unauthenticated payload is believed or parsed.
    signer = verify_digest(hashlib.sha256(payload).hexdigest(), signature_b64, keys)
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise SignatureError("the signed payload is not JSON") from None
    critical = doc.get("critical") if isinstance(doc, dict) else None
    image = critical.get("image") if isinstance(critical, dict) else None
    if not isinstance(critical, dict) or critical.get("type") != SIMPLE_SIGNING_TYPE:
        raise SignatureError(f"the signed payload is not a {SIMPLE_SIGNING_TYPE}")
    named = image.get("docker-manifest-digest") if isinstance(image, dict) else None
    if named != manifest_digest:
        raise SignatureError(
            f"the signature is for manifest {named}, not {manifest_digest} "
            "(the tag was moved after signing?)"
        )
    return signer
