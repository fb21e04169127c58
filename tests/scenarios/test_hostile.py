"""Hostile input: fuzzed desired-state and settings documents, random `--version` output, and
hostile tarballs (bombs, 100,000 members, setuid bits, random member lists and damaged headers).

The contract under test: a loader either accepts a document or refuses it with an AgentError whose
problems are `FILE:LINE:COL: message` lines, never another exception and never a hang; a version
parser returns a version or None; an archive is extracted whole inside its target or refused with
ArchiveError, and nothing is ever written outside the target.

`make test` runs each strategy briefly (the "hostile-fast" profile); `make stress` (`-m stress`)
runs the same properties on more than 10,000 generated documents in all ("hostile-stress").
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import textwrap
import tracemalloc
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Optional

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentd.converge.archive import MAX_BYTES, MAX_MEMBERS, extract_tarball
from agentd.core.errors import AgentError, ArchiveError
from agentd.core.versions import compare, is_k3s_version, parse_constraint, parse_version, satisfies
from agentd.desired.identity import NodeIdentity
from agentd.desired.validate import load_and_validate
from agentd.facts.detect import (
    parse_crun_version,
    parse_k3s_version,
    parse_wasmedge_plugin_lines,
    parse_wasmedge_version,
)
from agentd.facts.osrelease import parse_os_release
from agentd.settings.model import SettingsError, load_settings, settings_json
from agentd.settings.snapshot import AgentConfig
from tests.support.mirror import MirrorServer
from tests.support.node import Node
from tests.support.standins import Mirror, sha256_hex, wasmedge_tarball, write_yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "config"

# --- profiles and budgets -----------------------------------------------------------------------

# No example database: nothing is written into the repository, and every run draws afresh.
# Durations are not judged (deadline=None): a hang is caught by the watchdog below instead.
_COMMON: dict[str, Any] = {
    "database": None,
    "deadline": None,
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
settings.register_profile("hostile-fast", max_examples=200, **_COMMON)
settings.register_profile("hostile-stress", max_examples=2000, **_COMMON)


@dataclass(frozen=True)
class Budget:
    """Examples per run of one strategy: `make test` (fast) and `make stress`."""

    fast: int
    stress: int


# Documents: 1,130 per `make test`, 11,500 per `make stress`.
BUDGETS = {
    "desired/bytes": Budget(150, 1500),
    "desired/tree": Budget(150, 2000),
    "desired/shaped": Budget(200, 2500),
    "desired/mutant": Budget(250, 2500),
    "settings/bytes": Budget(75, 500),
    "settings/shaped": Budget(150, 1200),
    "settings/mutant": Budget(150, 1200),
    "cli/validate": Budget(3, 60),
    "cli/settings": Budget(2, 40),
    # Not documents: command output and archives.
    "parsers": Budget(300, 3000),
    "versions": Budget(300, 3000),
    "detect": Budget(2, 25),
    "archive/members": Budget(100, 1500),
    "archive/headers": Budget(100, 1500),
}
DOCUMENT_BUDGETS = [k for k in BUDGETS if k.split("/")[0] in ("desired", "settings", "cli")]

PROFILES = [
    pytest.param("fast", id="fast"),
    pytest.param("stress", id="stress", marks=pytest.mark.stress),
]


def fuzz(
    profile: str, budget: str, strategy: st.SearchStrategy[Any], check: Callable[[Any], None]
) -> None:
    """Run `check` on `strategy`'s examples under `profile`, and prove the budget was spent."""
    n = getattr(BUDGETS[budget], profile)
    ran = [0]

    @settings(settings.get_profile(f"hostile-{profile}"), max_examples=n)
    @given(strategy)
    def run(example: Any) -> None:
        ran[0] += 1
        with watchdog(HANG_S, example):
            check(example)

    run()
    # Hypothesis may skip an exact duplicate; nearly every example must still have run.
    assert ran[0] >= n * 0.95, f"{budget}: {ran[0]} of {n} examples ran"
    sys.stderr.write(f"{budget} [{profile}]: {ran[0]} examples\n")


def test_the_stress_profile_runs_more_than_10000_documents() -> None:
    assert sum(BUDGETS[k].stress for k in DOCUMENT_BUDGETS) >= 10_000


# --- the hang watchdog --------------------------------------------------------------------------

# Far beyond what one document of at most 1 MiB may take; reached only by a hang.
HANG_S = 30.0


class Hung(BaseException):
    """Raised in the main thread when one example runs past the watchdog (not an Exception, so
    no `except Exception` in the code under test can swallow it)."""


@contextlib.contextmanager
def watchdog(seconds: float, example: Any) -> Iterator[None]:
    def expired(signum: int, frame: Optional[FrameType]) -> None:
        raise Hung(f"still running after {seconds}s on: {shorten(example)}")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def shorten(value: Any, limit: int = 400) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


# --- strategies: YAML-ish text --------------------------------------------------------------------

ODD_CHARS = (
    "\x00\x01\x07\t\x0b\x0c\r\x1b\x7f\x85\xa0\xad\u200b\u200e\u202e\u2028\u2029\ufeff\ufffe"
    "\uffff\U0001f600\U0010ffff\u0301é漢ß"
)
odd_text = st.text(
    alphabet=st.one_of(st.sampled_from(ODD_CHARS), st.characters()),
    max_size=24,
)
YAML_WORDS = [
    "~", "null", "yes", "no", "on", "off", "Y", "n", ".nan", ".inf", "-.inf", "0x1F", "0o17",
    "017", "1_000", "1:30", "190:20:30", "2001-12-14", "2001-12-14t21:59:43.10-05:00", "<<", "=",
    "*", "&", "!", "|", ">", "%", "@", "`", "---", "...", "- ", "? ", "'", '"', "#", "{", "[",
    "agentd/v1", "NodeState", "AgentSettings", "1.15", "v1.30.4+k3s1", "0.14.1", "30s", "5m",
    "1h30m", "daily", "02:00", "UTC", "https://mirror.example/x", "0" * 64,
]  # fmt: skip
HUGE_NUMBERS = [10**400, -(10**400), 2**64, -(2**63) - 1, 2**1024, 10**4000]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(HUGE_NUMBERS),
    st.floats(),
    odd_text,
    st.sampled_from(YAML_WORDS),
)
keys = st.one_of(
    st.sampled_from(
        ["apiVersion", "kind", "generation", "components", "crun", "k3s", "wasmedge", "version",
         "artifacts", "amd64", "arm64", "url", "sha256", "plugins", "name", "state", "source",
         "overrides", "selector", "rollout", "percent", "downloads", "timeout", "labels", "<<"]
    ),
    odd_text,
    st.integers(-3, 3),
    st.booleans(),
    st.none(),
    st.floats(),
)  # fmt: skip
trees = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(keys, children, max_size=6),
    max_leaves=40,
)


@st.composite
def dumped(draw: st.DrawFn, tree: st.SearchStrategy[Any]) -> bytes:
    """A tree as YAML in one of the styles a person or a tool writes, in one of its encodings."""
    data = draw(tree)
    text = yaml.safe_dump(
        data,
        sort_keys=False,
        default_flow_style=draw(st.sampled_from([False, True, None])),
        allow_unicode=draw(st.booleans()),
        width=draw(st.sampled_from([20, 80, 1000])),
        indent=draw(st.sampled_from([2, 4, 9])),
        explicit_start=draw(st.booleans()),
        canonical=draw(st.sampled_from([False, False, True])),
    )
    return encode(draw, text)


def encode(draw: st.DrawFn, text: str) -> bytes:
    """UTF-8 mostly; sometimes with a BOM, as UTF-16 (YAML reads both), or with bytes flipped."""
    how = draw(st.sampled_from(["utf-8"] * 6 + ["utf-8-sig", "utf-16", "utf-16-be", "flip"]))
    if how == "flip":
        data = bytearray(text.encode("utf-8", "surrogatepass"))
        for _ in range(draw(st.integers(1, 4))):
            if data:
                data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        return bytes(data)
    if how == "utf-16-be":
        return b"\xfe\xff" + text.encode("utf-16-be", "surrogatepass")
    return text.encode(how, "surrogatepass")


def confused(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly `strategy`; now and then a value of the wrong type (or a whole wrong tree)."""
    return st.one_of(strategy, strategy, strategy, scalars, trees)


def shaped(template: Any) -> st.SearchStrategy[Any]:
    """Documents in the schema's shape: any subset of a mapping's fields (plus an unknown one now
    and then), lists of 0-3 items, and field values from strategies of plausible and odd values."""
    if isinstance(template, dict):
        fields = st.fixed_dictionaries({}, optional={k: shaped(v) for k, v in template.items()})
        junk = st.dictionaries(odd_text | st.sampled_from(["versio", "Kind", "extra"]), scalars)
        return confused(st.builds(lambda a, b: {**b, **a}, fields, junk | st.just({})))
    if isinstance(template, list):
        return confused(st.lists(shaped(template[0]), max_size=3))
    if isinstance(template, st.SearchStrategy):
        return confused(template)
    return confused(st.just(template))


def words(*items: Any) -> st.SearchStrategy[Any]:
    return st.sampled_from(items) | odd_text


ARCH = st.sampled_from(["amd64", "arm64", "armv7", "x86_64", "AMD64", ""])
VERSION = words("1.15", "1.8.5", "0.14.1", "v1.30.4+k3s1", "v1.30.4", "1.10", "", "latest",
                ">=1.8.5", ">=1.8,<2", "1.15.0-rc1", "v" + "9" * 5000)  # fmt: skip
URL = words("https://mirror.example/x", "http://user:pw@mirror.example/x?token=t",
            "file:///x", "ftp://x", "https://", "https://[::1]:99999/x", "file://host/x",
            "git@host:x.git")  # fmt: skip
SHA = words("0" * 64, "A" * 64, "g" * 64, "0" * 63, "0" * 65)
DURATION = st.one_of(
    words("30s", "5m", "1h30m", "2d", "0", "-1s", "0.5s", "1e3", ".5s", "9" * 30 + "d", "1h 30m"),
    st.floats(),
    st.integers(),
)
TIME_ZONE = words("UTC", "utc", "local", "Europe/Berlin", "Mars/Olympus", "../../etc/passwd",
                  "/etc/localtime", "Europe", "", "zone.tab", "posixrules", "a" * 300,
                  "\x00")  # fmt: skip
PERCENT = st.one_of(st.floats(), st.integers(-5, 200), words("10", "10%", "nan"))
GLOB = words("edge-*", "*", "[", "[!a-", "*" * 500 + "x", "**/..")
ARTIFACTS = st.dictionaries(ARCH, shaped({"url": URL, "sha256": SHA}), max_size=3)
COMPONENT = {"state": words("present", "absent"), "version": VERSION, "artifacts": ARTIFACTS}
SELECTOR = {"arch": [ARCH], "hostname": [GLOB], "os": [words("debian", "debian 12", "")],
            "labels": st.dictionaries(odd_text, odd_text, max_size=3)}  # fmt: skip
WINDOW = {"timezone": TIME_ZONE,
          "windows": [{"days": [words("mon", "daily", "weekends", "sunday", "funday")],
                       "start": words("02:00", "24:00", "2:00", "23:59"),
                       "duration": DURATION}]}  # fmt: skip
COMPONENTS = {
    "crun": {**COMPONENT, "minimumVersion": VERSION, "source": words("artifact", "package"),
             "package": words("crun", "-crun", "crun;rm")},
    "k3s": {**COMPONENT, "role": words("server", "agent"), "server": URL,
            "tokenFile": words("/etc/k3s-token", "token"),
            "config": st.dictionaries(words("wasm", "--wasm", "token", "write-kubeconfig-mode"),
                                      scalars, max_size=3)},
    "wasmedge": {**COMPONENT, "plugins": [{"name": words("wasi_nn-ggml", "wasi_socket",
                 "wasi_nn-openvino"), "state": words("present"), "artifacts": ARTIFACTS}]},
}  # fmt: skip
RUNTIME_CLASS = {"name": words("crun-wasm", "agentd-wasm-probe", "Bad_Name"),
                 "handler": words("crun", "crun-wasm"),
                 "nodeSelector": st.dictionaries(odd_text, odd_text)}  # fmt: skip
DESIRED_TEMPLATE = {
    "apiVersion": words("agentd/v1", "agentd/v2"),
    "kind": words("NodeState", "AgentSettings"),
    "generation": st.one_of(st.integers(-2, 10**6), st.sampled_from(HUGE_NUMBERS)),
    "selector": SELECTOR,
    "components": COMPONENTS,
    "runtimeClasses": [RUNTIME_CLASS],
    "maintenanceWindow": WINDOW,
    "overrides": [{"name": words("crun-1.16", ""), "selector": SELECTOR,
                   "rollout": {"percent": PERCENT, "key": words("k", ""),
                               "canary": st.dictionaries(odd_text, odd_text, max_size=2)},
                   "components": COMPONENTS, "runtimeClasses": [RUNTIME_CLASS],
                   "maintenanceWindow": WINDOW}],
}  # fmt: skip
BOOL = st.one_of(st.booleans(), words("yes", "true", "1"))
PATH = words("/etc/wasm-edge/allowed_signers", "relative", "/x.prom", "/metrics", "")
SETTINGS_TEMPLATE = {
    "apiVersion": words("agentd/v1"), "kind": words("AgentSettings", "NodeState"),
    "source": {"type": words("git", "https", "ftp"), "allowInsecure": BOOL,
               "url": words("https://git.example/fleet.git", "http://x/y", "-oProxy=x",
                            "git@host:repo", "ssh://h/r", "file:///srv/fleet",
                            "https://u:tok@git.example/f.git"),
               "credentialsFile": PATH,
               "ref": words("main", "-x", "a..b", "refs/heads/main", "x.lock"),
               "path": words("nodes/desired.yaml", "../x", "/abs", "a//b"),
               "verify": {"method": words("ssh", "gpg", "x509"), "allowedSigners": PATH,
                          "keyring": PATH, "namespace": words("agentd", "-n"),
                          "identity": words("release@example.org", "a b")},
               "timeout": DURATION},
    "interval": DURATION, "splay": DURATION, "healthInterval": DURATION,
    "backoff": {"initial": DURATION, "max": DURATION}, "debounce": DURATION,
    "labels": st.dictionaries(words("site", "a/b", "x" * 70, "-bad"),
                              words("berlin", "x" * 70, "")),
    "hostname": words("edge-1", "-x", ""), "nodeId": words("4f1c", "_x", ""),
    "metrics": {"enabled": BOOL, "path": PATH},
    "tls": {"caFile": PATH, "insecureSkipVerify": BOOL},
    "downloads": {"timeout": DURATION, "attempts": st.integers(-1, 12), "backoff": DURATION,
                  "allowLocalFiles": BOOL,
                  "maxMiB": st.one_of(st.integers(-1, 10**6), st.sampled_from(HUGE_NUMBERS))},
    "maintenanceWindow": WINDOW, "suspend": BOOL,
    "health": {"remediate": BOOL, "remediationBackoff": DURATION, "rollbackWindow": DURATION,
               "nodeName": words("edge-1", "Edge"), "label": BOOL,
               "probe": {"image": words("probe:1"), "namespace": words("default", "Bad"),
                         "timeout": DURATION},
               "gatekeeperProbe": {"enabled": BOOL, "image": words("untrusted/image:latest"),
                                   "namespace": words("default", "Bad")}},
}  # fmt: skip


# Mutations of real documents: what an editor, a merge conflict or a bad template does to them.
RICH_DESIRED = textwrap.dedent(
    """\
    apiVersion: agentd/v1
    kind: NodeState
    generation: 14
    selector: {arch: [amd64, arm64]}
    components:
      crun: &crun
        version: "1.15"
        artifacts:
          amd64: {url: "https://mirror.example/crun-amd64", sha256: "%(sha)s"}
          arm64: {url: "https://mirror.example/crun-arm64", sha256: "%(sha)s"}
    maintenanceWindow:
      timezone: Europe/Berlin
      windows:
        - {days: [sat, sun], start: "02:00", duration: 3h}
    overrides:
      - name: crun-1.16
        selector: {labels: {site: berlin}}
        rollout: {percent: 10, key: crun-1.16, canary: {ring: canary}}
        components:
          crun:
            <<: *crun
            version: "1.16"
    """
) % {"sha": "0" * 64}
MUTATION_VALUES = [
    "9" * 5000, "1" + "0" * 400, "-0x" + "f" * 300, "1e400", "1.0e+400", "0." + "0" * 4000 + "1",
    "[" * 200 + "]" * 200, "{a: " * 70 + "1" + "}" * 70, "!!python/object:os.system x",
    "!custom x", "!!binary aGVsbG8=", "!!set {a, b}", "!!omap [a: 1]", "!!int abc", "*undefined",
    "&a [*a]", "|\n  block", ">-", "'unterminated", '"\\xzz"', "\t", "{", "]", "- - - -",
    "2001-12-14", "0o777", "0b101", "[&a x, *a, *a, *a]",
]  # fmt: skip


@st.composite
def mutant(draw: st.DrawFn, base: str) -> bytes:
    lines = base.splitlines()
    for _ in range(draw(st.integers(1, 6))):
        if not lines:
            lines = [""]
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(
            st.sampled_from(
                ["delete", "duplicate", "swap", "value", "indent", "anchor", "merge", "unicode",
                 "tag", "document", "truncate", "huge"]
            )
        )  # fmt: skip
        line = lines[i]
        key, colon, _ = line.partition(":")
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, line)
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], line
        elif op == "value" and colon:
            value = draw(st.sampled_from(MUTATION_VALUES) | odd_text | st.sampled_from(YAML_WORDS))
            lines[i] = f"{key}: {value}"
        elif op == "indent":
            lines[i] = draw(st.sampled_from(["", " ", "   ", "\t", "      "])) + line.lstrip(" ")
        elif op == "anchor" and colon:
            name = draw(st.sampled_from(["a", "crun", "x"]))
            lines[i] = f"{key}: &{name} {line.partition(':')[2].strip()}".rstrip()
            j = draw(st.integers(0, len(lines) - 1))
            other, has_colon, _ = lines[j].partition(":")
            if has_colon:
                lines[j] = f"{other}: *{name}"
        elif op == "merge":
            indent = line[: len(line) - len(line.lstrip(" "))]
            lines.insert(i, f"{indent}<<: *{draw(st.sampled_from(['a', 'crun']))}")
        elif op == "unicode":
            at = draw(st.integers(0, len(line)))
            lines[i] = line[:at] + draw(odd_text) + line[at:]
        elif op == "tag" and colon:
            tag = draw(st.sampled_from(["!!str", "!!int", "!!map", "!!seq", "!!float", "!x", "!"]))
            lines[i] = f"{key}: {tag} {line.partition(':')[2].strip()}"
        elif op == "document":
            lines.insert(
                i, draw(st.sampled_from(["---", "...", "%YAML 1.1", "%YAML 2.0", "%TAG ! x"]))
            )
        elif op == "truncate":
            lines = [*lines[:i], line[: draw(st.integers(0, len(line)))]]
        elif op == "huge":
            size = draw(st.sampled_from([70_000, (1 << 20) + 1]))
            lines.insert(i, "# " + "x" * size)
    return encode(draw, "\n".join(lines) + draw(st.sampled_from(["\n", "", "\r\n", "\n\n\n"])))


def example_text(name: str) -> str:
    return (EXAMPLES / name).read_text(encoding="utf-8")


desired_bytes = st.binary(max_size=2048)
desired_trees = dumped(trees)
desired_shaped = dumped(shaped(DESIRED_TEMPLATE))
desired_mutants = st.one_of(
    mutant(example_text("desired.example.yaml")),
    mutant(example_text("demo-desired.yaml")),
    mutant(RICH_DESIRED),
)
settings_shaped = dumped(shaped(SETTINGS_TEMPLATE))
settings_mutants = mutant(example_text("agentd.example.yaml"))


# --- the properties: desired state ----------------------------------------------------------------

NODES = [
    None,
    NodeIdentity("4f1c0d", "edge-1", "amd64", "debian 12", {"site": "berlin", "ring": "canary"}),
    NodeIdentity("00", "x", "armv7", "unknown", {}),
]
LOCATED_RE = re.compile(r"(?P<line>[1-9][0-9]*):(?P<col>[1-9][0-9]*): (?P<message>\S.*)", re.DOTALL)
_BREAKS_RE = re.compile("\r\n|[\n\r\x85\u2028\u2029]")


def decoded(data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", "replace")
    return data.decode("utf-8", "replace")


def assert_located(lines: list[str], files: dict[str, bytes]) -> None:
    """Every line is `FILE:LINE:COL: message`, one line, at a place the file has."""
    assert lines, "an error without a single FILE:LINE:COL line"
    for line in lines:
        assert "\n" not in line, line
        assert "\r" not in line, line
        name = next((n for n in files if line.startswith(n + ":")), None)
        assert name is not None, f"not at a place in {list(files)}: {line!r}"
        found = LOCATED_RE.fullmatch(line[len(name) + 1 :])
        assert found is not None, line
        last_line = len(_BREAKS_RE.findall(decoded(files[name]))) + 1
        assert int(found["line"]) <= last_line, (line, last_line)


@dataclass
class DesiredCase:
    data: bytes
    node: Optional[NodeIdentity]
    arch: Optional[str]
    over_example: bool  # a drop-in merged over the valid example, as desired.d/ is


def check_desired(workdir: Path, case: DesiredCase) -> None:
    path = workdir / "desired.yaml"
    path.write_bytes(case.data)
    files = {str(path): case.data}
    paths = [path]
    if case.over_example:
        base = workdir / "base.yaml"
        base.write_bytes((EXAMPLES / "desired.example.yaml").read_bytes())
        files[str(base)] = base.read_bytes()
        paths = [base, path]
    try:
        report = load_and_validate(paths, case.arch, merge_all=True, node=case.node)
    except AgentError as exc:
        assert_located(list(getattr(exc, "problems", [])), files)
        return
    if report.errors:
        assert report.state is None
        assert_located(report.errors, files)
    else:
        assert report.state is not None
        # A document that validates is usable: its maintenance window compiles.
        if report.state.maintenanceWindow is not None:
            report.state.maintenanceWindow.compile()
    if report.warnings:
        assert_located(report.warnings, files)


def desired_strategy(data: st.SearchStrategy[bytes]) -> st.SearchStrategy[DesiredCase]:
    return st.builds(
        DesiredCase,
        data,
        st.sampled_from(NODES),
        st.sampled_from(["amd64", "arm64", "armv7", None]),
        st.booleans(),
    )


DESIRED_STRATEGIES = {
    "desired/bytes": desired_bytes,
    "desired/tree": desired_trees,
    "desired/shaped": desired_shaped,
    "desired/mutant": desired_mutants,
}


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("budget", sorted(DESIRED_STRATEGIES))
def test_the_desired_state_loader_accepts_or_locates_every_error(
    tmp_path: Path, profile: str, budget: str
) -> None:
    strategy = desired_strategy(DESIRED_STRATEGIES[budget])
    fuzz(profile, budget, strategy, lambda case: check_desired(tmp_path, case))


# --- the properties: settings ---------------------------------------------------------------------


def check_settings(workdir: Path, data: bytes) -> None:
    path = workdir / "agentd.yaml"
    path.write_bytes(data)
    try:
        loaded = load_settings(path)
    except SettingsError as exc:
        assert_located(exc.problems, {str(path): data})
        return
    # Settings that validate are usable: as the daemon's JSON, and through AgentConfig.
    raw = settings_json(loaded)
    json.dumps(raw)
    config = AgentConfig(raw, str(path))
    _ = (config.source, config.maintenance, config.backoff, config.downloads, config.labels)
    _ = (config.metrics_path, config.tls, config.health, config.suspend, config.debounce)


SETTINGS_STRATEGIES = {
    "settings/bytes": st.binary(max_size=2048),
    "settings/shaped": settings_shaped,
    "settings/mutant": settings_mutants,
}


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("budget", sorted(SETTINGS_STRATEGIES))
def test_the_settings_loader_accepts_or_locates_every_error(
    tmp_path: Path, profile: str, budget: str
) -> None:
    fuzz(profile, budget, SETTINGS_STRATEGIES[budget], lambda data: check_settings(tmp_path, data))


# --- the properties: the command line -------------------------------------------------------------

any_document = st.one_of(desired_bytes, desired_trees, desired_shaped, desired_mutants)
any_settings = st.one_of(st.binary(max_size=2048), settings_shaped, settings_mutants)


def assert_clean_exit(res: Any, what: str) -> dict[str, Any]:
    assert res.code in (0, 1), f"{what}: exit {res.code}\n{res.stderr[-3000:]}"
    assert "internal error" not in res.stderr, res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    doc: dict[str, Any] = json.loads(res.stdout)
    return doc


@pytest.mark.parametrize("profile", PROFILES)
def test_agentd_validate_on_fuzzed_files(sandbox_root: Path, profile: str) -> None:
    node = Node(sandbox_root)
    path = sandbox_root.parent / "fuzzed.yaml"

    def check(data: bytes) -> None:
        path.write_bytes(data)
        res = node.agentd("validate", str(path), "--arch", "amd64", "--json")
        doc = assert_clean_exit(res, "agentd validate")
        assert doc["valid"] is (res.code == 0)
        if not doc["valid"]:
            assert_located(doc["errors"], {str(path): data})

    fuzz(profile, "cli/validate", any_document, check)


@pytest.mark.parametrize("profile", PROFILES)
def test_agentd_settings_on_fuzzed_files(sandbox_root: Path, profile: str) -> None:
    node = Node(sandbox_root)
    path = node.path("/etc/wasm-edge/agentd.yaml")
    path.parent.mkdir(parents=True)

    def check(data: bytes) -> None:
        path.write_bytes(data)
        res = node.agentd("settings", "--json")
        doc = assert_clean_exit(res, "agentd settings")
        if res.code == 1:
            assert_located(doc["problems"], {"/etc/wasm-edge/agentd.yaml": data})

    fuzz(profile, "cli/settings", any_settings, check)


# --- the properties: `--version` output -----------------------------------------------------------

NEAR_MISS_PREFIXES = [
    "k3s version ", "k3s version v1.30.4+k3s1 ", "crun version ", "crun version 1.15\ncommit: ",
    "wasmedge version ", "/usr/local/bin/wasmedge version 0.14.1\n", "commit: ", "+WASM:wasmedge ",
    'x (plugin "wasi_nn") version ', "ID=", "VERSION_ID=", 'ID="debian"\nVERSION_ID=',
]  # fmt: skip


@st.composite
def command_output(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["bytes", "text", "near"]))
    if kind == "bytes":
        return draw(st.binary(max_size=1024)).decode("utf-8", "replace")
    if kind == "text":
        return draw(st.text(max_size=400))
    parts = [draw(st.sampled_from(NEAR_MISS_PREFIXES)) + draw(odd_text | st.text(max_size=40))]
    for _ in range(draw(st.integers(0, 4))):
        extra = st.sampled_from(["+SYSTEMD +WASM:wasmedge -CRIU", "", "\r", "spec: 1.0.0"])
        parts.append(draw(extra | st.text(max_size=60)))
    return draw(st.sampled_from(["\n", "\r\n", "\x85", " "])).join(parts)


def check_parsers(text: str) -> None:
    k3s = parse_k3s_version(text)
    if k3s is not None:
        version, commit = k3s
        assert is_k3s_version(version)
        assert commit is None or isinstance(commit, str)
        compare(version, "v1.30.4+k3s1")
    crun = parse_crun_version(text)
    if crun is not None:
        version, commit, features = crun
        assert re.match(r"\d", version)
        assert all(isinstance(f, str) for f in features)
        compare(version, "1.15")
    wasmedge = parse_wasmedge_version(text)
    if wasmedge is not None:
        assert re.match(r"\d+\.\d+\.\d+", wasmedge)
        compare(wasmedge, "0.14.1")
    plugins = parse_wasmedge_plugin_lines(text)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in plugins.items())
    os_name = parse_os_release(text)
    assert isinstance(os_name, str)
    assert os_name
    assert "\n" not in os_name


@pytest.mark.parametrize("profile", PROFILES)
def test_the_version_parsers_never_raise(profile: str) -> None:
    fuzz(profile, "parsers", command_output(), check_parsers)


def check_versions(pair: tuple[str, str]) -> None:
    a, b = pair
    parse_version(a)
    assert compare(a, b) in (-1, 0, 1)
    assert compare(a, a) == 0
    for constraint in (a, b, f">={a}", f"{a},<{b}"):
        with contextlib.suppress(ValueError):  # the documented refusal
            parse_constraint(constraint)
        with contextlib.suppress(ValueError):
            satisfies(b, constraint)


version_text = st.one_of(
    st.text(max_size=30),
    st.from_regex(r"v?[0-9]{1,5}(\.[0-9]{1,5}){0,4}([-~+][0-9A-Za-z.]{0,8})?(\+k3s[0-9])?"),
    st.sampled_from(["v" + "9" * 5000, "1." + "9" * 5000, "1.15", ">=1.8.5", "v1.30.4+k3s1"]),
)


@pytest.mark.parametrize("profile", PROFILES)
def test_version_comparison_never_raises(profile: str) -> None:
    fuzz(profile, "versions", st.tuples(version_text, version_text), check_versions)


@pytest.mark.parametrize("profile", PROFILES)
def test_agentd_detect_with_binaries_that_print_random_bytes(
    sandbox_root: Path, profile: str
) -> None:
    """The real command: stand-in k3s, crun and wasmedge that print random bytes for
    `--version`. detect reports each as found with an error (or a version), never crashes."""
    node = Node(sandbox_root)
    bindir = node.path("/usr/local/bin")
    bindir.mkdir(parents=True)

    def check(outputs: tuple[bytes, bytes, bytes]) -> None:
        for name, output in zip(("k3s", "crun", "wasmedge"), outputs):
            (bindir / f"{name}.out").write_bytes(output)
            script = bindir / name
            script.write_text(f"#!/bin/sh\ncat '{bindir}/{name}.out'\n")
            script.chmod(0o755)
        shutil.rmtree(node.path("/var/lib/wasm-edge"), ignore_errors=True)
        res = node.agentd("detect", "--json")
        doc = assert_clean_exit(res, "agentd detect")
        for name in ("k3s", "crun", "wasmedge"):
            found = doc["components"][name]
            assert found["installed"] is True
            assert (found["version"] is None) is (found.get("error") is not None), found

    random_output = st.binary(max_size=512) | command_output().map(lambda s: s.encode())
    fuzz(profile, "detect", st.tuples(random_output, random_output, random_output), check)


# --- bugs the properties above found (fixed; kept as regressions) --------------------------------


HUGE_PERCENT = textwrap.dedent(
    f"""\
    apiVersion: agentd/v1
    kind: NodeState
    generation: 1
    overrides:
      - name: wave
        rollout: {{percent: 1{"0" * 400}, key: k}}
    """
)


def test_huge_rollout_percent_is_a_located_error_not_a_crash(sandbox_root: Path) -> None:
    node = Node(sandbox_root)
    node.path("/etc/wasm-edge").mkdir(parents=True)
    node.path("/etc/wasm-edge/desired.yaml").write_text(HUGE_PERCENT)
    res = node.agentd("plan")
    assert res.code == 1, res.stderr
    assert "internal error" not in res.stderr
    assert "/etc/wasm-edge/desired.yaml:6:" in res.stderr


NON_FINITE = [".nan", ".inf", "1.0e+400"]


@pytest.mark.parametrize("value", NON_FINITE)
def test_non_finite_durations_are_refused_with_their_place(tmp_path: Path, value: str) -> None:
    path = tmp_path / "agentd.yaml"
    path.write_text(f"downloads:\n  timeout: {value}\n")
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    assert_located(info.value.problems, {str(path): path.read_bytes()})


@pytest.mark.parametrize("value", [".nan", ".inf"])
def test_apply_with_a_non_finite_download_timeout_fails_cleanly(
    sandbox_root: Path, mirror: MirrorServer, mirror_index: Mirror, arch: str, value: str
) -> None:
    node = Node(sandbox_root)
    settings_file = node.path("/etc/wasm-edge/agentd.yaml")
    settings_file.parent.mkdir(parents=True)
    settings_file.write_text(f"downloads:\n  timeout: {value}\n")
    path, sha = mirror_index.artifact("crun", "1.15", arch)
    doc = {
        "apiVersion": "agentd/v1",
        "kind": "NodeState",
        "generation": 1,
        "components": {
            "crun": {
                "version": "1.15",
                "artifacts": {arch: {"url": f"{mirror.url}/{path}", "sha256": sha}},
            }
        },
    }
    res = node.apply(doc)
    assert res.code in (0, 1), res.stderr[-2000:]
    assert "internal error" not in res.stderr


@pytest.mark.parametrize("value", [".nan", ".inf"])
def test_the_daemon_survives_a_non_finite_backoff(
    tmp_path: Path, sandbox_root: Path, value: str
) -> None:
    from tests.unit.daemon.test_daemon import launch_daemon

    node = Node(sandbox_root)
    write_yaml(
        node.path("/etc/wasm-edge/agentd.yaml"),
        {"interval": "1h", "splay": 0},
    )
    settings_file = node.path("/etc/wasm-edge/agentd.yaml")
    settings_file.write_text(
        settings_file.read_text() + f"backoff: {{initial: {value}, max: {value}}}\n"
    )
    # A desired state that cannot be read: the first cycle fails and schedules a retry.
    node.path("/etc/wasm-edge/desired.yaml").write_text("generation: [\n")
    daemon = launch_daemon(node, tmp_path / "notify.sock", tmp_path / "daemon.stderr")
    try:
        failed = daemon.notices.next(
            lambda n: n.fields.get("STATUS", "").startswith("failed:"), "failed:"
        )
        assert "desired.yaml:2:1" in failed.fields["STATUS"]
        assert daemon.proc.poll() is None
    finally:
        daemon.kill()


# --- archives: setuid bits, bombs, 100,000 members ------------------------------------------------


def _targz_with_modes(data: bytes, modes: dict[str, int]) -> bytes:
    """The same tarball with some members' modes replaced (by name suffix)."""
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as src,
        tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as dst,
    ):
        for member in src.getmembers():
            for suffix, mode in modes.items():
                if member.name.endswith(suffix):
                    member.mode = mode
            dst.addfile(member, src.extractfile(member) if member.isreg() else None)
    return gzip.compress(out.getvalue(), mtime=0)


def test_setuid_setgid_and_sticky_bits_never_reach_the_node(
    sandbox_root: Path, tmp_path: Path, arch: str
) -> None:
    """A WasmEdge tarball whose binaries are setuid root and whose library is setgid and
    world-writable is installed with every such bit stripped (archive.py: mode & 0o755)."""
    if arch not in ("amd64", "arm64"):
        pytest.skip("WasmEdge has no build for this architecture")
    archive = _targz_with_modes(
        wasmedge_tarball("0.14.1", arch),
        {
            "bin/wasmedge": 0o4755,
            "bin/wasmedgec": 0o6777,
            "libwasmedge.so.0.1.0": 0o2666,
            "version.h": 0o1644,
            "/bin": 0o7777,
        },
    )
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as listed:
        assert any(m.mode & stat.S_ISUID for m in listed.getmembers())
    served = tmp_path / "served"
    served.mkdir()
    (served / "wasmedge.tar.gz").write_bytes(archive)
    node = Node(sandbox_root)
    with MirrorServer(served) as server:
        doc = {
            "apiVersion": "agentd/v1",
            "kind": "NodeState",
            "generation": 1,
            "components": {
                "wasmedge": {
                    "version": "0.14.1",
                    "artifacts": {
                        arch: {
                            "url": f"{server.url}/wasmedge.tar.gz",
                            "sha256": sha256_hex(archive),
                        }
                    },
                }
            },
        }
        res = node.apply(doc)
    assert res.code == 0, res.stderr
    installed = node.path("/usr/local/bin/wasmedge")
    assert stat.S_IMODE(installed.stat().st_mode) == 0o755
    assert node.version_of("/usr/local/bin/wasmedge").endswith("version 0.14.1")
    checked = 0
    for path in node.root.rglob("*"):
        st_mode = path.lstat().st_mode
        if stat.S_ISLNK(st_mode):
            continue
        assert not st_mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX), path
        assert not st_mode & (stat.S_IWGRP | stat.S_IWOTH), (path, oct(st_mode))
        checked += 1
    assert checked > 5


def zeros_gzip(header: bytes, zero_bytes: int, trailer: bytes) -> bytes:
    """A valid gzip of `header`, `zero_bytes` zeros and `trailer`, built without holding the
    expansion: a deflate block of 1 MiB of zeros, repeated (each ends in a full flush)."""
    mib = bytes(1 << 20)
    assert zero_bytes % len(mib) == 0
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = compressor.compress(header) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(mib) + compressor.flush(zlib.Z_FULL_FLUSH)
    again = compressor.compress(mib) + compressor.flush(zlib.Z_FULL_FLUSH)
    assert block == again  # a full flush resets the window: the block stands alone
    tail = compressor.compress(trailer) + compressor.flush(zlib.Z_FINISH)
    count = zero_bytes // len(mib)
    crc = zlib.crc32(header)
    for _ in range(count):
        crc = zlib.crc32(mib, crc)
    crc = zlib.crc32(trailer, crc)
    size = len(header) + zero_bytes + len(trailer)
    gz_header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    body = head + block * (count - 1) + again + tail if count else head + tail
    return (
        gz_header
        + body
        + (crc & 0xFFFFFFFF).to_bytes(4, "little")
        + (size & 0xFFFFFFFF).to_bytes(4, "little")
    )


def tar_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    return info.tobuf(tarfile.GNU_FORMAT)


def bomb(size: int, declared_extra: Optional[tuple[str, int]] = None) -> bytes:
    """A .tar.gz of one member of `size` zeros (whole MiB); `declared_extra` adds a last header
    whose data is missing (the scan must refuse it before it needs the data)."""
    trailer = tar_header(*declared_extra) if declared_extra is not None else b""
    return zeros_gzip(tar_header("zeros", size), size, trailer + bytes(1024))


def snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.lstat().st_size for p in root.rglob("*")}


def test_a_decompression_bomb_is_refused_without_writing_or_holding_it(tmp_path: Path) -> None:
    """3 MiB of .tar.gz that expands to 3 GiB (one member of zeros, well past the 2 GiB default
    limit): refused from its header, nothing written, and little memory used on the way."""
    archive = tmp_path / "bomb.tar.gz"
    archive.write_bytes(bomb(3 << 30))
    assert archive.stat().st_size < 4 << 20
    before = snapshot(tmp_path)
    tracing = tracemalloc.is_tracing()  # already, under `python -X tracemalloc`
    if not tracing:
        tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        with pytest.raises(ArchiveError, match=f"unpacks to more than {MAX_BYTES} bytes"):
            extract_tarball(archive, tmp_path / "out")
        peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        if not tracing:
            tracemalloc.stop()
    sys.stderr.write(f"bomb refused with a peak of {peak / (1 << 20):.2f} MiB traced\n")
    assert peak < 16 << 20, peak
    assert not (tmp_path / "out").exists()
    assert snapshot(tmp_path) == before


BOMB_CHILD = """
import json, sys, tracemalloc
from pathlib import Path
from agentd.converge.archive import extract_tarball
from agentd.core.errors import ArchiveError

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
tracemalloc.start()
before = hwm()
try:
    extract_tarball(Path(sys.argv[1]), Path(sys.argv[2]))
    outcome = "extracted"
except ArchiveError as exc:
    outcome = str(exc)
print(json.dumps({"outcome": outcome, "hwm_before": before, "hwm_after": hwm(),
                  "traced_peak": tracemalloc.get_traced_memory()[1]}))
"""


@pytest.mark.stress
def test_a_bomb_whose_first_member_is_real_is_decompressed_in_bounded_memory(
    tmp_path: Path,
) -> None:
    """1.5 GiB of real zeros (under the limit) then a header for 1 GiB more: the scan must
    decompress the first member to reach the second header. Peak RSS of a fresh process is
    measured around the call (VmHWM), and nothing is written."""
    archive = tmp_path / "bomb.tar.gz"
    archive.write_bytes(bomb(1536 << 20, declared_extra=("more", 1 << 30)))
    assert archive.stat().st_size < 2 << 20
    before = snapshot(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", BOMB_CHILD, str(archive), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert "unpacks to more than" in result["outcome"], result
    grown = result["hwm_after"] - result["hwm_before"]
    sys.stderr.write(
        f"1.5 GiB bomb: RSS high-water +{grown / (1 << 20):.1f} MiB, "
        f"traced peak {result['traced_peak'] / (1 << 20):.1f} MiB\n"
    )
    assert grown < 64 << 20, result
    assert not (tmp_path / "out").exists()
    assert snapshot(tmp_path) == before


def many_members(count: int) -> bytes:
    """A .tar.gz of `count` empty files f000000, f000001, ...: one header template, with the
    name's digits and the checksum patched (tarfile would take seconds for 100,000)."""
    template = bytearray(tar_header("f000000", 0))
    digits = slice(1, 7)
    base_sum = sum(template[:148]) + sum(template[156:512]) + 8 * 0x20 - sum(template[digits])
    parts = []
    for i in range(count):
        name = b"%06d" % i
        template[digits] = name
        template[148:156] = b"%06o\x00 " % (base_sum + sum(name))
        parts.append(bytes(template))
    parts.append(bytes(1024))
    return gzip.compress(b"".join(parts), compresslevel=1, mtime=0)


def test_an_archive_of_100000_members_is_refused_after_reading_the_first_headers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = tmp_path / "many.tar.gz"
    archive.write_bytes(many_members(100_000))
    with tarfile.open(archive) as check:  # a valid archive: tarfile reads all of it
        names = check.getnames()
    assert len(names) == 100_000
    assert names[-1] == "f099999"
    headers_read = [0]
    real_next = tarfile.TarFile.next

    def counting_next(self: tarfile.TarFile) -> Optional[tarfile.TarInfo]:
        headers_read[0] += 1
        return real_next(self)

    monkeypatch.setattr(tarfile.TarFile, "next", counting_next)
    before = snapshot(tmp_path)
    with pytest.raises(ArchiveError, match=f"more than {MAX_MEMBERS} members"):
        extract_tarball(archive, tmp_path / "out")
    # Refused once the limit was passed, not after reading the 100,000.
    assert headers_read[0] <= MAX_MEMBERS + 2, headers_read[0]
    assert not (tmp_path / "out").exists()
    assert snapshot(tmp_path) == before


# --- archives: random member lists and damaged headers ------------------------------------------


@dataclass(frozen=True)
class Member:
    name: str
    kind: str  # file, dir, symlink, hardlink, fifo, chr, blk
    target: str
    mode: int
    data: bytes


OUTSIDE = "@OUTSIDE@"  # replaced by the absolute path of a directory beside the target
name_parts = st.sampled_from(["a", "b", "lib", "..", ".", "", "bin", "x.so", OUTSIDE])
member_names = st.one_of(
    st.lists(name_parts, min_size=1, max_size=4).map("/".join),
    st.sampled_from(["/etc/passwd", "a/../../b", "./a", "a/", "//a", OUTSIDE + "/x"]),
)
members = st.builds(
    Member,
    member_names,
    st.sampled_from(["file", "file", "dir", "symlink", "hardlink", "fifo", "chr", "blk"]),
    member_names,
    st.integers(0, 0o7777),
    st.binary(max_size=64)
    | st.sampled_from([b"22 GNU.sparse.size=ab\n", b"17 size=notanum\n", b"20 path=../../evil\n"]),
)


def build_archive(path: Path, items: list[Member], outside: Path, compress: bool) -> None:
    kinds = {
        "file": tarfile.REGTYPE,
        "dir": tarfile.DIRTYPE,
        "symlink": tarfile.SYMTYPE,
        "hardlink": tarfile.LNKTYPE,
        "fifo": tarfile.FIFOTYPE,
        "chr": tarfile.CHRTYPE,
        "blk": tarfile.BLKTYPE,
    }
    with tarfile.open(path, "w:gz" if compress else "w", format=tarfile.PAX_FORMAT) as tar:
        for item in items:
            info = tarfile.TarInfo(item.name.replace(OUTSIDE, str(outside)))
            info.type = kinds[item.kind]
            info.mode = item.mode
            info.linkname = item.target.replace(OUTSIDE, str(outside))
            data = item.data if item.kind == "file" else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)


def everything(root: Path) -> dict[str, str]:
    """Every path under root (symlinks not followed) with what it is and holds."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st_ = path.lstat()
            if stat.S_ISLNK(st_.st_mode):
                what = "-> " + os.readlink(path)
            elif stat.S_ISREG(st_.st_mode):
                what = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                what = oct(st_.st_mode)
            found[str(path.relative_to(root))] = what
    return found


def check_extraction(workdir: Path, archive: Path) -> None:
    """Extracted whole inside `dest`, or refused with ArchiveError; nothing else anywhere."""
    dest = workdir / "target" / "out"
    before = everything(workdir)
    try:
        extracted = extract_tarball(archive, dest)
    except ArchiveError as exc:
        message = str(exc)
        assert "\n" not in message
        assert not dest.exists()
        assert everything(workdir) == before
        return
    after = everything(workdir)
    outside_dest = {k: v for k, v in after.items() if not k.startswith("target")}
    assert outside_dest == {k: v for k, v in before.items() if not k.startswith("target")}
    real_dest = os.path.realpath(dest)
    listed = []
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st_ = path.lstat()
            rel = str(path.relative_to(dest))
            if stat.S_ISLNK(st_.st_mode):
                resolved = os.path.realpath(path)
                assert resolved == real_dest or resolved.startswith(real_dest + os.sep), (
                    rel,
                    os.readlink(path),
                )
                listed.append(rel)
            elif stat.S_ISREG(st_.st_mode):
                assert st_.st_nlink == 1, rel
                assert not st_.st_mode & 0o7022, (rel, oct(st_.st_mode))
                listed.append(rel)
            else:
                assert stat.S_ISDIR(st_.st_mode), (rel, oct(st_.st_mode))
                assert stat.S_IMODE(st_.st_mode) == 0o755, rel
    assert sorted(listed) == extracted


def fresh_workdir(base: Path) -> Path:
    work = base / "work"
    shutil.rmtree(work, ignore_errors=True)
    (work / "outside").mkdir(parents=True)
    (work / "outside" / "sentinel").write_text("keep me\n")
    return work


@pytest.mark.parametrize("profile", PROFILES)
def test_random_member_lists_extract_inside_the_target_or_are_refused(
    tmp_path: Path, profile: str
) -> None:
    def check(case: tuple[list[Member], bool]) -> None:
        items, compress = case
        work = fresh_workdir(tmp_path)
        archive = tmp_path / "fuzzed.tar"
        build_archive(archive, items, work / "outside", compress)
        check_extraction(work, archive)

    strategy = st.tuples(st.lists(members, min_size=1, max_size=8), st.booleans())
    fuzz(profile, "archive/members", strategy, check)


@st.composite
def damaged_tar(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A valid tar of a few members with bytes of one header changed, its checksum made right
    again (so tarfile reads the damage instead of stopping at a bad checksum)."""
    items = draw(st.lists(members, min_size=1, max_size=4))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=draw(st.sampled_from(
        [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT]))) as tar:  # fmt: skip
        for item in items:
            info = tarfile.TarInfo(item.name.replace(OUTSIDE, "/tmp/outside")[:90])
            info.size = len(item.data)
            info.mode = item.mode
            with contextlib.suppress(ValueError):  # names ustar cannot hold
                tar.addfile(info, io.BytesIO(item.data))
    data = bytearray(buf.getvalue())
    headers = [i for i in range(0, len(data) - 512, 512) if data[i + 257 : i + 262] == b"ustar"]
    if headers:
        at = draw(st.sampled_from(headers))
        for _ in range(draw(st.integers(1, 6))):
            offset = draw(st.sampled_from([0, 100, 108, 124, 136, 156, 157, 257, 263, 345]))
            offset += draw(st.integers(0, 11))
            data[at + offset] = draw(st.sampled_from(b"0123456789 \x00\x80\xffxSLKgx./"))
        block = data[at : at + 512]
        checksum = 256 + sum(block[:148]) + sum(block[156:])
        data[at + 148 : at + 156] = b"%06o\x00 " % checksum
    return bytes(data), draw(st.booleans())


@pytest.mark.parametrize("profile", PROFILES)
def test_damaged_headers_are_refused_or_extracted_inside_the_target(
    tmp_path: Path, profile: str
) -> None:
    def check(case: tuple[bytes, bool]) -> None:
        data, compress = case
        work = fresh_workdir(tmp_path)
        archive = tmp_path / "damaged.tar"
        archive.write_bytes(gzip.compress(data, mtime=0) if compress else data)
        check_extraction(work, archive)

    fuzz(profile, "archive/headers", damaged_tar(), check)


def sparse_pax(pax: dict[str, str], data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("lib/libwasmedge.so")
        info.size = len(data)
        info.pax_headers = pax
        tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), mtime=0)


MALFORMED_SPARSE = {
    "size": ({"GNU.sparse.size": "abc"}, b"x" * 10),
    "realsize": ({"GNU.sparse.realsize": "abc"}, b"x" * 10),
    "map": ({"GNU.sparse.map": "a,b", "GNU.sparse.numblocks": "1"}, b"x" * 10),
    "map-1.0": ({"GNU.sparse.major": "1", "GNU.sparse.minor": "0"}, b"garbage\n" + bytes(504)),
}


@pytest.mark.parametrize("kind", sorted(MALFORMED_SPARSE))
def test_a_malformed_sparse_header_is_refused_as_an_archive_error(
    tmp_path: Path, kind: str
) -> None:
    pax, data = MALFORMED_SPARSE[kind]
    archive = tmp_path / "sparse.tar.gz"
    archive.write_bytes(sparse_pax(pax, data))
    before = snapshot(tmp_path)
    with pytest.raises(ArchiveError, match=r"sparse\.tar\.gz"):
        extract_tarball(archive, tmp_path / "out")
    assert snapshot(tmp_path) == before


def test_apply_of_a_tarball_with_a_malformed_sparse_header_fails_cleanly(
    sandbox_root: Path, tmp_path: Path, arch: str
) -> None:
    if arch not in ("amd64", "arm64"):
        pytest.skip("WasmEdge has no build for this architecture")
    archive = sparse_pax({"GNU.sparse.size": "abc"}, b"x" * 10)
    served = tmp_path / "served"
    served.mkdir()
    (served / "wasmedge.tar.gz").write_bytes(archive)
    node = Node(sandbox_root)
    with MirrorServer(served) as server:
        url = f"{server.url}/wasmedge.tar.gz"
        res = node.apply(
            {
                "apiVersion": "agentd/v1",
                "kind": "NodeState",
                "generation": 1,
                "components": {
                    "wasmedge": {
                        "version": "0.14.1",
                        "artifacts": {arch: {"url": url, "sha256": sha256_hex(archive)}},
                    }
                },
            }
        )
    assert res.code == 1, res.stderr[-2000:]
    assert "internal error" not in res.stderr
    assert node.tree() == {}


def test_a_sparse_member_counts_its_real_size_toward_the_limit(tmp_path: Path) -> None:
    """A GNU sparse 1.0 member: a few bytes in the archive, 3 GiB once unpacked (holes written
    out as zeros by the extraction): refused by the size limit, nothing written."""
    realsize = 3 << 30
    sparse_map = b"1\n%d\n1\n" % (realsize - 1)
    archive = tmp_path / "sparse.tar.gz"
    archive.write_bytes(
        sparse_pax(
            {
                "GNU.sparse.major": "1",
                "GNU.sparse.minor": "0",
                "GNU.sparse.name": "lib/libwasmedge.so",
                "GNU.sparse.realsize": str(realsize),
            },
            sparse_map + bytes(512 - len(sparse_map)) + b"x",
        )
    )
    before = snapshot(tmp_path)
    with pytest.raises(ArchiveError, match="unpacks to more than"):
        extract_tarball(archive, tmp_path / "out")
    assert snapshot(tmp_path) == before
