"""A real HTTP(S) server over a directory, with ETags, a request log and injectable faults."""

from __future__ import annotations

import argparse
import functools
import hashlib
import http.server
import os
import signal
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Optional, Union
from urllib.parse import unquote, urlsplit


@dataclass
class _Fault:
    status: int | None = None  # answer with this status instead of the file
    truncate_at: int | None = None  # send the full Content-Length but only this many bytes
    throttle: float | None = None  # send the body at this many bytes per second
    location: str | None = None  # answer with a 302 redirect to this URL
    remaining: int | None = None  # requests left to affect; None until cleared
    # Stall: send nothing (None) or the headers and this many body bytes, then wait for
    # `release` (set by clear_faults() and stop()) and hang up without sending the rest.
    stall_after: int | None = None
    stalling: bool = False
    release: threading.Event = field(default_factory=threading.Event)
    hangup: bool = False  # close the connection without any answer
    body: bytes | None = None  # answer 200 with these bytes instead of the file's
    flood: int | None = None  # answer 200 with this many bytes of filler
    announce: int | None = None  # the Content-Length sent with a flood (None: no header)


@dataclass(frozen=True)
class Response:
    """One answered request, as the server sent it."""

    method: str
    path: str
    status: int
    body_bytes: int


# A stalled request is released by clear_faults() or stop(); this only bounds how long its
# thread can outlive a test that forgot both.
_STALL_CAP_S = 300.0
_FLOOD_CHUNK = 64 << 10


def _decoded_path(path: str) -> str:
    # Clients may send "+" or "%2B" for the same k3s version: keep one spelling of each path.
    decoded = unquote(urlsplit(path).path)
    return decoded if decoded.startswith("/") else "/" + decoded


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: Any) -> None:
        super().__init__(address, handler)
        self.lock = threading.Lock()
        self.log: list[tuple[str, str]] = []
        self.responses: list[Response] = []
        self.faults: dict[str, _Fault] = {}
        self.arrivals: list[tuple[float, str]] = []  # (time.monotonic(), path) per request
        self.stalls: list[threading.Event] = []

    def release_stalls(self) -> None:
        with self.lock:
            for event in self.stalls:
                event.set()

    def record(self, method: str, path: str) -> _Fault | None:
        """Log one request and return the fault to apply to it, if any."""
        with self.lock:
            self.log.append((method, path))
            self.arrivals.append((time.monotonic(), path))
            fault = self.faults.get(path)
            if fault is None:
                return None
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    del self.faults[path]
            return fault

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up mid-download (or after a truncated body) is a normal event here,
        # not worth a traceback on stderr.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


def _etag(path: Path) -> str:
    # A strong validator from the content, as nginx's is from size and mtime: equal bytes, equal
    # tag, across server restarts.
    return '"' + hashlib.sha256(path.read_bytes()).hexdigest()[:32] + '"'


class _Handler(http.server.SimpleHTTPRequestHandler):
    server: _Server
    _status = 0
    _sent = 0
    _etag_header: str | None = None

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def send_response(self, code: int, message: str | None = None) -> None:
        self._status = code
        super().send_response(code, message)

    def do_GET(self) -> None:
        self._respond(head=False)

    def do_HEAD(self) -> None:
        self._respond(head=True)

    def _respond(self, *, head: bool) -> None:
        self._status, self._sent = 0, 0
        try:
            self._answer(head=head)
        finally:
            with self.server.lock:
                self.server.responses.append(
                    Response(self.command, _decoded_path(self.path), self._status, self._sent)
                )

    def _file(self) -> Path | None:
        path = Path(self.translate_path(self.path))
        return path if path.is_file() else None

    def _answer(self, *, head: bool) -> None:
        fault = self.server.record(self.command, _decoded_path(self.path))
        if fault is not None and self._misbehave(fault, head=head):
            return
        if fault is not None and fault.status is not None:
            self.send_error(fault.status)
            return
        if fault is not None and fault.location is not None:
            self.send_response(302)
            self.send_header("Location", fault.location)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        file = self._file()
        if file is not None:
            tag = _etag(file)
            wanted = [t.strip() for t in self.headers.get("If-None-Match", "").split(",")]
            if tag in wanted or "*" in wanted:
                self.send_response(304)
                self.send_header("ETag", tag)
                self.end_headers()
                return
            self._etag_header = tag
        body = self.send_head()  # headers, with the full file's Content-Length (or a 304)
        if body is None:
            return
        try:
            if head:
                return
            if fault is not None and fault.truncate_at is not None:
                data = body.read(fault.truncate_at)
                self.wfile.write(data)
                self._sent = len(data)
                self.close_connection = True
            elif fault is not None and fault.stalling:
                data = body.read(fault.stall_after or 0)
                self.wfile.write(data)
                self.wfile.flush()
                self._sent = len(data)
                fault.release.wait(_STALL_CAP_S)
                self.close_connection = True
            elif fault is not None and fault.throttle is not None:
                self._trickle(body, fault.throttle)
            else:
                data = body.read()
                self.wfile.write(data)
                self._sent = len(data)
        finally:
            body.close()

    def _misbehave(self, fault: _Fault, *, head: bool) -> bool:
        """The faults that are not a status, a redirect or a damaged file; True if applied."""
        if fault.hangup:
            self.close_connection = True
            return True
        if fault.stalling and fault.stall_after is None:
            # Not even a status line: the client waits for a response that never comes.
            fault.release.wait(_STALL_CAP_S)
            self.close_connection = True
            return True
        if fault.body is not None:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(fault.body)))
            self.end_headers()
            if not head:
                self.wfile.write(fault.body)
                self._sent = len(fault.body)
            return True
        if fault.flood is not None:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            if fault.announce is not None:
                self.send_header("Content-Length", str(fault.announce))
            self.end_headers()
            # HTTP/1.0 without a Content-Length: the body ends when the connection does.
            self.close_connection = True
            if not head:
                self._pour(fault.flood)
            return True
        return False

    def _pour(self, n_bytes: int) -> None:
        # Filler in pieces, counted as it goes: a client that gives up ends it with a broken pipe,
        # and _sent says how far it got.
        chunk = bytes(range(256)) * (_FLOOD_CHUNK // 256)
        while self._sent < n_bytes:
            piece = chunk[: n_bytes - self._sent]
            self.wfile.write(piece)
            self._sent += len(piece)

    def _trickle(self, body: Any, rate: float) -> None:
        chunk = max(1, int(rate / 10))
        while True:
            data = body.read(chunk)
            if not data:
                return
            self.wfile.write(data)
            self.wfile.flush()
            self._sent += len(data)
            time.sleep(0.1)

    def end_headers(self) -> None:
        tag = getattr(self, "_etag_header", None)
        if tag is not None and self._status == 200:
            self.send_header("ETag", tag)
        self._etag_header = None
        super().end_headers()


class MirrorServer:
    """Serves `directory` on 127.0.0.1 from a daemon thread; paths are kept percent-decoded."""

    def __init__(
        self,
        directory: Union[str, Path],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: Optional[ssl.SSLContext] = None,
    ):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise FileNotFoundError(f"no such directory to serve: {self.directory}")
        handler = functools.partial(_Handler, directory=str(self.directory))
        self._server = _Server((host, port), handler)
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self._scheme = "https" if tls is not None else "http"
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        """The base URL, without a trailing slash."""
        host, port = self._server.server_address[:2]
        return f"{self._scheme}://{host!s}:{port}"

    @property
    def responses(self) -> list[Response]:
        """Every answer so far, with its status and how many body bytes were sent."""
        with self._server.lock:
            return list(self._server.responses)

    @property
    def requests(self) -> list[str]:
        """Every path requested so far (GET and HEAD), in order."""
        with self._server.lock:
            return [path for _, path in self._server.log]

    @property
    def log(self) -> list[tuple[str, str]]:
        """Every request so far as (method, path)."""
        with self._server.lock:
            return list(self._server.log)

    def arrivals(self, path_suffix: str) -> list[float]:
        """When each request for a path ending in `path_suffix` arrived (time.monotonic())."""
        suffix = unquote(path_suffix)
        with self._server.lock:
            return [at for at, path in self._server.arrivals if path.endswith(suffix)]

    def count(self, path_suffix: str, method: str | None = None) -> int:
        """How many requests asked for a path ending in `path_suffix` (decoded like the log)."""
        suffix = unquote(path_suffix)
        return sum(
            1 for m, path in self.log if path.endswith(suffix) and (method is None or m == method)
        )

    def _key(self, path: str) -> str:
        if path.startswith(self.url):
            path = path[len(self.url) :]
        return _decoded_path(path)

    def fail(self, path: str, status: int, *, times: int | None = None) -> None:
        """Answer requests for `path` (or its full URL) with `status`; `times` limits how often."""
        with self._server.lock:
            self._server.faults[self._key(path)] = _Fault(status=status, remaining=times)

    def truncate(self, path: str, n_bytes: int, *, times: int | None = None) -> None:
        """Announce the whole file's length but send only `n_bytes` of it, then hang up."""
        with self._server.lock:
            self._server.faults[self._key(path)] = _Fault(truncate_at=n_bytes, remaining=times)

    def throttle(self, path: str, bytes_per_second: float, *, times: int | None = None) -> None:
        """Send the body of `path` slowly (a download that takes a while)."""
        with self._server.lock:
            self._server.faults[self._key(path)] = _Fault(
                throttle=bytes_per_second, remaining=times
            )

    def redirect(self, path: str, location: str, *, times: int | None = None) -> None:
        """Answer requests for `path` with a 302 to `location`."""
        with self._server.lock:
            self._server.faults[self._key(path)] = _Fault(location=location, remaining=times)

    def stall(self, path: str, after_bytes: int | None = None, *, times: int | None = None) -> None:
        """Stop sending: nothing at all (`after_bytes` None), or the headers with the whole file's
        Content-Length and `after_bytes` of the body; then wait until clear_faults() or stop()
        and hang up. A client with a read timeout gives up first."""
        with self._server.lock:
            fault = _Fault(stall_after=after_bytes, stalling=True, remaining=times)
            self._server.stalls.append(fault.release)
            self._server.faults[self._key(path)] = fault

    def hangup(self, path: str, *, times: int | None = None) -> None:
        """Read the request, then close the connection without any answer."""
        with self._server.lock:
            self._server.faults[self._key(path)] = _Fault(hangup=True, remaining=times)

    def serve_bytes(self, path: str, data: bytes, *, times: int | None = None) -> None:
        """Answer 200 with `data` instead of the file (the wrong bytes, whatever the file is)."""
        with self._server.lock:
            self._server.faults[self._key(path)] = _Fault(body=data, remaining=times)

    def flood(
        self,
        path: str,
        n_bytes: int,
        *,
        content_length: int | None = None,
        times: int | None = None,
    ) -> None:
        """Answer 200 with `n_bytes` of filler (a huge body for a small file), announcing
        `content_length` (None: no Content-Length, the body ends when the connection closes)."""
        with self._server.lock:
            self._server.faults[self._key(path)] = _Fault(
                flood=n_bytes, announce=content_length, remaining=times
            )

    def clear_faults(self) -> None:
        with self._server.lock:
            self._server.faults.clear()
        self._server.release_stalls()

    def clear_requests(self) -> None:
        with self._server.lock:
            self._server.log.clear()
            self._server.responses.clear()
            self._server.arrivals.clear()

    def start(self) -> MirrorServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"mirror-{self.url}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        self._server.release_stalls()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> MirrorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _write_ready_file(path: Path, url: str) -> None:
    # Written beside and renamed, so a demo polling for the file never reads half a URL.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(url)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.mirror",
        description="Serve a directory over HTTP until killed.",
    )
    parser.add_argument("directory", type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--ready-file", type=Path, help="write the base URL here once serving")
    args = parser.parse_args(argv)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with MirrorServer(args.directory, host=args.host, port=args.port) as server:
        if args.ready_file is not None:
            _write_ready_file(args.ready_file, server.url)
        print(f"serving {args.directory} at {server.url}", file=sys.stderr, flush=True)
        while True:
            signal.pause()


if __name__ == "__main__":
    sys.exit(main())
