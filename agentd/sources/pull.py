"""Pull the fleet's desired state (git or HTTPS), check its signature, keep the last good one."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from agentd.core.errors import AgentError
from agentd.core.paths import Paths
from agentd.core.redact import redact_text, redact_url
from agentd.system.commands import CommandResult, run_command
from agentd.system.files import atomic_write, remove_tree

# The desired-state size limit (yamlload.MAX_DOCUMENT_BYTES, which imports PyYAML: the daemon
# pulls without it when nothing changed).
MAX_DOCUMENT_BYTES = 1 << 20
# A detached signature is a few hundred bytes; anything near this is not one.
MAX_SIGNATURE_BYTES = 64 << 10
GIT_TIMEOUT_FACTOR = 4  # a fetch is several round trips: each may take the source timeout
# Every gpg call: never prompt, and never start a gpg-agent (verifying needs none; see GpgHome).
GPG = ("gpg", "--batch", "--no-tty", "--no-autostart")


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
    namespace: str = "agentd"
    identity: Optional[str] = None
    timeout: float = 30.0
    ca_file: Optional[str] = None
    insecure_skip_verify: bool = False

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
            namespace=verify.get("namespace") or "agentd",
            identity=verify.get("identity"),
            timeout=float(src.get("timeout") or 30.0),
            ca_file=tls.get("caFile"),
            insecure_skip_verify=bool(tls.get("insecureSkipVerify")),
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


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    atomic_write(path, json.dumps(data, indent=2, sort_keys=True).encode() + b"\n", 0o600)


# --- the state dir's source/ folder -------------------------------------------------------------


class FleetStore:
    """source/ in the state dir: the last good document, a candidate, what was last seen."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self.dir = paths.source_dir
        self.good = self.dir / "fleet.yaml"
        self.good_meta = self.dir / "fleet.json"
        self.candidate = self.dir / "candidate.yaml"
        self.candidate_meta = self.dir / "candidate.json"
        self.seen_file = self.dir / "seen.json"
        self.status_file = self.dir / "status.json"
        self.tmp = self.dir / "tmp"

    def ensure(self) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    # The last good document and its record.
    def good_record(self) -> dict[str, Any]:
        return _read_json(self.good_meta) if self.good.is_file() else {}

    def good_generation(self) -> Optional[int]:
        gen = self.good_record().get("generation")
        return gen if isinstance(gen, int) else None

    def candidate_record(self) -> dict[str, Any]:
        return _read_json(self.candidate_meta) if self.candidate.is_file() else {}

    def seen(self) -> dict[str, Any]:
        return _read_json(self.seen_file)

    def remember(self, origin: str, verdict: str, reason: str, **extra: Any) -> None:
        """What the source last served and what became of it, so an unchanged answer repeats it."""
        self.ensure()
        _write_json(
            self.seen_file,
            {"origin": origin, "verdict": verdict, "reason": reason, "at": _now(), **extra},
        )

    def write_candidate(self, doc: Document, display: str) -> None:
        self.ensure()
        atomic_write(self.candidate, doc.data, 0o600)
        _write_json(
            self.candidate_meta,
            {
                "generation": doc.generation,
                "origin": doc.origin,
                "sha256": doc.sha256,
                "signedBy": doc.signed_by,
                "display": display,
                "fetchedAt": _now(),
            },
        )

    def promote(self) -> dict[str, Any]:
        """The candidate becomes the last good document (data first, then its record)."""
        record = self.candidate_record()
        record["acceptedAt"] = _now()
        os.replace(self.candidate, self.good)
        _write_json(self.good_meta, record)
        with contextlib.suppress(FileNotFoundError):
            self.candidate_meta.unlink()
        origin = str(record.get("origin"))
        facts = self._facts_of(origin)
        self.remember(origin, "accepted", "", generation=record["generation"], **facts)
        self._refresh_status()
        return record

    def reject_candidate(self, reason: str) -> dict[str, Any]:
        record = self.candidate_record()
        for path in (self.candidate, self.candidate_meta):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        origin = str(record.get("origin"))
        facts = self._facts_of(origin)
        self.remember(origin, "rejected", reason, generation=record.get("generation"), **facts)
        self._refresh_status(rejected=reason)
        return record

    def _facts_of(self, origin: str) -> dict[str, Any]:
        """What the pull remembered about `origin` (its sha256 and HTTP validators), so that the
        verdict on the candidate still answers the next conditional request with a 304."""
        seen = self.seen()
        if seen.get("origin") != origin:
            return {}
        return {k: seen[k] for k in ("sha256", "etag", "lastModified") if k in seen}

    def _good_summary(self) -> Optional[dict[str, Any]]:
        good = self.good_record()
        keys = ("generation", "origin", "acceptedAt", "signedBy")
        return {k: good.get(k) for k in keys} if good else None

    def _refresh_status(self, rejected: Optional[str] = None) -> None:
        """The pull wrote status.json before its candidate was judged: bring the last good
        document, and the verdict on a rejected candidate, up to date for `status`."""
        status = _read_json(self.status_file)
        if not status:
            return
        status["lastGood"] = self._good_summary()
        if rejected is not None:
            last = status.get("lastPull")
            last = last if isinstance(last, dict) else {}
            status["lastPull"] = {**last, "outcome": "rejected", "detail": redact_text(rejected)}
        _write_json(self.status_file, status)

    def record_status(self, config: SourceConfig, result: PullResult) -> dict[str, Any]:
        """source/status.json: the last pull, and the last good document the node converges to."""
        previous = _read_json(self.status_file)
        status: dict[str, Any] = {
            "source": config.describe(),
            "type": config.type,
            "verification": config.verify or "off",
            "lastPullAt": _now(),
            "lastPull": result.to_json(),
            "lastSuccessAt": previous.get("lastSuccessAt"),
            "lastGood": self._good_summary(),
        }
        if result.outcome in ("updated", "unchanged"):
            status["lastSuccessAt"] = status["lastPullAt"]
        if config.insecure_skip_verify:
            status["tlsVerification"] = "OFF (tls.insecureSkipVerify)"
        self.ensure()
        _write_json(self.status_file, status)
        return status

    def status(self) -> dict[str, Any]:
        return _read_json(self.status_file)


# --- screening a document ------------------------------------------------------------------------


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
    doc.generation = generation


def check_generation(doc: Document, store: FleetStore) -> bool:
    """True when `doc` is newer than the last good document; raises Rejected when it is older,
    or claims the same generation with other content (a replay or a rewritten history).
    False: it is the last good document itself."""
    good = store.good_record()
    last = good.get("generation")
    if not isinstance(last, int):
        return True
    if doc.generation < last:
        raise Rejected(
            f"generation {doc.generation} is older than generation {last} already accepted "
            "(a replayed document or rolled-back history); keeping generation "
            f"{last}"
        )
    if doc.generation == last:
        if good.get("sha256") == doc.sha256:
            return False
        raise Rejected(
            f"generation {doc.generation} was already accepted with other content; a changed "
            "document needs a higher generation"
        )
    return True


# --- signatures -------------------------------------------------------------------------------


def _node_file(paths: Paths, node_path: str, what: str) -> Path:
    path = paths.under(node_path)
    if not path.is_file():
        raise PullError(f"{what} {node_path} does not exist; cannot verify the fleet document")
    return path


class GpgHome:
    """A private GNUPGHOME holding only the allowed keys, each trusted, rebuilt when they change.

    gpg needs a home directory of its own to verify anything; keeping one with nothing but the
    configured keyring means "a good signature" can only mean "by an allowed key".
    """

    def __init__(self, paths: Paths, keyring: str) -> None:
        self.paths = paths
        self.keyring = keyring
        self.home = paths.source_dir / "gnupg"

    def ready(self, timeout: float) -> Path:
        keyring = _node_file(self.paths, self.keyring, "the gpg keyring")
        data = keyring.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        stamp = self.home / "agentd-keyring.sha256"
        with contextlib.suppress(OSError):
            if stamp.read_text().strip() == digest:
                return self.home
        remove_tree(self.home)
        self.home.mkdir(mode=0o700, parents=True)
        env = {"GNUPGHOME": str(self.home)}
        # The keys go into the home as a keyring file of gpg's older format, which gpg reads as
        # its public keyring, rather than through `gpg --import`: an import asks gpg-agent
        # whether each key has a secret part, which starts an agent that outlives agentd, and
        # fails outright where the home's path is too long for a socket (under a deep --root).
        # Verifying needs no agent; gpg.conf keeps git's own gpg calls from starting one.
        atomic_write(self.home / "gpg.conf", b"no-autostart\n", 0o600)
        if not data[:1] or not data[0] & 0x80:  # not binary OpenPGP (which starts with a tag)
            dearmored = run_command([*GPG, "--dearmor"], timeout, env=env, input_bytes=data)
            if not dearmored.ok:
                remove_tree(self.home)
                why = _short(dearmored)
                raise PullError(f"cannot use the gpg keyring {self.keyring}: {why}")
            data = dearmored.stdout_bytes
        atomic_write(self.home / "pubring.gpg", data, 0o600)
        listed = run_command([*GPG, "--with-colons", "--list-keys"], timeout, env=env)
        # The primary keys' fingerprints (an "fpr" line follows each "pub" and each "sub").
        fingerprints: list[str] = []
        previous = ""
        for line in listed.stdout.splitlines():
            fields = line.split(":")
            if fields[0] == "fpr" and previous == "pub" and len(fields) > 9:
                fingerprints.append(fields[9])
            previous = fields[0]
        if not listed.ok or not fingerprints:
            remove_tree(self.home)
            why = (_short(listed) if not listed.ok else "") or "no public key in it"
            raise PullError(f"cannot use the gpg keyring {self.keyring}: {why}")
        trust = "".join(f"{fpr}:6:\n" for fpr in fingerprints)  # 6: ultimate
        trusted = run_command(
            [*GPG, "--import-ownertrust"], timeout, env=env, input_bytes=trust.encode()
        )
        if not trusted.ok:
            remove_tree(self.home)
            raise PullError(f"cannot trust the keys of {self.keyring}: {_short(trusted)}")
        atomic_write(stamp, digest.encode() + b"\n", 0o600)
        return self.home


def _short(result: CommandResult) -> str:
    text = (result.stderr.strip() or result.stdout.strip()).splitlines()
    return redact_text(" / ".join(line.strip() for line in text[-3:]))[:400]


def _gpg_signer(status: str) -> Optional[str]:
    """The fingerprint from gpg's status lines when they report exactly one valid signature."""
    lines = [line.split() for line in status.splitlines() if line.startswith("[GNUPG:] ")]
    bad = {"BADSIG", "ERRSIG", "EXPSIG", "EXPKEYSIG", "REVKEYSIG", "NO_PUBKEY"}
    if any(len(parts) > 1 and parts[1] in bad for parts in lines):
        return None
    valid = [parts[2] for parts in lines if len(parts) > 2 and parts[1] == "VALIDSIG"]
    good = [parts for parts in lines if len(parts) > 1 and parts[1] == "GOODSIG"]
    if len(valid) != 1 or len(good) != 1:
        return None
    return valid[0]


def verify_detached(config: SourceConfig, paths: Paths, data: bytes, signature: bytes) -> str:
    """Check `signature` over `data`; the signer's identity, or Rejected."""
    store_tmp = paths.source_dir / "tmp"
    store_tmp.mkdir(mode=0o700, parents=True, exist_ok=True)
    sig = store_tmp / f"sig-{secrets.token_hex(4)}"
    doc = store_tmp / f"doc-{secrets.token_hex(4)}"
    try:
        atomic_write(sig, signature, 0o600)
        atomic_write(doc, data, 0o600)
        if config.verify == "ssh":
            return _verify_ssh(config, paths, doc, sig)
        if config.verify == "gpg":
            return _verify_gpg_detached(config, paths, doc, sig)
        raise PullError(f"unknown verification method {config.verify!r}")
    finally:
        for path in (sig, doc):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _verify_ssh(config: SourceConfig, paths: Paths, doc: Path, sig: Path) -> str:
    assert config.allowed_signers is not None
    signers = _node_file(paths, config.allowed_signers, "the allowed-signers file")
    found = run_command(
        ["ssh-keygen", "-Y", "find-principals", "-s", str(sig), "-f", str(signers)],
        config.timeout,
    )
    principals = [p.strip() for p in found.stdout.splitlines() if p.strip()]
    if not found.ok or not principals:
        why = _short(found) or "no principal matched"
        raise Rejected(f"the signature is not by a key in {config.allowed_signers}: {why}")
    if config.identity is not None:
        if config.identity not in principals:
            raise Rejected(
                f"signed by {', '.join(principals)}, not by {config.identity} as the settings ask"
            )
        principals = [config.identity]
    failures: list[str] = []
    for principal in principals:
        checked = run_command(
            [
                "ssh-keygen",
                "-Y",
                "verify",
                "-f",
                str(signers),
                "-I",
                principal,
                "-n",
                config.namespace,
                "-s",
                str(sig),
            ],
            config.timeout,
            input_bytes=doc.read_bytes(),
        )
        if checked.ok:
            return principal
        failures.append(_short(checked))
    raise Rejected(f"bad signature: {'; '.join(failures)}")


def _verify_gpg_detached(config: SourceConfig, paths: Paths, doc: Path, sig: Path) -> str:
    assert config.keyring is not None
    home = GpgHome(paths, config.keyring).ready(config.timeout)
    result = run_command(
        [*GPG, "--status-fd", "1", "--verify", str(sig), str(doc)],
        config.timeout,
        env={"GNUPGHOME": str(home)},
    )
    signer = _gpg_signer(result.stdout) if result.ok else None
    if signer is None:
        raise Rejected(f"bad or unknown gpg signature: {_short(result) or 'not signed'}")
    return signer


# --- HTTPS ---------------------------------------------------------------------------------------


@dataclass
class _HttpAnswer:
    status: int
    body: bytes
    headers: dict[str, str]


class _Unchanged(Exception):
    """The source serves what was judged before (304, the same commit, the same bytes)."""


_SSL_CONTEXTS: dict[tuple[Any, ...], Any] = {}


def _ssl_context(config: SourceConfig, paths: Paths) -> Any:
    """The TLS context for the source, made once per CA file version: loading the system's CA
    bundle costs more CPU than the whole of an unchanged pull."""
    import ssl  # noqa: PLC0415

    cafile = str(paths.under(config.ca_file)) if config.ca_file else None
    try:
        stamp = os.stat(cafile).st_mtime_ns if cafile else None
    except OSError:
        stamp = None  # let ssl report the missing file
    key = (cafile, stamp, config.insecure_skip_verify)
    context = _SSL_CONTEXTS.get(key)
    if context is None:
        context = ssl.create_default_context(cafile=cafile)
        if config.insecure_skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        _SSL_CONTEXTS.clear()  # only the current settings' context is worth keeping
        _SSL_CONTEXTS[key] = context
    return context


def http_get(
    config: SourceConfig, paths: Paths, url: str, headers: Mapping[str, str], limit: int
) -> _HttpAnswer:
    """One GET with urllib (requests would add a third to the daemon's memory): redirects
    followed but never from https to anything else, a body limit, errors with the redacted URL.
    A 304 is an answer, not an error."""
    import base64  # noqa: PLC0415
    import urllib.error  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415
    from urllib.parse import unquote, urlsplit, urlunsplit  # noqa: PLC0415

    from agentd import __version__  # noqa: PLC0415

    def origin(of: str) -> tuple[str, str, Optional[int]]:
        split = urlsplit(of)
        scheme = split.scheme.lower()
        return scheme, split.hostname or "", split.port or {"https": 443, "http": 80}.get(scheme)

    safe = redact_url(url)
    parts = urlsplit(url)
    send = {"User-Agent": f"agentd/{__version__}", "Accept-Encoding": "identity", **headers}
    auth: Optional[str] = None
    if parts.username is not None:
        # urllib ignores credentials in a URL: send them as Basic auth, and not in the URL.
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        auth = "Basic " + base64.b64encode(pair.encode()).decode()
        netloc = parts.netloc.rpartition("@")[2]
        url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    https_only = parts.scheme == "https"
    home = origin(url)

    class _Redirects(urllib.request.HTTPRedirectHandler):
        max_redirections = 5

        def redirect_request(
            self, req: Any, fp: Any, code: int, msg: str, hdrs: Any, newurl: str
        ) -> Any:
            if https_only and not newurl.lower().startswith("https://"):
                raise PullError(f"{safe} redirects to {redact_url(newurl)}, which is not https")
            new = super().redirect_request(req, fp, code, msg, hdrs, newurl)
            # The credentials are for the URL's own origin: a redirect to another host or port
            # (a CDN, a mirror) must not learn them, as requests does it. urllib would copy an
            # ordinary header to every hop, so they travel as an unredirected one.
            if new is not None and auth is not None and origin(newurl) == home:
                new.add_unredirected_header("Authorization", auth)
            return new

    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=_ssl_context(config, paths)), _Redirects()
    )
    if parts.scheme not in ("https", "http", "file"):
        raise PullError(f"{safe}: unsupported URL scheme {parts.scheme!r}")
    request = urllib.request.Request(url, headers=send)  # noqa: S310 - scheme checked above
    if auth is not None:
        request.add_unredirected_header("Authorization", auth)
    try:
        with opener.open(request, timeout=config.timeout) as r:
            body = r.read(limit + 1)
            answer = _HttpAnswer(
                int(getattr(r, "status", 200) or 200),
                body,
                {k.lower(): v for k, v in r.headers.items()},
            )
    except urllib.error.HTTPError as exc:
        if exc.code == 304:
            return _HttpAnswer(304, b"", {k.lower(): v for k, v in exc.headers.items()})
        raise PullError(f"{safe}: HTTP {exc.code} {redact_text(str(exc.reason))}") from None
    except urllib.error.URLError as exc:
        raise PullError(f"{safe}: {redact_text(str(exc.reason))}") from None
    except (OSError, ValueError) as exc:
        raise PullError(f"{safe}: {redact_text(str(exc)) or type(exc).__name__}") from None
    if len(answer.body) > limit:
        raise PullError(f"{safe}: the answer is larger than {limit} bytes")
    return answer


def _judged(store: FleetStore) -> dict[str, Any]:
    """What was last seen, if its verdict still stands (a candidate only while it exists, a
    rejection for a signature never: the signature may be published after the document)."""
    seen = store.seen()
    if seen.get("recheck"):
        return {}
    verdict = seen.get("verdict")
    if verdict in ("accepted", "rejected") or (
        verdict == "candidate" and store.candidate.is_file()
    ):
        return seen
    return {}


def _pull_https(config: SourceConfig, paths: Paths, store: FleetStore) -> tuple[Document, int]:
    seen = _judged(store)
    headers: dict[str, str] = {}
    if seen.get("etag"):
        headers["If-None-Match"] = str(seen["etag"])
    if seen.get("lastModified"):
        headers["If-Modified-Since"] = str(seen["lastModified"])
    answer = http_get(config, paths, config.url, headers, MAX_DOCUMENT_BYTES)
    if answer.status == 304:
        if not seen:
            raise PullError(f"{config.safe_url}: HTTP 304 to a request that was not conditional")
        raise _Unchanged()
    body = answer.body
    etag = answer.headers.get("etag")
    doc = Document(body, etag or "sha256:" + hashlib.sha256(body).hexdigest())
    doc.validators = {"etag": etag, "lastModified": answer.headers.get("last-modified")}
    if seen and seen.get("sha256") == doc.sha256:
        # A server without validators sent the same bytes again: nothing new to judge.
        raise _Unchanged()
    requests = 1
    if config.verify:
        requests += 1
        # The signature lives beside the document and may be published after it: a document
        # refused for its signature is fetched and checked again on the next pull.
        facts = {"sha256": doc.sha256, **doc.validators, "recheck": True}
        try:
            sig = http_get(config, paths, config.url + ".sig", {}, MAX_SIGNATURE_BYTES)
        except PullError as exc:
            if ": HTTP 404" in str(exc) or ": HTTP 410" in str(exc):
                raise Rejected(f"the document is not signed: {exc}", doc.origin, facts) from None
            raise
        try:
            doc.signed_by = verify_detached(config, paths, doc.data, sig.body)
        except Rejected as exc:
            raise Rejected(str(exc), doc.origin, facts) from None
    return doc, requests


# --- git -----------------------------------------------------------------------------------------


def _git_env() -> dict[str, str]:
    return {
        "GIT_TERMINAL_PROMPT": "0",  # never wait for a password nobody will type
        "GIT_ASKPASS": "/bin/false",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",  # the node's own git settings must not change a pull
        "GIT_SSH_COMMAND": "ssh -o BatchMode=yes",
        "HOME": os.environ.get("HOME", "/root"),  # ssh finds its keys and known_hosts there
    }


def _git(
    repo: Path,
    config: SourceConfig,
    paths: Paths,
    *args: str,
    env: Optional[Mapping[str, str]] = None,
) -> CommandResult:
    tls: list[str] = []
    if config.ca_file:
        tls += ["-c", f"http.sslCAInfo={paths.under(config.ca_file)}"]
    if config.insecure_skip_verify:
        tls += ["-c", "http.sslVerify=false"]
    return run_command(
        ["git", "-C", str(repo), *tls, *args],
        config.timeout * GIT_TIMEOUT_FACTOR,
        env={**_git_env(), **(env or {})},
    )


def _pull_git(config: SourceConfig, paths: Paths, store: FleetStore) -> tuple[Document, int]:
    repo = store.dir / "git"
    if not (repo / "HEAD").is_file():
        remove_tree(repo)
        repo.mkdir(mode=0o700, parents=True)
        init = run_command(["git", "init", "--bare", "--quiet", str(repo)], config.timeout)
        if not init.ok:
            raise PullError(f"cannot create {repo}: {_short(init)}")
    fetched = _git(
        repo,
        config,
        paths,
        "fetch",
        "--quiet",
        "--no-tags",
        "--depth=1",
        # FETCH_HEAD would keep the URL, credentials and all, in the state dir.
        "--no-write-fetch-head",
        "--",
        config.url,
        f"+{config.ref}:refs/agentd/fetched",
    )
    if not fetched.ok:
        raise PullError(f"git fetch of {config.describe()} failed: {_short(fetched)}")
    rev = _git(
        repo, config, paths, "rev-parse", "--verify", "--quiet", "refs/agentd/fetched^{commit}"
    )
    commit = rev.stdout.strip()
    if not rev.ok or not commit:
        raise PullError(f"{config.describe()}: {config.ref} does not name a commit")
    if _judged(store).get("origin") == commit:
        raise _Unchanged()
    signer = _verify_commit(config, paths, repo, commit) if config.verify else None
    blob = _git(repo, config, paths, "cat-file", "blob", f"{commit}:{config.path}")
    if not blob.ok:
        raise Rejected(f"commit {commit[:12]} has no file {config.path}", origin=commit)
    if len(blob.stdout_bytes) > MAX_DOCUMENT_BYTES:
        raise Rejected(f"{config.path} is larger than {MAX_DOCUMENT_BYTES} bytes", origin=commit)
    # Each shallow fetch leaves the previous commit behind: let git pack and prune now and then.
    _git(repo, config, paths, "gc", "--auto", "--quiet")
    return Document(blob.stdout_bytes, commit, signed_by=signer), 1


def _verify_commit(config: SourceConfig, paths: Paths, repo: Path, commit: str) -> str:
    """The signer of `commit`, or Rejected: unsigned, unknown key, bad signature."""
    if config.verify == "ssh":
        assert config.allowed_signers is not None
        signers = _node_file(paths, config.allowed_signers, "the allowed-signers file")
        result = _git(
            repo,
            config,
            paths,
            "-c",
            "gpg.format=ssh",
            "-c",
            f"gpg.ssh.allowedSignersFile={signers}",
            "verify-commit",
            "--raw",
            commit,
        )
        output = result.stderr + result.stdout
        signer = _ssh_principal(output) if result.ok and "Good " in output else None
    else:
        assert config.keyring is not None
        home = GpgHome(paths, config.keyring).ready(config.timeout)
        result = _git(
            repo, config, paths, "verify-commit", "--raw", commit, env={"GNUPGHOME": str(home)}
        )
        signer = _gpg_signer(result.stderr) if result.ok else None
    if signer is None:
        output = (result.stderr + result.stdout).strip()
        why = _short(result) if output else "the commit is not signed"
        raise Rejected(
            f"commit {commit[:12]} is not signed by an allowed signer: {why}", origin=commit
        )
    return signer


def _ssh_principal(text: str) -> str:
    # ssh-keygen: 'Good "git" signature for alice@example.org with ED25519 key SHA256:...'
    for line in text.splitlines():
        if line.startswith("Good ") and " for " in line:
            return line.split(" for ", 1)[1].split(" with ", 1)[0].strip()
    return "unknown"


# --- one pull ---------------------------------------------------------------------------------


def pull(config: SourceConfig, paths: Paths) -> PullResult:
    """Fetch the fleet document; a new, authentic, newer one becomes the candidate.

    Never raises for what the source does: an unreachable source, garbage, a bad signature or
    an older generation is a `failed` or `rejected` result, and the last good document stays.
    """
    store = FleetStore(paths)
    store.ensure()
    requests = 0
    try:
        if config.type == "git":
            doc, requests = _pull_git(config, paths, store)
        else:
            doc, requests = _pull_https(config, paths, store)
        result = _judge(config, store, doc)
        result.requests = requests
    except _Unchanged:
        seen = store.seen()
        if seen.get("verdict") == "rejected":
            result = PullResult("rejected", str(seen.get("reason")), seen.get("generation"))
        else:
            result = PullResult("unchanged", "not modified", seen.get("generation"))
        result.origin = seen.get("origin")
        result.requests = 1
    except Rejected as exc:
        if exc.origin is not None:
            store.remember(exc.origin, "rejected", str(exc), **exc.facts)
        result = PullResult("rejected", redact_text(str(exc)), origin=exc.origin)
    except (PullError, OSError) as exc:
        result = PullResult("failed", redact_text(str(exc)) or type(exc).__name__)
    store.record_status(config, result)
    return result


def _judge(config: SourceConfig, store: FleetStore, doc: Document) -> PullResult:
    """Screen a fetched, authentic document and keep it as the candidate if it is newer."""
    display = f"{config.describe()}@{doc.origin[:12]}"
    facts = {"sha256": doc.sha256, **doc.validators}
    try:
        screen(doc, display)
        newer = check_generation(doc, store)
    except Rejected as exc:
        gen = doc.generation if doc.generation >= 0 else None
        store.remember(doc.origin, "rejected", str(exc), generation=gen, **facts)
        return PullResult("rejected", redact_text(str(exc)), gen, doc.origin)
    if not newer:
        store.remember(doc.origin, "accepted", "", generation=doc.generation, **facts)
        return PullResult(
            "unchanged", "the same document as the last good one", doc.generation, doc.origin
        )
    store.write_candidate(doc, display)
    store.remember(doc.origin, "candidate", "", generation=doc.generation, **facts)
    signed = f", signed by {doc.signed_by}" if doc.signed_by else ""
    return PullResult("updated", f"generation {doc.generation}{signed}", doc.generation, doc.origin)


@dataclass
class FleetView:
    """What the node converges to from the fleet: the last good document, if any."""

    path: Optional[Path]
    display: str
    record: dict[str, Any] = field(default_factory=dict)


def fleet_document(paths: Paths) -> FleetView:
    """The last good fleet document (its path in the state dir and a name for messages)."""
    store = FleetStore(paths)
    record = store.good_record()
    if not record:
        return FleetView(None, "")
    return FleetView(store.good, str(record.get("display") or "fleet document"), record)
