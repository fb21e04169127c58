"""A real git smart-HTTP server: `git http-backend` (CGI) behind Basic auth, able to stall."""

from __future__ import annotations

import base64
import http.server
import subprocess
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, Optional


class GitHttpServer:
    """Serves `<base>/fleet.git` at http://127.0.0.1:PORT/fleet.git for USER:TOKEN only.

    `stall` set: the next upload-pack (the fetch's pack request) waits, after its request was
    read, until `release` is set; `stalled` says it is waiting.
    """

    def __init__(self, base_path: Path, user: str, token: str) -> None:
        self.base_path = base_path
        self.expected = "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()
        self.stall = threading.Event()
        self.stalled = threading.Event()
        self.release = threading.Event()
        self.seen: list[tuple[str, str, int]] = []  # method, path, status
        self._server: Optional[http.server.ThreadingHTTPServer] = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/fleet.git"

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._cgi(b"")

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._cgi(body)

            def _cgi(self, body: bytes) -> None:
                path, _, query = self.path.partition("?")
                if self.headers.get("Authorization") != outer.expected:
                    outer.seen.append((self.command, path, 401))
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="fleet"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if path.endswith("/git-upload-pack") and outer.stall.is_set():
                    outer.stalled.set()
                    outer.release.wait(60)
                env = {
                    "GIT_PROJECT_ROOT": str(outer.base_path),
                    "GIT_HTTP_EXPORT_ALL": "1",
                    "PATH_INFO": path,
                    "QUERY_STRING": query,
                    "REQUEST_METHOD": self.command,
                    "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                    "CONTENT_LENGTH": str(len(body)),
                    "REMOTE_USER": "fleet-reader",
                    "REMOTE_ADDR": "127.0.0.1",
                    "GIT_CONFIG_NOSYSTEM": "1",
                    "PATH": "/usr/bin:/bin",
                }
                if self.headers.get("Content-Encoding"):
                    env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
                if self.headers.get("Git-Protocol"):
                    env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
                out = subprocess.run(
                    ["git", "http-backend"], input=body, env=env, capture_output=True, check=True
                ).stdout
                head, _, payload = out.partition(b"\r\n\r\n")
                status = 200
                headers: list[tuple[str, str]] = []
                for line in head.decode().split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.lower() == "status":
                        status = int(value.split()[0])
                    elif name:
                        headers.append((name, value.strip()))
                outer.seen.append((self.command, path, status))
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        return Handler

    def __enter__(self) -> GitHttpServer:
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
