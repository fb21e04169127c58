"""Version ordering of k3s, crun and WasmEdge releases, and what is not a version at all."""

from __future__ import annotations

import pytest

from agentd.core.versions import Version, compare, is_k3s_version, parse_version


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ("v1.30.4+k3s1", "v1.30.4+k3s2"),
        ("v1.30.4+k3s2", "v1.31.0+k3s1"),
        ("v1.30.4+k3s9", "v1.30.4+k3s10"),  # numeric, not text
        ("v1.30.0-rc1+k3s1", "v1.30.0+k3s1"),  # a release candidate comes before its release
        ("v1.30.0-rc1+k3s1", "v1.30.0-rc2+k3s1"),
        ("v1.29.9+k3s1", "v1.30.0-rc1+k3s1"),
        ("1.8.1", "1.8.5"),
        ("1.8.5", "1.15"),
        ("1.9", "1.15"),
        ("0.13.5", "0.14.1"),
        ("0.14.0-rc.1", "0.14.0"),
        ("0.14.1", "0.15.0"),
    ],
)
def test_older_sorts_before_newer(older: str, newer: str) -> None:
    a, b = Version(older), Version(newer)
    assert a < b
    assert b > a
    assert a != b
    assert compare(older, newer) == -1
    assert compare(newer, older) == 1


def test_a_list_of_k3s_releases_sorts_in_release_order() -> None:
    releases = ["v1.31.0+k3s1", "v1.30.4+k3s2", "v1.30.0-rc1+k3s1", "v1.30.4+k3s1", "v1.30.0+k3s1"]
    assert [str(v) for v in sorted(Version(r) for r in releases)] == [
        "v1.30.0-rc1+k3s1",
        "v1.30.0+k3s1",
        "v1.30.4+k3s1",
        "v1.30.4+k3s2",
        "v1.31.0+k3s1",
    ]


@pytest.mark.parametrize(
    ("a", "b"),
    [("1.15", "1.15.0"), ("1.15", "v1.15"), ("0.14.1", "0.14.1.0"), ("2", "2.0.0")],
)
def test_missing_trailing_zeros_are_equal(a: str, b: str) -> None:
    assert Version(a) == Version(b)
    assert hash(Version(a)) == hash(Version(b))
    assert compare(a, b) == 0
    assert len({Version(a), Version(b)}) == 1


def test_version_keeps_its_text() -> None:
    v = Version("v1.30.4+k3s1")
    assert str(v) == "v1.30.4+k3s1"
    assert repr(v) == "Version('v1.30.4+k3s1')"
    assert v.release == (1, 30, 4)
    assert v.build == 1
    assert v.pre is None
    assert Version("v1.30.0-rc2+k3s1").pre == "rc2"


def test_a_version_is_never_equal_to_its_string() -> None:
    assert Version("1.15") != "1.15"


@pytest.mark.parametrize(
    "text", ["v1.30.4+k3s1", "v1.32.2+k3s1", "v1.30.0-rc1+k3s1", "v1.30.4+k3s12", "v2.0.0+k3s1"]
)
def test_is_k3s_version(text: str) -> None:
    assert is_k3s_version(text)


@pytest.mark.parametrize(
    "text",
    [
        "v1.30.4",  # the Kubernetes version, without k3s's +k3sN
        "1.30.4+k3s1",  # k3s always writes the leading v
        "v1.30+k3s1",
        "v1.30.4+k3s",
        "v1.30.4+rke2r1",
        "v1.30.4+k3s1 ",
        "k3s version v1.30.4+k3s1 (abcd1234)",
        "",
        "latest",
    ],
)
def test_is_not_k3s_version(text: str) -> None:
    assert not is_k3s_version(text)


@pytest.mark.parametrize(
    "text",
    ["", "garbage", "v", "1..2", "1.2.", ".1.2", "1.2.3+k3s1", "1.x", "crun version 1.15", "-1"],
)
def test_parse_version_refuses_garbage(text: str) -> None:
    assert parse_version(text) is None
    with pytest.raises(ValueError, match="not a version"):
        Version(text)


@pytest.mark.parametrize("text", ["1.15", "v1.15", "0.14.1", "v1.30.4+k3s1", "1.8.1~rc1"])
def test_parse_version_reads_real_versions(text: str) -> None:
    parsed = parse_version(text)
    assert parsed is not None
    assert parsed == Version(text)


def test_compare_unparseable_versions_as_text() -> None:
    assert compare("unknown", "unknown") == 0
    # Two different unreadable versions are never "newer": the plan upgrades, never downgrades.
    assert compare("unknown", "1.15") == -1
    assert compare("1.15", "unknown") == -1
    assert compare("garbage-a", "garbage-b") == -1
    assert compare("garbage-b", "garbage-a") == -1


@pytest.mark.parametrize("text", ["1.15\n", "v1.30.4+k3s1\n", "0.14.1\n\n"])
def test_a_final_newline_is_no_part_of_a_version(text: str) -> None:
    # Python's `$` matches before a final newline; a version must end where its text does.
    assert parse_version(text) is None
    assert not is_k3s_version(text)
