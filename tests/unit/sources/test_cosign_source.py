"""A cosign-signed fleet document over HTTPS: `cosign sign-blob`'s `<url>.sig`, the real cosign."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cosigntool import cosign_binary, run_cosign
from tests.support.fleet import TestCA, make_ca
from tests.support.mirror import MirrorServer
from tests.support.node import Node
from tests.support.standins import Mirror
from tests.unit.sources.test_sources import apply, fleet_doc, https_settings, publish, pull

KEY = "/etc/wasm-edge/keys/fleet.pub"
COSIGN_VERIFY = {"method": "cosign", "publicKeys": [KEY]}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """The cosign binary and two key directories: the fleet's and someone else's."""
    binary, why = cosign_binary()
    if binary is None:
        pytest.skip(f"the real cosign is not available: {why}")
    d = tmp_path_factory.mktemp("cosign-keys")
    for who in ("fleet", "other"):
        (d / who).mkdir()
        run_cosign(binary, "generate-key-pair", cwd=d / who)
    return binary, d / "fleet", d / "other"


def sign(keys: tuple[Path, Path, Path], who: Path, doc: Path) -> None:
    run_cosign(
        keys[0],
        *("sign-blob", "--key", str(who / "cosign.key"), "--tlog-upload=false"),
        *("--output-signature", f"{doc}.sig", str(doc)),
        cwd=who,
    )


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "site").mkdir()
    return tmp_path / "site"


@pytest.fixture
def https(site: Path, ca: TestCA) -> Iterator[MirrorServer]:
    with MirrorServer(site, tls=ca.server_context()) as server:
        yield server


def test_https_cosign_signatures_of_the_fleet_document(
    sandbox_root: Path,
    site: Path,
    https: MirrorServer,
    ca: TestCA,
    keys: tuple[Path, Path, Path],
    mirror: MirrorServer,
    mirror_index: Mirror,
    arch: str,
) -> None:
    node = Node(sandbox_root)
    node.path(KEY).parent.mkdir(parents=True)
    node.path(KEY).write_bytes((keys[1] / "cosign.pub").read_bytes())
    https_settings(node, f"{https.url}/fleet.yaml", ca, COSIGN_VERIFY)
    doc = publish(site, fleet_doc(mirror, mirror_index, arch, 1))
    sign(keys, keys[1], doc)
    code, pulled = pull(node)
    assert code == 0, pulled
    assert pulled["detail"].startswith(f"generation 1, signed by cosign {KEY} (sha256:")

    # Signed by another key, then tampered after a good signature, then truncated: refused,
    # and the last good document stays.
    doc = publish(site, fleet_doc(mirror, mirror_index, arch, 2, crun="1.15"))
    sign(keys, keys[2], doc)
    for signature in (None, b"tamper", b"truncate"):
        if signature == b"tamper":
            sign(keys, keys[1], doc)
            doc.write_text(doc.read_text().replace("generation: 2", "generation: 3"))
        if signature == b"truncate":
            sign(keys, keys[1], doc)
            Path(f"{doc}.sig").write_bytes(Path(f"{doc}.sig").read_bytes()[:24])
        code, pulled = pull(node)
        assert code == 1, pulled
        assert pulled["outcome"] == "rejected"
        assert pulled["detail"].startswith("bad cosign signature: "), pulled["detail"]
        assert "does not verify with any configured key" in pulled["detail"]
        assert pulled["lastGood"]["generation"] == 1

    Path(f"{doc}.sig").unlink()
    code, pulled = pull(node)
    assert code == 1
    assert pulled["detail"].startswith("the document is not signed: ")

    sign(keys, keys[1], doc)
    code, result = apply(node)
    assert code == 0, result
    assert result["fleet"]["generation"] == 3
    assert result["fleet"]["signedBy"].startswith(f"cosign {KEY}")
    assert node.version_of("/usr/local/bin/crun") == "crun version 1.15"
