"""A fleet on one machine: N real `agentd run` daemons pulling one document from nginx."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import site
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agentd.core.paths import Paths  # noqa: E402
from agentd.desired.targeting import wave_position  # noqa: E402
from agentd.sources.document import SourceConfig  # noqa: E402
from agentd.sources.pull import pull  # noqa: E402
from tests.support.fleet import FleetRepo, GitDaemon  # noqa: E402
from tests.support.standins import build_mirror, desired_document, node_arch, write_yaml  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
NGINX_CONF = """daemon off;
user root;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    log_format fleet '$msec $status $body_bytes_sent $bytes_sent "$request"';
    access_log {work}/access.log fleet;
    client_body_temp_path {work}/tmp;
    proxy_temp_path {work}/tmp;
    fastcgi_temp_path {work}/tmp;
    uwsgi_temp_path {work}/tmp;
    scgi_temp_path {work}/tmp;
    types {{ application/yaml yaml; application/octet-stream gz; }}
    server {{
        listen 127.0.0.1:{port};
        root {work}/www;
        etag on;
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Nginx:
    """Debian's nginx, started here on 127.0.0.1 (ETag on, its default), stopped at the end."""

    def __init__(self, work: Path) -> None:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(binary).exists():
            sys.exit("fleet-sim: needs nginx (Debian: apt-get install nginx-light)")
        self.work = work
        self.port = free_port()
        (work / "tmp").mkdir(parents=True, exist_ok=True)
        conf = work / "nginx.conf"
        conf.write_text(NGINX_CONF.format(work=work, port=self.port))
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf), "-p", str(work)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    sys.exit(f"fleet-sim: nginx did not start: {(work / 'nginx-error.log')}")
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        """CPU of the master and its workers (children of the master)."""
        total = 0.0
        for pid in [self.proc.pid, *_children(self.proc.pid)]:
            total += _cpu(pid)
        return total

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass
class AccessLog:
    path: Path
    offset: int = 0
    lines: list[tuple[float, int, int, str]] = field(default_factory=list)

    def read_new(self) -> list[tuple[float, int, int, str]]:
        """(time, status, bytes sent in all, request path) of the lines since the last read."""
        try:
            with self.path.open() as f:
                f.seek(self.offset)
                text = f.read()
                self.offset = f.tell()
        except OSError:
            return []
        out = []
        for line in text.splitlines():
            parts = line.split(" ", 4)
            if len(parts) < 5:
                continue
            request = parts[4].strip('"').split(" ")
            out.append((float(parts[0]), int(parts[1]), int(parts[3]), request[1]))
        return out


@dataclass
class SimNode:
    index: int
    root: Path
    node_id: str
    canary: bool
    proc: subprocess.Popen[bytes] | None = None

    def applied(self) -> int | None:
        try:
            state = json.loads((self.root / "var/lib/wasm-edge/state.json").read_text())
        except (OSError, ValueError):
            return None
        gen = state.get("lastAppliedGeneration")
        return gen if isinstance(gen, int) else None

    def crun(self) -> str | None:
        try:
            state = json.loads((self.root / "var/lib/wasm-edge/state.json").read_text())
        except (OSError, ValueError):
            return None
        return (state.get("inventory", {}).get("crun") or {}).get("version")


def clean_python() -> tuple[list[str], dict[str, str]]:
    """The interpreter without this machine's site hooks (see bench/daemon_idle.py), when a
    .pth file preloads modules here; the packages stay importable through PYTHONPATH."""
    code = "print(open('/proc/self/status').read().split('VmRSS:')[1].split()[0])"

    def rss(*flags: str) -> int:
        out = subprocess.run(
            [sys.executable, *flags, "-c", code], capture_output=True, text=True, check=True
        )
        return int(out.stdout)

    if rss() - rss("-S") < 2048:
        return [], {}
    return ["-S"], {"PYTHONPATH": os.pathsep.join([str(REPO), *site.getsitepackages()])}


def fleet_document(
    base: str, mirror: Any, arch: str, generation: int, percent: float
) -> dict[str, Any]:
    """crun and k3s for everyone; generation 2 rolls crun 1.15 out to `percent` (and canaries)."""
    doc = desired_document(
        base, mirror, generation=generation, crun="1.14", wasmedge=None, arches=(arch,)
    )
    if percent > 0:
        newer = desired_document(base, mirror, crun="1.15", wasmedge=None, arches=(arch,))
        doc["overrides"] = [
            {
                "name": "crun-1.15",
                "rollout": {"percent": percent, "key": "crun-1.15", "canary": {"ring": "canary"}},
                "components": {"crun": newer["components"]["crun"]},
            }
        ]
    return doc


@dataclass
class Costs:
    requests: int
    nginx_us: float
    http_client_us: float
    git_polls: int
    git_client_us: float
    git_server_us: float


def _cpu_tree(pid: int) -> float:
    """CPU of a process, its reaped children (fields 14-17 of /proc/PID/stat) and its live
    descendants: `git daemon` is a wrapper whose child daemon forks upload-pack per fetch."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    own = sum(int(f) for f in fields[11:15]) / CLOCK_TICKS
    return own + sum(_cpu_tree(child) for child in _children(pid))


def origin_costs(work: Path, requests: int = 3000, git_polls: int = 40) -> Costs:
    """Per-poll CPU: nginx answering unchanged conditional GETs (a connection each), agentd's own
    pull of an unchanged document over HTTP, and over git from a real `git daemon`."""
    nginx = Nginx(work / "costs")
    (work / "costs/www").mkdir(parents=True, exist_ok=True)
    doc = {"apiVersion": "agentd/v1", "kind": "NodeState", "generation": 1}
    write_yaml(work / "costs/www/desired.yaml", doc)
    try:
        over_http = SourceConfig("https", f"{nginx.url}/desired.yaml")
        paths = Paths(work / "costs/node-http")
        pull(over_http, paths)  # the first fetch: a 200
        conn_etag = json.loads((paths.source_dir / "seen.json").read_text())["etag"]
        cpu0 = nginx.cpu_seconds()
        for _ in range(requests):
            c = HTTPConnection("127.0.0.1", nginx.port, timeout=5)
            c.request("GET", "/desired.yaml", headers={"If-None-Match": conn_etag})
            c.getresponse().read()
            c.close()
        nginx_us = (nginx.cpu_seconds() - cpu0) / requests * 1e6
        t0 = time.process_time()
        polls = 300
        for _ in range(polls):
            assert pull(over_http, paths).outcome == "unchanged"
        http_client_us = (time.process_time() - t0) / polls * 1e6
    finally:
        nginx.stop()
    repo = FleetRepo(work / "costs/git")
    repo.commit(doc)
    with GitDaemon(repo.served) as daemon:
        assert daemon.proc is not None
        git = SourceConfig("git", daemon.url, ref="main")
        gpaths = Paths(work / "costs/node-git")
        pull(git, gpaths)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        server0, t0 = _cpu_tree(daemon.proc.pid), time.process_time()
        for _ in range(git_polls):
            assert pull(git, gpaths).outcome == "unchanged"
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        client = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        client += time.process_time() - t0
        server = _cpu_tree(daemon.proc.pid) - server0
    return Costs(
        requests,
        nginx_us,
        http_client_us,
        git_polls,
        client / git_polls * 1e6,
        server / git_polls * 1e6,
    )


def tls_figures(results: Path = REPO / "bench" / "origin_tls.json") -> str:
    """The report's lines on TLS and the registry, from `make origin-tls`'s measured figures."""
    try:
        rows = {r["name"]: r for r in json.loads(results.read_text())["rows"]}
        full, resumed, kept = (
            rows[f"nginx, TLS 1.3, {k}"]
            for k in ("full handshake", "session resumed", "keep-alive")
        )
        registry, plain = rows["registry, TLS, manifest"], rows["nginx, plain HTTP"]
    except (OSError, ValueError, KeyError):
        return "- Over TLS: not measured (`make origin-tls` writes bench/origin_tls.json)."

    def cost(row: dict[str, Any]) -> str:
        return f"{row['server_us']:.0f} µs ({row['nodes_per_core']:,.0f} nodes per core)"

    return f"""- **Over TLS**, measured by `make origin-tls` (bench/ORIGIN_TLS.md: server CPU time
  per unchanged poll; nodes per core at a 5-minute interval): agentd's https source (urllib)
  opens a new connection with a full TLS 1.3 handshake on every poll, keeping no session:
  {cost(full)}, against {cost(plain)} for its plain HTTP poll in the same run. A client
  that resumed its session would cost {cost(resumed)}; one that kept its connection
  {cost(kept)}.
- **A registry** (Debian's docker-registry over TLS) answers the manifest request agentd makes
  for an `oci://` artifact in {cost(registry)}; agentd makes it only when the
  artifact's sha256 is not in its download cache, never on an unchanged poll."""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--nodes", type=int, default=50)
    parser.add_argument(
        "--interval", type=float, default=30.0, help="each node's pull interval (s)"
    )
    parser.add_argument("--splay", type=float, default=10.0)
    parser.add_argument("--idle", type=float, default=120.0, help="seconds of the unchanged phase")
    parser.add_argument("--percent", type=float, default=30.0, help="the rollout wave")
    parser.add_argument("--canaries", type=float, default=5.0, help="percent of nodes ring=canary")
    parser.add_argument("--write", type=Path, default=REPO / "bench" / "FLEET.md")
    args = parser.parse_args()
    arch = node_arch()
    flags, extra_env = clean_python()
    work = Path(tempfile.mkdtemp(prefix="fleet-sim-"))
    www = work / "www"
    nodes: list[SimNode] = []
    nginx = None
    try:
        mirror = build_mirror(www / "mirror", crun_versions=("1.14", "1.15"), arches=(arch,))
        nginx = Nginx(work)
        base = f"{nginx.url}/mirror"
        (www / "fleet").mkdir(parents=True)
        write_yaml(www / "fleet/desired.yaml", fleet_document(base, mirror, arch, 1, 0))
        log = AccessLog(work / "access.log")
        canary_every = max(1, round(100 / args.canaries)) if args.canaries else 0
        for i in range(args.nodes):
            root = work / "nodes" / f"n{i:04d}"
            node_id = f"{i:08x}" + b"fleet-sim".hex()
            canary = bool(canary_every) and i % canary_every == 0
            etc = root / "etc/wasm-edge"
            etc.mkdir(parents=True)
            (root / "etc/machine-id").write_text(node_id + "\n")
            write_yaml(
                etc / "agentd.yaml",
                {
                    "source": {
                        "type": "https",
                        "url": f"{nginx.url}/fleet/desired.yaml",
                        "allowInsecure": True,
                    },
                    "interval": f"{args.interval:g}s",
                    "splay": f"{args.splay:g}s",
                    "healthInterval": "1h",
                    "hostname": f"sim-{i:04d}",
                    "labels": {"ring": "canary" if canary else "main"},
                    "metrics": {"enabled": False},
                },
            )
            nodes.append(SimNode(i, root, node_id, canary))
        env = {**os.environ, **extra_env, "AGENTD_ROOT": ""}
        env.pop("NOTIFY_SOCKET", None)
        started = time.monotonic()
        for node in nodes:
            node.proc = subprocess.Popen(
                [
                    sys.executable,
                    *flags,
                    "-m",
                    "agentd",
                    "--root",
                    str(node.root),
                    "--log-format",
                    "json",
                    "run",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=(node.root / "daemon.log").open("wb"),
                start_new_session=True,
            )
        deadline = time.monotonic() + 300
        while any(n.applied() != 1 for n in nodes):
            if time.monotonic() > deadline:
                stuck = [n.index for n in nodes if n.applied() != 1]
                sys.exit(f"fleet-sim: nodes {stuck[:10]} never converged generation 1")
            time.sleep(0.5)
        first_converge = time.monotonic() - started
        # Unchanged: what the origin serves when nothing changes.
        time.sleep(args.interval + args.splay)  # past every node's first pull cycle
        log.read_new()
        t0 = time.monotonic()
        time.sleep(args.idle)
        idle = log.read_new()
        t1 = time.monotonic()
        idle_seconds = t1 - t0
        fleet_requests = [r for r in idle if r[3].startswith("/fleet/")]
        statuses = {
            s: sum(1 for r in fleet_requests if r[1] == s) for s in {r[1] for r in fleet_requests}
        }
        sent = sum(r[2] for r in fleet_requests)
        per_node_hour_requests = len(fleet_requests) / args.nodes * 3600 / idle_seconds
        per_node_hour_bytes = sent / args.nodes * 3600 / idle_seconds
        bytes_per_304 = statistics.median([r[2] for r in fleet_requests if r[1] == 304] or [0])
        # A new generation: crun 1.15 for the wave (and canaries), generation 2 for everyone.
        write_yaml(www / "fleet/desired.yaml", fleet_document(base, mirror, arch, 2, args.percent))
        published = time.monotonic()
        done: dict[int, float] = {}
        deadline = published + 3 * (args.interval + args.splay) + 120
        while len(done) < len(nodes) and time.monotonic() < deadline:
            for node in nodes:
                if node.index not in done and node.applied() == 2:
                    done[node.index] = time.monotonic() - published
            time.sleep(0.2)
        times = sorted(done.values())
        new_crun = [n for n in nodes if n.crun() == "1.15"]
        expected = [
            n
            for n in nodes
            if n.canary or wave_position(n.node_id, "crun-1.15") < args.percent / 100
        ]
        rollout = log.read_new()
        rollout_fleet = [r for r in rollout if r[3].startswith("/fleet/")]
        rss = []
        for node in nodes:
            assert node.proc is not None
            try:
                status = Path(f"/proc/{node.proc.pid}/status").read_text()
                rss.append(int(status.split("VmRSS:")[1].split()[0]) / 1024)
            except OSError:
                pass
    finally:
        for node in nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in nodes:
            if node.proc is not None:
                try:
                    node.proc.wait(20)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
        if nginx is not None:
            nginx.stop()
    n = args.nodes
    costs = origin_costs(work)
    by_hash = sum(1 for x in nodes if (x.crun() == "1.15") == (x in expected))
    done_all = f"{times[-1]:.1f} s" if len(times) == n else f"not all ({len(times)}/{n})"
    answers = ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))
    rows = [
        (f"first convergence of all {n} nodes (start to generation 1)", f"{first_converge:.1f} s"),
        ("new generation: converged on 50% of nodes", f"{percentile(times, 0.5):.1f} s"),
        ("new generation: converged on 95% of nodes", f"{percentile(times, 0.95):.1f} s"),
        ("new generation: converged on 100% of nodes", done_all),
        (
            "unchanged: fleet-document requests per node per hour",
            f"{per_node_hour_requests:.1f} at this {args.interval:g} s + splay",
        ),
        ("unchanged: bytes served per node per hour", f"{per_node_hour_bytes:.0f} B ({answers})"),
        ("bytes of one 304 (status line and headers)", f"{bytes_per_304:.0f} B"),
        (
            "rollout wave: nodes that took the override",
            f"{len(new_crun)}/{n} = {100 * len(new_crun) / n:.0f}% (asked {args.percent:g}% "
            f"plus canaries; by the hash: {len(expected)})",
        ),
        ("nodes whose crun matches their wave membership", f"{by_hash}/{n}"),
        (
            "fleet-document requests during the rollout",
            f"{len(rollout_fleet)} ({sum(1 for r in rollout_fleet if r[1] == 200)} x 200, "
            f"{sum(1 for r in rollout_fleet if r[1] == 304)} x 304)",
        ),
        (
            "daemon RSS, median and max",
            f"{statistics.median(rss) if rss else 0:.1f} MB, {max(rss) if rss else 0:.1f} MB",
        ),
        ("nginx CPU per unchanged poll (new connection each)", f"{costs.nginx_us:.0f} µs"),
        ("agentd CPU per unchanged HTTP poll (client)", f"{costs.http_client_us:.0f} µs"),
        ("agentd CPU per unchanged git poll (client, git fetch)", f"{costs.git_client_us:.0f} µs"),
        ("git daemon CPU per unchanged git poll (server)", f"{costs.git_server_us:.0f} µs"),
    ]
    per_core = 300 / (costs.nginx_us / 1e6) if costs.nginx_us else float("inf")
    per_core_git = 300 / (costs.git_server_us / 1e6) if costs.git_server_us else float("inf")
    machine = (
        f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()})"
    )
    command = (
        f"python3 bench/fleet_sim.py -n {n} --interval {args.interval:g} --splay {args.splay:g} "
        f"--idle {args.idle:g} --percent {args.percent:g} --canaries {args.canaries:g}"
    )
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    canaries = sum(1 for x in nodes if x.canary)
    report = f"""# Fleet simulation

Measured by `make fleet-sim` (`{command}`) on {time.strftime("%Y-%m-%d")},
{machine}.

## Method
- **{n} real `agentd run` daemons**, each on its own sandbox root with its own
  `/etc/machine-id`, pulling one fleet document over HTTP from Debian's nginx on 127.0.0.1 (ETag
  on, its default: an unchanged document is a 304). Each pulls every {args.interval:g} s plus a
  random 0-{args.splay:g} s splay. {canaries} nodes carry the label `ring=canary`.
- Generation 1 (crun 1.14, k3s) converges every node. Then nothing changes for {args.idle:g} s:
  the origin's requests and bytes are counted from nginx's access log.
- Generation 2 is published: the same document with an override rolling crun 1.15 out to
  {args.percent:g}% of the nodes (`rollout: {{percent: {args.percent:g}, key: crun-1.15,
  canary: {{ring: canary}}}}`). The time from the publication until each node records
  generation 2 is measured, and each node's crun is compared with its place in the wave.
- The per-poll CPU costs come from bursts after the fleet has stopped: {costs.requests} unchanged
  polls against nginx (a new connection each, as agentd's pull opens one per poll), and
  {costs.git_polls} unchanged `git fetch` polls through agentd's own pull code against a real
  `git daemon` (server CPU: the git daemon and the upload-pack processes it forks).

## Results
| figure | value |
| --- | --- |
{table}

## What one origin serves (worked out from the figures above)
- An unchanged poll costs the origin one conditional GET answered 304: {bytes_per_304:.0f} bytes
  of headers, no body. At a 5-minute interval a node makes 12 polls an hour, about
  {12 * bytes_per_304 / 1024:.1f} KiB an hour; a new document costs one 200 of a few KB per node
  (plus its signature when verification is on), once.
- At {costs.nginx_us:.0f} µs of nginx CPU per poll, one core answers a poll from each of about
  **{per_core:,.0f} nodes every 5 minutes**. Bandwidth is not the limit: {per_core:,.0f} polls
  of {bytes_per_304:.0f} B in 300 s is {per_core * bytes_per_304 / 300 / 1e6:.1f} MB/s.
{tls_figures()}
- **A CDN in front** serves the same conditional GETs from its edges: the origin sees one request
  per edge per cache lifetime, so the fleet size stops mattering to it; set a short cache
  lifetime (it adds to the time a new generation takes to reach the nodes) and keep ETags.
- **git instead of HTTPS**: every unchanged poll is a `git fetch` negotiation with a forked
  `git upload-pack` on the server: {costs.git_server_us:.0f} µs of server CPU here (about
  {per_core_git:,.0f} nodes per core at 5 minutes) and {costs.git_client_us:.0f} µs on the node
  (against {costs.http_client_us:.0f} µs for an HTTP poll). For a large fleet, publish the
  document from the git repository to an HTTPS origin (or a CDN) in CI, signed, and point the
  nodes at that.
- The time to converge a new generation is bounded by interval + splay: nodes pick it up on their
  next poll ({percentile(times, 0.5):.1f} s median here with {args.interval:g} s +
  {args.splay:g} s); the splay also keeps a fleet that restarts together (a power cut) from
  arriving at the origin at once.
"""
    args.write.write_text(report)
    print(report)
    ok = len(times) == n and by_hash == n
    shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
