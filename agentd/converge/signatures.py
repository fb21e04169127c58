"""cosign signatures of artifacts: fetched beside each one, verified before anything installs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional, Union
from urllib.parse import urlsplit

from agentd.converge.fetch import read_beside
from agentd.core.errors import AgentError
from agentd.core.paths import Paths
from agentd.core.redact import redact_url
from agentd.sources.cosign import (
    MAX_SIGNATURE_BYTES,
    PublicKey,
    SignatureError,
    load_keys,
    verify_bundle,
    verify_digest,
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
) -> Optional[str]:
    """The key that signed the artifact `url` of this sha256 (already verified), by `<url>.sig`
    or else `<url>.bundle`; None when it has neither and signatures are not required.

    Raises SignatureError (a bad, truncated or foreign signature is refused whether or not
    signatures are required) or DownloadError (the signature could not be fetched).
    """
    safe = redact_url(url)
    scheme = urlsplit(url).scheme.lower()
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
