"""A fleet's side of a pull, made with the real tools: signing keys, a git server, a test CA."""

from __future__ import annotations

import http.server
import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Optional, Union

from tests.support.standins import write_yaml

SETTINGS_FILE = "/etc/wasm-edge/agentd.yaml"
# The tools must not read the machine's own git settings or keys.
_GIT_ENV = {
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_AUTHOR_NAME": "Fleet Operator",
    "GIT_AUTHOR_EMAIL": "ops@example.org",
    "GIT_COMMITTER_NAME": "Fleet Operator",
    "GIT_COMMITTER_EMAIL": "ops@example.org",
}


def run(argv: list[str], *, env: Optional[Mapping[str, str]] = None) -> str:
    """Run a tool, fail loudly with its stderr, return its stdout."""
    proc = subprocess.run(
        argv,
        env={**os.environ, **_GIT_ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {argv}\n{proc.stderr}")
    return proc.stdout


# --- signing keys ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SshKey:
    """An ed25519 key made by ssh-keygen, as a fleet operator signs commits and documents."""

    principal: str
    private: Path

    @property
    def public(self) -> str:
        """`<keytype> <base64>` from the .pub file, without its comment."""
        return " ".join(Path(f"{self.private}.pub").read_text().split()[:2])

    def allowed_signers_line(self, namespaces: Optional[str] = "git,agentd") -> str:
        """`<principal> [namespaces="..."] <keytype> <base64>` (ssh-keygen(1) ALLOWED SIGNERS)."""
        options = f' namespaces="{namespaces}"' if namespaces else ""
        return f"{self.principal}{options} {self.public}\n"

    def sign(self, file: Path, namespace: str = "agentd") -> Path:
        """`ssh-keygen -Y sign`: writes and returns `<file>.sig`."""
        sig = Path(f"{file}.sig")
        sig.unlink(missing_ok=True)
        run(["ssh-keygen", "-q", "-Y", "sign", "-f", str(self.private), "-n", namespace, str(file)])
        return sig


def ssh_key(directory: Path, principal: str) -> SshKey:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / principal.partition("@")[0]
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", principal, "-f", str(path)])
    return SshKey(principal, path)


@dataclass(frozen=True)
class GpgKey:
    """A gpg signing key in a GNUPGHOME of its own (never the user's keys)."""

    home: Path
    fingerprint: str

    @property
    def env(self) -> dict[str, str]:
        return {"GNUPGHOME": str(self.home)}

    def export(self, path: Path, *, armor: bool = False) -> Path:
        """The public key, as a node's keyring file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        flags = ["--armor"] if armor else []
        run(
            ["gpg", "--batch", *flags, "--output", str(path), "--export", self.fingerprint],
            env=self.env,
        )
        return path

    def sign(self, file: Path, *, armor: bool = False) -> Path:
        """A detached signature of `file`: writes and returns `<file>.sig`."""
        sig = Path(f"{file}.sig")
        flags = ["--armor"] if armor else []
        run(
            [
                *("gpg", "--batch", "--yes", "--local-user", self.fingerprint, *flags),
                *("--output", str(sig), "--detach-sign", str(file)),
            ],
            env=self.env,
        )
        return sig

    def stop_agent(self) -> None:
        """gpg started an agent for this home to sign: end it with the home."""
        subprocess.run(
            ["gpgconf", "--homedir", str(self.home), "--kill", "gpg-agent"],
            capture_output=True,
            timeout=30,
            check=False,
        )


def gpg_key(home: Path, uid: str) -> GpgKey:
    home.mkdir(mode=0o700, parents=True)
    env = {"GNUPGHOME": str(home)}
    run(
        ["gpg", "--batch", "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never"],
        env=env,
    )
    listed = run(["gpg", "--batch", "--with-colons", "--list-secret-keys"], env=env)
    fingerprint = next(
        line.split(":")[9] for line in listed.splitlines() if line.startswith("fpr:")
    )
    return GpgKey(home, fingerprint)


# --- the fleet's git repository ----------------------------------------------------------------


class FleetRepo:
    """A work tree whose commits are pushed to a bare repository, as a fleet's CI would."""

    def __init__(self, directory: Path, path: str = "desired.yaml", branch: str = "main") -> None:
        self.served = directory / "srv"  # what `git daemon` serves (its --base-path)
        self.bare = self.served / "fleet.git"
        self.work = directory / "work"
        self.path = path
        self.branch = branch
        run(["git", "init", "--quiet", "--bare", f"--initial-branch={branch}", str(self.bare)])
        run(["git", "init", "--quiet", f"--initial-branch={branch}", str(self.work)])

    def git(self, *args: str, env: Optional[Mapping[str, str]] = None) -> str:
        return run(["git", "-C", str(self.work), *args], env=env)

    def commit(
        self,
        content: Union[Mapping[str, Any], str],
        *,
        ssh: Optional[SshKey] = None,
        gpg: Optional[GpgKey] = None,
    ) -> str:
        """Commit `content` (a document, or raw text) at `path`, signed as asked; push it."""
        target = self.work / self.path
        if isinstance(content, str):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
        else:
            write_yaml(target, content)
        self.git("add", "--", self.path)
        signing: list[str] = []
        env: dict[str, str] = {}
        if ssh is not None:
            signing = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={ssh.private}"]
        elif gpg is not None:
            signing = ["-c", "gpg.program=gpg", "-c", f"user.signingkey={gpg.fingerprint}"]
            env = gpg.env
        sign = ["-S"] if signing else ["--no-gpg-sign"]
        run(
            [
                *("git", "-C", str(self.work), *signing, "commit", "--quiet", "--allow-empty"),
                *(*sign, "-m", f"fleet document ({len(self.log()) + 1})"),
            ],
            env=env,
        )
        self.git("push", "--quiet", str(self.bare), f"HEAD:refs/heads/{self.branch}")
        return self.head()

    def log(self) -> list[str]:
        try:
            return self.git("rev-list", "HEAD").split()
        except RuntimeError:
            return []  # no commit yet

    def head(self) -> str:
        return self.git("rev-parse", "HEAD").strip()

    def force_push(self, commit: str) -> None:
        """Rewind the served branch to `commit` (a rolled-back or replayed history)."""
        self.git("push", "--quiet", "--force", str(self.bare), f"{commit}:refs/heads/{self.branch}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, proc: subprocess.Popen[bytes], deadline_s: float = 10.0) -> bool:
    """Poll until 127.0.0.1:`port` accepts a connection; False if `proc` exits first."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.02)  # polling for a listener, not synchronising on time
    raise TimeoutError(f"git daemon did not listen on 127.0.0.1:{port} in {deadline_s}s")


class GitDaemon:
    """A real `git daemon` on 127.0.0.1 serving a repository directory over git://."""

    def __init__(self, base_path: Path) -> None:
        self.base_path = base_path
        self.port = 0
        self.proc: Optional[subprocess.Popen[bytes]] = None

    @property
    def url(self) -> str:
        return f"git://127.0.0.1:{self.port}/fleet.git"

    def start(self) -> GitDaemon:
        for _ in range(5):  # another process may take the free port before the daemon does
            self.port = free_port()
            argv = ["git", "daemon", "--reuseaddr", "--export-all"]
            argv += [f"--base-path={self.base_path}", "--listen=127.0.0.1", f"--port={self.port}"]
            self.proc = subprocess.Popen(
                [*argv, str(self.base_path)],
                env={**os.environ, **_GIT_ENV},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if wait_for_port(self.port, self.proc):
                return self
        raise RuntimeError("git daemon could not listen on a free port")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)

    def __enter__(self) -> GitDaemon:
        return self.start()

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.stop()


# --- TLS -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TestCA:
    """A certificate authority made by openssl, and a certificate it issued for 127.0.0.1."""

    __test__ = False  # not a pytest class

    cert: Path
    server_cert: Path
    server_key: Path

    def server_context(self) -> ssl.SSLContext:
        """For `MirrorServer(..., tls=...)`."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.server_cert, self.server_key)
        return context


def make_ca(directory: Path) -> TestCA:
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = directory / "ca.key", directory / "ca.pem"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run(
        [
            *("openssl", "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca_cert)),
            *("-days", "2", "-subj", "/CN=agentd test CA"),
            *("-addext", "basicConstraints=critical,CA:TRUE"),
            *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
        ]
    )
    run(
        [
            *("openssl", "req", "-new", *ec, "-keyout", str(key), "-out", str(csr)),
            *("-subj", "/CN=127.0.0.1"),
        ]
    )
    extensions = directory / "server.ext"
    extensions.write_text(
        "subjectAltName = IP:127.0.0.1\n"
        "basicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature\n"
        "extendedKeyUsage = serverAuth\n"
        "subjectKeyIdentifier = hash\n"
        "authorityKeyIdentifier = keyid, issuer\n"
    )
    run(
        [
            *("openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_cert)),
            *("-CAkey", str(ca_key), "-CAcreateserial", "-days", "2", "-out", str(cert)),
            *("-extfile", str(extensions)),
        ]
    )
    return TestCA(ca_cert, cert, key)


@dataclass
class Seen:
    """One request as a `RecordingServer` received it."""

    path: str
    headers: dict[str, str]


@dataclass
class RecordingServer:
    """A real HTTPS server on 127.0.0.1 that records every request's headers (which
    `MirrorServer` does not): `bodies` answers a path, `redirects` sends it elsewhere."""

    tls: ssl.SSLContext
    bodies: dict[str, bytes] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                recorder.seen.append(Seen(self.path, dict(self.headers.items())))
                if self.path in recorder.redirects:
                    self.send_response(302)
                    self.send_header("Location", recorder.redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = recorder.bodies.get(self.path)
                self.send_response(404 if body is None else 200)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> RecordingServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self._server.shutdown()
        self._thread.join()
        self._server.server_close()


# --- the node's files --------------------------------------------------------------------------


def node_file(root: Path, node_path: str, content: Union[str, bytes, Path]) -> Path:
    """Put `content` at `node_path` under the sandbox root (settings paths are node paths)."""
    target = root / node_path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, Path):
        content = content.read_bytes()
    if isinstance(content, str):
        content = content.encode()
    target.write_bytes(content)
    return target


def write_settings(root: Path, settings: Mapping[str, Any]) -> Path:
    """The node's /etc/wasm-edge/agentd.yaml."""
    return write_yaml(
        root / SETTINGS_FILE.lstrip("/"),
        {"apiVersion": "agentd/v1", "kind": "AgentSettings", **settings},
    )
