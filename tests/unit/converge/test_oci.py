"""oci:// references, agentd.yaml's registries (k3s's layout) and the registry client's edges:
endpoint order, mirror fallback, an image index, a stall given up on and a stop request."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest

from agentd.converge.fetch import ArtifactCache
from agentd.converge.oci import Registries
from agentd.core.errors import Cancelled, DownloadError
from agentd.core.ociref import parse_reference
from agentd.desired.model import Artifact
from agentd.settings.model import SettingsError, load_settings
from tests.support.fleet import make_ca
from tests.support.node import Node
from tests.support.registry import Registry, Staller, oras
from tests.unit.converge.test_fetch import assert_nothing_kept, closed_port

WASM = b"\0asm\x01\0\0\0 a module"
SHA = hashlib.sha256(WASM).hexdigest()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    oras()
    with Registry(tmp_path_factory.mktemp("registry")) as r:
        yield r


@pytest.fixture
def cache(tmp_path: Path) -> ArtifactCache:
    c = ArtifactCache(tmp_path / "cache")
    c.attempts = 1
    return c


def plain(host: str, *first: str) -> Registries:
    return Registries({"mirrors": {host: {"endpoint": [*first, f"http://{host}"]}}})


# --- references ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "parts"),
    [
        ("oci://reg.example/wasm/app:v1", ("reg.example", "wasm/app", "v1", None)),
        (
            "oci://127.0.0.1:5000/a@sha256:" + "a" * 64,
            ("127.0.0.1:5000", "a", None, "sha256:" + "a" * 64),
        ),
        (
            "oci://r:443/a/b-c:1.2@sha256:" + "b" * 64,
            ("r:443", "a/b-c", "1.2", "sha256:" + "b" * 64),
        ),
    ],
)
def test_references_parse(url: str, parts: tuple[str, str, Optional[str], Optional[str]]) -> None:
    ref = parse_reference(url)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == parts


@pytest.mark.parametrize(
    "url",
    [
        "oci://reg.example/wasm/app",  # neither tag nor digest
        "oci://reg.example/Wasm/app:v1",  # repositories are lower case
        "oci://user:pw@reg.example/app:v1",  # no credentials in a reference
        "oci://reg.example/app@sha256:abc",  # a digest is 64 hex digits
        "oci://reg.example/app:-x",
    ],
)
def test_bad_references_are_refused_by_the_desired_state(url: str) -> None:
    with pytest.raises(ValueError, match="an OCI artifact is oci://HOST"):
        Artifact(url=url, sha256=SHA)


# --- settings -------------------------------------------------------------------------------------


def test_registries_settings_in_k3s_layout_validate_at_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "agentd.yaml"
    path.write_text(
        "registries:\n"
        "  mirrors:\n"
        "    reg.example:\n"
        "      endpoint: [http://10.0.0.5:5000, https://mirror.example/v2]\n"
        "  configs:\n"
        "    mirror.example:\n"
        "      auth: {username: edge, password: pw}\n"
        "      tls: {ca_file: /etc/ca.pem, insecure_skip_verify: false}\n"
    )
    settings = load_settings(path)
    assert settings.registries.mirrors["reg.example"].endpoint[0] == "http://10.0.0.5:5000"
    path.write_text(
        "registries:\n  configs:\n    r.example:\n      tls: {ca_file: ca.pem}\n"
        "      auth: {password: pw}\n"
    )
    with pytest.raises(SettingsError) as caught:
        load_settings(path)
    problems = caught.value.problems
    assert any(p.startswith(f"{path}:4:") and "ca_file must be an absolute" in p for p in problems)
    assert any(p.startswith(f"{path}:5:") and "a password needs its user" in p for p in problems)
    path.write_text("registries:\n  configs:\n    r.example: {auth: {identity_token: t}}\n")
    with pytest.raises(SettingsError) as caught:
        load_settings(path)
    assert "3:" in caught.value.problems[0]
    assert "not supported yet: identity tokens" in caught.value.problems[0]
    path.write_text("registries:\n  mirrors:\n    r.example: {endpoint: [ftp://x]}\n")
    with pytest.raises(SettingsError) as caught:
        load_settings(path)
    assert f"{path}:3:" in caught.value.problems[0]


def test_agentd_settings_masks_registry_credentials(tmp_path: Path) -> None:
    node = Node(tmp_path / "root")
    etc = node.path("/etc/wasm-edge")
    etc.mkdir(parents=True)
    pair = base64.b64encode(b"edge:pair-secret").decode()
    (etc / "agentd.yaml").write_text(
        "registries:\n  configs:\n"
        "    a.example: {auth: {username: edge, password: hunter2-registry}}\n"
        f"    b.example: {{auth: {{auth: {pair}}}}}\n"
    )
    for args in (("settings", "--json"), ("settings",)):
        res = node.agentd(*args)
        assert res.code == 0, res.stderr
        assert "hunter2-registry" not in res.stdout
        assert pair not in res.stdout
        assert "***" in res.stdout
    doc = node.agentd("settings", "--json").json()
    assert doc["settings"]["registries"]["configs"]["a.example"]["auth"]["username"] == "edge"


def test_endpoints_are_the_mirrors_in_order_then_the_registry_over_https(tmp_path: Path) -> None:
    regs = Registries(
        {
            "mirrors": {"reg.example": {"endpoint": ["http://m1:5000", "https://m2/v2"]}},
            "configs": {
                "m2": {"tls": {"ca_file": "/etc/ca.pem", "cert_file": "/c", "key_file": "/k"}},
                "reg.example": {"tls": {"insecure_skip_verify": True}},
            },
        },
        path=lambda f: f"/root{f}",
    )
    got = regs.endpoints("reg.example")
    assert [e.base for e in got] == ["http://m1:5000", "https://m2", "https://reg.example"]
    assert [e.verify for e in got] == [True, "/root/etc/ca.pem", False]
    assert got[1].cert == ("/root/c", "/root/k")
    # No mirror: the registry itself; a mirror on the registry's own host is the registry.
    assert [e.base for e in regs.endpoints("other:5000")] == ["https://other:5000"]
    assert [e.base for e in plain("h:1").endpoints("h:1")] == ["http://h:1"]


def test_base64_auth_is_a_user_and_password(tmp_path: Path) -> None:
    pair = base64.b64encode(b"edge:pw:with:colons").decode()
    (endpoint,) = Registries({"configs": {"r:1": {"auth": {"auth": pair}}}}).endpoints("r:1")
    assert (endpoint.username, endpoint.password) == ("edge", "pw:with:colons")


# --- against the real registry --------------------------------------------------------------------


def test_a_dead_mirror_is_passed_over_for_the_next_endpoint(
    registry: Registry, cache: ArtifactCache, tmp_path: Path
) -> None:
    (tmp_path / "app.wasm").write_bytes(WASM)
    registry.push("unit/app:v1", tmp_path / "app.wasm")
    dead = f"http://127.0.0.1:{closed_port()}"
    cache.registries = plain(registry.host, dead)
    got = cache.fetch(f"oci://{registry.host}/unit/app:v1", SHA)
    assert got.path.read_bytes() == WASM
    # Both down or wrong: every endpoint's failure is in the one error.
    cache2 = ArtifactCache(tmp_path / "c2")
    cache2.attempts = 1
    cache2.registries = plain(registry.host, dead)
    with pytest.raises(DownloadError) as caught:
        cache2.fetch(f"oci://{registry.host}/unit/app:v1", "0" * 64)
    message = str(caught.value)
    assert f"{dead}: connection failed" in message
    assert f"http://{registry.host}: the manifest of v1 has no layer sha256:{'0' * 64}" in message
    assert_nothing_kept(cache2)


def test_an_image_index_is_not_a_single_file_artifact(
    registry: Registry, cache: ArtifactCache, tmp_path: Path
) -> None:
    (tmp_path / "app.wasm").write_bytes(WASM)
    digest = registry.push("unit/multi:one", tmp_path / "app.wasm")
    manifest: dict[str, object] = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": digest,
    }
    raw = subprocess.run(
        [str(oras()), "manifest", "fetch", "--plain-http", f"{registry.host}/unit/multi:one"],
        check=True,
        capture_output=True,
    ).stdout
    manifest["size"] = len(raw)
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{**manifest, "platform": {"os": "linux", "architecture": "amd64"}}],
    }
    (tmp_path / "index.json").write_text(json.dumps(index))
    subprocess.run(
        [str(oras()), "manifest", "push", "--plain-http", "--media-type",
         "application/vnd.oci.image.index.v1+json", f"{registry.host}/unit/multi:index",
         str(tmp_path / "index.json")],
        check=True, capture_output=True,
    )  # fmt: skip
    cache.registries = plain(registry.host)
    with pytest.raises(DownloadError, match=r"index is an image index \(several platforms\)"):
        cache.fetch(f"oci://{registry.host}/unit/multi:index", SHA)
    assert_nothing_kept(cache)


def test_a_stalling_registry_is_bounded_by_the_timeout_and_a_stop_ends_the_wait(
    cache: ArtifactCache,
) -> None:
    stall = Staller()
    try:
        cache.registries = plain(stall.host)
        started = time.monotonic()
        with pytest.raises(DownloadError, match=r"no answer for 0.3s \(timed out\)"):
            cache.fetch(f"oci://{stall.host}/app:v1", SHA, timeout=0.3)
        assert time.monotonic() - started < 5
        # Three attempts 30 s apart: a stop asked for after the first is answered at once.
        cache.attempts, cache.backoff_s = 3, 30.0
        calls: list[float] = []

        def progress() -> None:
            calls.append(time.monotonic())
            if len(calls) > 1:
                raise Cancelled("stop requested")

        started = time.monotonic()
        with pytest.raises(Cancelled):
            cache.fetch(f"oci://{stall.host}/app:v1", SHA, timeout=0.3, progress=progress)
        assert time.monotonic() - started < 5
        assert_nothing_kept(cache)
    finally:
        stall.stop()


def test_a_registry_over_tls_is_trusted_through_its_ca_file_or_the_nodes(tmp_path: Path) -> None:
    """No mirrors: the registry itself over https. Its CA from configs.tls.ca_file, or from
    agentd's own tls.caFile; neither: a TLS error naming the endpoint, nothing kept."""
    ca = make_ca(tmp_path / "ca")
    (tmp_path / "app.wasm").write_bytes(WASM)
    with Registry(tmp_path / "registry", tls=ca) as r:
        r.push("tls/app:v1", tmp_path / "app.wasm")
        ref = f"oci://{r.host}/tls/app:v1"
        untrusted = ArtifactCache(tmp_path / "untrusted")
        untrusted.attempts = 1
        with pytest.raises(DownloadError) as caught:
            untrusted.fetch(ref, SHA)
        assert f"download of {ref} failed: https://{r.host}: TLS error" in str(caught.value)
        assert_nothing_kept(untrusted)
        configured = ArtifactCache(tmp_path / "configured")
        configured.registries = Registries(
            {"configs": {r.host: {"tls": {"ca_file": str(ca.cert)}}}}
        )
        assert configured.fetch(ref, SHA).path.read_bytes() == WASM
        nodes = ArtifactCache(tmp_path / "nodes", verify=str(ca.cert))
        assert nodes.fetch(ref, SHA).path.read_bytes() == WASM
