"""The desired state from real YAML files: every error at the FILE:LINE:COL of its node."""

from __future__ import annotations

import hashlib
import json
import re
import time
import tracemalloc
from pathlib import Path

import pytest

from agentd.core.errors import DesiredStateError
from agentd.desired.model import json_schema
from agentd.desired.validate import ValidationReport, load_and_validate, validate
from agentd.schema.yamlload import (
    MAX_DOCUMENT_BYTES,
    MAX_NODES,
    Loaded,
    Pos,
    load_file,
    load_yaml,
    locate,
    merge,
)


def _sha(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _with_hashes(text: str) -> str:
    return re.sub(r"<sha:([^>]+)>", lambda m: _sha(m.group(1)), text)


MIRROR = "https://mirror.example"
VALID = _with_hashes(
    f"""\
apiVersion: agentd/v1
kind: NodeState
generation: 7
components:
  crun:
    version: "1.15"
    artifacts:
      amd64: {{url: "{MIRROR}/crun-1.15-linux-amd64", sha256: "<sha:crun-amd64>"}}
      arm64: {{url: "{MIRROR}/crun-1.15-linux-arm64", sha256: "<sha:crun-arm64>"}}
  wasmedge:
    version: "0.14.1"
    artifacts:
      amd64: {{url: "{MIRROR}/WasmEdge-0.14.1-manylinux2014_x86_64.tar.gz", sha256: "<sha:we-a>"}}
      arm64: {{url: "{MIRROR}/WasmEdge-0.14.1-manylinux2014_aarch64.tar.gz", sha256: "<sha:we-b>"}}
    plugins:
      - name: wasi_nn-ggml
        artifacts:
          amd64:
            url: "{MIRROR}/WasmEdge-plugin-wasi_nn-ggml-0.14.1-manylinux2014_x86_64.tar.gz"
            sha256: "<sha:nn-amd64>"
          arm64:
            url: "{MIRROR}/WasmEdge-plugin-wasi_nn-ggml-0.14.1-manylinux2014_aarch64.tar.gz"
            sha256: "<sha:nn-arm64>"
  k3s:
    version: "v1.30.4+k3s1"
    role: server
    tokenFile: /etc/wasm-edge/k3s-token
    artifacts:
      amd64: {{url: "{MIRROR}/k3s", sha256: "<sha:k3s-amd64>"}}
      arm64: {{url: "{MIRROR}/k3s-arm64", sha256: "<sha:k3s-arm64>"}}
    config:
      write-kubeconfig-mode: "0644"
      node-label: [wasm-runtime=enabled, site=edge]
runtimeClasses:
  - name: crun-wasm
    handler: crun-wasm
    nodeSelector: {{wasm-runtime: enabled}}
"""
)


def _edit(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"{old!r} must occur exactly once"
    return text.replace(old, new)


def _at(text: str, needle: str, after: str = "") -> str:
    """`line:col` (1-based) where `needle` starts, searching from the first `after`."""
    i = text.index(needle, text.index(after) if after else 0)
    line = text.count("\n", 0, i) + 1
    col = i - (text.rfind("\n", 0, i) + 1) + 1
    return f"{line}:{col}"


def _quoted(text: str, value: str) -> str:
    """`line:col` of the double-quoted scalar `value`: a node starts at its opening quote."""
    return _at(text, f'"{value}"')


def _write(tmp_path: Path, text: str | bytes, name: str = "desired.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    return path


def _check(tmp_path: Path, text: str, arch: str | None = None) -> tuple[Path, ValidationReport]:
    path = _write(tmp_path, text)
    return path, load_and_validate([path], arch, merge_all=True)


def _load_errors(text: str | bytes, name: str = "d.yaml") -> list[str]:
    raw = text.encode() if isinstance(text, str) else text
    with pytest.raises(DesiredStateError) as caught:
        load_yaml(raw, name)
    return caught.value.problems


# --- a valid document --------------------------------------------------------------------------


@pytest.mark.parametrize("arch", [None, "amd64", "arm64"])
def test_full_document_validates(tmp_path: Path, arch: str | None) -> None:
    _, report = _check(tmp_path, VALID, arch)
    assert report.errors == []
    assert report.warnings == []
    assert report.ok
    state = report.state
    assert state is not None
    assert state.generation == 7
    assert state.components.k3s is not None
    assert state.components.k3s.config == {
        "write-kubeconfig-mode": "0644",
        "node-label": ["wasm-runtime=enabled", "site=edge"],
    }
    assert state.components.wasmedge is not None
    assert [p.name for p in state.components.wasmedge.plugins] == ["wasi_nn-ggml"]


def test_positions_of_values_and_keys() -> None:
    loaded = load_yaml(VALID.encode(), "d.yaml")
    assert loaded.positions[()] == Pos("d.yaml", 1, 1)
    assert str(loaded.positions[("generation",)]) == "d.yaml:3:13"
    assert str(loaded.keys[("components", "k3s")]) == f"d.yaml:{_at(VALID, 'k3s:')}"
    assert str(loaded.positions[("components", "k3s")]) == f"d.yaml:{_at(VALID, 'version', 'k3s:')}"
    first_plugin = ("components", "wasmedge", "plugins", 0)
    assert str(loaded.positions[first_plugin]) == f"d.yaml:{_at(VALID, 'name: wasi_nn')}"


def test_locate_skips_pydantic_tags_and_falls_back_to_the_longest_prefix() -> None:
    loaded = load_yaml(VALID.encode(), "d.yaml")
    version = loaded.positions[("components", "k3s", "version")]
    assert locate(loaded, ("components", "k3s", "function-after[_x(), str]", "version")) == version
    k3s = loaded.positions[("components", "k3s")]
    assert locate(loaded, ("components", "k3s", "server")) == k3s
    assert locate(loaded, ("components", "k3s"), key=True) == loaded.keys[("components", "k3s")]
    assert locate(loaded, ()) == Pos("d.yaml", 1, 1)


# --- schema errors, each at its node -----------------------------------------------------------


def test_unknown_top_level_key_points_at_the_key(tmp_path: Path) -> None:
    text = _edit(VALID, "kind: NodeState\n", "kind: NodeState\ncolour: blue\n")
    path, report = _check(tmp_path, text)
    assert report.errors == [
        f"{path}:3:1: unknown field 'colour' "
        "(known: apiVersion, kind, generation, selector, components, runtimeClasses, addons, "
        "images, maintenanceWindow, overrides)"
    ]
    assert report.state is None


def test_unknown_component_lists_the_known_ones(tmp_path: Path) -> None:
    text = _edit(VALID, "components:\n", 'components:\n  wasmtime:\n    version: "27"\n')
    path, report = _check(tmp_path, text)
    assert report.errors == [
        f"{path}:5:3: unknown component 'wasmtime' (known: k3s, crun, wasmedge)"
    ]


def test_unknown_field_suggests_the_close_one(tmp_path: Path) -> None:
    text = _edit(VALID, "tokenFile:", "tokenfile:")
    path, report = _check(tmp_path, text)
    assert report.errors == [
        f"{path}:{_at(text, 'tokenfile')}: unknown field 'tokenfile' (did you mean 'tokenFile'? "
        "known: state, version, artifacts, role, server, tokenFile, config, registries)"
    ]


def test_wrong_api_version(tmp_path: Path) -> None:
    path, report = _check(tmp_path, _edit(VALID, "agentd/v1", "agentd/v2"))
    assert report.errors == [f"{path}:1:13: apiVersion: Input should be 'agentd/v1'"]


def test_missing_generation_points_at_the_root_mapping(tmp_path: Path) -> None:
    path, report = _check(tmp_path, _edit(VALID, "generation: 7\n", ""))
    assert report.errors == [f"{path}:1:1: missing field 'generation'"]


def test_negative_generation(tmp_path: Path) -> None:
    path, report = _check(tmp_path, _edit(VALID, "generation: 7", "generation: -3"))
    assert report.errors == [f"{path}:3:13: generation: Input should be greater than or equal to 0"]


def test_sha256_not_64_hex(tmp_path: Path) -> None:
    text = _edit(VALID, _sha("crun-arm64"), "abc123")
    path, report = _check(tmp_path, text)
    assert report.errors == [
        f"{path}:{_quoted(text, 'abc123')}: sha256: must be 64 lowercase hexadecimal digits "
        "(got 6 characters)"
    ]
    # The column is that of the quoted scalar, on line 9.
    assert _at(text, "abc123").startswith("9:")


def test_sha256_in_upper_case(tmp_path: Path) -> None:
    upper = _sha("crun-arm64").upper()
    text = _edit(VALID, _sha("crun-arm64"), upper)
    path, report = _check(tmp_path, text)
    assert report.errors == [
        f"{path}:{_quoted(text, upper)}: sha256: must be 64 lowercase hexadecimal digits "
        "(this has upper case)"
    ]


def test_missing_sha256_points_at_the_artifact_mapping(tmp_path: Path) -> None:
    text = _edit(VALID, f', sha256: "{_sha("crun-amd64")}"', "")
    path, report = _check(tmp_path, text)
    assert report.errors == [f"{path}:8:14: missing field 'sha256'"]


def test_unquoted_version_is_refused(tmp_path: Path) -> None:
    text = _edit(VALID, 'version: "1.15"', "version: 1.15")
    path, report = _check(tmp_path, text)
    assert report.errors == [
        f"{path}:6:14: version must be a quoted string (YAML read 1.15 as a number)"
    ]


def test_unknown_architecture_points_at_the_key(tmp_path: Path) -> None:
    text = _edit(
        VALID, f'      arm64: {{url: "{MIRROR}/crun', f'      x86_64: {{url: "{MIRROR}/crun'
    )
    path, report = _check(tmp_path, text)
    assert report.errors == [
        f"{path}:9:7: artifacts key 'x86_64': Input should be 'amd64', 'arm64' or 'armv7'"
    ]


def test_number_where_a_string_belongs(tmp_path: Path) -> None:
    path, report = _check(tmp_path, _edit(VALID, "name: crun-wasm", "name: 1"))
    assert report.errors == [
        f"{path}:{_at(VALID, 'crun-wasm', 'runtimeClasses')}: name: expected a string, got the "
        "number 1 (quote it to keep it a string)"
    ]


def test_yaml_1_1_boolean_as_k3s_flag_name(tmp_path: Path) -> None:
    text = _edit(VALID, '      write-kubeconfig-mode: "0644"\n', "      on: x\n")
    path, report = _check(tmp_path, text)
    assert report.errors == [
        f"{path}:{_at(text, 'on: x')}: config key: expected a string, got the boolean true "
        "(quote it to keep it a string)"
    ]


def test_document_that_is_not_a_mapping(tmp_path: Path) -> None:
    path, report = _check(tmp_path, "- apiVersion: agentd/v1\n")
    assert report.errors == [f"{path}:1:1: expected a mapping, got a list"]


def test_a_list_merged_under_a_drop_in_is_still_reported(tmp_path: Path) -> None:
    # Merged as it is, the drop-in's mapping would replace the list, and its error with it.
    base = _write(tmp_path, "- apiVersion: agentd/v1\n")
    drop_in = _write(tmp_path, VALID, "10-local.yaml")
    report = load_and_validate([base, drop_in], None, merge_all=True)
    assert report.errors == [f"{base}:1:1: expected a mapping, got a list"]


def test_several_errors_are_all_reported_in_order(tmp_path: Path) -> None:
    text = _edit(VALID, "agentd/v1", "agentd/v0")
    text = _edit(text, "generation: 7", "generation: -1")
    text = _edit(text, _sha("k3s-amd64"), "0" * 63)
    text = _edit(text, "    role: server\n", "    role: server\n    colour: blue\n")
    path, report = _check(tmp_path, text)
    assert report.errors == [
        f"{path}:1:13: apiVersion: Input should be 'agentd/v1'",
        f"{path}:3:13: generation: Input should be greater than or equal to 0",
        f"{path}:{_at(text, 'colour')}: unknown field 'colour' (known: state, version, "
        "artifacts, role, server, tokenFile, config, registries)",
        f"{path}:{_quoted(text, '0' * 63)}: sha256: must be 64 lowercase hexadecimal digits "
        "(got 63 characters)",
    ]


# --- checks that know k3s, crun and WasmEdge ---------------------------------------------------


@pytest.mark.parametrize("config", ["{wasm: true}", '{exec: "server --wasm"}'])
def test_k3s_has_no_wasm_flag(tmp_path: Path, config: str) -> None:
    block = VALID[VALID.index("    config:\n") : VALID.index("runtimeClasses:")]
    text = _edit(VALID, block, f"    config: {config}\n")
    path, report = _check(tmp_path, text)
    value = "true" if "wasm:" in config else '"server'
    assert len(report.errors) == 1
    assert report.errors[0].startswith(f"{path}:{_at(text, value, 'config:')}: k3s has no 'wasm'")
    assert "since v1.29.0+k3s1 k3s finds Wasm runtimes" in report.errors[0]
    assert "on its PATH" in report.errors[0]


def test_k3s_version_needs_k3s_build_suffix(tmp_path: Path) -> None:
    path, report = _check(tmp_path, _edit(VALID, '"v1.30.4+k3s1"', '"v1.30.4"'))
    where = _at(VALID, '"v1.30.4')
    assert report.errors == [
        f"{path}:{where}: k3s versions look like v1.30.4+k3s1; 'v1.30.4' has "
        "no +k3sN (did you mean v1.30.4+k3s1?)"
    ]


def test_artifact_missing_for_this_nodes_arch(tmp_path: Path) -> None:
    line = (
        f'      arm64: {{url: "{MIRROR}/crun-1.15-linux-arm64", sha256: "{_sha("crun-arm64")}"}}\n'
    )
    text = _edit(VALID, line, "")
    path, report = _check(tmp_path, text, "arm64")
    assert report.errors == [f"{path}:8:7: no arm64 artifact for crun, and this node is arm64"]
    _, on_amd64 = _check(tmp_path, text, "amd64")
    assert on_amd64.errors == []


ARMV7_WARNING = (
    "warning: WasmEdge publishes no 32-bit ARM (armv7) build; this armv7 node leaves WasmEdge "
    "and its plugins out and applies the rest of the desired state; set 'state: absent' for "
    "wasmedge on armv7 nodes (an override with selector arch: [armv7], or a node-local "
    "drop-in) to say so"
)


def test_wasmedge_present_on_armv7(tmp_path: Path) -> None:
    path, report = _check(tmp_path, VALID, "armv7")
    wasmedge = _at(VALID, "version", "wasmedge:")
    # A warning: the plan refuses WasmEdge alone (agentd/plan/wasmedge.py), so that one fleet
    # document still converges an armv7 node's k3s and crun. Here crun has no armv7 artifact.
    assert f"{path}:{wasmedge}: {ARMV7_WARNING}" in report.warnings
    assert not any("WasmEdge" in e for e in report.errors)
    assert f"{path}:8:7: no armv7 artifact for crun, and this node is armv7" in report.errors
    assert report.state is None


def test_wasmedge_on_armv7_leaves_the_rest_of_the_document_valid(tmp_path: Path) -> None:
    text = VALID
    for asset in ("crun-1.15-linux", "k3s"):
        line = next(
            ln
            for ln in text.splitlines(keepends=True)
            if f"{MIRROR}/{asset}" in ln and "arm64" in ln
        )
        armv7 = line.replace("arm64:", "armv7:").replace("-arm64", "-armhf")
        text = _edit(text, line, line + armv7.replace("sha:", "sha:v7-"))
    path, report = _check(tmp_path, text, "armv7")
    assert report.errors == []
    assert report.warnings == [f"{path}:{_at(text, 'version', 'wasmedge:')}: {ARMV7_WARNING}"]
    assert report.state is not None
    assert report.state.components.wasmedge is not None


def test_socket_plugin_does_not_exist(tmp_path: Path) -> None:
    text = _edit(VALID, "    plugins:\n", "    plugins:\n      - name: wasi_socket\n")
    path, report = _check(tmp_path, text)
    assert len(report.errors) == 1
    assert report.errors[0].startswith(
        f"{path}:{_at(text, 'wasi_socket')}: there is no 'wasi_socket' plugin: sockets (and DNS) "
        "are built into WasmEdge's WASI module"
    )


def test_unknown_plugin_is_a_warning_not_an_error(tmp_path: Path) -> None:
    text = _edit(VALID, "    plugins:\n", "    plugins:\n      - name: wasi_fancy\n")
    path, report = _check(tmp_path, text)
    assert report.errors == []
    assert report.warnings == [
        f"{path}:{_at(text, 'wasi_fancy')}: warning: unknown WasmEdge plugin 'wasi_fancy'"
    ]
    assert report.state is not None


def test_agent_without_server(tmp_path: Path) -> None:
    path, report = _check(tmp_path, _edit(VALID, "role: server", "role: agent"))
    assert report.errors == [
        f"{path}:{_at(VALID, 'version', 'k3s:')}: an agent needs 'server: https://HOST:6443'"
    ]


def test_token_in_k3s_config(tmp_path: Path) -> None:
    text = _edit(VALID, '      write-kubeconfig-mode: "0644"\n', "      token: s3cret\n")
    path, report = _check(tmp_path, text)
    assert report.errors == [
        f"{path}:{_at(text, 's3cret')}: a token is never written in the desired state: put it in "
        "a file on the node and name it with tokenFile"
    ]


# --- what the loader refuses -------------------------------------------------------------------


def test_duplicate_key_is_reported_at_the_second(tmp_path: Path) -> None:
    text = _edit(VALID, "generation: 7\n", "generation: 7\ngeneration: 8\n")
    path, report = _check(tmp_path, text)
    assert report.errors == [f"{path}:4:1: duplicate key 'generation' (first at line 3, column 1)"]
    assert report.state is None


def test_duplicate_keys_nested_are_all_reported() -> None:
    assert _load_errors("a:\n  b: 1\n  b: 2\nc: [{d: 1, d: 2}]\n") == [
        "d.yaml:3:3: duplicate key 'b' (first at line 2, column 3)",
        "d.yaml:4:12: duplicate key 'd' (first at line 4, column 6)",
    ]


def test_file_over_one_mib_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, b"#" * (MAX_DOCUMENT_BYTES + 1))
    with pytest.raises(DesiredStateError) as caught:
        load_file(path)
    assert caught.value.problems == [f"{path}:1:1: document larger than 1048576 bytes (1 MiB)"]


def test_file_of_exactly_one_mib_is_read(tmp_path: Path) -> None:
    padding = MAX_DOCUMENT_BYTES - len(VALID.encode())
    path = _write(tmp_path, VALID + "#" * (padding - 1) + "\n")
    assert path.stat().st_size == MAX_DOCUMENT_BYTES
    assert load_and_validate([path], None, merge_all=True).errors == []


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_endless_device_is_refused_without_reading_it() -> None:
    # /dev/zero never ends: this returns only because load_file reads regular files only.
    with pytest.raises(DesiredStateError) as caught:
        load_file(Path("/dev/zero"), "zero.yaml")
    assert caught.value.problems == [
        "zero.yaml: cannot read: is a character device, not a regular file"
    ]


def test_sparse_file_is_refused_by_its_size_unread(tmp_path: Path) -> None:
    path = tmp_path / "sparse.yaml"
    with path.open("wb") as f:
        f.truncate(2 << 30)  # 2 GiB of hole: reading it whole would take 2 GiB of memory
    tracemalloc.start()
    try:
        with pytest.raises(DesiredStateError) as caught:
            load_file(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert caught.value.problems == [f"{path}:1:1: document larger than 1048576 bytes (1 MiB)"]
    assert peak < MAX_DOCUMENT_BYTES


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    report = load_and_validate([missing], None, merge_all=True)
    assert report.errors == [f"{missing}: cannot read: No such file or directory"]
    assert report.state is None


def _billion_laughs() -> str:
    lines = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    names = "abcdefghij"
    for prev, name in zip(names, names[1:]):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]")
    return "\n".join(lines) + "\n"


def test_billion_laughs_is_refused_by_the_node_bound() -> None:
    tracemalloc.start()
    started = time.monotonic()
    try:
        problems = _load_errors(_billion_laughs())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.monotonic() - started
    # 10**10 nodes fully expanded; the bound stops it after MAX_NODES, in well under a second
    # untraced, and with memory to match.
    assert len(problems) == 1
    assert problems[0].endswith(f": YAML aliases expand beyond {MAX_NODES} nodes")
    assert problems[0].startswith("d.yaml:")
    assert peak < 64 * 1024 * 1024
    assert elapsed < 20


def test_many_plain_nodes_are_refused_while_parsing() -> None:
    text = "x: [" + ", ".join(["1"] * (MAX_NODES + 10)) + "]\n"
    problems = _load_errors(text)
    assert len(problems) == 1
    assert problems[0].endswith(f": document has more than {MAX_NODES} nodes")


@pytest.mark.parametrize("text", ["a: &x [1, *x]\n", "a: &x {b: *x}\n", "a: &x {<<: *x}\n"])
def test_recursive_alias_is_refused(text: str) -> None:
    assert _load_errors(text) == ["d.yaml:1:4: recursive YAML alias: this node contains itself"]


def test_aliases_and_merge_keys_work_within_bounds() -> None:
    merged = load_yaml(b"base: &b {x: 1, y: 2}\nuse:\n  <<: *b\n  y: 3\n", "m.yaml")
    assert merged.data == {"base": {"x": 1, "y": 2}, "use": {"y": 3, "x": 1}}
    assert merged.positions[("use", "y")] == Pos("m.yaml", 4, 6)
    assert merged.positions[("use", "x")] == Pos("m.yaml", 1, 14)


def test_yaml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    text = _edit(VALID, "kind: NodeState\n", "kind: NodeState: x\n")
    path, report = _check(tmp_path, text)
    assert report.errors == [f"{path}:2:16: mapping values are not allowed here"]


def test_unclosed_flow_mapping() -> None:
    problems = _load_errors('a: {url: "x"\nb: 1\n')
    assert len(problems) == 1
    assert problems[0].startswith("d.yaml:2:1: ")
    assert "while parsing a flow mapping at line 1, column 4" in problems[0]


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "---\n", "--- ~\n"])
def test_empty_document(tmp_path: Path, text: str) -> None:
    path, report = _check(tmp_path, text)
    assert report.errors == [f"{path}:1:1: empty document"]


def test_second_document_is_refused() -> None:
    assert _load_errors("generation: 1\n---\ngeneration: 2\n") == [
        "d.yaml:2:1: a desired-state file holds one YAML document, and this is a second one"
    ]


def test_keys_must_be_scalars_and_tags_are_safe() -> None:
    assert _load_errors("? [a]\n: 1\nb: !!python/object:os.system x\nc: !!int x\n") == [
        "d.yaml:1:3: a mapping key must be a scalar",
        "d.yaml:3:4: unsupported YAML tag !!python/object:os.system",
        "d.yaml:4:4: 'x' is not a valid !!int",
    ]


def test_scalars_pyyaml_cannot_build_are_located_even_through_an_alias() -> None:
    # Found by tests/scenarios/test_hostile.py: `!!int ""` raised IndexError out of PyYAML, and a
    # number
    # past Python's 4,300-digit limit, merged in through an alias, raised "recursive node".
    huge = "9" * 5000
    assert _load_errors(f'a: &x {{v: {huge}}}\nb: {{<<: *x}}\nc: !!int ""\n') == [
        f"d.yaml:1:11: '{huge[:40]}... (5000 characters)' is not a valid !!int",
        f"d.yaml:1:11: '{huge[:40]}... (5000 characters)' is not a valid !!int",
        "d.yaml:3:4: '' is not a valid !!int",
    ]


def test_a_merge_of_a_mapping_under_a_refused_tag_is_located() -> None:
    # Found by tests/scenarios/test_hostile.py (stress): `<<: *base` of a `!!str`-tagged mapping
    # raised
    # TypeError instead of reporting the tag.
    assert _load_errors("a: !!str &x {v: 1}\nb: {<<: *x, w: 2}\n") == [
        "d.yaml:1:4: unsupported YAML tag !!str",
        "d.yaml:1:4: unsupported YAML tag !!str",
    ]


def test_an_escape_past_the_last_unicode_character_is_located() -> None:
    # Found by tests/scenarios/test_hostile.py (stress): PyYAML's scanner raised chr()'s ValueError.
    assert _load_errors('a: 1\nb: ["x", "\\U00110000"]\n') == [
        "d.yaml:2:13: an escape names no Unicode character"
    ]


def test_timestamps_stay_strings_and_scalars_follow_yaml_1_1() -> None:
    loaded = load_yaml(b"when: 2024-05-01\nmode: 0644\non: yes\nnothing: ~\n", "d.yaml")
    assert loaded.data == {"when": "2024-05-01", "mode": 0o644, True: True, "nothing": None}


def test_invalid_utf8_is_located() -> None:
    assert _load_errors(b"a: 1\nb: \xff\n") == ["d.yaml:2:4: not utf-8: invalid start byte"]


def test_deep_nesting_is_refused() -> None:
    problems = _load_errors("a: " + "[" * 100 + "]" * 100 + "\n")
    assert len(problems) == 1
    assert problems[0].endswith("document nested deeper than 64 levels")
    problems = _load_errors("[" * 5000 + "]" * 5000)
    assert problems == ["d.yaml:1:1: document nested too deeply to parse"]


# --- merging drop-ins --------------------------------------------------------------------------

DROP_IN = """\
components:
  k3s:
    role: agent
    server: https://10.0.0.1:6443
    config:
      node-label: [site=shop-42]
      node-name: shop-42
runtimeClasses:
  - name: wasmedge
    handler: wasmedge
"""


def test_drop_in_overrides_role_and_adds_config(tmp_path: Path) -> None:
    base = _write(tmp_path, VALID, "desired.yaml")
    drop = _write(tmp_path, DROP_IN, "10-node.yaml")
    report = load_and_validate([base, drop], None, merge_all=True)
    assert report.errors == []
    state = report.state
    assert state is not None
    k3s = state.components.k3s
    assert k3s is not None
    assert (k3s.role, k3s.server, k3s.version) == ("agent", "https://10.0.0.1:6443", "v1.30.4+k3s1")
    assert k3s.tokenFile == "/etc/wasm-edge/k3s-token"
    assert k3s.config == {
        "write-kubeconfig-mode": "0644",
        "node-label": ["site=shop-42"],
        "node-name": "shop-42",
    }
    assert [rc.name for rc in state.runtimeClasses] == ["wasmedge"]
    assert state.components.crun is not None


def test_error_in_drop_in_points_at_the_drop_in(tmp_path: Path) -> None:
    base = _write(tmp_path, _edit(VALID, _sha("crun-amd64"), "bad"), "desired.yaml")
    drop_text = _edit(DROP_IN, "role: agent", "role: boss")
    drop = _write(tmp_path, drop_text, "10-node.yaml")
    report = load_and_validate([base, drop], None, merge_all=True)
    assert report.errors == [
        f"{drop}:3:11: role: Input should be 'server' or 'agent'",
        f"{base}:{_quoted(VALID, _sha('crun-amd64'))}: sha256: must be 64 lowercase hexadecimal "
        "digits (got 3 characters)",
    ]


def test_merge_positions_follow_the_winner() -> None:
    base = load_yaml(VALID.encode(), "base.yaml")
    over = load_yaml(DROP_IN.encode(), "drop.yaml")
    merged = merge(base, over)
    assert merged.positions[()] == Pos("base.yaml", 1, 1)
    assert merged.positions[("components", "k3s", "role")] == Pos("drop.yaml", 3, 11)
    assert merged.positions[("components", "k3s", "version")].file == "base.yaml"
    assert merged.positions[("components", "k3s", "config", "node-label", 0)].file == "drop.yaml"
    assert merged.positions[("runtimeClasses", 0, "name")] == Pos("drop.yaml", 9, 11)
    assert ("runtimeClasses", 0, "nodeSelector") not in merged.positions
    assert merged.keys[("components", "k3s", "config", "node-name")] == Pos("drop.yaml", 7, 7)
    assert merged.keys[("components", "k3s")] == base.keys[("components", "k3s")]
    # Merging leaves both inputs as they were.
    assert base.data["components"]["k3s"]["role"] == "server"


def test_load_errors_are_collected_and_nothing_is_merged(tmp_path: Path) -> None:
    base = _write(tmp_path, VALID, "desired.yaml")
    broken = _write(tmp_path, "components: [\n", "20-broken.yaml")
    report = load_and_validate([base, broken], None, merge_all=True)
    assert len(report.errors) == 1
    assert report.errors[0].startswith(f"{broken}:2:1: ")
    assert report.state is None


def test_files_validated_one_by_one(tmp_path: Path) -> None:
    good = _write(tmp_path, VALID, "a.yaml")
    bad = _write(tmp_path, _edit(VALID, "generation: 7", "generation: -7"), "b.yaml")
    report = load_and_validate([good, bad], None, merge_all=False)
    assert report.errors == [f"{bad}:3:13: generation: Input should be greater than or equal to 0"]
    assert report.state is None
    report = load_and_validate([good], None, merge_all=False)
    assert report.errors == []
    assert report.state is not None


def test_loaded_can_be_built_by_hand() -> None:
    loaded = Loaded({"apiVersion": "agentd/v1"}, {(): Pos("x", 1, 1)})
    report = validate(loaded, None)
    assert report.errors == ["x:1:1: missing field 'generation'", "x:1:1: missing field 'kind'"]


# --- the JSON Schema ---------------------------------------------------------------------------


def test_json_schema_is_json_schema() -> None:
    schema = json_schema()
    json.dumps(schema)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["type"] == "object"
    assert {"apiVersion", "kind", "generation", "components", "runtimeClasses"} <= set(
        schema["properties"]
    )
    assert set(schema["required"]) == {"apiVersion", "kind", "generation"}
    assert schema["additionalProperties"] is False
