"""Kubernetes' name and label rules, as k8s.io/apimachinery/pkg/util/validation states them."""

from __future__ import annotations

import pytest

from agentd.core import names


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("crun-wasm", True),
        ("a", True),
        ("0", True),
        ("a" * 63, True),
        ("a" * 64, False),
        ("Crun", False),  # upper case
        ("crun_wasm", False),  # underscore
        ("crun.wasm", False),  # a dot is a subdomain, not a label
        ("-crun", False),
        ("crun-", False),
        ("", False),
        ("crun\n", False),  # Python's `$` would let a final newline through; Go's does not
    ],
)
def test_dns1123_label(value: str, ok: bool) -> None:
    assert (names.dns1123_label_error(value) is None) is ok


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("example.com", True),
        ("crun-wasm", True),
        (".".join(["a" * 63] * 3) + "." + "a" * 61, True),  # 253 characters
        (".".join(["a" * 63] * 4), False),  # 255
        ("a..b", False),
        ("a.", False),
        ("Example.com", False),
        ("a.b\n", False),
    ],
)
def test_dns1123_subdomain(value: str, ok: bool) -> None:
    assert (names.dns1123_subdomain_error(value) is None) is ok


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        ("wasm-runtime", True),
        ("kubernetes.io/arch", True),
        ("agentd.wasm-edge.io/generation", True),
        ("MyName", True),
        ("my_name.x-1", True),
        ("a" * 63, True),
        ("a" * 64, False),
        ("example.com/" + "a" * 63, True),
        ("/name", False),  # empty prefix
        ("example.com/", False),  # empty name
        ("a/b/c", False),
        ("Example.com/name", False),  # the prefix is lower case
        ("bad key", False),
        ("_name", False),
        ("name_", False),
        ("", False),
        ("name\x1b", False),
    ],
)
def test_label_key(key: str, ok: bool) -> None:
    assert (names.label_key_error(key) is None) is ok


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("", True),  # a label value may be empty
        ("enabled", True),
        ("1.2_3-x", True),
        ("a" * 63, True),
        ("a" * 64, False),
        ("-x", False),
        ("a b", False),
        ("a/b", False),
        ("x\n", False),
    ],
)
def test_label_value(value: str, ok: bool) -> None:
    assert (names.label_value_error(value) is None) is ok


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("dedicated=wasm:NoSchedule", True),
        ("dedicated:NoExecute", True),
        ("example.com/gpu=:PreferNoSchedule", True),
        ("dedicated=wasm", False),  # no effect
        ("dedicated=wasm:Sometimes", False),
        ("bad key=x:NoSchedule", False),
        ("k=bad value:NoSchedule", False),
    ],
)
def test_taint(text: str, ok: bool) -> None:
    assert (names.taint_error(text) is None) is ok


@pytest.mark.parametrize(
    ("text", "ok"),
    [("site=edge", True), ("site=", True), ("site", False), ("Bad/x=y", False)],
)
def test_node_label(text: str, ok: bool) -> None:
    assert (names.label_error(text) is None) is ok


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("wasi_nn-ggml", True),
        ("wasmedge_rustls", True),
        ("libfoo.so+1", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("wasi_nn\x00ggml", False),
        ("x\x1b[2J", False),
        ("a\nb", False),
        ("../evil", False),
        (".hidden", False),
        ("-rf", False),
        ("a b", False),
        ("a/b", False),
        ("caf\u00e9", False),
        ("a\u2028b", False),
        ("", False),
    ],
)
def test_safe_name(name: str, ok: bool) -> None:
    assert (names.safe_name_error(name) is None) is ok
