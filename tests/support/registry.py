"""A real CNCF distribution registry on 127.0.0.1, the real oras to push to it, a token server."""

from __future__ import annotations

import base64
import http.server
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any, Optional
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.support.fleet import TestCA

REPO = Path(__file__).resolve().parent.parent.parent
CACHE = REPO / "build" / "oci-tools"
DOCKER_REGISTRY = Path("/usr/bin/docker-registry")  # Debian 12's docker-registry package
SERVICE = "agentd-test-registry"
ISSUER = "agentd-test-issuer"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: Optional[subprocess.Popen[bytes]] = None) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the registry exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def oras() -> Path:
    """Debian 13's oras 1.2 (it runs on Debian 12 as it is), fetched once into build/."""
    binary = CACHE / "oras" / "usr" / "bin" / "oras"
    if binary.exists():
        return binary
    if shutil.which("apt-get") is None:
        pytest.skip("oras comes from Debian 13's archive through apt-get, which is not here")
    work = Path(tempfile.mkdtemp(prefix="oras-"))
    try:
        (work / "lists" / "partial").mkdir(parents=True)
        (work / "cache" / "archives" / "partial").mkdir(parents=True)
        keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
        (work / "sources.list").write_text(
            f"deb [signed-by={keyring}] http://deb.debian.org/debian trixie main\n"
        )
        options = [
            f"-oDir::Etc::SourceList={work}/sources.list",
            "-oDir::Etc::SourceParts=/dev/null",
            f"-oDir::State::Lists={work}/lists",
            f"-oDir::Cache={work}/cache",
            "-oDir::State::status=/dev/null",
        ]
        for args in (["update", "-qq"], ["download", "-qq", "oras"]):
            done = subprocess.run(
                ["apt-get", *options, *args],
                check=False,
                cwd=work,
                capture_output=True,
                timeout=300,
            )
            if done.returncode != 0:
                why = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
                pytest.skip(f"Debian 13's oras cannot be fetched: {' '.join(why)}")
        (deb,) = work.glob("oras_*.deb")
        unpacked = work / "oras"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
        CACHE.mkdir(parents=True, exist_ok=True)
        final = CACHE / "oras"
        if not final.exists():
            os.replace(unpacked, final)  # atomic: a parallel run never sees half a tree
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return binary


def docker_registry() -> Path:
    if not DOCKER_REGISTRY.exists():
        pytest.skip("no /usr/bin/docker-registry (apt-get install docker-registry)")
    return DOCKER_REGISTRY


def _bcrypt(password: str) -> str:
    # The registry's htpasswd takes bcrypt only; glibc's libcrypt makes it ($2b$), at the
    # lowest cost: the registry checks it on every request.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

        return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """Stands in for a registry's token service (Harbor's, Docker Hub's auth.docker.io): the
    distribution "token" auth, Basic credentials in, a JWT signed RS256 (by the openssl program)
    out, checked by the real registry; `sign_with_other_key`: one the registry refuses."""

    def __init__(self, root: Path, user: str, password: str) -> None:
        self.root = root
        self.user, self.password = user, password
        self.sign_with_other_key = False
        self.requests: list[str] = []
        for name in ("key", "other"):
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                 "-subj", f"/CN=agentd-test-{name}", "-keyout", str(root / f"{name}.key"),
                 "-out", str(root / f"{name}.pem")],
                check=True, capture_output=True,
            )  # fmt: skip
        self.bundle = root / "key.pem"
        self.port = _free_port()
        self.realm = f"http://127.0.0.1:{self.port}/token"
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _der(self, name: str) -> str:
        done = subprocess.run(
            ["openssl", "x509", "-in", str(self.root / f"{name}.pem"), "-outform", "DER"],
            check=True, capture_output=True,
        )  # fmt: skip
        return base64.b64encode(done.stdout).decode()

    def token(self, subject: str, scopes: list[str]) -> str:
        name = "other" if self.sign_with_other_key else "key"
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._der(name)]}
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            repo, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": repo, "actions": actions.split(",")})
        now = int(time.time())
        claims = {
            "iss": ISSUER, "sub": subject, "aud": SERVICE, "exp": now + 300, "nbf": now - 30,
            "iat": now, "jti": secrets.token_hex(8), "access": access,
        }  # fmt: skip
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        )
        done = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.root / f"{name}.key")],
            input=signing_input.encode(), check=True, capture_output=True,
        )  # fmt: skip
        return f"{signing_input}.{_b64url(done.stdout)}"

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                server.requests.append(self.path)
                query = parse_qs(urlsplit(self.path).query)
                expected = base64.b64encode(f"{server.user}:{server.password}".encode()).decode()
                if self.headers.get("Authorization") != f"Basic {expected}":
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.dumps({"token": server.token(server.user, query.get("scope", []))})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

        return Handler


class Registry:
    """`docker-registry serve` on 127.0.0.1 with its own storage; `auth`: None, "htpasswd"
    (Basic) or "token" (bearer tokens from a TokenServer); `tls`: https with that CA's cert."""

    def __init__(
        self, root: Path, auth: Optional[str] = None, tls: Optional[TestCA] = None
    ) -> None:
        self.root = root
        self.tls = tls
        root.mkdir(parents=True, exist_ok=True)
        self.user, self.password = "fleet", "s3cret-" + secrets.token_hex(6)
        self.port = _free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.tokens: Optional[TokenServer] = None
        config = {
            "version": 0.1,
            "log": {"level": "error", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(root / "storage")}},
            "http": {"addr": self.host},
        }
        if tls is not None:
            config["http"] = {
                "addr": self.host,
                "tls": {"certificate": str(tls.server_cert), "key": str(tls.server_key)},
            }
        if auth == "htpasswd":
            (root / "htpasswd").write_text(f"{self.user}:{_bcrypt(self.password)}\n")
            config["auth"] = {"htpasswd": {"realm": "agentd", "path": str(root / "htpasswd")}}
        elif auth == "token":
            self.tokens = TokenServer(root, self.user, self.password)
            config["auth"] = {
                "token": {
                    "realm": self.tokens.realm, "service": SERVICE, "issuer": ISSUER,
                    "rootcertbundle": str(self.tokens.bundle),
                }
            }  # fmt: skip
        (root / "config.yml").write_text(json.dumps(config))  # JSON is YAML
        self._log = open(root / "registry.log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [str(docker_registry()), "serve", str(root / "config.yml")],
            stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        _wait_port(self.port, self.proc)

    def __enter__(self) -> Registry:
        return self

    def __exit__(
        self,
        kind: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.stop()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
        if self.tokens is not None:
            self.tokens.stop()

    def push(self, ref: str, file: Path, *, media_type: str = "application/wasm") -> str:
        """`oras push` of one file as the layer of REPO:TAG; the manifest's digest."""
        env = {
            **os.environ,
            "HOME": str(self.root / "home"),
            "DOCKER_CONFIG": str(self.root / "docker"),
        }
        args = [str(oras()), "push", "--format", "go-template={{.digest}}"]
        args += ["--ca-file", str(self.tls.cert)] if self.tls is not None else ["--plain-http"]
        if self.tokens is not None or (self.root / "htpasswd").exists():
            # --password-stdin: the password is never on oras's command line either.
            args += ["--username", self.user, "--password-stdin"]
        args += [f"{self.host}/{ref}", f"{file.name}:{media_type}"]
        done = subprocess.run(
            args, check=False, cwd=file.parent, env=env, input=self.password.encode(),
            capture_output=True, timeout=120,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"oras push failed: {done.stderr.decode(errors='replace')}")
        return done.stdout.decode().strip()

    def blob_path(self, digest: str) -> Path:
        """Where the registry's filesystem driver keeps a blob (to tamper with it or lose it)."""
        hex_ = digest.split(":", 1)[1]
        return (
            self.root / "storage" / "docker" / "registry" / "v2" / "blobs" / "sha256"
            / hex_[:2] / hex_ / "data"
        )  # fmt: skip


class Staller:
    """Stands in for a registry that accepts connections and then never answers."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.host = f"127.0.0.1:{self._sock.getsockname()[1]}"
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self._sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (socket.timeout, OSError):
                continue
            self._held.append(conn)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        for conn in self._held:
            conn.close()
        self._sock.close()
