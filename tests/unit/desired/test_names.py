"""Names and labels in a document are checked by Kubernetes' rules, each error at FILE:LINE:COL."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentd.desired.validate import load_and_validate
from tests.unit.desired.test_desired import VALID, _at, _edit, _write


def _errors(tmp_path: Path, text: str) -> tuple[Path, list[str]]:
    path = _write(tmp_path, text)
    report = load_and_validate([path], None, merge_all=True)
    return path, report.errors


@pytest.mark.parametrize(
    ("yaml_name", "shown"),
    [
        ('"wasi_nn\\0ggml"', "'wasi_nn\\x00ggml'"),
        ('"wasi_nn\\e[2J"', "'wasi_nn\\x1b[2J'"),
        ('"wasi_nn\\nggml"', "'wasi_nn\\nggml'"),
        ('"../../etc/evil"', "'../../etc/evil'"),
        ('"caf\\u00e9"', "'café'"),
    ],
)
def test_plugin_name_outside_the_alphabet_is_refused_at_its_place(
    tmp_path: Path, yaml_name: str, shown: str
) -> None:
    text = _edit(VALID, "      - name: wasi_nn-ggml\n", f"      - name: {yaml_name}\n")
    path, errors = _errors(tmp_path, text)
    assert errors == [
        f"{path}:{_at(text, yaml_name)}: {shown}: a name is 1-128 of A-Z a-z 0-9 . _ + - and "
        "starts with a letter or digit (no spaces, slashes or control characters)"
    ]
    # The message itself carries no raw control character to the terminal.
    assert all(c.isprintable() for c in errors[0])


def test_override_name_outside_the_alphabet_is_refused(tmp_path: Path) -> None:
    text = VALID + 'overrides:\n  - name: "edge\\e]0;owned\\a"\n'
    path, errors = _errors(tmp_path, text)
    assert len(errors) == 1
    where = _at(text, '"edge')
    assert errors[0].startswith(f"{path}:{where}: 'edge\\x1b]0;owned\\x07': a name")


def test_runtime_class_handler_must_be_a_dns_label(tmp_path: Path) -> None:
    text = _edit(VALID, "    handler: crun-wasm\n", "    handler: Crun_Wasm\n")
    path, errors = _errors(tmp_path, text)
    assert errors == [
        f"{path}:{_at(text, 'Crun_Wasm')}: 'Crun_Wasm': a DNS-1123 label must consist of lower "
        "case alphanumeric characters or '-', and must start and end with an alphanumeric "
        "character (e.g. 'crun-wasm')"
    ]


def test_runtime_class_handler_of_64_characters_is_refused(tmp_path: Path) -> None:
    handler = "h" * 64
    text = _edit(VALID, "    handler: crun-wasm\n", f"    handler: {handler}\n")
    path, errors = _errors(tmp_path, text)
    assert errors == [
        f"{path}:{_at(text, handler)}: {handler!r}: must be no more than 63 characters"
    ]


def test_runtime_class_name_must_be_a_dns_subdomain(tmp_path: Path) -> None:
    text = _edit(VALID, "  - name: crun-wasm\n", "  - name: Crun.Wasm\n")
    path, errors = _errors(tmp_path, text)
    assert len(errors) == 1
    assert errors[0].startswith(
        f"{path}:{_at(text, 'Crun.Wasm')}: 'Crun.Wasm': a DNS-1123 subdomain"
    )


@pytest.mark.parametrize(
    ("selector", "needle", "message"),
    [
        ("{bad key: enabled}", "bad key", "label key 'bad key': the name must consist of"),
        ("{a/b/c: enabled}", "a/b/c", "label key 'a/b/c': a label key is a name with an optional"),
        (
            "{example.com/: x}",
            "example.com/",
            "label key 'example.com/': the name must be non-empty",
        ),
        ("{wasm-runtime: not ok}", "not ok", "label value 'not ok': a label value must be empty"),
        (f"{{wasm-runtime: {'v' * 64}}}", "v" * 64, "label value "),
    ],
)
def test_node_selector_keys_and_values_follow_the_label_rules(
    tmp_path: Path, selector: str, needle: str, message: str
) -> None:
    text = _edit(VALID, "nodeSelector: {wasm-runtime: enabled}", f"nodeSelector: {selector}")
    path, errors = _errors(tmp_path, text)
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{path}:{_at(text, needle, 'nodeSelector')}: {message}")


def test_node_selector_may_have_a_prefixed_key_and_an_empty_value(tmp_path: Path) -> None:
    text = _edit(
        VALID,
        "nodeSelector: {wasm-runtime: enabled}",
        "nodeSelector: {example.com/wasm-runtime: '', kubernetes.io/arch: amd64}",
    )
    _, errors = _errors(tmp_path, text)
    assert errors == []


def test_k3s_node_labels_and_taints_follow_the_api_servers_rules(tmp_path: Path) -> None:
    text = _edit(
        VALID,
        "node-label: [wasm-runtime=enabled, site=edge]",
        "node-label: [wasm-runtime=enabled, 'bad key=x']\n"
        "      node-taint: ['dedicated=wasm:NoSchedule', 'dedicated=wasm:Sometimes']",
    )
    path, errors = _errors(tmp_path, text)
    bad_label, bad_taint = _at(text, "'bad key"), _at(text, "'dedicated=wasm:Sometimes")
    assert errors == [
        f"{path}:{bad_label}: node-label 'bad key=x': label key 'bad key': the name "
        "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with "
        "an alphanumeric character (e.g. 'MyName', 'my.name', '123-abc')",
        f"{path}:{bad_taint}: node-taint 'dedicated=wasm:Sometimes': "
        "the taint effect must be one of NoSchedule, PreferNoSchedule, NoExecute, not 'Sometimes'",
    ]


def test_k3s_node_name_must_be_a_dns_subdomain(tmp_path: Path) -> None:
    text = _edit(VALID, '      write-kubeconfig-mode: "0644"\n', "      node-name: Edge_1\n")
    path, errors = _errors(tmp_path, text)
    assert len(errors) == 1, errors
    assert errors[0].startswith(
        f"{path}:{_at(text, 'Edge_1')}: node-name 'Edge_1': a DNS-1123 subdomain must consist"
    )


def test_a_token_file_with_a_control_character_is_refused(tmp_path: Path) -> None:
    text = _edit(VALID, "tokenFile: /etc/wasm-edge/k3s-token", 'tokenFile: "/etc/k3s\\0token"')
    path, errors = _errors(tmp_path, text)
    where = _at(text, '"/etc/k3s')
    assert errors == [
        f"{path}:{where}: tokenFile has the control character \\x00: '/etc/k3s\\x00token'"
    ]
