"""The fleet document as pulled: its source's settings, the pull's verdicts, and screening."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from agentd.core.errors import AgentError
from agentd.core.generation import MAX_GENERATION, generation_problem
from agentd.core.redact import redact_url

# The desired-state size limit (yamlload.MAX_DOCUMENT_BYTES, which imports PyYAML: the daemon
# pulls without it when nothing changed).
MAX_DOCUMENT_BYTES = 1 << 20


class PullError(AgentError):
    """The source could not be reached, or what it returned cannot be used."""


class Rejected(AgentError):
    """The source answered, but the document is refused (signature, garbage, older generation)."""

    def __init__(
        self, message: str, origin: Optional[str] = None, facts: Optional[dict[str, Any]] = None
    ) -> None:
        super().__init__(message)
        self.origin = origin  # what the source served, when known (a commit id, an ETag)
        self.facts = facts or {}  # what to remember with the verdict (sha256, HTTP validators)


class Unchanged(Exception):
    """The source serves what was judged before (304, the same commit, the same bytes)."""


@dataclass(frozen=True)
class SourceConfig:
    """The `source` and `tls` settings as plain data (the daemon does not load pydantic)."""

    type: str  # git, https
    url: str
    ref: str = "HEAD"
    path: str = "desired.yaml"
    verify: Optional[str] = None  # ssh, gpg, or None: not verified
    allowed_signers: Optional[str] = None
    keyring: Optional[str] = None
    public_keys: tuple[str, ...] = ()  # cosign
    namespace: str = "agentd"
    identity: Optional[str] = None
    timeout: float = 30.0
    ca_file: Optional[str] = None
    insecure_skip_verify: bool = False
    credentials_file: Optional[str] = None  # git-credential store lines (0600), never in the URL

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Optional[SourceConfig]:
        """From the settings as JSON (`settings_json`); None when no source is configured."""
        src = settings.get("source")
        if not src:
            return None
        verify = src.get("verify") or {}
        tls = settings.get("tls") or {}
        return cls(
            type=src["type"],
            url=src["url"],
            ref=src.get("ref") or "HEAD",
            path=src.get("path") or "desired.yaml",
            verify=verify.get("method"),
            allowed_signers=verify.get("allowedSigners"),
            keyring=verify.get("keyring"),
            public_keys=tuple(verify.get("publicKeys") or ()),
            namespace=verify.get("namespace") or "agentd",
            identity=verify.get("identity"),
            timeout=float(src.get("timeout") or 30.0),
            ca_file=tls.get("caFile"),
            insecure_skip_verify=bool(tls.get("insecureSkipVerify")),
            credentials_file=src.get("credentialsFile"),
        )

    @property
    def safe_url(self) -> str:
        return redact_url(self.url)

    def describe(self) -> str:
        if self.type == "git":
            return f"git {self.safe_url} {self.ref}:{self.path}"
        return self.safe_url


@dataclass
class Document:
    """A fleet document as fetched: its bytes, where it came from, and what it claims."""

    data: bytes
    origin: str  # a commit id, an ETag or a content hash: what identifies this version
    generation: int = -1
    signed_by: Optional[str] = None  # who signed it, when verification is on
    # HTTP validators (ETag, Last-Modified) to ask "has it changed?" next time.
    validators: dict[str, Optional[str]] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class PullResult:
    """One pull: `updated` (a new candidate), `unchanged`, `rejected` or `failed`."""

    outcome: str
    detail: str
    generation: Optional[int] = None
    origin: Optional[str] = None
    requests: int = 0
    bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "detail": self.detail,
            "generation": self.generation,
            "origin": self.origin,
        }


def screen(doc: Document, display: str) -> None:
    """Refuse garbage before anything else looks at it: one bounded YAML mapping that says it
    is an agentd/v1 NodeState with an integer generation. The full schema is checked later,
    merged with the node's own drop-ins."""
    from agentd.schema.yamlload import load_yaml  # noqa: PLC0415 - PyYAML only when there is a document

    if len(doc.data) > MAX_DOCUMENT_BYTES:
        raise Rejected(f"the document is larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        loaded = load_yaml(doc.data, display)
    except AgentError as exc:
        problems = getattr(exc, "problems", None) or [str(exc)]
        raise Rejected(f"not a valid YAML document: {problems[0]}") from None
    data = loaded.data
    if not isinstance(data, dict):
        raise Rejected("not a desired state: the document is not a mapping")
    if data.get("apiVersion") != "agentd/v1" or data.get("kind") != "NodeState":
        raise Rejected("not a desired state: expected apiVersion agentd/v1 and kind NodeState")
    generation = data.get("generation")
    if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
        raise Rejected("the document has no generation (a non-negative integer)")
    problem = generation_problem(generation)
    if problem is not None:
        raise Rejected(f"{problem}; publish it again with a generation in 0..{MAX_GENERATION}")
    doc.generation = generation


def check_generation(doc: Document, good: Mapping[str, Any]) -> bool:
    """True when `doc` is newer than the last good document (`good`, its record); raises
    Rejected when it is older, or claims the same generation with other content (a replay or
    a rewritten history). False: it is the last good document itself."""
    last = good.get("generation")
    if not isinstance(last, int):
        return True
    if doc.generation < last:
        raise Rejected(
            f"generation {doc.generation} is older than generation {last} already accepted "
            "(a replayed document or rolled-back history); keeping generation "
            f"{last} (to go back on purpose: agentd ratchet lower N --confirm)"
        )
    if doc.generation == last:
        if good.get("sha256") == doc.sha256:
            return False
        raise Rejected(
            f"generation {doc.generation} was already accepted with other content; a changed "
            "document needs a higher generation"
        )
    return True
