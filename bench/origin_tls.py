"""What one origin's CPU costs per unchanged poll: nginx over HTTP and TLS, and the registry."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPConnection, HTTPSConnection
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agentd.converge.oci import Registries, resolve  # noqa: E402
from agentd.core.paths import Paths  # noqa: E402
from agentd.sources.document import SourceConfig  # noqa: E402
from agentd.sources.pull import pull  # noqa: E402
from tests.support.fleet import TestCA, make_ca  # noqa: E402
from tests.support.registry import Registry  # noqa: E402
from tests.support.standins import write_yaml  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
INTERVAL = 300.0  # agentd.yaml's default `interval` (settings/model.py)
NGINX_CONF = """daemon off;
user root;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    log_format tls '$status $ssl_protocol $ssl_session_reused $connection_requests "$request"';
    access_log {work}/access.log tls;
    client_body_temp_path {work}/tmp;
    proxy_temp_path {work}/tmp;
    fastcgi_temp_path {work}/tmp;
    uwsgi_temp_path {work}/tmp;
    scgi_temp_path {work}/tmp;
    types {{ application/yaml yaml; }}
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        listen 127.0.0.1:{tls_port} ssl;
        root {work}/www;
        etag on;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        ssl_session_tickets on;
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                sys.exit(f"origin-tls: nothing listens on 127.0.0.1:{port}")
            time.sleep(0.05)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its live children (nginx's workers; Go's threads are
    counted in their process)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return own + sum(cpu_seconds(int(c)) for c in children)


class Nginx:
    """Debian's nginx on 127.0.0.1: one server on a plain and on a TLS port."""

    def __init__(self, work: Path, ca: TestCA) -> None:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(binary).exists():
            sys.exit("origin-tls: needs nginx (Debian: apt-get install nginx)")
        self.work = work
        self.port, self.tls_port = free_port(), free_port()
        (work / "tmp").mkdir(parents=True, exist_ok=True)
        conf = work / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                work=work,
                port=self.port,
                tls_port=self.tls_port,
                cert=ca.server_cert,
                key=ca.server_key,
            )
        )
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf), "-p", str(work)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)
        wait_port(self.tls_port)
        self.log_offset = 0

    def new_log_lines(self) -> list[list[str]]:
        """The access log's lines since the last call, split (status, protocol, reused, n)."""
        with open(self.work / "access.log", "rb") as f:
            f.seek(self.log_offset)
            data = f.read()
        self.log_offset += len(data)
        return [line.split() for line in data.decode().splitlines()]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@dataclass
class Row:
    name: str
    how: str
    polls: int
    server_us: float
    client_us: float
    note: str = ""

    @property
    def nodes_per_core(self) -> float:
        return INTERVAL / (self.server_us / 1e6) if self.server_us else float("inf")


def measure(name: str, how: str, pid: int, polls: int, poll: Callable[[], object]) -> Row:
    poll()  # warm: a context made, a session or connection opened
    server0, client0 = cpu_seconds(pid), time.process_time()
    for _ in range(polls):
        poll()
    client = time.process_time() - client0
    server = cpu_seconds(pid) - server0
    return Row(name, how, polls, server / polls * 1e6, client / polls * 1e6)


class ResumingConnection(HTTPSConnection):
    """A new TCP connection per request whose TLS handshake offers the last session (a TLS 1.3
    ticket): what a client that keeps `SSLSocket.session` between polls would do."""

    session: Optional[ssl.SSLSession] = None

    def connect(self) -> None:
        HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(  # type: ignore[attr-defined]
            self.sock, server_hostname=self.host, session=ResumingConnection.session
        )


def conditional_get(conn: HTTPConnection, etag: str) -> None:
    """The request agentd's https source makes for an unchanged document, answered 304."""
    conn.request(
        "GET",
        "/desired.yaml",
        headers={
            "If-None-Match": etag,
            "User-Agent": "agentd",
            "Accept-Encoding": "identity",
        },
    )
    resp = conn.getresponse()
    resp.read()
    if resp.status != 304:
        raise SystemExit(f"origin-tls: expected 304, got {resp.status}")


def nginx_rows(work: Path, ca: TestCA, polls: int) -> tuple[list[Row], int]:
    root = work / "node"
    nginx = Nginx(work / "nginx", ca)
    doc = {"apiVersion": "agentd/v1", "kind": "NodeState", "generation": 1}
    write_yaml(work / "nginx/www/desired.yaml", doc)
    rows: list[Row] = []
    try:
        plain = SourceConfig("https", f"http://127.0.0.1:{nginx.port}/desired.yaml")
        tls = SourceConfig(
            "https", f"https://127.0.0.1:{nginx.tls_port}/desired.yaml", ca_file="/etc/ca.pem"
        )
        for config, name in ((plain, "nginx, plain HTTP"), (tls, "nginx, TLS 1.3, full handshake")):
            paths = Paths(root / name.replace(" ", "").replace(",", "-"))
            (paths.root / "etc").mkdir(parents=True)
            shutil.copy(ca.cert, paths.root / "etc/ca.pem")
            pull(config, paths)  # the first fetch: a 200; every later one is a 304

            def agentd_poll(config: SourceConfig = config, paths: Paths = paths) -> None:
                result = pull(config, paths)
                if result.outcome != "unchanged":
                    raise SystemExit(f"origin-tls: not a 304: {result.outcome} {result.detail}")

            nginx.new_log_lines()
            # The cheap rows run longer: /proc counts CPU in clock ticks (10 ms).
            count = polls if config is tls else 3 * polls
            rows.append(measure(name, "agentd's pull()", nginx.proc.pid, count, agentd_poll))
            lines = nginx.new_log_lines()
            reused = sum(1 for line in lines if line[2] == "r")
            if config is tls:
                rows[-1].note = f"{lines[-1][1]}, {reused} of {len(lines)} handshakes resumed"
        etag = json.loads(
            (Paths(root / "nginx-TLS1.3-fullhandshake").source_dir / "seen.json").read_text()
        )["etag"]
        context = ssl.create_default_context(cafile=str(ca.cert))
        bare = measure(
            "nginx, plain HTTP, bare client",
            "http.client, new connection (as bench/fleet_sim.py)",
            nginx.proc.pid,
            3 * polls,
            lambda: conditional_get(HTTPConnection("127.0.0.1", nginx.port, timeout=5), etag),
        )
        rows.insert(1, bare)
        tls12 = ssl.create_default_context(cafile=str(ca.cert))
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        for version, ctx in (("TLS 1.3", context), ("TLS 1.2", tls12)):
            ResumingConnection.session = None

            def resumed_poll(ctx: ssl.SSLContext = ctx) -> None:
                conn = ResumingConnection("127.0.0.1", nginx.tls_port, context=ctx, timeout=5)
                conditional_get(conn, etag)
                ResumingConnection.session = conn.sock.session
                conn.close()

            nginx.new_log_lines()
            rows.append(
                measure(
                    f"nginx, {version}, session resumed",
                    "http.client, new connection, SSLSocket.session",
                    nginx.proc.pid,
                    polls,
                    resumed_poll,
                )
            )
            lines = nginx.new_log_lines()
            reused = sum(1 for line in lines if line[2] == "r")
            rows[-1].note = f"{lines[-1][1]}, {reused} of {len(lines)} handshakes resumed"
        kept = HTTPSConnection("127.0.0.1", nginx.tls_port, context=context, timeout=5)
        rows.append(
            measure(
                "nginx, TLS 1.3, keep-alive",
                "http.client, one connection",
                nginx.proc.pid,
                5 * polls,
                lambda: conditional_get(kept, etag),
            )
        )
        kept.close()
        lines = nginx.new_log_lines()
        rows[-1].note = f"{max(int(line[3]) for line in lines)} requests on one connection"
    finally:
        nginx.stop()
    return rows, polls


def push(registry: Registry, verify: Any, repo: str, data: bytes) -> str:
    """One file as the single layer of an OCI artifact manifest, as `oras push` lays it out:
    blobs by monolithic upload, then the manifest under the tag."""
    import requests  # noqa: PLC0415

    scheme = "https" if registry.tls is not None else "http"
    base = f"{scheme}://{registry.host}/v2/{repo}"
    config = b"{}"
    for blob in (config, data):
        start = requests.post(f"{base}/blobs/uploads/", verify=verify, timeout=10)
        start.raise_for_status()
        location = start.headers["Location"]
        if location.startswith("/"):
            location = f"{scheme}://{registry.host}{location}"
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        done = requests.put(
            location, params={"digest": digest}, data=blob, verify=verify, timeout=10
        )
        done.raise_for_status()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/wasm",
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
            "size": len(config),
        },
        "layers": [
            {
                "mediaType": "application/wasm",
                "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
                "size": len(data),
                "annotations": {"org.opencontainers.image.title": "module.wasm"},
            }
        ],
    }
    put = requests.put(
        f"{base}/manifests/v1",
        data=json.dumps(manifest).encode(),
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        verify=verify,
        timeout=10,
    )
    put.raise_for_status()
    return hashlib.sha256(data).hexdigest()


def registry_rows(work: Path, ca: TestCA, polls: int) -> list[Row]:
    """The registry over plain HTTP, then over TLS."""
    return [
        *_registry(work / "registry", None, ca, polls),
        *_registry(work / "registry-tls", ca, ca, polls),
    ]


def _registry(where: Path, tls: Optional[TestCA], ca: TestCA, polls: int) -> list[Row]:
    import requests  # noqa: PLC0415

    data = os.urandom(64 << 10)
    with Registry(where, tls=tls) as registry:
        verify: Any = str(ca.cert) if tls else True
        sha256 = push(registry, verify, "fleet/module", data)
        scheme = "https" if tls else "http"
        settings: dict[str, Any] = {
            "mirrors": {registry.host: {"endpoint": [f"{scheme}://{registry.host}"]}},
            "configs": {registry.host: {"tls": {"ca_file": str(ca.cert)}}} if tls else {},
        }
        registries = Registries(settings)
        url = f"oci://{registry.host}/fleet/module:v1"
        kind = "TLS" if tls else "plain HTTP"

        def download() -> None:
            blob = resolve(registries, url, sha256, 10)
            with requests.get(blob.url, verify=blob.endpoint.verify, timeout=10) as got:
                if hashlib.sha256(got.content).hexdigest() != sha256:
                    raise SystemExit("origin-tls: the blob does not verify")

        return [
            measure(
                f"registry, {kind}, manifest",
                "agentd's oci.resolve() (GET manifest)",
                registry.proc.pid,
                polls,
                lambda: resolve(registries, url, sha256, 10),
            ),
            measure(
                f"registry, {kind}, manifest + 64 KiB blob",
                "oci.resolve() + GET blob (requests)",
                registry.proc.pid,
                max(1, polls // 4),
                download,
            ),
        ]


HEADER = (
    "| origin | client | polls | server µs/poll | server CPU s / 1,000 polls "
    f"| nodes per core at {INTERVAL:g} s | client µs/poll | note |"
)


def render(rows: list[Row], command: str) -> str:
    machine = (
        f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, OpenSSL {ssl.OPENSSL_VERSION.split()[1]})"
    )
    table = "\n".join(
        f"| {r.name} | {r.how} | {r.polls} | {r.server_us:.0f} | {r.server_us / 1000:.3f} | "
        f"{r.nodes_per_core:,.0f} | {r.client_us:.0f} | {r.note} |"
        for r in rows
    )
    return f"""# One origin over TLS: server CPU per poll

Measured by `make origin-tls` (`{command}`) on {time.strftime("%Y-%m-%d")}, {machine}.

Server CPU is utime + stime of the server's processes from /proc/PID/stat (nginx's master and
worker; the registry's one Go process) over the burst, divided by the polls: CPU time, not
wall-clock throughput (other work shared the machine's cores). Client CPU is this process's.
Certificates: an openssl test CA, ECDSA P-256 (tests/support/fleet.py `make_ca`). Nodes per
core: polls one core answers in agentd's default `interval` of {INTERVAL:g} s.

{HEADER}
| --- | --- | --- | --- | --- | --- | --- | --- |
{table}

- agentd's https source is urllib: a new connection per poll and no session kept between
  them (urllib cannot pass `SSLSocket.session`), so every TLS poll is a full handshake: the
  "full handshake" row is what a fleet costs today. "Session resumed" and "keep-alive" are
  what a client that kept the session or the connection would cost (their client is a loop
  making agentd's request: the same conditional GET, answered 304).
- agentd's plain poll costs nginx more than the bare http.client one. Not for urllib's
  `Connection: close` (the bare client sending it cost the same in a trial); likely because
  agentd's slower poll lets nginx's worker sleep between requests, so each pays a wake-up, as
  a fleet's spread-out polls do: agentd's rows are the ones to plan with.
- A resumed TLS 1.3 session still makes an ECDHE key exchange (OpenSSL's psk_dhe_ke): it saves
  only the certificate's signature. A resumed TLS 1.2 session skips the key exchange too.
- The machine was shared (a CI run beside it): CPU time is steadier than throughput, but the
  figures moved by up to a third between runs.
- agentd asks a registry nothing while an artifact is unchanged: an `oci://` artifact is
  resolved (GET manifest, then the blob) only when its sha256 is not in the download cache.
  The registry rows are the cost of that manifest request (and of a whole small download) per
  node, through agentd's own `oci.resolve()` (requests: a new connection each).
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--polls", type=int, default=2000)
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "origin_tls.json")
    parser.add_argument("--write", type=Path, default=REPO / "bench" / "ORIGIN_TLS.md")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="origin-tls-"))
    try:
        ca = make_ca(work / "ca")
        rows, _ = nginx_rows(work, ca, args.polls)
        rows += registry_rows(work, ca, max(1, args.polls // 4))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    command = f"python3 bench/origin_tls.py -n {args.polls}"
    args.json.write_text(
        json.dumps(
            {
                "command": command,
                "interval": INTERVAL,
                "rows": [{**r.__dict__, "nodes_per_core": r.nodes_per_core} for r in rows],
            },
            indent=2,
        )
        + "\n"
    )
    report = render(rows, command)
    args.write.write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
