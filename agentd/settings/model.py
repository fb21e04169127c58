"""This node's agent settings (/etc/wasm-edge/agentd.yaml), validated, errors at line:col."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field, ValidationInfo, field_validator, model_validator

from agentd.core.errors import AgentError
from agentd.schema.types import (
    DnsSubdomain,
    Duration,
    Labels,
    MaintenanceWindowSpec,
    StrictModel,
)
from agentd.schema.validation import check_schema, format_problems
from agentd.schema.yamlload import Loaded, load_file
from agentd.settings.registries import RegistrySettings
from agentd.sources.credentials import URL_CREDENTIALS_REFUSED, has_credentials

# Debian's prometheus-node-exporter reads its textfile collector from this directory.
DEFAULT_METRICS_PATH = "/var/lib/prometheus/node-exporter/agentd.prom"

# A git ref as a fleet names it: a branch, a tag or refs/...; never an option (a leading "-").
_REF_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/+-]*\Z")
_SCP_LIKE_RE = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[^/]")


class SettingsError(AgentError):
    """The settings file cannot be read or is invalid."""

    def __init__(self, message: str, problems: Optional[list[str]] = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class Verify(StrictModel):
    """How the pulled document's authenticity is checked."""

    method: Literal["ssh", "gpg", "cosign"]
    # ssh: an allowed-signers file (ssh-keygen(1) ALLOWED SIGNERS); gpg: exported public keys;
    # cosign: PEM public keys (cosign.pub), for an https source's `<url>.sig`.
    allowedSigners: Optional[str] = None
    keyring: Optional[str] = None
    publicKeys: Optional[list[str]] = None
    # ssh signatures of an HTTPS document: the -n namespace it was signed for, and (optional)
    # the one principal in allowedSigners that must have signed it.
    namespace: str = Field(default="agentd", pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]*$")
    identity: Optional[str] = Field(default=None, pattern=r"^[^\s]+$")

    @model_validator(mode="after")
    def _files(self) -> Verify:
        wanted = {"ssh": "allowedSigners", "gpg": "keyring", "cosign": "publicKeys"}[self.method]
        value = getattr(self, wanted)
        if not value:
            raise ValueError(f"verify method {self.method} needs {wanted} (an absolute path)")
        if isinstance(value, str) and not value.startswith("/"):
            raise ValueError(f"{wanted} must be an absolute path")
        if isinstance(value, list) and not all(v.startswith("/") for v in value):
            raise ValueError(f"{wanted} must be absolute paths")
        return self


class Source(StrictModel):
    """Where the fleet's desired state is pulled from."""

    type: Literal["git", "https"]
    # Plain http://, git:// and file:// URLs (no transport security) only when this says so.
    allowInsecure: bool = False
    url: str = Field(min_length=1)
    ref: Optional[str] = None  # git: branch, tag or refs/...
    path: Optional[str] = None  # git: the document's path inside the repository
    verify: Optional[Verify] = None
    timeout: Duration = 30.0
    # Lines of https://USER:TOKEN@HOST (git-credential store), in a 0600 file: a URL's
    # credentials would be on git's command line, readable by every local user.
    credentialsFile: Optional[str] = None

    @field_validator("url")
    @classmethod
    def _url(cls, url: str, info: ValidationInfo) -> str:
        kind, insecure_ok = info.data.get("type"), info.data.get("allowInsecure", False)
        if url.startswith("-"):
            raise ValueError("a source URL cannot start with '-'")
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        if kind == "https":
            secure = scheme == "https"
            known = scheme in ("https", "http", "file")
        else:
            scp_like = not scheme and _SCP_LIKE_RE.match(url) is not None
            secure = scheme in ("https", "ssh") or scp_like
            known = scheme in ("https", "ssh", "http", "git", "file") or scp_like
        if not known:
            raise ValueError(f"unsupported URL for a {kind} source: {url!r}")
        if has_credentials(url):
            raise ValueError(URL_CREDENTIALS_REFUSED)
        if not secure and not insecure_ok:
            raise ValueError(
                f"{scheme}:// has no transport security: use https (or ssh for git), "
                "or set allowInsecure: true to accept it"
            )
        return url

    @field_validator("ref")
    @classmethod
    def _ref(cls, ref: Optional[str]) -> Optional[str]:
        if ref is not None and (not _REF_RE.match(ref) or ".." in ref or ref.endswith(".lock")):
            raise ValueError(f"not a git ref: {ref!r} (a branch, a tag or refs/...)")
        return ref

    @field_validator("path")
    @classmethod
    def _path(cls, path: Optional[str]) -> Optional[str]:
        if path is not None:
            parts = path.split("/")
            if path.startswith("/") or any(p in ("", ".", "..") for p in parts):
                raise ValueError("path is relative to the repository's top, without . or ..")
        return path

    @model_validator(mode="after")
    def _git_only(self) -> Source:
        if self.type == "git" and self.verify is not None and self.verify.method == "cosign":
            raise ValueError(
                "not supported yet: cosign signatures of a git source (use ssh or gpg)"
            )
        if self.type == "https" and (self.ref is not None or self.path is not None):
            raise ValueError("ref and path are for git sources; an https source is one URL")
        if self.credentialsFile is not None:
            if not self.credentialsFile.startswith("/"):
                raise ValueError("credentialsFile must be an absolute path")
            if not self.url.lower().startswith(("https://", "http://")):
                raise ValueError("credentialsFile is for http(s) URLs (ssh uses its keys)")
        return self

    @property
    def git_ref(self) -> str:
        return self.ref or "HEAD"

    @property
    def git_path(self) -> str:
        return self.path or "desired.yaml"


class Tls(StrictModel):
    """TLS for every HTTPS request agentd makes (the source and artifact downloads)."""

    caFile: Optional[str] = None  # a PEM bundle to trust instead of the system's
    # Turning verification off is possible only here, and `agentd status` says so.
    insecureSkipVerify: bool = False

    @field_validator("caFile")
    @classmethod
    def _absolute(cls, path: Optional[str]) -> Optional[str]:
        if path is not None and not path.startswith("/"):
            raise ValueError("caFile must be an absolute path")
        return path


class Backoff(StrictModel):
    """After a failed run, wait initial, then twice as long each time, up to max."""

    initial: Duration = 10.0
    max: Duration = 900.0

    @model_validator(mode="after")
    def _order(self) -> Backoff:
        if self.initial <= 0 or self.max < self.initial:
            raise ValueError("backoff needs 0 < initial <= max")
        return self


class CosignKeys(StrictModel):
    publicKeys: list[str] = Field(min_length=1)  # PEM public keys (cosign.pub), absolute paths

    @field_validator("publicKeys")
    @classmethod
    def _absolute(cls, keys: list[str]) -> list[str]:
        if not all(k.startswith("/") for k in keys):
            raise ValueError("publicKeys must be absolute paths")
        return keys


class DownloadVerify(StrictModel):
    """cosign signatures of artifacts: a bad one is always refused, a missing one if required."""

    cosign: Optional[CosignKeys] = None
    required: bool = False

    @model_validator(mode="after")
    def _keys(self) -> DownloadVerify:
        if self.required and self.cosign is None:
            raise ValueError("required: true needs cosign.publicKeys to verify with")
        return self


class Downloads(StrictModel):
    """How artifacts are fetched."""

    timeout: Duration = 30.0  # to connect, and between two reads of the body
    attempts: int = Field(default=3, ge=1, le=10)  # transient failures are tried again
    backoff: Duration = 1.0  # the pause before the second attempt, doubling after
    maxMiB: int = Field(default=2048, ge=1)  # no artifact is larger; a body beyond is cut off
    # file:// artifact URLs in the fleet document too (always allowed in the node's own files):
    # otherwise a fleet could have any file this root-run agent can read copied and installed.
    allowLocalFiles: bool = False
    verify: Optional[DownloadVerify] = None


class Metrics(StrictModel):
    enabled: bool = True
    path: str = DEFAULT_METRICS_PATH

    @field_validator("path")
    @classmethod
    def _prom(cls, path: str) -> str:
        if not path.startswith("/") or not path.endswith(".prom"):
            raise ValueError("metrics path is absolute and ends in .prom (textfile collector)")
        return path


class Probe(StrictModel):
    """The Wasm workload probe: a pod with the Wasm RuntimeClass on this node (opt-in)."""

    # An OCI image whose /probe.wasm prints a line (`agentd probe-wasm > probe.wasm` writes
    # agentd's own; package it FROM scratch). None: no pod is run, the other checks still are.
    image: Optional[str] = None
    namespace: str = Field(default="default", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    timeout: Duration = 60.0


class GatekeeperProbe(StrictModel):
    """The guide's Gatekeeper test (opt-in): a pod with an untrusted image must be refused."""

    enabled: bool = False
    # Sent as a server-side dry run (admission runs, nothing is created): the image need not exist.
    image: str = Field(default="untrusted/image:latest", min_length=1, max_length=512)
    namespace: str = Field(default="default", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class Health(StrictModel):
    """What the agent does about what its health checks find."""

    # Apply the fixes agentd knows (reinstall, rewrite the template, restart k3s, ldconfig),
    # each at most once per `remediationBackoff` (doubling while it keeps coming back).
    remediate: bool = True
    remediationBackoff: Duration = 600.0
    # After a run changed a component, watch it this long; if it turns unhealthy (and was
    # healthy before), put back the previous version and do not retry that change.
    rollbackWindow: Duration = 600.0
    # The k3s node name, when it is not the host name (k3s's node-name).
    nodeName: Optional[DnsSubdomain] = None  # a Node's name is a DNS subdomain
    # Label the node wasm-runtime=enabled while its Wasm stack is healthy (the guide's
    # RuntimeClass selects on it), and remove the label when it is not.
    label: bool = True
    probe: Probe = Field(default_factory=Probe)
    gatekeeperProbe: GatekeeperProbe = Field(default_factory=GatekeeperProbe)


class Settings(StrictModel):
    """/etc/wasm-edge/agentd.yaml; every field has a default, so the file is optional."""

    apiVersion: Literal["agentd/v1"] = "agentd/v1"
    kind: Literal["AgentSettings"] = "AgentSettings"
    source: Optional[Source] = None
    interval: Duration = 300.0
    splay: Duration = 60.0
    healthInterval: Duration = 60.0
    backoff: Backoff = Field(default_factory=Backoff)
    # How long local edits must settle before a run starts (editors write in several steps).
    debounce: Duration = 0.2
    labels: Labels = Field(default_factory=dict)  # Kubernetes label syntax
    # What fleet selectors see: the host name (default: the machine's) and the node id that
    # places it in rollout waves (default: /etc/machine-id).
    hostname: Optional[str] = Field(
        default=None, pattern=r"^[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?$"
    )
    nodeId: Optional[str] = Field(default=None, pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.]{0,127}$")
    metrics: Metrics = Field(default_factory=Metrics)
    tls: Tls = Field(default_factory=Tls)
    downloads: Downloads = Field(default_factory=Downloads)
    # Where oci:// artifacts come from, in the layout of k3s's registries.yaml.
    registries: RegistrySettings = Field(default_factory=RegistrySettings)
    maintenanceWindow: Optional[MaintenanceWindowSpec] = None
    suspend: bool = False
    health: Health = Field(default_factory=Health)

    @field_validator("interval", "healthInterval")
    @classmethod
    def _at_least_a_second(cls, seconds: float) -> float:
        if seconds < 1:
            raise ValueError("must be at least 1s")
        return seconds

    @field_validator("debounce")
    @classmethod
    def _short(cls, seconds: float) -> float:
        if seconds > 10:
            raise ValueError("debounce is at most 10s")
        return seconds


def parse_settings(loaded: Loaded) -> Settings:
    """Settings from loaded YAML; raises SettingsError with FILE:LINE:COL lines."""
    if loaded.data is None:
        return Settings()
    settings, errors = check_schema(Settings, loaded)
    if settings is None:
        lines = format_problems(errors)
        n = len(lines)
        raise SettingsError(f"the agent settings are invalid ({n} error{'s' * (n != 1)})", lines)
    return settings


def load_settings(path: Path, display: Optional[str] = None) -> Settings:
    """The settings in `path`; the defaults when there is no such file."""
    if not path.exists():
        return Settings()
    try:
        # An empty (or all-comment) file means: the defaults.
        loaded = load_file(path, display, allow_empty=True)
    except AgentError as exc:
        problems = list(getattr(exc, "problems", [])) or [str(exc)]
        raise SettingsError("the agent settings cannot be read", problems) from None
    return parse_settings(loaded)


def settings_json(settings: Settings) -> dict[str, Any]:
    """The settings with every default filled in, as plain JSON (the daemon's input)."""
    return settings.model_dump(mode="json")
