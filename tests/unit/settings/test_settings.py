"""The agent settings: defaults, FILE:LINE:COL errors, and the snapshot that skips pydantic."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agentd.core.paths import Paths
from agentd.settings.model import Settings, SettingsError, load_settings, settings_json
from agentd.settings.snapshot import DEFAULTS, AgentConfig, last_good_config, load_config
from tests.support.node import Node

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "config" / "agentd.example.yaml"


def _errors(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "agentd.yaml"
    path.write_text(text)
    with pytest.raises(SettingsError) as caught:
        load_settings(path)
    return [line.replace(f"{path}:", "") for line in caught.value.problems]


def test_the_defaults_are_the_ones_the_lean_path_uses() -> None:
    # config.DEFAULTS lets a node without a settings file skip pydantic: it must not drift.
    assert settings_json(Settings()) == DEFAULTS


def test_no_file_and_an_empty_file_mean_the_defaults(tmp_path: Path) -> None:
    assert load_settings(tmp_path / "missing.yaml") == Settings()
    empty = tmp_path / "agentd.yaml"
    empty.write_text("# nothing set here yet\n")
    assert load_settings(empty) == Settings()


def test_the_commented_example_is_valid_and_means_what_it_says() -> None:
    settings = load_settings(EXAMPLE)
    assert settings.source is not None
    assert (settings.source.type, settings.source.ref) == ("git", "main")
    assert settings.source.verify is not None
    assert settings.source.verify.method == "ssh"
    assert (settings.interval, settings.splay, settings.healthInterval) == (300, 60, 60)
    assert (settings.backoff.initial, settings.backoff.max) == (10, 900)
    assert settings.labels == {"site": "berlin-01", "ring": "canary"}
    window = AgentConfig(settings_json(settings)).maintenance
    assert window is not None
    assert window.describe() == "sat,sun 02:00+3h (Europe/Berlin)"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("intervall: 5m\n", "1:1: unknown field 'intervall' (did you mean 'interval'? known: "),
        ("interval: 5 minutes\n", "1:11: not a duration: '5 minutes'"),
        ("interval: 0.5\n", "1:11: must be at least 1s"),
        ("debounce: 1m\n", "1:11: debounce is at most 10s"),
        ("backoff: {initial: 10m, max: 1m}\n", "1:10: backoff needs 0 < initial <= max"),
        (
            "source:\n  type: git\n  url: git://fleet.example/fleet.git\n",
            "3:8: git:// has no transport security",
        ),
        (
            "source:\n  type: https\n  url: http://fleet.example/desired.yaml\n",
            "3:8: http:// has no transport security",
        ),
        (
            "source:\n  type: git\n  url: https://g.example/f.git\n  ref: --upload-pack=x\n",
            "4:8: not a git ref: '--upload-pack=x'",
        ),
        ("health:\n  nodeName: edge..1\n", "2:13: 'edge..1': a DNS-1123 subdomain must"),
        (
            'source:\n  type: git\n  url: https://g.example/f.git\n  ref: "main\\n"\n',
            "4:8: not a git ref: 'main\\n'",
        ),
        (
            "source:\n  type: git\n  url: https://g.example/f.git\n  path: ../../etc/shadow\n",
            "4:9: path is relative to the repository's top, without . or ..",
        ),
        (
            "source:\n  type: https\n  url: https://f.example/d.yaml\n  ref: main\n",
            "2:3: ref and path are for git sources",
        ),
        (
            "source:\n  type: git\n  url: https://g.example/f.git\n  verify: {method: ssh}\n",
            "4:11: verify method ssh needs allowedSigners",
        ),
        (
            "source:\n  type: git\n  url: https://g.example/f.git\n"
            "  verify: {method: gpg, keyring: keys.gpg}\n",
            "4:11: keyring must be an absolute path",
        ),
        (
            "downloads: {verify: {required: true}}\n",
            "1:21: required: true needs cosign.publicKeys",
        ),
        (
            "downloads: {verify: {cosign: {publicKeys: [release.pub]}}}\n",
            "1:43: publicKeys must be absolute paths",
        ),
        (
            "source:\n  type: https\n  url: https://f.example/d.yaml\n  verify: {method: cosign}\n",
            "4:11: verify method cosign needs publicKeys",
        ),
        (
            "source:\n  type: git\n  url: https://g.example/f.git\n"
            "  verify: {method: cosign, publicKeys: [/k.pub]}\n",
            "2:3: not supported yet: cosign signatures of a git source",
        ),
        (
            "labels: {'bad label': x}\n",
            "1:10: label key 'bad label': the name must consist of alphanumeric",
        ),
        ("tls: {caFile: ca.pem}\n", "1:15: caFile must be an absolute path"),
        ("metrics: {path: /tmp/agentd.txt}\n", "1:17: metrics path is absolute and ends in .prom"),
        (
            "maintenanceWindow: {windows: [{days: [funday], start: '02:00', duration: 1h}]}\n",
            "1:38: not a day: 'funday'",
        ),
        (
            "maintenanceWindow: {timezone: Mars/Olympus, windows: []}\n",
            "1:31: unknown time zone 'Mars/Olympus'",
        ),
        ("suspend: yes please\n", "1:10: suspend: expected a boolean, got the string 'yes please'"),
    ],
)
def test_errors_point_at_the_line_and_column(tmp_path: Path, text: str, expected: str) -> None:
    errors = _errors(tmp_path, text)
    assert any(e.startswith(expected) for e in errors), errors


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    errors = _errors(tmp_path, "interval: soon\nsplay: later\nlabels: {a: 'b c'}\n")
    assert [e.split(":")[0] for e in errors] == ["1", "2", "3"]


def test_bad_yaml_is_a_settings_error_with_its_position(tmp_path: Path) -> None:
    errors = _errors(tmp_path, "interval: 5m\n  splay: [1\n")
    assert len(errors) == 1
    assert errors[0].startswith("2:")


def test_durations_and_windows_in_every_spelling(tmp_path: Path) -> None:
    path = tmp_path / "agentd.yaml"
    path.write_text(
        "interval: 1h30m\nsplay: 90\nhealthInterval: '45s'\n"
        "maintenanceWindow:\n  windows:\n    - {days: [weekdays], start: '23:00', duration: 2h}\n"
    )
    settings = load_settings(path)
    assert (settings.interval, settings.splay, settings.healthInterval) == (5400, 90, 45)
    assert settings.maintenanceWindow is not None
    assert settings.maintenanceWindow.compile().describe() == "mon,tue,wed,thu,fri 23:00+2h (UTC)"


def _root_with_settings(tmp_path: Path, text: str) -> Paths:
    paths = Paths(tmp_path / "root")
    paths.settings_file.parent.mkdir(parents=True)
    paths.settings_file.write_text(text)
    return paths


def test_unchanged_settings_load_from_the_snapshot_without_pydantic(tmp_path: Path) -> None:
    paths = _root_with_settings(tmp_path, "interval: 2m\nlabels: {ring: canary}\n")
    first = load_config(paths)
    assert (first.interval, first.labels) == (120, {"ring": "canary"})
    assert paths.settings_snapshot.is_file()
    script = (
        "import sys; from pathlib import Path; from agentd.settings.snapshot import load_config; "
        "from agentd.core.paths import Paths; "
        f"c = load_config(Paths(Path({str(paths.root)!r}))); "
        "print(c.interval, sorted(m for m in sys.modules if m.startswith('pydantic')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout.split() == ["120.0", "[]"]


def test_a_changed_file_is_validated_again(tmp_path: Path) -> None:
    paths = _root_with_settings(tmp_path, "interval: 2m\n")
    assert load_config(paths).interval == 120
    paths.settings_file.write_text("interval: 3m\n")
    assert load_config(paths).interval == 180


def test_a_broken_file_fails_loudly_but_the_last_good_settings_are_kept(tmp_path: Path) -> None:
    paths = _root_with_settings(tmp_path, "interval: 2m\n")
    load_config(paths)
    paths.settings_file.write_text("interval: whenever\n")
    with pytest.raises(SettingsError) as caught:
        load_config(paths)
    assert caught.value.problems == [
        "/etc/wasm-edge/agentd.yaml:1:11: not a duration: 'whenever' "
        "(write e.g. 30s, 5m, 1h30m, 2d)"
    ]
    kept = last_good_config(paths)
    assert kept is not None
    assert kept.interval == 120
    assert "(last good)" in kept.origin


def test_agentd_settings_command(tmp_path: Path) -> None:
    node = Node(tmp_path / "root")
    etc = node.path("/etc/wasm-edge")
    etc.mkdir(parents=True)
    (etc / "agentd.yaml").write_text("interval: 10m\n")
    ok = node.agentd("settings", "--json")
    assert ok.code == 0, ok.stderr
    doc = ok.json()
    assert doc["valid"] is True
    assert doc["settings"]["interval"] == 600
    assert doc["origin"] == "/etc/wasm-edge/agentd.yaml"
    (etc / "agentd.yaml").write_text("interval: 10m\nsource: {type: https, url: ftp://x/y}\n")
    bad = node.agentd("settings")
    assert bad.code == 1
    assert "/etc/wasm-edge/agentd.yaml:2:" in bad.stderr
    assert "unsupported URL for a https source" in bad.stderr


def test_the_snapshot_is_json_settings_with_its_origin(tmp_path: Path) -> None:
    paths = _root_with_settings(tmp_path, "suspend: true\n")
    load_config(paths)
    snap = json.loads(paths.settings_snapshot.read_text())
    assert snap["settings"]["suspend"] is True
    assert snap["origin"] == "/etc/wasm-edge/agentd.yaml"
    assert paths.settings_snapshot.stat().st_mode & 0o077 == 0
