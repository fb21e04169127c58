"""The HTTPS transport: the document by a conditional GET, its signature beside it (urllib)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from agentd.core.paths import Paths
from agentd.core.redact import redact_text, redact_url
from agentd.sources.credentials import read_credentials
from agentd.sources.document import (
    MAX_DOCUMENT_BYTES,
    Document,
    PullError,
    Rejected,
    SourceConfig,
    Unchanged,
)
from agentd.sources.store import FleetStore
from agentd.sources.verify import verify_detached

# A detached signature is a few hundred bytes; anything near this is not one.
MAX_SIGNATURE_BYTES = 64 << 10


@dataclass
class HttpAnswer:
    """One HTTP answer: its status, its body (bounded) and its headers (names lower-cased)."""

    status: int
    body: bytes
    headers: dict[str, str]


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
        # Read through the bounded reader, not by ssl: a FIFO at caFile would block the open.
        from agentd.system.readfile import KEYRING_BYTES, read_text_bounded  # noqa: PLC0415

        try:
            cadata = read_text_bounded(Path(cafile), KEYRING_BYTES) if cafile else None
        except OSError as exc:
            raise PullError(f"caFile {cafile}: {exc.strerror or exc}") from None
        if cadata is not None and not cadata.strip():
            # ssl would then trust the system's CAs instead: an empty file is a mistake.
            raise PullError(f"caFile {cafile}: holds no certificate")
        try:
            context = ssl.create_default_context(cadata=cadata)
        except (ssl.SSLError, ValueError) as exc:
            raise PullError(f"caFile {cafile}: not a PEM CA bundle ({exc})") from None
        if config.insecure_skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        _SSL_CONTEXTS.clear()  # only the current settings' context is worth keeping
        _SSL_CONTEXTS[key] = context
    return context


def http_get(
    config: SourceConfig, paths: Paths, url: str, headers: Mapping[str, str], limit: int
) -> HttpAnswer:
    """One GET with urllib (requests would add a third to the daemon's memory): redirects
    followed but never from https to anything else, a body limit, errors with the redacted URL.
    A 304 is an answer, not an error."""
    import base64  # noqa: PLC0415
    import urllib.error  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415
    from urllib.parse import urlsplit  # noqa: PLC0415

    from agentd import __version__  # noqa: PLC0415

    def origin(of: str) -> tuple[str, str, Optional[int]]:
        split = urlsplit(of)
        scheme = split.scheme.lower()
        return scheme, split.hostname or "", split.port or {"https": 443, "http": 80}.get(scheme)

    safe = redact_url(url)
    parts = urlsplit(url)
    send = {"User-Agent": f"agentd/{__version__}", "Accept-Encoding": "identity", **headers}
    auth: Optional[str] = None
    if config.credentials_file:
        # Built here, in this process: the secret is in no URL, argument or environment.
        found = read_credentials(
            paths.under(config.credentials_file), config.credentials_file, config.url
        )
        pair = f"{found.username}:{found.secret}"
        auth = "Basic " + base64.b64encode(pair.encode()).decode()
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
            answer = HttpAnswer(
                int(getattr(r, "status", 200) or 200),
                body,
                {k.lower(): v for k, v in r.headers.items()},
            )
    except urllib.error.HTTPError as exc:
        if exc.code == 304:
            return HttpAnswer(304, b"", {k.lower(): v for k, v in exc.headers.items()})
        why = f"{safe}: HTTP {exc.code} {redact_text(str(exc.reason))}"
        if exc.code in (401, 403) and auth is not None:
            why += f" (the credentials in {config.credentials_file} were refused)"
        raise PullError(why) from None
    except urllib.error.URLError as exc:
        raise PullError(f"{safe}: {redact_text(str(exc.reason))}") from None
    except (OSError, ValueError) as exc:
        raise PullError(f"{safe}: {redact_text(str(exc)) or type(exc).__name__}") from None
    if len(answer.body) > limit:
        raise PullError(f"{safe}: the answer is larger than {limit} bytes")
    return answer


def fetch(config: SourceConfig, paths: Paths, store: FleetStore) -> tuple[Document, int]:
    """The document, unless the source says (or shows) it is what was judged before (Unchanged),
    verified when the settings ask; with the number of requests made."""
    seen = store.judged()
    headers: dict[str, str] = {}
    if seen.get("etag"):
        headers["If-None-Match"] = str(seen["etag"])
    if seen.get("lastModified"):
        headers["If-Modified-Since"] = str(seen["lastModified"])
    answer = http_get(config, paths, config.url, headers, MAX_DOCUMENT_BYTES)
    if answer.status == 304:
        if not seen:
            raise PullError(f"{config.safe_url}: HTTP 304 to a request that was not conditional")
        raise Unchanged()
    body = answer.body
    etag = answer.headers.get("etag")
    doc = Document(body, etag or "sha256:" + hashlib.sha256(body).hexdigest())
    doc.validators = {"etag": etag, "lastModified": answer.headers.get("last-modified")}
    if seen and seen.get("sha256") == doc.sha256:
        # A server without validators sent the same bytes again: nothing new to judge.
        raise Unchanged()
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
