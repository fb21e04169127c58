"""redact_url and redact_text: credentials never survive into a message."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentd.core.redact import redact_text, redact_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://user:pass@host/x", "https://***@host/x"),
        ("https://ghp_tokenonly@github.com/a", "https://***@github.com/a"),
        ("http://u:p@127.0.0.1:8080", "http://***@127.0.0.1:8080"),
        ("https://u:p%40ss@host:443/p?q=1", "https://***@host:443/p?q=1"),
        # An unencoded "@" in the password: the last "@" of the authority ends the userinfo.
        ("https://u:p@ss@host/p", "https://***@host/p"),
        ("https://host/a@b/c", "https://host/a@b/c"),
        ("https://host/x", "https://host/x"),
        ("file:///var/cache/a.tar.gz", "file:///var/cache/a.tar.gz"),
    ],
)
def test_userinfo(url: str, expected: str) -> None:
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    "name",
    [
        "token",
        "TOKEN",
        "sig",
        "signature",
        "key",
        "password",
        "secret",
        "X-Amz-Signature",
        "x-amz-credential",
        "X-Amz-Security-Token",
        "access_token",
        "api_key",
        "client_secret",
    ],
)
def test_secret_query_values_blanked(name: str) -> None:
    url = f"https://host/file.tar.gz?a=1&{name}=s3cr3t&b=2#frag"
    assert redact_url(url) == f"https://host/file.tar.gz?a=1&{name}=***&b=2#frag"


def test_presigned_s3_url() -> None:
    url = (
        "https://objects.example.com/x/k3s?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIAEXAMPLE%2F20250101%2Fus-east-1%2Fs3%2Faws4_request"
        "&X-Amz-Date=20250101T000000Z&X-Amz-Expires=300&X-Amz-SignedHeaders=host"
        "&X-Amz-Signature=deadbeefcafe"
    )
    out = redact_url(url)
    assert "AKIAEXAMPLE" not in out
    assert "deadbeefcafe" not in out
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in out
    assert "X-Amz-Date=20250101T000000Z" in out
    assert "X-Amz-Credential=***" in out


def test_harmless_query_and_encoding_kept_verbatim() -> None:
    url = "https://host/p?version=v1.32.0%2Bk3s1&arch=amd64&flag&empty="
    assert redact_url(url) == url


def test_userinfo_and_query_together() -> None:
    assert redact_url("https://a:b@h/p?token=t") == "https://***@h/p?token=***"


def test_redact_text_every_url() -> None:
    text = (
        "fetch https://alice:hunter2@mirror.example/k3s failed, "
        "retry from 'http://bob:pw@10.0.0.1:8080/x?sig=abc' (and https://plain/ok)"
    )
    out = redact_text(text)
    for secret in ("alice", "hunter2", "bob", ":pw@", "abc"):
        assert secret not in out
    assert "https://***@mirror.example/k3s failed" in out
    assert "'http://***@10.0.0.1:8080/x?sig=***'" in out
    assert "https://plain/ok)" in out


def test_redact_text_bare_query_in_urllib3_message() -> None:
    # urllib3 names the URL without scheme or host: "... with url: /path?token=..."
    text = (
        "HTTPSConnectionPool(host='h', port=443): Max retries exceeded with url: /a?token=abc&x=1"
    )
    out = redact_text(text)
    assert "abc" not in out
    assert "/a?token=***&x=1" in out


def test_redact_text_without_urls_unchanged() -> None:
    text = "k3s version v1.32.0+k3s1 (cca8faca): key: value, user@host"
    assert redact_text(text) == text


def test_log_events_are_scrubbed_at_any_depth() -> None:
    from agentd.system.log import _redact

    event = {
        "event": "pull failed",
        "urls": ["https://fleet:hunter2@git.example/fleet.git", "https://ok.example/x"],
        "detail": {"source": "https://a:b-secret@h/x?token=zzz", "password": "plain"},
        "error": ValueError("GET https://u:pw-in-error@h/x failed"),
        "where": Path("/var/lib/wasm-edge"),
        "apiToken": "tok",
        "tokenFile": "/etc/wasm-edge/k3s-token",
        "count": 3,
    }
    out = _redact(None, "info", dict(event))
    text = repr(out)
    for secret in ("hunter2", "b-secret", "zzz", "plain", "tok'", "pw-in-error"):
        assert secret not in text, secret
    assert out["urls"][1] == "https://ok.example/x"
    assert out["tokenFile"] == "/etc/wasm-edge/k3s-token"  # a path to a secret is not one
    assert out["count"] == 3
    assert out["where"] == "/var/lib/wasm-edge"
