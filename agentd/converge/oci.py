"""OCI artifacts: an oci:// reference resolved to one layer's blob, with k3s's registries.yaml."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union
from urllib.parse import urlsplit

from agentd import __version__
from agentd.core.ociref import Reference, parse_reference
from agentd.core.redact import MASK, redact_text

# The manifest kinds a single-file artifact comes in: oras writes an OCI image manifest,
# wasm-to-oci and older tools a Docker schema 2 one. An index is asked for only to say clearly
# that a multi-platform image is not a single-file artifact.
_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
_ACCEPT = f"{_OCI_MANIFEST}, {_DOCKER_MANIFEST}, {_OCI_INDEX}"
MAX_MANIFEST_BYTES = 4 << 20  # the distribution registry's own limit for a manifest

_CHALLENGE_PARAM_RE = re.compile(r'(\w+)="([^"]*)"')
_BLOB_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}\Z")
# cosign's image signatures (`cosign sign`): a layer per signature in the manifest tagged
# `sha256-<hex>.sig` beside the signed one, the payload its blob, the signature an annotation.
SIMPLE_SIGNING_LAYER = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"


class OciError(Exception):
    """Why an OCI reference could not be resolved, in words; `transient`: worth a retry."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class Endpoint:
    """One place to ask for a registry's content, with its host's auth and TLS (configs)."""

    base: str  # scheme://host[:port], no path
    verify: Union[bool, str] = True
    cert: Optional[tuple[str, str]] = None
    username: Optional[str] = field(default=None, repr=False)
    password: Optional[str] = field(default=None, repr=False)

    @property
    def masked(self) -> str:
        return redact_text(self.base)


def _credentials(auth: Mapping[str, Any]) -> tuple[Optional[str], Optional[str]]:
    if auth.get("auth"):
        # containerd's `auth`: base64 of USER:PASSWORD, as in a docker config.json.
        user, _, password = base64.b64decode(str(auth["auth"])).decode().partition(":")
        return user, password
    return auth.get("username"), auth.get("password")


class Registries:
    """agentd.yaml's `registries:`, laid out as k3s's /etc/rancher/k3s/registries.yaml."""

    def __init__(
        self,
        settings: Optional[Mapping[str, Any]],
        *,
        verify: Union[bool, str] = True,
        path: Callable[[str], str] = str,
    ) -> None:
        """`verify`: agentd's own TLS setting, for hosts without a tls config; `path` maps a
        configured file to where it is on this root (--root)."""
        settings = settings or {}
        self.mirrors: Mapping[str, Any] = settings.get("mirrors") or {}
        self.configs: Mapping[str, Any] = settings.get("configs") or {}
        self.verify = verify
        self.path = path

    def endpoints(self, registry: str) -> list[Endpoint]:
        """The mirror endpoints in their order, then the registry itself over https: as in k3s,
        the default endpoint is always tried last."""
        mirror = self.mirrors.get(registry) or self.mirrors.get("*") or {}
        bases = [str(e).rstrip("/") for e in mirror.get("endpoint") or []]
        # An endpoint may be given with a /v2 path, as k3s accepts it; the API adds its own.
        bases = [b[: -len("/v2")] if b.endswith("/v2") else b for b in bases]
        # An endpoint on the registry's own host is the registry (an http:// one allows plain
        # HTTP): then there is no other default to fall back to.
        if not any(urlsplit(b).netloc == registry for b in bases):
            bases.append(f"https://{registry}")
        return [self._endpoint(b) for b in bases]

    def _endpoint(self, base: str) -> Endpoint:
        host = urlsplit(base).netloc
        config = self.configs.get(host) or {}
        tls = config.get("tls") or {}
        verify: Union[bool, str] = self.verify
        if tls.get("insecure_skip_verify"):
            verify = False
        elif tls.get("ca_file"):
            verify = self.path(str(tls["ca_file"]))
        cert = None
        if tls.get("cert_file") and tls.get("key_file"):
            cert = (self.path(str(tls["cert_file"])), self.path(str(tls["key_file"])))
        user, password = _credentials(config.get("auth") or {})
        return Endpoint(base, verify, cert, user, password)


@dataclass(frozen=True)
class Blob:
    """Where the artifact's bytes are and how to ask for them (the token, if one was needed)."""

    url: str
    endpoint: Endpoint
    headers: Mapping[str, str] = field(repr=False)


class _Client:
    """One endpoint's requests, answering a 401 with Basic or a token from the realm."""

    def __init__(self, endpoint: Endpoint, repository: str, timeout: float) -> None:
        self.endpoint = endpoint
        self.repository = repository
        self.timeout = timeout
        self.authorization: Optional[str] = None

    def mask(self, text: str) -> str:
        """`text` with the password, the Authorization header and URL credentials masked."""
        for value in (self.endpoint.password, self.authorization):
            if value:
                text = text.replace(value, MASK)
        return redact_text(text)

    def headers(self) -> dict[str, str]:
        headers = {"User-Agent": f"agentd/{__version__}", "Accept-Encoding": "identity"}
        if self.authorization:
            headers["Authorization"] = self.authorization
        return headers

    def _get(self, url: str, headers: Mapping[str, str], auth: Any = None) -> Any:
        import requests  # noqa: PLC0415

        try:
            return requests.get(
                url,
                headers=headers,
                auth=auth,
                stream=True,
                timeout=(self.timeout, self.timeout),
                verify=self.endpoint.verify,
                cert=self.endpoint.cert,
            )
        except requests.exceptions.SSLError:
            raise OciError("TLS error (is the registry's CA in tls.ca_file?)") from None
        except requests.exceptions.Timeout:
            raise OciError(f"no answer for {self.timeout:g}s (timed out)", transient=True) from None
        except requests.exceptions.RequestException as exc:
            first = self.mask(" ".join(str(exc).split()))[:200]
            raise OciError(f"connection failed: {first}", transient=True) from None

    def get(self, path: str, extra: Mapping[str, str]) -> Any:
        url = f"{self.endpoint.base}/v2/{self.repository}/{path}"
        resp = self._get(url, {**self.headers(), **extra})
        if resp.status_code == 401 and self.authorization is None:
            challenge = resp.headers.get("WWW-Authenticate", "")
            resp.close()
            self._authorize(challenge)
            resp = self._get(url, {**self.headers(), **extra})
        return resp

    def _authorize(self, challenge: str) -> None:
        scheme = challenge.split(" ", 1)[0].lower()
        user, password = self.endpoint.username, self.endpoint.password
        if scheme == "basic":
            if user is None:
                raise OciError(
                    "HTTP 401: the registry asks for a user name and password, "
                    "and registries.configs has none for this host"
                )
            pair = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
            self.authorization = f"Basic {pair}"
            return
        if scheme != "bearer":
            raise OciError(
                f"HTTP 401 with an authentication scheme agentd does not know "
                f"({self.mask(challenge)[:80]!r})"
            )
        params = dict(_CHALLENGE_PARAM_RE.findall(challenge))
        realm = params.get("realm", "")
        if not realm.startswith(("https://", "http://")):
            raise OciError("HTTP 401: the registry's token challenge names no realm URL")
        query = {k: params[k] for k in ("service", "scope") if k in params}
        query.setdefault("scope", f"repository:{self.repository}:pull")
        import requests  # noqa: PLC0415

        basic = (user, password or "") if user is not None else None
        try:
            resp = requests.get(
                realm,
                params=query,
                auth=basic,
                headers={"User-Agent": f"agentd/{__version__}"},
                timeout=(self.timeout, self.timeout),
                verify=self.endpoint.verify,
            )
        except requests.exceptions.RequestException:
            raise OciError("the token endpoint cannot be reached", transient=True) from None
        if resp.status_code != 200:
            who = "with the configured credentials" if user is not None else "anonymously"
            raise OciError(f"the token endpoint refused a token {who} (HTTP {resp.status_code})")
        try:
            body = resp.json()
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise OciError("the token endpoint's answer has no token")
        self.authorization = f"Bearer {token}"


def _status(resp: Any, what: str) -> None:
    if resp.status_code == 200:
        return
    code = resp.status_code
    resp.close()
    if code == 401:
        raise OciError(f"HTTP 401: the credentials were refused for {what}")
    if code == 404:
        raise OciError(f"HTTP 404: {what} is not in the registry")
    raise OciError(f"HTTP {code} for {what}", transient=code >= 500 or code in (408, 429))


def _manifest(client: _Client, ref: Reference) -> tuple[bytes, str, str]:
    """The manifest's bytes, media type and digest."""
    return _manifest_of(client.get(f"manifests/{ref.ref}", {"Accept": _ACCEPT}), ref)


def _manifest_of(
    resp: Any, ref: Reference, limit: int = MAX_MANIFEST_BYTES
) -> tuple[bytes, str, str]:
    _status(resp, f"the manifest of {ref.ref}")
    with resp:
        body = resp.raw.read(limit + 1, decode_content=True)
    if len(body) > limit:
        raise OciError(f"the manifest of {ref.ref} is over {limit} bytes")
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    if ref.digest is not None and digest != ref.digest:
        if ref.tag is not None:
            raise OciError(
                f"the tag {ref.tag} has moved: it names manifest {digest}, not the pinned "
                f"{ref.digest}"
            )
        raise OciError(f"the registry's manifest has digest {digest}, not the pinned {ref.digest}")
    return body, str(resp.headers.get("Content-Type", "")).split(";")[0].strip(), digest


def _parsed(body: bytes, ref: Reference) -> dict[str, Any]:
    try:
        manifest = json.loads(body)
    except (ValueError, RecursionError):
        raise OciError(f"the manifest of {ref.ref} is not JSON") from None
    if not isinstance(manifest, dict):
        raise OciError(f"the manifest of {ref.ref} is not a JSON object")
    return manifest


def _layer(body: bytes, media_type: str, ref: Reference, sha256: str) -> None:
    manifest = _parsed(body, ref)
    kind = manifest.get("mediaType") or media_type
    if kind == _OCI_INDEX or "manifests" in manifest:
        raise OciError(
            f"{ref.ref} is an image index (several platforms), not a single-file artifact"
        )
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise OciError(f"the manifest of {ref.ref} has no layers")
    wanted = f"sha256:{sha256}"
    if not any(isinstance(layer, dict) and layer.get("digest") == wanted for layer in layers):
        raise OciError(f"the manifest of {ref.ref} has no layer {wanted}")


def _artifact_manifest(
    registries: Registries,
    url: str,
    sha256: str,
    timeout: float,
    progress: Optional[Callable[[], None]],
) -> tuple[_Client, Reference, str]:
    """The first endpoint whose manifest of `url` has the layer `sha256`, as a client (with the
    token it got), the reference and that manifest's digest; every endpoint's failure is in
    the error when none has it."""
    try:
        ref = parse_reference(url)
    except ValueError as exc:
        raise OciError(str(exc)) from None
    failures: list[str] = []
    transient = False
    for endpoint in registries.endpoints(ref.registry):
        if progress is not None:
            progress()
        client = _Client(endpoint, ref.repository, timeout)
        try:
            body, media_type, digest = _manifest(client, ref)
            _layer(body, media_type, ref, sha256)
        except OciError as exc:
            failures.append(f"{endpoint.masked}: {client.mask(str(exc))}")
            transient = transient or exc.transient
            continue
        return client, ref, digest
    # Transient only if some endpoint may answer better later; a refusal everywhere is final.
    raise OciError("; ".join(failures), transient=transient)


def resolve(
    registries: Registries,
    url: str,
    sha256: str,
    timeout: float,
    progress: Optional[Callable[[], None]] = None,
) -> Blob:
    """The blob of `url` whose digest is `sha256`, from the first endpoint that has it in the
    manifest; every endpoint's failure is in the error when none does."""
    client, ref, _ = _artifact_manifest(registries, url, sha256, timeout, progress)
    blob_url = f"{client.endpoint.base}/v2/{ref.repository}/blobs/sha256:{sha256}"
    return Blob(blob_url, client.endpoint, client.headers())


@dataclass(frozen=True)
class CosignSignatures:
    """cosign's signature manifest of an artifact (the `sha256-<hex>.sig` tag beside it): the
    artifact's manifest digest, which the signatures must name, and each simple-signing layer's
    payload and signature annotation; `found` is False when there is no such tag."""

    manifest_digest: str
    tag: str
    found: bool
    layers: list[tuple[bytes, str]] = field(default_factory=list)


def _signature_layers(
    client: _Client, manifest: dict[str, Any], limit: int
) -> list[tuple[bytes, str]]:
    layers = manifest.get("layers")
    out: list[tuple[bytes, str]] = []
    for layer in layers if isinstance(layers, list) else []:
        if not isinstance(layer, dict) or layer.get("mediaType") != SIMPLE_SIGNING_LAYER:
            continue  # an attestation or another kind of layer: not a signature
        digest = layer.get("digest")
        if not isinstance(digest, str) or not _BLOB_DIGEST_RE.match(digest):
            raise OciError(f"a signature layer's digest is not a sha256 digest: {digest!r:.80}")
        size = layer.get("size")
        if isinstance(size, int) and size > limit:
            raise OciError(f"the signature payload {digest} is over {limit} bytes")
        resp = client.get(f"blobs/{digest}", {})
        _status(resp, f"the signature payload {digest}")
        with resp:
            payload = resp.raw.read(limit + 1, decode_content=True)
        if len(payload) > limit:
            raise OciError(f"the signature payload {digest} is over {limit} bytes")
        if "sha256:" + hashlib.sha256(payload).hexdigest() != digest:
            raise OciError(f"the signature payload {digest} does not match its digest")
        annotations = layer.get("annotations")
        signature = annotations.get(SIGNATURE_ANNOTATION) if isinstance(annotations, dict) else None
        out.append((payload, signature if isinstance(signature, str) else ""))
    return out


def cosign_signatures(
    registries: Registries, url: str, sha256: str, timeout: float, limit: int
) -> CosignSignatures:
    """The cosign signatures of the artifact `url` (its layer `sha256`), read from the endpoint
    that serves its manifest with that endpoint's auth and TLS; payloads bounded by `limit`."""
    client, ref, digest = _artifact_manifest(registries, url, sha256, timeout, None)
    tag = digest.replace(":", "-", 1) + ".sig"
    try:
        accept = f"{_OCI_MANIFEST}, {_DOCKER_MANIFEST}"
        resp = client.get(f"manifests/{tag}", {"Accept": accept})
        if resp.status_code == 404:
            resp.close()
            return CosignSignatures(digest, tag, found=False)
        sig_ref = Reference(ref.registry, ref.repository, tag, None)
        # A signature manifest is a layer or a few per signature: small, like its payloads.
        body, _, _ = _manifest_of(resp, sig_ref, limit)
        layers = _signature_layers(client, _parsed(body, sig_ref), limit)
    except OciError as exc:
        where = f"{client.endpoint.masked}: the signature {tag}"
        raise OciError(f"{where}: {client.mask(str(exc))}", transient=exc.transient) from None
    return CosignSignatures(digest, tag, found=True, layers=layers)
