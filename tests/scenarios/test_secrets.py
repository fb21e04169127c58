"""Secrets never leak: the k3s token and URL credentials, looked for in everything a full run
produces (output, logs, state, metrics, plans, errors), and the modes of what agentd writes."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.mirror import MirrorServer
from tests.support.node import Node, Result
from tests.support.standins import Mirror, desired_document, write_yaml

REPO = Path(__file__).resolve().parents[2]
TOKEN = "K10-token-never-to-be-seen-4d2f9a"
ARTIFACT_PASSWORD = "artifact-pass-7c1e"
FLEET_PASSWORD = "fleet-pass-93b0"
QUERY_TOKEN = "query-token-5a6f"
SECRETS = (TOKEN, ARTIFACT_PASSWORD, FLEET_PASSWORD, QUERY_TOKEN)
# Inputs agentd keeps copies of, as they were given (0600, under 0700 directories): the
# operator's own files, the fleet document (its artifact URLs are the fleet's), and the
# settings snapshot (the settings file, validated).
INPUT_COPIES = (
    "/etc/wasm-edge/",
    "/var/lib/wasm-edge/source/fleet.yaml",
    "/var/lib/wasm-edge/source/candidate.yaml",
    "/var/lib/wasm-edge/settings.last-good.json",
)


def _with_credentials(url: str, password: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://agent:{password}@{rest}"


def _leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


def test_a_full_run_never_shows_a_secret(
    sandbox_root: Path, mirror: MirrorServer, mirror_index: Mirror, arch: str, tmp_path: Path
) -> None:
    node = Node(sandbox_root)
    token = node.path("/etc/wasm-edge/k3s-token")
    token.parent.mkdir(parents=True)
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    base = _with_credentials(mirror.url, ARTIFACT_PASSWORD)
    doc = desired_document(base, mirror_index, arches=(arch,))
    # The fleet document is served by the same server, behind other credentials and a token.
    fleet_dir = mirror.directory / f"fleet-{os.getpid()}"
    fleet_dir.mkdir(exist_ok=True)
    write_yaml(fleet_dir / "desired.yaml", doc)
    fleet_url = f"{mirror.url}/{fleet_dir.name}/desired.yaml?token={QUERY_TOKEN}"
    # The fleet's credentials live in a 0600 file of their own, never in the source URL.
    creds = node.path("/etc/wasm-edge/fleet.credentials")
    creds.write_text(_with_credentials(mirror.url, FLEET_PASSWORD) + "\n")
    creds.chmod(0o600)
    write_yaml(
        node.path("/etc/wasm-edge/agentd.yaml"),
        {
            "source": {
                "type": "https",
                "url": fleet_url,
                "allowInsecure": True,
                "credentialsFile": "/etc/wasm-edge/fleet.credentials",
            },
            "interval": "1h",
        },
    )
    outputs: list[Result] = [
        node.agentd("pull", "--json"),
        node.agentd("plan", "--json"),
        node.agentd("plan", "--explain"),
        node.agentd("apply", "--json"),
        node.agentd("apply"),
        node.agentd("status"),
        node.agentd("status", "--json"),
        node.agentd("check", "--json"),
        node.agentd("detect", "--json"),
        node.agentd("validate"),
        node.agentd("settings", "--json"),
    ]
    assert outputs[3].code == 0, outputs[3].stderr
    # Failures print URLs too: an artifact that is gone, then the fleet source gone.
    broken = json.loads(json.dumps(doc))
    broken["generation"] = 2
    broken["components"]["crun"]["version"] = "1.14"  # a change, from an artifact that is gone
    crun = broken["components"]["crun"]["artifacts"][arch]
    crun["url"] = crun["url"].rsplit("/", 1)[0] + "/crun-missing"
    crun["sha256"] = mirror_index.artifact("crun", "1.14", arch)[1]  # not in the cache yet
    write_yaml(fleet_dir / "desired.yaml", broken)
    failed = node.agentd("apply", "--json")
    assert failed.code == 1
    assert "HTTP 404" in failed.stderr
    assert "http://***@127.0.0.1" in failed.stderr  # the URL is named, its userinfo masked
    outputs.append(failed)
    (fleet_dir / "desired.yaml").unlink()
    outputs.append(node.agentd("pull", "--json"))
    # The daemon's logs (JSON on stderr, as the journal would get them) over a start and a run.
    daemon_log = tmp_path / "daemon.stderr"
    with daemon_log.open("wb") as stderr:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "agentd", "--root", str(node.root)),
                "--log-format=json",
                "run",
            ],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, "AGENTD_ROOT": "", "PYTHONPATH": str(REPO)},
            cwd=REPO,
        )
        try:
            deadline_file = node.path("/var/lib/wasm-edge/daemon.json")
            _wait_for(lambda: '"cycles": 1' in _read(deadline_file))
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
    produced = {f"{r.stdout}\n{r.stderr}" for r in outputs}
    produced.add(daemon_log.read_text(errors="replace"))
    for text in produced:
        assert _leaks(text) == [], _around(text)
    # Every file agentd wrote, besides the copies of its inputs.
    checked = 0
    for path in sorted(node.root.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        node_path = "/" + str(path.relative_to(node.root))
        if node_path.startswith(INPUT_COPIES):
            continue
        data = path.read_bytes().decode("utf-8", "replace")
        assert _leaks(data) == [], node_path
        checked += 1
    assert checked > 20
    # The token itself was never even read: k3s gets its path.
    config = node.read("/etc/rancher/k3s/config.yaml")
    assert "token-file: /etc/wasm-edge/k3s-token" in config


def _around(text: str) -> str:
    """The lines holding a secret, for the failure message."""
    return "\n".join(line for line in text.splitlines() if _leaks(line))[:2000]


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _wait_for(condition: Any, timeout: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_what_agentd_writes_has_the_mode_it_needs_and_no_more(
    sandbox_root: Path, mirror: MirrorServer, mirror_index: Mirror, arch: str
) -> None:
    node = Node(sandbox_root)
    result = node.apply(desired_document(mirror.url, mirror_index, arches=(arch,)))
    assert result.code == 0, result.stderr
    assert node.agentd("check").code in (0, 2)

    def mode(node_path: str) -> int:
        return stat.S_IMODE(node.path(node_path).stat().st_mode)

    # Programs: executable by all, writable by root alone.
    for binary in ("/usr/local/bin/k3s", "/usr/local/bin/crun", "/usr/local/bin/wasmedge"):
        assert mode(binary) == 0o755, binary
    # Configs k3s and containerd read: readable, not writable by others.
    for config in (
        "/etc/rancher/k3s/config.yaml",
        "/etc/systemd/system/k3s.service",
        "/var/lib/rancher/k3s/agent/etc/containerd/config.toml.tmpl",
    ):
        assert mode(config) == 0o644, config
    # agentd's own state: root's alone.
    assert mode("/var/lib/wasm-edge") == 0o700
    for private in ("/var/lib/wasm-edge/state.json", "/var/lib/wasm-edge/settings.last-good.json"):
        if node.path(private).exists():
            assert mode(private) & 0o077 == 0, private
    # Nothing anywhere is writable by group or others.
    for path in node.root.rglob("*"):
        if path.is_symlink():
            continue
        assert stat.S_IMODE(path.stat().st_mode) & 0o022 == 0, path
