"""A content-addressed artifact cache: nothing is kept unless its sha256 is the one asked for."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import secrets
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Optional, Union
from urllib.parse import unquote, urlsplit

from agentd import __version__
from agentd.converge.oci import OciError, Registries, resolve
from agentd.core.errors import DownloadError
from agentd.core.redact import redact_text, redact_url
from agentd.system.files import fsync_dir
from agentd.system.readfile import open_regular

MAX_DOWNLOAD_BYTES = 2 << 30
_CHUNK = 1 << 20
_SLOW_CHUNK = 16 << 10
_SHA256_RE = re.compile(r"^[0-9a-f]{64}\Z")
_ERRNO_RE = re.compile(r"\[Errno -?\d+\] [^'\"()\[\]]+")
_INCOMPLETE_RE = re.compile(r"IncompleteRead\((\d+) bytes read, (\d+) more expected\)")


@dataclass(frozen=True)
class FetchResult:
    path: Path
    downloaded: bool
    size: int


class _Failure(Exception):
    """Why a transfer failed, in words; fetch() adds the redacted URL."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient  # worth another try: the network, not the request


def _describe(exc: BaseException) -> str:
    """One redacted line for an exception, preferring the OS reason buried in urllib3's text."""
    text = " ".join(str(exc).split())
    found = _ERRNO_RE.search(text)
    if found:
        return found.group(0).strip()
    return redact_text(text)[:300] or type(exc).__name__


class _Sink:
    """The temp file being written: hashes and counts every byte, refuses to grow past a limit."""

    def __init__(
        self,
        out: IO[bytes],
        limit: int,
        progress: Optional[Callable[[], None]] = None,
        arrived: Optional[Callable[[int, Optional[int]], None]] = None,
    ) -> None:
        self.out = out
        self.limit = limit
        self.size = 0
        self.total: Optional[int] = None  # the announced length, when there is one
        self.hasher = hashlib.sha256()
        self.progress = progress
        self.arrived = arrived

    def write(self, chunk: bytes) -> None:
        if self.progress is not None:
            self.progress()  # may raise Cancelled: the partial file is removed
        self.size += len(chunk)
        if self.size > self.limit:
            raise _Failure(f"larger than the {self.limit}-byte limit")
        self.hasher.update(chunk)
        self.out.write(chunk)
        if self.arrived is not None:
            self.arrived(self.size, self.total)


def _content_length(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def _arriving(raw: Any) -> Iterator[bytes]:
    """The body as it arrives: each piece is whatever the socket has (up to 1 MiB), so the
    sink's progress check (a stop request) runs during a slow download, not once per MiB."""
    read1 = getattr(raw, "read1", None)
    if read1 is None:  # urllib3 1.x: bounded pieces instead
        yield from raw.stream(_SLOW_CHUNK, decode_content=False)
        return
    while True:
        chunk = read1(_CHUNK, decode_content=False)
        if not chunk:
            return
        yield chunk


def _download_http(
    url: str,
    sink: _Sink,
    timeout: float,
    verify: Union[bool, str],
    extra: Optional[dict[str, str]] = None,
    cert: Optional[tuple[str, str]] = None,
) -> None:
    # Imported here: requests and urllib3 cost a noticeable part of start-up, and most runs
    # find every artifact already cached.
    import requests  # noqa: PLC0415
    import urllib3.exceptions  # noqa: PLC0415

    headers = {
        "User-Agent": f"agentd/{__version__}",
        # The sha256 is of the bytes as published: a server must not gzip them on the way, and
        # a .tar.gz served with Content-Encoding: gzip must not be decoded either (below).
        "Accept-Encoding": "identity",
        **(extra or {}),
    }
    try:
        with requests.get(
            url,
            headers=headers,
            stream=True,
            timeout=(timeout, timeout),
            verify=verify,
            cert=cert,
        ) as resp:
            if not 200 <= resp.status_code < 300:
                reason = " ".join(str(resp.reason or "").split())
                where = "" if resp.url == url else f" from {redact_url(resp.url)}"
                # 5xx and 429 are the server's passing trouble; 4xx the request's, for good.
                transient = resp.status_code >= 500 or resp.status_code in (408, 429)
                message = redact_text(f"HTTP {resp.status_code} {reason}".strip() + where)
                raise _Failure(message, transient=transient)
            length = _content_length(resp.headers.get("Content-Length"))
            if length is not None and length > sink.limit:
                raise _Failure(f"Content-Length {length} is over the {sink.limit}-byte limit")
            sink.total = length
            for chunk in _arriving(resp.raw):
                sink.write(chunk)
            # urllib3 1.x does not enforce Content-Length itself.
            if length is not None and sink.size != length:
                raise _Failure(
                    f"connection closed after {sink.size} of {length} bytes", transient=True
                )
    except requests.exceptions.ConnectTimeout:
        raise _Failure(f"connection timed out after {timeout:g}s", transient=True) from None
    except (requests.exceptions.ReadTimeout, urllib3.exceptions.ReadTimeoutError):
        raise _Failure(f"no data for {timeout:g}s (read timed out)", transient=True) from None
    except requests.exceptions.SSLError as exc:
        raise _Failure(f"TLS error: {_describe(exc)}") from None
    except (requests.exceptions.ChunkedEncodingError, urllib3.exceptions.ProtocolError) as exc:
        short = _INCOMPLETE_RE.search(str(exc))
        if short:
            got, more = int(short.group(1)), int(short.group(2))
            closed = f"connection closed after {got} of {got + more} bytes"
            raise _Failure(closed, transient=True) from None
        raise _Failure(f"connection dropped mid-body: {_describe(exc)}", transient=True) from None
    except requests.exceptions.ConnectionError as exc:
        raise _Failure(f"connection failed: {_describe(exc)}", transient=True) from None
    except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as exc:
        raise _Failure(_describe(exc)) from None


def _copy_local(url: str, sink: _Sink) -> None:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise _Failure("a file:// URL must name a local path (file:///abs/path)")
    path = Path(unquote(parts.path))
    if not path.is_absolute():
        raise _Failure("a file:// URL must name an absolute path")
    try:
        with open_regular(path) as src:
            while True:
                chunk = src.read(_CHUNK)
                if not chunk:
                    return
                sink.write(chunk)
    except OSError as exc:
        raise _Failure(f"cannot read {path}: {exc.strerror or exc}") from None


def _sha256_of(path: Path) -> str:
    hasher = hashlib.sha256()
    with open_regular(path, follow=False) as f:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                return hasher.hexdigest()
            hasher.update(chunk)


def read_beside(url: str, limit: int, timeout: float, verify: Union[bool, str]) -> Optional[bytes]:
    """A small file published beside an artifact (its signature), read whole up to `limit`
    bytes with the artifacts' TLS settings; None when the server says it is not there."""
    sink = _Sink(io.BytesIO(), limit)
    try:
        if urlsplit(url).scheme.lower() == "file":
            if not Path(unquote(urlsplit(url).path)).exists():
                return None
            _copy_local(url, sink)
        else:
            _download_http(url, sink, timeout, verify)
    except _Failure as exc:
        if str(exc).startswith(("HTTP 404", "HTTP 410")):
            return None
        raise DownloadError(f"download of {redact_url(url)} failed: {exc}") from None
    assert isinstance(sink.out, io.BytesIO)
    return sink.out.getvalue()


class ArtifactCache:
    """Blobs stored as `<cache_dir>/sha256/<hex>`; partial downloads live in `<cache_dir>/tmp`."""

    def __init__(
        self,
        cache_dir: Path,
        *,
        max_bytes: int = MAX_DOWNLOAD_BYTES,
        verify: Union[bool, str] = True,
    ) -> None:
        """`verify`: TLS verification, True (the system's CAs), a CA bundle path, or False."""
        self.cache_dir = cache_dir
        self.verify = verify
        # A transient failure (connection, timeout, cut-off body, 5xx) is tried again after
        # 1 s and 2 s; the daemon's own backoff takes over after that.
        self.attempts = 3
        self.backoff_s = 1.0
        self.blob_dir = cache_dir / "sha256"
        self.tmp_dir = cache_dir / "tmp"
        self.max_bytes = max_bytes
        # oci:// artifacts: agentd.yaml's registries (mirrors, auth, TLS); none by default.
        self.registries = Registries(None, verify=verify)

    def _blob(self, sha256: str) -> Path:
        return self.blob_dir / sha256

    def cached(self, sha256: str) -> Path | None:
        """The cached blob for this digest, if there is one (not re-verified here)."""
        sha256 = sha256.lower()
        if not _SHA256_RE.match(sha256):
            return None
        path = self._blob(sha256)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        return path if stat.S_ISREG(st.st_mode) else None

    def fetch(
        self,
        url: str,
        sha256: str,
        *,
        timeout: float = 30.0,
        progress: Optional[Callable[[], None]] = None,
        arrived: Optional[Callable[[int, Optional[int]], None]] = None,
    ) -> FetchResult:
        """The verified blob for `sha256`: from the cache, else downloaded from `url`.

        Raises DownloadError with the redacted URL on any failure; nothing partial or
        unverified is ever left under `sha256/`. `progress` is called for every chunk and may
        raise to abandon the download; `arrived` is told the bytes so far (and the announced
        length) of an http(s) download, never of a local file's (its size is not to be shown).
        """
        safe_url = redact_url(url)
        expected = sha256.lower()
        if not _SHA256_RE.match(expected):
            raise DownloadError(f"invalid sha256 {sha256!r} for {safe_url}")
        try:
            hit = self._verified_hit(expected)
            if hit is not None:
                return hit
            for attempt in range(1, self.attempts + 1):
                try:
                    return self._download(url, expected, timeout, progress, arrived)
                except _Failure as exc:
                    if not exc.transient or attempt == self.attempts:
                        tries = f" (after {attempt} attempts)" if attempt > 1 else ""
                        raise _Failure(f"{exc}{tries}") from None
                    self._pause(self.backoff_s * 2 ** (attempt - 1), progress)
            raise AssertionError("unreachable")  # pragma: no cover
        except _Failure as exc:
            raise DownloadError(f"download of {safe_url} failed: {exc}") from None
        except OSError as exc:
            # The cache itself (disk full, permissions): still one line, still no credentials.
            raise DownloadError(f"download of {safe_url} failed: {_describe(exc)}") from None

    @staticmethod
    def _pause(seconds: float, progress: Optional[Callable[[], None]]) -> None:
        """Wait between attempts, still answering a stop request (progress may raise)."""
        deadline = time.monotonic() + seconds
        while True:
            if progress is not None:
                progress()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.1))

    def _download_oci(
        self,
        url: str,
        expected: str,
        sink: _Sink,
        timeout: float,
        progress: Optional[Callable[[], None]],
    ) -> None:
        """The manifest names the layer; its blob comes through the same bounded, hashed sink
        as any https download, so the digest check below is the one every artifact gets."""
        try:
            blob = resolve(self.registries, url, expected, timeout, progress)
        except OciError as exc:
            raise _Failure(str(exc), transient=exc.transient) from None
        endpoint = blob.endpoint
        try:
            _download_http(
                blob.url, sink, timeout, endpoint.verify, dict(blob.headers), endpoint.cert
            )
        except _Failure as exc:
            where = f"the blob sha256:{expected} from {endpoint.masked}"
            raise _Failure(f"{where}: {exc}", transient=exc.transient) from None

    def _verified_hit(self, expected: str) -> FetchResult | None:
        path = self.cached(expected)
        if path is None:
            return None
        # Re-hashed on every use: a blob damaged on disk (bad flash, a crash mid-write on a file
        # system that reordered it) must not be installed just because its name is right.
        if _sha256_of(path) == expected:
            return FetchResult(path, downloaded=False, size=path.stat().st_size)
        path.unlink()
        return None

    def _download(
        self,
        url: str,
        expected: str,
        timeout: float,
        progress: Optional[Callable[[], None]],
        arrived: Optional[Callable[[int, Optional[int]], None]],
    ) -> FetchResult:
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.tmp_dir / f"{expected}.{secrets.token_hex(4)}.part"
        scheme = urlsplit(url).scheme.lower()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                sink = _Sink(out, self.max_bytes, progress)
                if scheme in ("http", "https"):
                    sink.arrived = arrived
                    _download_http(url, sink, timeout, self.verify)
                elif scheme == "file":
                    _copy_local(url, sink)
                elif scheme == "oci":
                    sink.arrived = arrived
                    self._download_oci(url, expected, sink, timeout, progress)
                else:
                    raise _Failure(f"unsupported URL scheme {scheme!r}")
                out.flush()
                os.fsync(out.fileno())
            actual = sink.hasher.hexdigest()
            if actual != expected and scheme == "file":
                # The digest and size of a local file would tell anyone who can write a
                # desired state something about a file only root may read (/etc/shadow).
                raise _Failure(f"sha256 mismatch: expected {expected}; the local file differs")
            if actual != expected:
                raise _Failure(
                    f"sha256 mismatch: expected {expected}, got {actual} ({sink.size} bytes)"
                )
            os.chmod(tmp, 0o644)
            blob = self._blob(expected)
            os.replace(tmp, blob)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        fsync_dir(self.blob_dir)
        return FetchResult(blob, downloaded=True, size=sink.size)
