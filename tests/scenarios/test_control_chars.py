"""Hostile names on the node: file names that clear the screen, forge a log line or are not
UTF-8 reach no terminal raw, from any command, in any log format (issue 14.6)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from tests.support.mirror import MirrorServer
from tests.support.node import Node, Result
from tests.support.standins import Mirror, desired_document

FORGED = '{"level":"error","event":"forged: node compromised"}'
# A screen clear, a window-title change, a newline then a whole forged JSON log line, a C1
# CSI, a Unicode line separator, and a byte that is not UTF-8.
HOSTILE = b"\x1b[2J\x1b]0;owned\x07\n" + FORGED.encode() + b"\xc2\x9b31m\xe2\x80\xa8\xff"
# What no output may hold raw: every C0 control but the newline, DEL, C1, U+2028/2029.
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def _plant(node: Node) -> list[Path]:
    planted = []
    for directory, name in [
        ("/usr/local/lib/wasmedge", b"libwasmedgePluginEvil" + HOSTILE + b".so"),
        ("/usr/local/lib", b"libwasmedge.so." + HOSTILE),
        ("/usr/local/bin", b"crun" + HOSTILE),
    ]:
        path = Path(os.fsdecode(os.fsencode(node.path(directory)) + b"/" + name))
        path.write_bytes(b"\x7fELF not really\n")
        planted.append(path)
    return planted


def _assert_safe(res: Result, what: str, json_log: bool) -> None:
    assert "internal error" not in res.stderr, (what, res.stderr[-2000:])
    for stream, text in (("stdout", res.stdout), ("stderr", res.stderr)):
        found = RAW_CONTROL.search(text)
        assert found is None, (what, stream, text[max(0, found.start() - 80) : found.end() + 80])
        for line in text.splitlines():
            assert not line.startswith(FORGED[:20]), (what, stream, line)
    if json_log:
        # Every line on stderr is one whole JSON record: none could be forged by a name.
        for line in res.stderr.splitlines():
            if line.startswith("{"):
                json.loads(line)


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_hostile_file_names_reach_no_output_raw(
    sandbox_root: Path, mirror: MirrorServer, mirror_index: Mirror, arch: str, log_format: str
) -> None:
    if arch not in ("amd64", "arm64"):
        pytest.skip("WasmEdge has no build for this architecture")
    node = Node(sandbox_root)
    doc = desired_document(mirror.url, mirror_index, arches=(arch,), k3s=None)
    first = node.apply(doc)
    assert first.code == 0, first.stderr[-2000:]
    planted = _plant(node)
    desired = str(node.desired(doc))
    fmt = ("--log-format", log_format)
    runs = {
        "detect": node.agentd("detect", *fmt),
        "detect --json": node.agentd("detect", "--json", *fmt),
        "plan": node.agentd("plan", "--desired", desired, *fmt),
        "plan -v": node.agentd("plan", "--desired", desired, "-v", *fmt),
        "apply": node.agentd("apply", "--desired", desired, "-v", *fmt),
        "status": node.agentd("status", *fmt),
        "status --json": node.agentd("status", "--json", *fmt),
    }
    for what, res in runs.items():
        _assert_safe(res, what, json_log=log_format == "json")
    # The names were really seen and shown, escaped: the test would catch them raw.
    shown = runs["detect"].stdout
    assert "libwasmedgePluginEvil\\x1b[2J\\x1b]0;owned\\x07\\n{" in shown, shown
    assert "\\xff" in shown
    assert json.loads(runs["detect --json"].stdout)
    assert all(p.exists() for p in planted[:1])  # a file agentd did not install is left alone


def test_a_desired_file_with_a_hostile_name_is_reported_escaped(sandbox_root: Path) -> None:
    node = Node(sandbox_root)
    drop_ins = node.path("/etc/wasm-edge/desired.d")
    drop_ins.mkdir(parents=True)
    name = os.fsdecode(b"10-" + HOSTILE + b".yaml")
    (drop_ins / name).write_text("generation: [\n")
    res = node.agentd("validate")
    assert res.code == 1, res.stderr
    _assert_safe(res, "validate", json_log=True)
    assert "10-\\x1b[2J\\x1b]0;owned\\x07\\n{" in res.stderr
    assert re.search(r"\.yaml:2:1: ", res.stderr), res.stderr


@pytest.mark.parametrize("name", ["wasi_nn\x00ggml", "wasi_nn\x1b[2J", "../../etc/x"])
def test_a_plugin_name_outside_the_alphabet_is_refused_before_apply_changes_anything(
    sandbox_root: Path, mirror: MirrorServer, mirror_index: Mirror, arch: str, name: str
) -> None:
    node = Node(sandbox_root)
    doc = desired_document(mirror.url, mirror_index, arches=(arch,), k3s=None, plugins=())
    doc["components"]["wasmedge"]["plugins"] = [{"name": name}]
    desired = str(node.desired(doc))
    for command in (("validate", desired), ("apply", "--desired", desired)):
        res = node.agentd(*command)
        assert res.code == 1, (command, res.stderr[-2000:])
        _assert_safe(res, command[0], json_log=True)
        assert re.search(r"desired\.yaml:\d+:\d+: .*a name is 1-128 of", res.stderr), res.stderr
    assert not node.path("/usr/local/bin/crun").exists()
