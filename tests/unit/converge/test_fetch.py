"""ArtifactCache against a real HTTP server on 127.0.0.1: verified downloads, clean failures."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import socket
import threading
import traceback
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import cast

import pytest

from agentd import __version__
from agentd.converge.fetch import ArtifactCache, FetchResult
from agentd.core.errors import DownloadError

BLOBS = {
    "k3s": b"#!k3s binary\n" * 1000,
    "small": b"hello\n",
    "wasmedge.tar.gz": gzip.compress(b"pretend tarball\n" * 100),
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.counts: Counter[str] = Counter()
        self.user_agents: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()


class _Handler(BaseHTTPRequestHandler):
    """Behaviour by the first path element: blob, gzip-encoded, nolength, redirect, status, ..."""

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep pytest output clean

    @property
    def srv(self) -> _Server:
        return cast(_Server, self.server)

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {"Content-Length": str(len(body))}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        with self.srv.lock:
            self.srv.counts[path] += 1
            self.srv.user_agents.append(self.headers.get("User-Agent", ""))
        kind, _, name = path.lstrip("/").partition("/")
        # The client may have given up (timeout tests): nothing left to tell it.
        with contextlib.suppress(OSError):
            self._respond(kind, name)

    def _respond(self, kind: str, name: str) -> None:
        blob = BLOBS.get(name, b"")
        if kind == "blob" and name in BLOBS:
            self._send(200, blob)
        elif kind == "gzip-encoded":
            # A .tar.gz served as "Content-Encoding: gzip": the bytes must be kept as sent.
            headers = {"Content-Length": str(len(blob)), "Content-Encoding": "gzip"}
            self._send(200, blob, headers)
        elif kind == "nolength":
            self._send(200, blob, {"Content-Type": "application/octet-stream"})
        elif kind == "redirect":
            self._send(302, b"", {"Location": f"/blob/{name}", "Content-Length": "0"})
        elif kind == "status":
            self._send(int(name), b"nope\n")
        elif kind == "truncated":
            # Promises the whole blob, sends a tenth, closes.
            self._send(200, blob[: len(blob) // 10], {"Content-Length": str(len(blob))})
            self.close_connection = True
        elif kind == "flaky":
            # 503 for the first two requests of each name, then the blob: a server restarting.
            with self.srv.lock:
                n = self.srv.counts[f"/flaky/{name}"]
            if n <= 2:
                self._send(503, b"try later\n")
            else:
                self._send(200, blob)
        elif kind == "slow":
            self.srv.stop.wait(3)
            self._send(200, blob)
        elif kind == "stall":
            self.send_response(200)
            self.send_header("Content-Length", str(len(blob)))
            self.end_headers()
            self.wfile.write(blob[:100])
            self.wfile.flush()
            self.srv.stop.wait(3)
        else:
            self._send(404, b"no such path\n")


@dataclass
class Server:
    httpd: _Server
    base: str = field(init=False)

    def __post_init__(self) -> None:
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    def count(self, path: str) -> int:
        with self.httpd.lock:
            return self.httpd.counts[path]


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    httpd = _Server()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield Server(httpd)
    finally:
        httpd.stop.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def cache(tmp_path: Path) -> ArtifactCache:
    """One attempt per fetch: these tests are about a single transfer (retries have their own)."""
    c = ArtifactCache(tmp_path / "cache")
    c.attempts = 1
    return c


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def assert_nothing_kept(cache: ArtifactCache) -> None:
    for sub in ("sha256", "tmp"):
        directory = cache.cache_dir / sub
        assert not directory.exists() or list(directory.iterdir()) == []


# --- success and the cache -------------------------------------------------------------------


def test_download_verifies_and_stores_by_digest(server: Server, cache: ArtifactCache) -> None:
    digest = sha(BLOBS["k3s"])
    result = cache.fetch(server.url("/blob/k3s"), digest)

    assert result == FetchResult(cache.cache_dir / "sha256" / digest, True, len(BLOBS["k3s"]))
    assert result.path.read_bytes() == BLOBS["k3s"]
    assert cache.cached(digest) == result.path
    assert list((cache.cache_dir / "tmp").iterdir()) == []
    assert server.httpd.user_agents[-1] == f"agentd/{__version__}"


def test_second_fetch_makes_no_request(server: Server, cache: ArtifactCache) -> None:
    digest = sha(BLOBS["small"])
    cache.fetch(server.url("/blob/small"), digest)
    requests_before = server.count("/blob/small")

    again = cache.fetch(server.url("/blob/small"), digest)
    assert again.downloaded is False
    assert again.size == len(BLOBS["small"])
    assert server.count("/blob/small") == requests_before
    # Not even a connection: a URL that cannot be reached is not tried.
    offline = cache.fetch(f"http://127.0.0.1:{closed_port()}/blob/small", digest)
    assert offline.path == again.path


def test_cached_is_none_before_download(cache: ArtifactCache) -> None:
    assert cache.cached(sha(b"never")) is None
    assert cache.cached("not-a-digest") is None


def test_corrupted_cache_entry_is_downloaded_again(server: Server, cache: ArtifactCache) -> None:
    digest = sha(BLOBS["k3s"])
    first = cache.fetch(server.url("/blob/k3s"), digest)
    first.path.write_bytes(b"bit rot")
    before = server.count("/blob/k3s")

    repaired = cache.fetch(server.url("/blob/k3s"), digest)

    assert repaired.downloaded is True
    assert server.count("/blob/k3s") == before + 1
    assert repaired.path.read_bytes() == BLOBS["k3s"]


def test_corrupted_cache_entry_with_server_gone_fails_and_is_removed(
    server: Server, cache: ArtifactCache
) -> None:
    digest = sha(BLOBS["small"])
    cache.fetch(server.url("/blob/small"), digest).path.write_bytes(b"bad")
    with pytest.raises(DownloadError, match="connection failed"):
        cache.fetch(f"http://127.0.0.1:{closed_port()}/blob/small", digest)
    assert cache.cached(digest) is None


def test_redirect_is_followed(server: Server, cache: ArtifactCache) -> None:
    result = cache.fetch(server.url("/redirect/small"), sha(BLOBS["small"]))
    assert result.path.read_bytes() == BLOBS["small"]


def test_content_encoding_gzip_is_not_decoded(server: Server, cache: ArtifactCache) -> None:
    blob = BLOBS["wasmedge.tar.gz"]
    result = cache.fetch(server.url("/gzip-encoded/wasmedge.tar.gz"), sha(blob))
    assert result.path.read_bytes() == blob


def test_body_without_content_length(server: Server, cache: ArtifactCache) -> None:
    result = cache.fetch(server.url("/nolength/k3s"), sha(BLOBS["k3s"]))
    assert result.size == len(BLOBS["k3s"])


def test_uppercase_digest_is_accepted(server: Server, cache: ArtifactCache) -> None:
    digest = sha(BLOBS["small"])
    result = cache.fetch(server.url("/blob/small"), digest.upper())
    assert result.path.name == digest


# --- failures ---------------------------------------------------------------------------------


def test_sha256_mismatch(server: Server, cache: ArtifactCache) -> None:
    expected = sha(b"something else")
    with pytest.raises(DownloadError) as info:
        cache.fetch(server.url("/blob/small"), expected)
    message = str(info.value)
    assert "sha256 mismatch" in message
    assert expected in message
    assert sha(BLOBS["small"]) in message
    assert server.url("/blob/small") in message
    assert_nothing_kept(cache)


@pytest.mark.parametrize("status", [404, 500, 403])
def test_http_error_status(server: Server, cache: ArtifactCache, status: int) -> None:
    with pytest.raises(DownloadError, match=f"HTTP {status}") as info:
        cache.fetch(server.url(f"/status/{status}"), sha(b"x"))
    assert "\n" not in str(info.value)
    assert_nothing_kept(cache)


def test_truncated_body(server: Server, cache: ArtifactCache) -> None:
    with pytest.raises(
        DownloadError, match=r"connection (dropped mid-body|closed after \d+ of \d+ bytes)"
    ) as info:
        cache.fetch(server.url("/truncated/k3s"), sha(BLOBS["k3s"]))
    assert "\n" not in str(info.value)
    assert_nothing_kept(cache)


def test_connection_refused(cache: ArtifactCache) -> None:
    url = f"http://127.0.0.1:{closed_port()}/blob/k3s"
    with pytest.raises(DownloadError, match=r"connection failed: .*Connection refused") as info:
        cache.fetch(url, sha(b"x"))
    assert url in str(info.value)
    assert_nothing_kept(cache)


def test_no_response_within_timeout(server: Server, cache: ArtifactCache) -> None:
    with pytest.raises(DownloadError, match=r"no data for 0\.3s"):
        cache.fetch(server.url("/slow/small"), sha(BLOBS["small"]), timeout=0.3)
    assert_nothing_kept(cache)


def test_body_stalls_mid_transfer(server: Server, cache: ArtifactCache) -> None:
    with pytest.raises(DownloadError, match=r"no data for 0\.3s"):
        cache.fetch(server.url("/stall/k3s"), sha(BLOBS["k3s"]), timeout=0.3)
    assert_nothing_kept(cache)


def test_size_limit_from_content_length(server: Server, tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache", max_bytes=100)
    with pytest.raises(DownloadError, match="over the 100-byte limit"):
        cache.fetch(server.url("/blob/k3s"), sha(BLOBS["k3s"]))
    assert_nothing_kept(cache)


def test_size_limit_while_streaming(server: Server, tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache", max_bytes=100)
    with pytest.raises(DownloadError, match="larger than the 100-byte limit"):
        cache.fetch(server.url("/nolength/k3s"), sha(BLOBS["k3s"]))
    assert_nothing_kept(cache)


def test_invalid_digest_and_scheme(cache: ArtifactCache) -> None:
    with pytest.raises(DownloadError, match="invalid sha256"):
        cache.fetch("https://example.invalid/x", "abc")
    with pytest.raises(DownloadError, match="unsupported URL scheme 'ftp'"):
        cache.fetch("ftp://example.invalid/x", sha(b"x"))
    assert_nothing_kept(cache)


# --- credentials never leak -------------------------------------------------------------------

CREDS = "agent7:pw-9f3k2"
TOKEN = "tk-77x1q"


def _full_report(exc: BaseException) -> str:
    # What a logger with exc_info would print, chained exceptions included.
    return str(exc) + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


@pytest.mark.parametrize("path", ["/status/404", "/status/500", "/truncated/k3s", "/blob/small"])
def test_credentials_never_in_error(server: Server, cache: ArtifactCache, path: str) -> None:
    port = server.httpd.server_address[1]
    url = f"http://{CREDS}@127.0.0.1:{port}{path}?token={TOKEN}&arch=amd64"
    with pytest.raises(DownloadError) as info:
        cache.fetch(url, sha(b"not it"))
    report = _full_report(info.value)
    assert "pw-9f3k2" not in report
    assert "agent7" not in report
    assert TOKEN not in report
    assert f"http://***@127.0.0.1:{port}{path}?token=***&arch=amd64" in str(info.value)


def test_credentials_never_in_connection_error(cache: ArtifactCache) -> None:
    url = f"http://{CREDS}@127.0.0.1:{closed_port()}/k3s?token={TOKEN}"
    with pytest.raises(DownloadError) as info:
        cache.fetch(url, sha(b"x"))
    report = _full_report(info.value)
    assert "pw-9f3k2" not in report
    assert "agent7" not in report
    assert TOKEN not in report


# --- file:// ---------------------------------------------------------------------------------


def test_file_url(tmp_path: Path, cache: ArtifactCache) -> None:
    source = tmp_path / "bundle dir" / "k3s"
    source.parent.mkdir()
    source.write_bytes(BLOBS["k3s"])
    url = "file://" + str(source).replace(" ", "%20")

    result = cache.fetch(url, sha(BLOBS["k3s"]))

    assert result.downloaded is True
    assert result.path.read_bytes() == BLOBS["k3s"]
    assert cache.fetch(url, sha(BLOBS["k3s"])).downloaded is False


def test_file_url_mismatch_and_missing(tmp_path: Path, cache: ArtifactCache) -> None:
    source = tmp_path / "k3s"
    source.write_bytes(b"tampered")
    with pytest.raises(DownloadError, match="sha256 mismatch") as failed:
        cache.fetch(f"file://{source}", sha(BLOBS["k3s"]))
    # What the local file is (its digest, its size) is not for the desired state's author.
    assert sha(b"tampered") not in str(failed.value)
    assert "8 bytes" not in str(failed.value)
    with pytest.raises(DownloadError, match=r"cannot read .*No such file"):
        cache.fetch(f"file://{tmp_path}/absent", sha(BLOBS["k3s"]))
    with pytest.raises(DownloadError, match="local path"):
        cache.fetch("file://otherhost/k3s", sha(BLOBS["k3s"]))
    assert_nothing_kept(cache)


def test_transient_failures_are_tried_again_with_a_growing_pause(
    server: Server, tmp_path: Path
) -> None:
    cache = ArtifactCache(tmp_path / "cache")
    cache.backoff_s = 0.05
    name = next(iter(BLOBS))
    url = server.url(f"/flaky/{name}")
    result = cache.fetch(url, hashlib.sha256(BLOBS[name]).hexdigest())
    assert result.downloaded
    assert server.count(f"/flaky/{name}") == 3


def test_a_permanent_failure_is_not_tried_again(server: Server, tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache")
    cache.backoff_s = 0.05
    before = server.count("/status/404"), server.count("/status/500")
    with pytest.raises(DownloadError, match="HTTP 404"):
        cache.fetch(server.url("/status/404"), "0" * 64)
    assert server.count("/status/404") - before[0] == 1
    with pytest.raises(DownloadError, match=r"HTTP 500 .*\(after 3 attempts\)"):
        cache.fetch(server.url("/status/500"), "1" * 64)
    assert server.count("/status/500") - before[1] == 3


def test_a_stop_request_ends_the_pause_between_attempts(server: Server, tmp_path: Path) -> None:
    from agentd.core.errors import Cancelled

    cache = ArtifactCache(tmp_path / "cache")
    cache.backoff_s = 30.0  # far longer than the test: only the stop can end it
    calls = []

    def progress() -> None:
        calls.append(1)
        if len(calls) > 3:
            raise Cancelled("stop")

    before = server.count("/status/503")
    with pytest.raises(Cancelled):
        cache.fetch(server.url("/status/503"), "2" * 64, progress=progress)
    assert server.count("/status/503") - before == 1
