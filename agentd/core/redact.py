"""Scrub credentials from URLs and free text so no secret reaches a log, message or state file."""

from __future__ import annotations

import re
from urllib.parse import unquote_plus

MASK = "***"

# Query parameters whose values are credentials: bearer tokens, presigned-URL signatures (S3,
# Azure SAS `sig`, GCS), API keys. Matched case-insensitively on the decoded name.
_SECRET_PARAMS = frozenset(
    {
        "token",
        "sig",
        "signature",
        "key",
        "password",
        "secret",
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "access_token",
        "x-goog-signature",
        "x-goog-credential",
    }
)
# Names that are not in the list but are secrets by any reading (api_key, client_secret,
# refresh_token, passwd, ...): over-masking a harmless value only costs a little debugging.
_SECRET_FRAGMENTS = ("token", "secret", "passw", "signature", "credential", "apikey", "api_key")

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)(.*)$", re.DOTALL)
# A URL inside free text: runs until whitespace or a character that usually closes a quotation.
_URL_IN_TEXT_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")
# A query string without its URL, as in urllib3's "Max retries exceeded with url: /a?token=x".
_PARAM_IN_TEXT_RE = re.compile(r"([?&;])([^=&;#?\s'\"<>]+)=([^&;#\s'\"<>]*)")


def is_secret_param(name: str) -> bool:
    lowered = unquote_plus(name).strip().lower()
    return lowered in _SECRET_PARAMS or any(f in lowered for f in _SECRET_FRAGMENTS)


def _redact_query(query: str) -> str:
    # Rebuilt by hand, not with urlencode, so every other byte of the URL stays as it was sent.
    parts = []
    for pair in query.split("&"):
        name, sep, value = pair.partition("=")
        if sep and value and is_secret_param(name):
            value = MASK
        parts.append(name + sep + value)
    return "&".join(parts)


def redact_url(url: str) -> str:
    """`url` with its userinfo replaced by *** and secret-looking query values blanked."""
    match = _SCHEME_RE.match(url)
    if match:
        scheme, rest = match.groups()
        # The authority ends at the first "/", "?" or "#", as urllib3 parses it; inside it the
        # last "@" ends the userinfo (a password with an unencoded "@" is still fully covered).
        end = len(rest)
        for stop in "/?#":
            index = rest.find(stop)
            if index != -1:
                end = min(end, index)
        authority, tail = rest[:end], rest[end:]
        if "@" in authority:
            authority = MASK + "@" + authority.rpartition("@")[2]
        url = scheme + authority + tail
    head, hash_sign, fragment = url.partition("#")
    base, question, query = head.partition("?")
    if question:
        head = base + question + _redact_query(query)
    return head + hash_sign + fragment


def _redact_param(match: re.Match[str]) -> str:
    sep, name, value = match.groups()
    if value and is_secret_param(name):
        value = MASK
    return f"{sep}{name}={value}"


def redact_text(text: str) -> str:
    """`text` with every URL in it redacted, and secret query parameters of bare paths too."""
    text = _URL_IN_TEXT_RE.sub(lambda m: redact_url(m.group(0)), text)
    return _PARAM_IN_TEXT_RE.sub(_redact_param, text)
