"""cosign signatures of artifacts: fetched beside each one, verified before anything installs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional, Union
from urllib.parse import urlsplit

from agentd.converge.fetch import read_beside
from agentd.converge.oci import OciError, Registries, cosign_signatures
from agentd.core.errors import AgentError, DownloadError
from agentd.core.paths import Paths
from agentd.core.redact import redact_url
from agentd.sources.cosign import (
    MAX_SIGNATURE_BYTES,
    PublicKey,
    SignatureError,
    load_keys,
    verify_bundle,
    verify_digest,
    verify_simple_signing,
)
from agentd.system.readfile import SMALL_FILE_BYTES, read_bounded


@dataclass(frozen=True)
class SignaturePolicy:
    """`downloads.verify` of the settings: the keys, and whether an unsigned artifact is refused."""

    keys: list[PublicKey]
    required: bool

    @classmethod
    def from_settings(cls, downloads: Mapping[str, Any], paths: Paths) -> Optional[SignaturePolicy]:
        """None when no key is configured (the settings refuse `required` without keys)."""
        verify = downloads.get("verify") or {}
        names = (verify.get("cosign") or {}).get("publicKeys") or []
        if not names:
            return None
        named = []
        for name in names:
            try:
                named.append((name, read_bounded(paths.under(name), SMALL_FILE_BYTES)))
            except OSError as exc:
                why = exc.strerror or str(exc)
                raise SignatureError(f"cannot read the public key {name}: {why}") from None
        return cls(load_keys(named), bool(verify.get("required")))


def check_signature(
    policy: SignaturePolicy,
    url: str,
    sha256: str,
    *,
    timeout: float,
    tls_verify: Union[bool, str],
    registries: Optional[Registries] = None,
) -> Optional[str]:
    """The key that signed the artifact `url` of this sha256 (already verified), by `<url>.sig`
    or else `<url>.bundle` (an oci:// one: by cosign's signature manifest in its repository,
    through `registries`); None when it has none and signatures are not required.

    Raises SignatureError (a bad, truncated or foreign signature is refused whether or not
    signatures are required) or DownloadError (the signature could not be fetched).
    """
    safe = redact_url(url)
    scheme = urlsplit(url).scheme.lower()
    if scheme == "oci":
        return _check_oci(
            policy, registries or Registries(None, verify=tls_verify), url, sha256, timeout
        )
    if scheme not in ("https", "http", "file"):
        if not policy.required:
            return None
        raise SignatureError(
            f"signature check of {safe} failed: not supported yet: cosign signatures of "
            f"{scheme}:// artifacts (downloads.verify.required is true)"
        )
    for suffix, verify in ((".sig", verify_digest), (".bundle", verify_bundle)):
        data = read_beside(url + suffix, MAX_SIGNATURE_BYTES, timeout, tls_verify)
        if data is None:
            continue
        try:
            return "cosign " + verify(sha256, data, policy.keys).describe()
        except AgentError as exc:
            raise SignatureError(f"signature check of {safe}{suffix} failed: {exc}") from None
    if policy.required:
        raise SignatureError(
            f"signature check of {safe} failed: not signed (no {safe}.sig, no {safe}.bundle) "
            "and downloads.verify.required is true"
        )
    return None


def _check_oci(
    policy: SignaturePolicy, registries: Registries, url: str, sha256: str, timeout: float
) -> Optional[str]:
    """cosign's `sha256-<manifest hex>.sig` beside the manifest that has the layer `sha256`:
    one simple-signing layer must verify with a configured key and name that manifest."""
    safe = redact_url(url)
    try:
        found = cosign_signatures(registries, url, sha256, timeout, MAX_SIGNATURE_BYTES)
    except OciError as exc:
        raise DownloadError(f"signature check of {safe} failed: {exc}") from None
    if not found.found:
        if not policy.required:
            return None
        raise SignatureError(
            f"signature check of {safe} failed: not signed (no {found.tag} for its manifest "
            f"{found.manifest_digest}) and downloads.verify.required is true"
        )
    if not found.layers:
        raise SignatureError(
            f"signature check of {safe} failed: {found.tag} holds no cosign signature layer"
        )
    why: list[str] = []
    for payload, signature in found.layers:
        try:
            signer = verify_simple_signing(payload, signature, found.manifest_digest, policy.keys)
        except AgentError as exc:
            why.append(str(exc))
            continue
        return "cosign " + signer.describe()
    causes = "; ".join(dict.fromkeys(why))  # several signatures often fail the same way
    raise SignatureError(f"signature check of {safe} failed: {found.tag}: {causes}")
