"""packaging/monitoring: the alerting rules under promtool, and a live Prometheus scraping
node_exporter's textfile collector reading agentd's metrics, every rule and dashboard query."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentd.report import metrics

MONITORING = Path(__file__).resolve().parents[2] / "packaging" / "monitoring"
RULES = MONITORING / "agentd.rules.yml"
RULE_TESTS = MONITORING / "agentd.rules.test.yml"
DASHBOARD = MONITORING / "agentd.dashboard.json"
NODE_EXPORTER = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="no promtool")
needs_live = pytest.mark.skipif(
    shutil.which("prometheus") is None or NODE_EXPORTER is None,
    reason="no prometheus or prometheus-node-exporter (apt-get install them)",
)


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in doc["panels"] for t in panel["targets"]]


def test_every_metric_named_is_one_agentd_writes() -> None:
    exprs = [r["expr"] for r in _rules()] + _dashboard_exprs()
    named = {name for expr in exprs for name in re.findall(r"\bagentd_[a-z_]+\b", expr)}
    assert named, "no agentd metric in the rules or the dashboard"
    assert named <= set(metrics._HELP), named - set(metrics._HELP)


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    done = subprocess.run(
        ["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in done.stdout


@needs_promtool
def test_promtool_unit_tests_cover_every_alert() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    tested = {case["alertname"] for t in tests for case in t.get("alert_rule_test", [])}
    firing = {
        case["alertname"]
        for t in tests
        for case in t.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    alerts = {r["alert"] for r in _rules()}
    assert tested == alerts == firing  # each alert is seen firing and seen not firing
    done = subprocess.run(
        ["promtool", "test", "rules", RULE_TESTS.name],
        cwd=MONITORING,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


# --- live: node_exporter reads agentd's textfile, Prometheus scrapes it --------------------------


def _stamp(seconds_ago: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - seconds_ago))


def _state(*, good: bool, failed: int, rollbacks: int) -> dict[str, Any]:
    """state.json as agentd writes it: node a converged and healthy at generation 7; node b's
    runs fail (the last two hours ago), its health has an error and it rolled WasmEdge back."""
    findings = [] if good else [{"code": "crun.ldconfig", "severity": "error"}]
    return {
        "lastRun": {
            "finishedAt": _stamp(60 if good else 7200),
            "outcome": "converged" if good else "failed",
            "durationMs": 1234,
        },
        "lastAppliedGeneration": 7 if good else 6,
        "inventory": {"k3s": {"version": "v1.30.4+k3s1"}, "crun": {"version": "1.16"}},
        "health": {
            "healthy": good,
            "wasmReady": good,
            "checkedAt": _stamp(30),
            "durationMs": 250,
            "findings": findings,
        },
        "counters": {
            "runs": {"converged": 40, **({"failed": failed} if failed else {})},
            **({"rollbacks": {"wasmedge": rollbacks}} if rollbacks else {}),
        },
    }


def _write(directory: Path, state: Mapping[str, Any]) -> None:
    metrics.write(directory / "agentd.prom", metrics.render(state, fleet_generation=7))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _api(port: int, path: str, **params: str) -> Any:
    url = f"http://127.0.0.1:{port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]


def _wait(what: str, probe: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = probe()
        except OSError:
            found = None
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.5)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[int, dict[str, Path]]]:
    """Two node_exporters (nodes a and b, each its own textfile directory) and one Prometheus
    on 127.0.0.1 scraping both every second and evaluating agentd.rules.yml."""
    assert NODE_EXPORTER is not None
    dirs = {name: tmp_path / f"textfile-{name}" for name in ("a", "b")}
    _write(dirs["a"], _state(good=True, failed=0, rollbacks=0))
    _write(dirs["b"], _state(good=False, failed=1, rollbacks=1))
    procs: list[subprocess.Popen[bytes]] = []
    targets = []
    log = (tmp_path / "exporters.log").open("wb")
    try:
        for name, directory in dirs.items():
            port = _free_port()
            argv = [
                NODE_EXPORTER,
                f"--web.listen-address=127.0.0.1:{port}",
                "--collector.disable-defaults",
                "--collector.textfile",
                f"--collector.textfile.directory={directory}",
            ]
            procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
            targets.append({"targets": [f"127.0.0.1:{port}"], "labels": {"instance": name}})
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "agentd", "static_configs": targets}],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = _free_port()
        argv = [
            "prometheus",
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        with (tmp_path / "prometheus.log").open("wb") as plog:
            procs.append(subprocess.Popen(argv, stdout=plog, stderr=subprocess.STDOUT))
        yield port, dirs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


@needs_live
def test_live_prometheus_evaluates_every_rule_and_dashboard_query(
    live: tuple[int, dict[str, Path]],
) -> None:
    port, dirs = live

    def both_up() -> bool:
        result = _api(port, "query", query="agentd_info")["result"]
        return {r["metric"]["instance"] for r in result} == {"a", "b"}

    _wait("both nodes' agentd_info scraped", both_up)
    time.sleep(3)  # a few samples of the first counters
    # b fails four more runs and rolls WasmEdge back again: the counters rise between scrapes.
    _write(dirs["b"], _state(good=False, failed=5, rollbacks=2))

    def risen() -> bool:
        query = 'agentd_runs_total{instance="b",outcome="failed"}'
        result = _api(port, "query", query=query)["result"]
        return bool(result) and result[0]["value"][1] == "5"

    _wait("b's raised counters scraped", risen)
    time.sleep(2)
    exprs = [r["expr"] for r in _rules()] + _dashboard_exprs()
    empty = [e for e in exprs if not _api(port, "query", query=e)["result"]]
    assert not empty, f"no data from: {empty}"

    def all_alerts() -> dict[str, set[str]]:
        active: dict[str, set[str]] = {}
        for alert in _api(port, "alerts")["alerts"]:
            active.setdefault(alert["labels"]["instance"], set()).add(alert["labels"]["alertname"])
        return active if active.get("b") == {r["alert"] for r in _rules()} else {}

    # Every alert pending or firing for b, none for a; Prometheus loaded every rule as healthy.
    active = _wait("every alert active for node b", all_alerts)
    assert "a" not in active
    rules = [r for g in _api(port, "rules")["groups"] for r in g["rules"]]
    assert len(rules) == len(_rules())
    assert {r["health"] for r in rules} == {"ok"}, [r.get("lastError") for r in rules]
