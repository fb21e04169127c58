"""check_signature beside a file:// artifact, an oci:// one's registry, and the schemes it
cannot check."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from agentd.converge.signatures import SignaturePolicy, check_signature
from agentd.core.errors import DownloadError
from agentd.core.paths import Paths
from agentd.sources.cosign import SignatureError
from tests.support.cosigntool import cosign_binary, run_cosign


@pytest.fixture
def signed(tmp_path: Path) -> tuple[Path, Path]:
    """A file signed by the real cosign, its key installed at /keys/release.pub in a root."""
    binary, why = cosign_binary()
    if binary is None:
        pytest.skip(f"the real cosign is not available: {why}")
    run_cosign(binary, "generate-key-pair", cwd=tmp_path)
    blob = tmp_path / "crun"
    blob.write_bytes(b"#!/bin/sh\necho crun version 1.15\n")
    run_cosign(
        binary,
        *("sign-blob", "--key", "cosign.key", "--tlog-upload=false"),
        *("--output-signature", "crun.sig", "crun"),
        cwd=tmp_path,
    )
    root = tmp_path / "root"
    (root / "keys").mkdir(parents=True)
    (root / "keys" / "release.pub").write_bytes((tmp_path / "cosign.pub").read_bytes())
    return blob, root


def policy(root: Path, required: bool) -> SignaturePolicy:
    downloads = {"verify": {"cosign": {"publicKeys": ["/keys/release.pub"]}, "required": required}}
    found = SignaturePolicy.from_settings(downloads, Paths(root))
    assert found is not None
    return found


def test_a_local_artifact_is_checked_by_the_sig_beside_it(signed: tuple[Path, Path]) -> None:
    blob, root = signed
    sha = hashlib.sha256(blob.read_bytes()).hexdigest()
    url = blob.as_uri()
    signer = check_signature(policy(root, True), url, sha, timeout=5, tls_verify=True)
    assert signer is not None
    assert signer.startswith("cosign /keys/release.pub (sha256:")
    other = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(SignatureError, match=f"signature check of {url}.sig failed: "):
        check_signature(policy(root, False), url, other, timeout=5, tls_verify=True)
    Path(f"{blob}.sig").unlink()
    assert check_signature(policy(root, False), url, sha, timeout=5, tls_verify=True) is None
    with pytest.raises(SignatureError, match="not signed"):
        check_signature(policy(root, True), url, sha, timeout=5, tls_verify=True)


def test_no_keys_means_no_policy_and_another_scheme_is_refused_only_when_required(
    signed: tuple[Path, Path],
) -> None:
    _, root = signed
    assert SignaturePolicy.from_settings({}, Paths(root)) is None
    assert SignaturePolicy.from_settings({"verify": None}, Paths(root)) is None
    url, sha = "ftp://mirror.example/crun", "0" * 64
    assert check_signature(policy(root, False), url, sha, timeout=5, tls_verify=True) is None
    with pytest.raises(SignatureError, match="not supported yet: cosign signatures of ftp://"):
        check_signature(policy(root, True), url, sha, timeout=5, tls_verify=True)
    # An oci:// artifact's signature is asked of its registry (here: nothing listens), even
    # when not required: a signature that is there must verify.
    url = "oci://127.0.0.1:1/wasm/app:1.0"
    with pytest.raises(DownloadError, match=f"signature check of {url} failed: .*connection"):
        check_signature(policy(root, False), url, sha, timeout=5, tls_verify=True)
