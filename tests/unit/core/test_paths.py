"""Host paths under a sandbox root: links inside it resolved as a chroot at the root would."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentd.core.paths import Paths, RootLinkError


def _root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "usr" / "local").mkdir(parents=True)
    return root


def test_an_absolute_directory_link_is_taken_under_the_root(tmp_path: Path) -> None:
    root = _root(tmp_path)
    (root / "usr" / "local" / "bin").symlink_to("/opt/bin")
    paths = Paths(root)
    assert paths.under("/usr/local/bin/crun") == root / "opt" / "bin" / "crun"
    assert paths.under_dir("/usr/local/bin") == root / "opt" / "bin"
    assert paths.bin_search_dirs()[1] == root / "opt" / "bin"


def test_dot_dot_stops_at_the_root(tmp_path: Path) -> None:
    root = _root(tmp_path)
    (root / "usr" / "local" / "lib").symlink_to("../../../../../../etc")
    assert Paths(root).under("/usr/local/lib/x.so") == root / "etc" / "x.so"
    assert Paths(root).under("/../../etc/passwd") == root / "etc" / "passwd"


def test_a_relative_link_inside_the_root_is_followed(tmp_path: Path) -> None:
    root = _root(tmp_path)
    (root / "lib").symlink_to("usr/lib")
    assert Paths(root).under("/lib/ld-linux-x86-64.so.2") == root / "usr/lib/ld-linux-x86-64.so.2"


def test_the_last_component_is_left_as_it_is(tmp_path: Path) -> None:
    # A link being replaced (an installed symlink) must be the link, not what it points at.
    root = _root(tmp_path)
    (root / "usr" / "local" / "k3s").symlink_to("/elsewhere")
    assert Paths(root).under("/usr/local/k3s") == root / "usr" / "local" / "k3s"
    assert Paths(root).under_dir("/usr/local/k3s") == root / "elsewhere"


def test_a_loop_of_links_is_an_error_not_a_hang(tmp_path: Path) -> None:
    root = _root(tmp_path)
    (root / "a").symlink_to("/b")
    (root / "b").symlink_to("/a")
    with pytest.raises(RootLinkError, match="too many levels of symbolic links"):
        Paths(root).under("/a/file")


def test_the_real_root_is_the_kernels_business() -> None:
    assert Paths(Path("/")).under("/usr/local/bin/crun") == Path("/usr/local/bin/crun")
